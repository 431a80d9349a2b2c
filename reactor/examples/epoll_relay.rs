//! Prototype (issue 14): the relay floor of `ring_relay` on raw epoll — level-triggered
//! epoll, `accept4`, one `read` per readable connection, one `write` per connection
//! with bytes queued at the end of each loop turn; the protocol side is the same
//! (`relay_floor/mod.rs`). What the kernel side of relaying costs in an epoll loop,
//! next to the io_uring one.
//!
//! `cargo run --release -p reactor --example epoll_relay -- 127.0.0.1:8099`

use std::net::TcpListener;
use std::os::fd::AsRawFd;

#[path = "floor/mod.rs"]
mod floor;

#[path = "relay_floor/mod.rs"]
mod relay_floor;
use relay_floor::State;

const EVENTS_MAX: usize = 256;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let listener = TcpListener::bind(&addr).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let lfd = listener.as_raw_fd();
    let mut st = State::default();
    let mut buf = vec![0u8; 64 * 1024];
    // Connections a write left bytes for (the socket was full): retried next turn.
    let mut backlog: Vec<i32> = Vec::new();
    // SAFETY: plain syscalls on descriptors this program owns, with buffers that
    // outlive each call; results are checked.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: lfd as u64,
        };
        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd, &mut ev), 0);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
        loop {
            let timeout = if backlog.is_empty() { -1 } else { 1 };
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), EVENTS_MAX as i32, timeout);
            for e in &events[..n.max(0) as usize] {
                let fd = e.u64 as i32;
                if fd == lfd {
                    floor::epoll_accept_all(ep, lfd, |c| st.accepted(c));
                    continue;
                }
                let r = libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len());
                if r <= 0 {
                    if r == 0 || *libc::__errno_location() != libc::EAGAIN {
                        // No send is ever in flight here: this closes the fd.
                        st.closed(fd);
                    }
                    continue;
                }
                st.received(fd, &buf[..r as usize]);
            }
            let mut dirty = std::mem::take(&mut st.dirty);
            dirty.append(&mut backlog);
            for &fd in &dirty {
                let c = &mut st.conns[fd as usize];
                c.dirty = false;
                if !c.open || c.out.is_empty() {
                    continue;
                }
                let w = libc::write(fd, c.out.as_ptr() as *const _, c.out.len());
                if w > 0 {
                    c.out.drain(..w as usize);
                } else if *libc::__errno_location() != libc::EAGAIN {
                    c.out.clear(); // the peer is gone; its read will say so
                }
                if !c.out.is_empty() && !backlog.contains(&fd) {
                    backlog.push(fd);
                }
            }
            dirty.clear();
            st.dirty = dirty;
        }
    }
}

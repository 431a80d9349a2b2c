//! Prototype (issue 14): the ceiling of a raw epoll `/healthz` server — the counterpart
//! of `ring_healthz`: level-triggered epoll, `accept4`, `read`, `write`, nothing else.
//! It answers every request head with the same 200, to measure what the kernel side of
//! an epoll loop costs, next to the io_uring one.
//!
//! `cargo run --release -p reactor --example epoll_healthz -- 127.0.0.1:8099`

use std::net::TcpListener;
use std::os::fd::AsRawFd;

#[path = "floor/mod.rs"]
mod floor;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
const EVENTS_MAX: usize = 256;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let listener = TcpListener::bind(&addr).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let lfd = listener.as_raw_fd();
    // SAFETY: plain syscalls on descriptors this program owns; results are checked.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: lfd as u64,
        };
        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd, &mut ev), 0);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
        let mut buf = vec![0u8; 4096];
        loop {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), EVENTS_MAX as i32, -1);
            for e in &events[..n.max(0) as usize] {
                let fd = e.u64 as i32;
                if fd == lfd {
                    floor::epoll_accept_all(ep, lfd, |_| {});
                    continue;
                }
                let r = libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len());
                if r <= 0 {
                    if r == 0 || *libc::__errno_location() != libc::EAGAIN {
                        libc::close(fd);
                    }
                    continue;
                }
                let n = memchr::memmem::find_iter(&buf[..r as usize], b"\r\n\r\n")
                    .count()
                    .max(1);
                for _ in 0..n {
                    libc::write(fd, RESPONSE.as_ptr() as *const _, RESPONSE.len());
                }
            }
        }
    }
}

//! Prototype (issue 14): the floor of a raw io_uring signaling relay — what the kernel
//! side of relaying one WebSocket message costs when user space does next to nothing.
//! The counterpart of `ring_healthz` for `bench ws-relay`: multishot accept, multishot
//! receive into a provided buffer ring, one send in flight per connection (what queues
//! behind it goes out in the next send), one `io_uring_enter` per loop turn.
//!
//! It does only what the load generator needs, with no auth and no limits (the protocol
//! side, shared with `epoll_relay`, is `relay_floor/mod.rs`):
//! - any HTTP request but `GET /ws…` gets the same 200 `{"token":"floor"}` (the
//!   load generator's `POST /api/token`, the scripts' `GET /api/config` probe);
//! - `GET /ws…` gets a 101 with the right `Sec-WebSocket-Accept` (the token is not read);
//! - a text frame carrying `"target_id":"…"` is unmasked and sent, unchanged, as an
//!   unmasked text frame to the connection registered under that id. The load
//!   generator writes `{"type","peer_id","target_id","payload"}` in the order
//!   chatixia-core's `wire::ws::signaling::relay_frame` writes them, so these are the
//!   bytes our server would send; the floor skips the JSON validation and the
//!   identity check;
//! - any other text frame naming `"register"` registers its `"peer_id"` for this
//!   connection and is answered with an empty `peer_list`;
//! - everything else (pongs, close frames) is ignored; a connection is closed when the
//!   client closes it.
//!
//! `cargo run --release -p reactor --example ring_relay -- 127.0.0.1:8099` (`DEFER=1`:
//! also IORING_SETUP_DEFER_TASKRUN)

use std::net::TcpListener;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, types};

#[path = "floor/mod.rs"]
mod floor;
#[path = "relay_floor/mod.rs"]
mod relay_floor;
use floor::BufRing;
use relay_floor::State;

const BGID: u16 = BufRing::BGID;
const ACCEPT: u64 = u64::MAX;
const SEND_TAG: u64 = 1 << 32;

fn recv(fd: i32) -> io_uring::squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), BGID)
        .build()
        .user_data(fd as u64)
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let listener = TcpListener::bind(&addr).expect("bind");
    let mut ring = floor::uring();
    let mut bufs = BufRing::register(&ring);

    let lfd = listener.as_raw_fd();
    let accept = opcode::AcceptMulti::new(types::Fd(lfd))
        .build()
        .user_data(ACCEPT);
    // SAFETY: the entry references only the listener fd.
    unsafe { ring.submission().push(&accept).unwrap() };
    let mut st = State::default();
    let mut pending: Vec<io_uring::squeue::Entry> = Vec::new();
    loop {
        ring.submit_and_wait(1).expect("enter");
        let mut recycled = false;
        for cqe in ring.completion() {
            let ud = cqe.user_data();
            let res = cqe.result();
            if ud == ACCEPT {
                if res >= 0 {
                    let fd = res;
                    floor::nodelay(fd);
                    st.accepted(fd);
                    pending.push(recv(fd));
                }
                if !cqueue::more(cqe.flags()) {
                    pending.push(
                        opcode::AcceptMulti::new(types::Fd(lfd))
                            .build()
                            .user_data(ACCEPT),
                    );
                }
                continue;
            }
            if ud & SEND_TAG != 0 {
                let fd = (ud & !SEND_TAG) as i32;
                let c = &mut st.conns[fd as usize];
                if res > 0 && c.off + (res as usize) < c.inflight.len() {
                    c.off += res as usize;
                    // `inflight` is left alone until this send completes.
                    let rest = &c.inflight[c.off..];
                    pending.push(
                        opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
                            .build()
                            .user_data(SEND_TAG | fd as u64),
                    );
                    continue;
                }
                c.sending = false;
                c.inflight.clear();
                if res < 0 {
                    c.out.clear(); // the peer is gone; its receive will end too
                }
                if c.closing {
                    st.close_now(fd);
                } else if !c.out.is_empty() && !c.dirty {
                    c.dirty = true;
                    st.dirty.push(fd);
                }
                continue;
            }
            let fd = ud as i32;
            if res <= 0 {
                if res == -libc::ENOBUFS {
                    pending.push(recv(fd));
                    continue;
                }
                st.closed(fd);
                continue;
            }
            let bid = cqueue::buffer_select(cqe.flags()).expect("buffer");
            let data = bufs.data(bid, res as usize);
            st.received(fd, data);
            bufs.recycle(bid);
            recycled = true;
            if !cqueue::more(cqe.flags()) {
                pending.push(recv(fd));
            }
        }
        if recycled {
            bufs.publish();
        }
        for fd in st.dirty.drain(..) {
            let c = &mut st.conns[fd as usize];
            c.dirty = false;
            if c.sending || !c.open || c.closing || c.out.is_empty() {
                continue;
            }
            std::mem::swap(&mut c.out, &mut c.inflight);
            c.off = 0;
            c.sending = true;
            pending.push(
                opcode::Send::new(types::Fd(fd), c.inflight.as_ptr(), c.inflight.len() as u32)
                    .build()
                    .user_data(SEND_TAG | fd as u64),
            );
        }
        for e in pending.drain(..) {
            // SAFETY: a send references its connection's `inflight` bytes, which stay
            // put until its completion is seen (`sending`); the others reference fds.
            unsafe {
                while ring.submission().push(&e).is_err() {
                    ring.submit().expect("submit");
                }
            }
        }
    }
}

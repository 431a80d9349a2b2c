//! Prototype (issue 14): the ceiling of a raw io_uring `/healthz` server — multishot
//! accept, multishot receive into a provided buffer ring, sends from a static buffer,
//! one `io_uring_enter` per loop turn. Not part of the server: it answers every request
//! head with the same 200, to measure what the kernel side of the loop costs.
//!
//! `cargo run --release -p reactor --example ring_healthz -- 127.0.0.1:8099`

use std::net::TcpListener;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, types};

#[path = "floor/mod.rs"]
mod floor;
use floor::BufRing;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
const BGID: u16 = BufRing::BGID;
const ACCEPT: u64 = u64::MAX;
const SEND_TAG: u64 = 1 << 32;

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
    let mut requests: u64 = 0;
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
                    pending.push(
                        opcode::RecvMulti::new(types::Fd(fd), BGID)
                            .build()
                            .user_data(fd as u64),
                    );
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
                continue;
            }
            let fd = ud as i32;
            if res <= 0 {
                if res == -libc::ENOBUFS {
                    pending.push(
                        opcode::RecvMulti::new(types::Fd(fd), BGID)
                            .build()
                            .user_data(fd as u64),
                    );
                    continue;
                }
                // SAFETY: closing our accepted fd.
                unsafe { libc::close(fd) };
                continue;
            }
            let bid = cqueue::buffer_select(cqe.flags()).expect("buffer");
            let data = bufs.data(bid, res as usize);
            let n = memchr::memmem::find_iter(data, b"\r\n\r\n").count().max(1);
            requests += n as u64;
            bufs.recycle(bid);
            recycled = true;
            for _ in 0..n {
                pending.push(
                    opcode::Send::new(types::Fd(fd), RESPONSE.as_ptr(), RESPONSE.len() as u32)
                        .build()
                        .user_data(SEND_TAG | fd as u64),
                );
            }
            if !cqueue::more(cqe.flags()) {
                pending.push(
                    opcode::RecvMulti::new(types::Fd(fd), BGID)
                        .build()
                        .user_data(fd as u64),
                );
            }
        }
        if recycled {
            bufs.publish();
        }
        for e in pending.drain(..) {
            // SAFETY: the entries reference the static response or nothing.
            unsafe {
                while ring.submission().push(&e).is_err() {
                    ring.submit().expect("submit");
                }
            }
        }
        let _ = requests;
    }
}

//! Prototype (issue 14): the same canned `/healthz` answer as `ring_healthz`, served
//! through monoio the way the server's connection loop does I/O (one task per
//! connection, `read` into an owned buffer, `write_all`), with no parsing, routing or
//! timers. Against `ring_healthz` it shows what monoio's one-shot ops cost next to
//! multishot receive; against the server, what our own per-request work costs. With
//! `MULTISHOT=1` reads go through `reactor::recv_ring` (multishot receive on a second
//! ring, writes still on monoio): the server's io_uring read path.
//!
//! `cargo run --release -p reactor --example monoio_healthz -- 127.0.0.1:8099`

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpListener;
use std::os::fd::AsRawFd;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .uring_builder({
            let mut b = io_uring::IoUring::builder();
            b.setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_single_issuer();
            b
        })
        .build()
        .expect("runtime");
    let multishot = std::env::var("MULTISHOT").is_ok_and(|v| v == "1");
    rt.block_on(async move {
        let ring = if multishot {
            Some(reactor::recv_ring::RecvRing::install().expect("recv ring"))
        } else {
            None
        };
        let listener = TcpListener::bind(addr).expect("bind");
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let mut rx = ring
                .as_ref()
                .map(|r| r.recv(stream.as_raw_fd()).expect("arm"));
            monoio::spawn(async move {
                let mut buf = Vec::with_capacity(4096);
                let mut out = Vec::with_capacity(4096);
                loop {
                    let (r, b) = match rx.as_mut() {
                        Some(rx) => rx.recv(buf).await,
                        None => stream.read(buf).await,
                    };
                    buf = b;
                    let n = match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let reqs = memchr::memmem::find_iter(&buf[..n], b"\r\n\r\n")
                        .count()
                        .max(1);
                    buf.clear();
                    out.clear();
                    for _ in 0..reqs {
                        out.extend_from_slice(RESPONSE);
                    }
                    let (r, o) = stream.write_all(out).await;
                    out = o;
                    if r.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

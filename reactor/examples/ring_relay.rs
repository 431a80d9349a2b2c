//! Prototype (issue 14): the floor of a raw io_uring signaling relay — what the kernel
//! side of relaying one WebSocket message costs when user space does next to nothing.
//! The counterpart of `ring_healthz` for `bench ws-relay`: multishot accept, multishot
//! receive into a provided buffer ring, one send in flight per connection (what queues
//! behind it goes out in the next send), one `io_uring_enter` per loop turn.
//!
//! It does only what the load generator needs, with no auth and no limits:
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
//! `cargo run --release -p reactor --example ring_relay -- 127.0.0.1:8099`

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

use base64::Engine;
use io_uring::{cqueue, opcode, types, IoUring};
use sha1::{Digest, Sha1};

const TOKEN_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"token\":\"floor\"}";
const PEER_LIST: &[u8] =
    b"{\"type\":\"peer_list\",\"peer_id\":\"registry\",\"payload\":{\"peers\":[]}}";
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const BUF_SIZE: usize = 4096;
const BUF_COUNT: u16 = 1024;
const BGID: u16 = 7;
const ACCEPT: u64 = u64::MAX;
const SEND_TAG: u64 = 1 << 32;
/// A connection whose unparsed input grows past this is not one of ours: dropped input.
const INBUF_MAX: usize = 1 << 20;

#[derive(Default)]
struct Conn {
    open: bool,
    ws: bool,
    /// Received bytes not yet parsed (a partial HTTP head or WebSocket frame).
    inbuf: Vec<u8>,
    /// Bytes queued behind the send in flight.
    out: Vec<u8>,
    /// The bytes of the send in flight (not touched until it completes), and how many
    /// of them went out already.
    inflight: Vec<u8>,
    off: usize,
    sending: bool,
    /// In the list of connections with bytes to send at the end of this loop turn.
    dirty: bool,
    /// The client closed; the fd is closed once the send in flight completes.
    closing: bool,
    id: Vec<u8>,
}

struct State {
    conns: Vec<Conn>,
    ids: HashMap<Vec<u8>, i32>,
    dirty: Vec<i32>,
    scratch: Vec<u8>,
}

impl State {
    fn queue(&mut self, fd: i32, bytes: &[u8]) {
        let c = &mut self.conns[fd as usize];
        if !c.open || c.closing {
            return;
        }
        c.out.extend_from_slice(bytes);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(fd);
        }
    }

    /// Queues `payload` as one unmasked text frame to `fd`.
    fn queue_text(&mut self, fd: i32, payload: &[u8]) {
        let c = &mut self.conns[fd as usize];
        if !c.open || c.closing {
            return;
        }
        let n = payload.len();
        if n < 126 {
            c.out.extend_from_slice(&[0x81, n as u8]);
        } else if n < 65536 {
            c.out
                .extend_from_slice(&[0x81, 126, (n >> 8) as u8, n as u8]);
        } else {
            c.out.extend_from_slice(&[0x81, 127]);
            c.out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        self.queue(fd, payload);
    }

    /// Parses what `fd` sent; returns the bytes consumed (the rest is a partial unit).
    fn input(&mut self, fd: i32, data: &[u8]) -> usize {
        if self.conns[fd as usize].ws {
            self.frames(fd, data)
        } else {
            self.http(fd, data)
        }
    }

    fn http(&mut self, fd: i32, data: &[u8]) -> usize {
        let mut p = 0;
        while let Some(end) = memchr::memmem::find(&data[p..], b"\r\n\r\n") {
            let head = &data[p..p + end + 4];
            p += end + 4;
            if !head.starts_with(b"GET /ws") {
                self.queue(fd, TOKEN_RESPONSE);
                continue;
            }
            let key = head
                .split(|&b| b == b'\n')
                .find_map(|line| {
                    let colon = memchr::memchr(b':', line)?;
                    line[..colon]
                        .eq_ignore_ascii_case(b"sec-websocket-key")
                        .then(|| line[colon + 1..].trim_ascii())
                })
                .unwrap_or_default();
            let mut h = Sha1::new();
            h.update(key);
            h.update(WS_GUID);
            let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            self.queue(fd, resp.as_bytes());
            self.conns[fd as usize].ws = true;
            return p + self.frames(fd, &data[p..]);
        }
        p
    }

    fn frames(&mut self, fd: i32, data: &[u8]) -> usize {
        let mut p = 0;
        loop {
            let d = &data[p..];
            if d.len() < 2 {
                return p;
            }
            let (op, masked, len7) = (d[0] & 0x0f, d[1] & 0x80 != 0, (d[1] & 0x7f) as usize);
            let (len, mut hdr) = match len7 {
                126 if d.len() >= 4 => (u16::from_be_bytes([d[2], d[3]]) as usize, 4),
                127 if d.len() >= 10 => (
                    u64::from_be_bytes(d[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => return p,
                n => (n, 2),
            };
            if masked {
                hdr += 4;
            }
            if d.len() < hdr + len {
                return p;
            }
            if op == 1 {
                let mask = if masked {
                    d[hdr - 4..hdr].try_into().expect("4 bytes")
                } else {
                    [0; 4]
                };
                self.text(fd, &d[hdr..hdr + len], mask);
            }
            p += hdr + len;
        }
    }

    fn text(&mut self, fd: i32, payload: &[u8], mask: [u8; 4]) {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        s.extend_from_slice(payload);
        let m = u32::from_ne_bytes(mask) as u64;
        let m = m | m << 32;
        let mut chunks = s.chunks_exact_mut(8);
        for c in &mut chunks {
            let w = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ m;
            c.copy_from_slice(&w.to_ne_bytes());
        }
        for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        if let Some(at) = memchr::memmem::find(&s, b"\"target_id\":\"") {
            let from = at + 13;
            if let Some(n) = memchr::memchr(b'"', &s[from..]) {
                if let Some(&to) = self.ids.get(&s[from..from + n]) {
                    self.queue_text(to, &s);
                }
            }
        } else if memchr::memmem::find(&s, b"\"register\"").is_some() {
            if let Some(at) = memchr::memmem::find(&s, b"\"peer_id\":\"") {
                let from = at + 11;
                if let Some(n) = memchr::memchr(b'"', &s[from..]) {
                    let id = s[from..from + n].to_vec();
                    self.ids.insert(id.clone(), fd);
                    self.conns[fd as usize].id = id;
                    self.queue_text(fd, PEER_LIST);
                }
            }
        }
        self.scratch = s;
    }

    /// The client closed `fd`: forget its id, close once no send is in flight.
    fn closed(&mut self, fd: i32) {
        let c = &mut self.conns[fd as usize];
        if !c.id.is_empty() && self.ids.get(&c.id) == Some(&fd) {
            self.ids.remove(&c.id);
        }
        c.closing = true;
        c.out.clear();
        if !c.sending {
            self.close_now(fd);
        }
    }

    fn close_now(&mut self, fd: i32) {
        // Keep the entry (it may sit in the dirty list) but reset it.
        self.conns[fd as usize] = Conn::default();
        // SAFETY: closing our accepted fd; no operation of ours references it any more
        // (its receive has ended and no send is in flight).
        unsafe { libc::close(fd) };
    }
}

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
    let mut ring: IoUring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer()
        .build(4096)
        .expect("ring");

    // Buffer ring: BUF_COUNT entries of 16 bytes, page aligned; buffers in one slab.
    let ring_bytes = BUF_COUNT as usize * 16;
    // SAFETY: anonymous private mapping; checked below.
    let ring_mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ring_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(ring_mem != libc::MAP_FAILED);
    let bufs = vec![0u8; BUF_SIZE * BUF_COUNT as usize].into_boxed_slice();
    let bufs_ptr = bufs.as_ptr() as u64;
    let entries = ring_mem as *mut io_uring::types::BufRingEntry;
    let mut tail: u16 = 0;
    let push = |bid: u16, tail: &mut u16| {
        let idx = (*tail & (BUF_COUNT - 1)) as usize;
        // SAFETY: idx < BUF_COUNT, inside the mapping.
        unsafe {
            let e = &mut *entries.add(idx);
            e.set_addr(bufs_ptr + bid as u64 * BUF_SIZE as u64);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
        }
        *tail = tail.wrapping_add(1);
    };
    let publish = |tail: u16| {
        // SAFETY: the tail field lives in the first entry's reserved u16.
        unsafe {
            let t = io_uring::types::BufRingEntry::tail(entries as *const _)
                as *const std::sync::atomic::AtomicU16;
            (*t).store(tail, std::sync::atomic::Ordering::Release);
        }
    };
    for bid in 0..BUF_COUNT {
        push(bid, &mut tail);
    }
    publish(tail);
    // SAFETY: the mapping lives for the program.
    unsafe {
        ring.submitter()
            .register_buf_ring(ring_mem as u64, BUF_COUNT, BGID)
            .expect("register_buf_ring");
    }

    let lfd = listener.as_raw_fd();
    let accept = opcode::AcceptMulti::new(types::Fd(lfd))
        .build()
        .user_data(ACCEPT);
    // SAFETY: the entry references only the listener fd.
    unsafe { ring.submission().push(&accept).unwrap() };
    let mut st = State {
        conns: Vec::new(),
        ids: HashMap::new(),
        dirty: Vec::new(),
        scratch: Vec::new(),
    };
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
                    let one: libc::c_int = 1;
                    // SAFETY: plain setsockopt on our fd.
                    unsafe {
                        libc::setsockopt(
                            fd,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            &one as *const _ as *const _,
                            4,
                        );
                    }
                    if st.conns.len() <= fd as usize {
                        st.conns.resize_with(fd as usize + 1, Conn::default);
                    }
                    st.conns[fd as usize] = Conn {
                        open: true,
                        ..Conn::default()
                    };
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
            let data = &bufs[bid as usize * BUF_SIZE..bid as usize * BUF_SIZE + res as usize];
            if st.conns[fd as usize].inbuf.is_empty() {
                let used = st.input(fd, data);
                st.conns[fd as usize].inbuf.extend_from_slice(&data[used..]);
            } else {
                let mut b = std::mem::take(&mut st.conns[fd as usize].inbuf);
                b.extend_from_slice(data);
                let used = st.input(fd, &b);
                b.drain(..used);
                if b.len() > INBUF_MAX {
                    b.clear();
                }
                st.conns[fd as usize].inbuf = b;
            }
            push(bid, &mut tail);
            recycled = true;
            if !cqueue::more(cqe.flags()) {
                pending.push(recv(fd));
            }
        }
        if recycled {
            publish(tail);
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

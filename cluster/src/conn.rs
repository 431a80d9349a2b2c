//! One connection to Redis: opened and set up with blocking calls (bounded by the
//! connect and command timeouts) on the link thread, then driven non-blocking by the link
//! thread's poll loop.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::resp::{decode_reply, encode_command, Scan};
use crate::Value;

/// The most bytes of one reply the link keeps: no service of ours asks for a reply this
/// large (Redis's own bound, `proto-max-bulk-len`, is 512 MiB). A larger reply on a
/// running connection is read past without being kept, and its command gets an error
/// reply instead ([`DISCARDED`]; counted, `replies_discarded`): the connection, and
/// every other command on it, carries on. During the connection's setup it fails the
/// connect.
pub const REPLY_BYTES_MAX: usize = 64 << 20;

/// The error code of the reply a command gets in place of one over [`REPLY_BYTES_MAX`]
/// (Redis's own error codes are other words: `ERR`, `NOSCRIPT`, …).
pub const DISCARDED: &str = "CHXDISCARDED";

/// How much one read takes (a pipelined batch of small replies fits in one).
const READ_CHUNK: usize = 64 << 10;

/// A connection with its buffers.
pub(crate) struct Conn {
    pub(crate) stream: mio::net::TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wstart: usize,
    /// Where the reply at the front of `rbuf` ends, found as its bytes arrive.
    scan: Scan,
    /// Bytes of that reply already fed to `scan`.
    scanned: usize,
    /// That reply passed [`REPLY_BYTES_MAX`]: its bytes are dropped as they arrive.
    discarding: bool,
    /// Replies discarded so far (over [`REPLY_BYTES_MAX`]).
    pub(crate) discarded: u64,
}

/// Opens a connection to `host:port` and runs `setup` (pipelined, in one write) on it, each
/// reply waited for within `command_timeout` of the write; returns the connection (now
/// non-blocking) and the replies in order. An error reply is returned as a value: the
/// caller judges it.
pub(crate) fn open(
    host: &str,
    port: u16,
    connect_timeout: Duration,
    command_timeout: Duration,
    setup: &[Vec<Vec<u8>>],
) -> Result<(Conn, Vec<Value>), String> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .collect();
    let mut last = format!("{host}:{port} resolves to no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, connect_timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |e: io::Error| format!("setting up the connection: {e}");
    stream.set_nodelay(true).map_err(io)?;
    stream
        .set_write_timeout(Some(command_timeout))
        .map_err(io)?;
    let mut out = Vec::new();
    for cmd in setup {
        encode_command(&mut out, cmd);
    }
    stream.write_all(&out).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no room to write within command_timeout ({command_timeout:?})")
        }
        _ => format!("writing to Redis: {e}"),
    })?;
    let deadline = Instant::now() + command_timeout;
    let mut rbuf = Vec::new();
    let mut replies = Vec::with_capacity(setup.len());
    let mut chunk = vec![0u8; READ_CHUNK];
    while replies.len() < setup.len() {
        match decode_reply(&rbuf)? {
            Some((v, n)) => {
                rbuf.drain(..n);
                replies.push(v);
                continue;
            }
            None if rbuf.len() > REPLY_BYTES_MAX => {
                return Err(format!("a reply over {REPLY_BYTES_MAX} bytes"))
            }
            None => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no reply from Redis within command_timeout ({command_timeout:?}) while connecting"
            ));
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err("Redis closed the connection while connecting".into()),
            Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(format!(
                    "no reply from Redis within command_timeout ({command_timeout:?}) while connecting"
                ))
            }
            Err(e) => return Err(format!("reading from Redis: {e}")),
        }
    }
    stream.set_nonblocking(true).map_err(io)?;
    Ok((
        Conn {
            stream: mio::net::TcpStream::from_std(stream),
            rbuf,
            wbuf: Vec::new(),
            wstart: 0,
            scan: Scan::default(),
            scanned: 0,
            discarding: false,
            discarded: 0,
        },
        replies,
    ))
}

impl Conn {
    /// Queues a command (written by [`flush`](Self::flush)).
    pub(crate) fn queue<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        encode_command(&mut self.wbuf, args);
    }

    /// Writes what is queued until done or the socket is full.
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        while self.wstart < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wstart..]) {
                Ok(0) => return Err("Redis stopped taking bytes".into()),
                Ok(n) => self.wstart += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("writing to Redis: {e}")),
            }
        }
        self.wbuf.clear();
        self.wstart = 0;
        Ok(())
    }

    /// Reads what has arrived and passes each complete reply to `f`, until the socket is
    /// drained. An error ends the connection.
    pub(crate) fn read(
        &mut self,
        mut f: impl FnMut(Value) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("Redis closed the connection".into()),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    self.decode(&mut f)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading from Redis: {e}")),
            }
        }
    }

    /// Passes each complete reply buffered to `f` (also those left from the setup). A
    /// reply is decoded once whole ([`Scan`] finds its end as it arrives); one over
    /// [`REPLY_BYTES_MAX`] is read past without being kept and `f` gets
    /// `Value::Error("CHXDISCARDED …")` in its place.
    pub(crate) fn decode(
        &mut self,
        f: &mut impl FnMut(Value) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut at = 0;
        let r = loop {
            let from = at + self.scanned;
            match self.scan.feed(&self.rbuf[from..]) {
                Err(e) => break Err(e),
                Ok(Some(n)) => {
                    let end = from + n;
                    self.scanned = 0;
                    let v = if std::mem::take(&mut self.discarding) {
                        Value::Error(format!(
                            "{DISCARDED} a reply over {REPLY_BYTES_MAX} bytes (REPLY_BYTES_MAX), \
                             read past and dropped by the link"
                        ))
                    } else {
                        match decode_reply(&self.rbuf[at..end]) {
                            Ok(Some((v, used))) if used == end - at => v,
                            Ok(_) => break Err("a reply whose end the decoder did not find".into()),
                            Err(e) => break Err(e),
                        }
                    };
                    at = end;
                    if let Err(e) = f(v) {
                        break Err(e);
                    }
                }
                Ok(None) => {
                    self.scanned = self.rbuf.len() - at;
                    if !self.discarding && self.scanned > REPLY_BYTES_MAX {
                        self.discarding = true;
                        self.discarded += 1;
                        tracing::warn!(
                            "cluster: a reply over {REPLY_BYTES_MAX} bytes (REPLY_BYTES_MAX): \
                             read past and dropped, its command fails"
                        );
                    }
                    if self.discarding {
                        // Scanned, not kept.
                        self.rbuf.truncate(at);
                        self.rbuf.shrink_to(READ_CHUNK);
                        self.scanned = 0;
                    }
                    break Ok(());
                }
            }
        };
        self.rbuf.drain(..at);
        r
    }
}

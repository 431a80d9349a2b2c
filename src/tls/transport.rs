//! The byte stream under the HTTP and WebSocket code: plain TCP, or TLS over TCP.
//!
//! The connection loop, the signaling session, the dashboard's event stream and the
//! backup stream all read and write a [`Transport`]; they cannot tell TLS from plain TCP
//! except where bytes arrive by the shard's multishot receive, which hands over what the
//! socket received: those go through [`Transport::open`] (nothing for plain TCP,
//! decryption for TLS). The plain path costs one predictable branch per call.
//!
//! A TLS connection's state ([`TlsSession`]) is boxed: the idle connection's future
//! holds one pointer more than a plain one, and the session holds no buffer while idle.
//! When the peer breaks the protocol, its alert is sent at once, best-effort and
//! without waiting ([`reactor::net::try_send`]), since the caller closes the connection
//! on the error.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use monoio::buf::IoBuf;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use super::session::{Progress, TlsError, TlsSession};

/// The most capacity the shard's spare decryption buffer keeps between uses (see
/// [`SPARE`]); a larger one (a burst's inbox) is dropped instead.
const SPARE_BYTES_MAX: usize = 64 * 1024;

/// Capacity a fresh spare buffer starts with: one read's worth (the connection loop's
/// read size), so a buffer handed to the caller in exchange serves its next read whole.
const SPARE_BYTES_MIN: usize = 4096;

thread_local! {
    /// One spare buffer per shard thread for decrypted bytes: [`Transport::open`]
    /// decrypts into it and swaps it with the caller's buffer (whose ciphertext is
    /// spent), so decrypting allocates nothing in the steady state. A `Cell` taken and
    /// put back within one synchronous call: never shared, never borrowed across an
    /// await.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A TLS connection's state, moved with the connection (between shards, too).
pub struct TlsState {
    pub(crate) session: TlsSession,
    /// Application bytes received with the end of the handshake (a client may send its
    /// first request with its Finished), handed out by the first [`Transport::read`].
    pub(crate) early: Vec<u8>,
}

impl TlsState {
    /// Decrypts `buf[..n]` into `buf` (see [`Transport::open`]); an alert for a broken
    /// connection stays in the session's outgoing bytes. The decrypted bytes' buffer has
    /// room for at least `capacity_min` bytes (a caller that reads into it next), else
    /// about `n` (a caller that hands it on: no 4 KiB block per request).
    fn open(&mut self, buf: &mut Vec<u8>, n: usize, capacity_min: usize) -> io::Result<usize> {
        let mut plain = SPARE.take();
        plain.clear();
        plain.reserve(n.max(capacity_min));
        let r = self
            .session
            .receive(&mut buf[..n], &mut |p| plain.extend_from_slice(p));
        // The decrypted bytes become the caller's buffer; its spent ciphertext buffer the
        // next spare.
        std::mem::swap(buf, &mut plain);
        plain.clear();
        if plain.capacity() <= SPARE_BYTES_MAX {
            SPARE.set(plain);
        }
        if let Err(e) = r {
            return Err(tls_io_error(e));
        }
        if buf.is_empty() && self.session.progress() == Progress::PeerClosed {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "TLS close_notify received",
            ));
        }
        Ok(buf.len())
    }
}

/// A connection's byte stream.
pub struct Transport {
    tcp: TcpStream,
    tls: Option<Box<TlsState>>,
}

/// A [`Transport`] detached from its shard's event loop, to be attached on another.
pub struct Detached {
    fd: OwnedFd,
    tls: Option<Box<TlsState>>,
}

impl std::fmt::Debug for Detached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detached")
            .field("fd", &self.fd)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn tls_io_error(e: TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Transport {
    /// Plain TCP.
    pub fn plain(tcp: TcpStream) -> Transport {
        Transport { tcp, tls: None }
    }

    /// TLS over `tcp`, handshake done; `early`: application bytes already decrypted.
    pub(crate) fn tls(tcp: TcpStream, session: TlsSession, early: Vec<u8>) -> Transport {
        Transport {
            tcp,
            tls: Some(Box::new(TlsState { session, early })),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The ALPN protocol the TLS handshake agreed on (`None` for plain TCP, or when
    /// none was).
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.as_ref().and_then(|t| t.session.alpn())
    }

    /// Splits the connection into a reader and a writer for two tasks of this shard
    /// (TURN over TCP and TLS: a client's requests are read while a write to it
    /// waits). With TLS both halves hold the one session: decryption and encryption
    /// each borrow it within a call, never across an await.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        let Transport { tcp, tls } = self;
        let tls = tls.map(|t| Rc::new(RefCell::new(*t)));
        let (rd, wr) = tcp.into_split();
        (
            ReadHalf {
                tcp: rd,
                tls: tls.clone(),
            },
            WriteHalf { tcp: wr, tls },
        )
    }

    /// The TCP stream underneath (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Reads application bytes into `buf`, replacing its contents as a socket read does
    /// (TLS: decrypted, at least one byte; the buffer may be swapped for one that holds
    /// a whole record); `Ok(0)` is the end of the stream (TLS: the TCP end, or a
    /// `close_notify`).
    pub async fn read(&mut self, mut buf: Vec<u8>) -> monoio::BufResult<usize, Vec<u8>> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.read(buf).await;
        };
        if !tls.early.is_empty() {
            buf.clear();
            buf.append(&mut tls.early);
            tls.early = Vec::new();
            return (Ok(buf.len()), buf);
        }
        loop {
            let (r, b) = self.tcp.read(buf).await;
            buf = b;
            let n = match r {
                Ok(0) => return (Ok(0), buf),
                Ok(n) => n,
                Err(e) => return (Err(e), buf),
            };
            let m = match self.open(&mut buf, n) {
                Ok(m) => m,
                // The peer's `close_notify`: the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (Ok(0), buf),
                Err(e) => return (Err(e), buf),
            };
            // A key update the peer asked for goes out now.
            if let Err(e) = self.flush_owed().await {
                return (Err(e), buf);
            }
            if m > 0 {
                return (Ok(m), buf);
            }
        }
    }

    /// Reads what the socket has, undecrypted (for [`Transport::open`], or to drop it).
    pub async fn read_raw(&mut self, buf: Vec<u8>) -> monoio::BufResult<usize, Vec<u8>> {
        self.tcp.read(buf).await
    }

    /// Turns `buf[..n]`, bytes just received from the socket (a [`read_raw`], the
    /// multishot receive), into the application's bytes, in `buf[..m]`; returns `m`.
    /// Plain TCP: `n`, untouched. TLS: decrypted; `m` may be 0 (an incomplete record, a
    /// key update), which is not the end of the stream. `Err`: the connection is over:
    /// kind `UnexpectedEof` when the peer sent `close_notify` (and nothing after it),
    /// else broken (the alert for the peer has been sent).
    ///
    /// [`read_raw`]: Transport::read_raw
    pub fn open(&mut self, buf: &mut Vec<u8>, n: usize) -> io::Result<usize> {
        self.open_with(buf, n, SPARE_BYTES_MIN)
    }

    /// [`Transport::open`] for a caller that hands the bytes on rather than reading into
    /// the buffer again (the HTTP loop's multishot receive: the parser takes it): over
    /// TLS the buffer is sized by what arrived, not one read's worth.
    pub fn open_received(&mut self, buf: &mut Vec<u8>, n: usize) -> io::Result<usize> {
        self.open_with(buf, n, 0)
    }

    fn open_with(&mut self, buf: &mut Vec<u8>, n: usize, capacity_min: usize) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(n);
        };
        tls.open(buf, n, capacity_min).inspect_err(|e| {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                // The alert (bad record, decode error …) goes out now, best-effort and
                // without waiting: the caller closes the connection on this error.
                let alert = tls.session.take_outgoing();
                if !alert.is_empty() {
                    let _ = reactor::net::try_send(&self.tcp, &alert);
                }
            }
        })
    }

    /// Sends TLS bytes the session owes the peer (a key update) now.
    async fn flush_owed(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        if !tls.session.has_outgoing() {
            return Ok(());
        }
        let out = tls.session.take_outgoing();
        self.tcp.write_all(out).await.0.map(|_| ())
    }

    /// Writes all of `buf` (TLS: encrypted). Plain TCP gets the socket's own future, so a
    /// task that awaits this costs no more than it did on the socket (every signaling
    /// connection's future is as large as its largest await: `write_all`); the TLS path
    /// is boxed, on connections that allocate for each record anyway.
    pub fn write_all<B: IoBuf + AsRef<[u8]>>(
        &mut self,
        buf: B,
    ) -> impl std::future::Future<Output = monoio::BufResult<usize, B>> + '_ {
        if self.tls.is_none() {
            futures_util::future::Either::Left(self.tcp.write_all(buf))
        } else {
            futures_util::future::Either::Right(Box::pin(self.write_all_tls(buf)))
        }
    }

    async fn write_all_tls<B: IoBuf + AsRef<[u8]>>(
        &mut self,
        buf: B,
    ) -> monoio::BufResult<usize, B> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.write_all(buf).await;
        };
        let mut out = Vec::new();
        if let Err(e) = tls.session.send(buf.as_ref(), &mut out) {
            return (Err(tls_io_error(e)), buf);
        }
        let (r, _) = self.tcp.write_all(out).await;
        (r.map(|_| buf.as_ref().len()), buf)
    }

    /// Ends our side: TLS `close_notify`, then the TCP FIN.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            let mut out = Vec::new();
            tls.session.close_notify(&mut out);
            if !out.is_empty() {
                let (r, _) = self.tcp.write_all(out).await;
                r?;
            }
        }
        self.tcp.shutdown().await
    }

    /// Waits until the socket is readable: the socket's own future (a wrapper `async fn`
    /// would add its arguments to every idle signaling connection's state).
    pub fn readable(
        &self,
        relaxed: bool,
    ) -> impl std::future::Future<Output = io::Result<()>> + '_ {
        self.tcp.readable(relaxed)
    }

    /// Detaches the connection from this shard (no I/O may be in flight).
    pub fn detach(self) -> Detached {
        let Transport { tcp, tls } = self;
        Detached {
            fd: reactor::net::detach(tcp),
            tls,
        }
    }

    /// Attaches a detached connection to the current shard.
    pub fn attach(d: Detached) -> io::Result<Transport> {
        Ok(Transport {
            tcp: reactor::net::attach(d.fd)?,
            tls: d.tls,
        })
    }
}

impl AsRawFd for Transport {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}

/// The reading half of a split [`Transport`].
pub struct ReadHalf {
    tcp: OwnedReadHalf<TcpStream>,
    tls: Option<Rc<RefCell<TlsState>>>,
}

/// The writing half of a split [`Transport`].
pub struct WriteHalf {
    tcp: OwnedWriteHalf<TcpStream>,
    tls: Option<Rc<RefCell<TlsState>>>,
}

impl ReadHalf {
    /// As [`Transport::read`]: application bytes into `buf` (TLS: decrypted, at least
    /// one byte); `Ok(0)` at the end of the stream. TLS bytes the session then owes the
    /// peer (a key update's answer, the alert of a broken connection) are left for the
    /// writer ([`ReadHalf::owes`], [`WriteHalf::flush_owed`]).
    pub async fn read(&mut self, mut buf: Vec<u8>) -> monoio::BufResult<usize, Vec<u8>> {
        let Some(tls) = self.tls.as_ref() else {
            return self.tcp.read(buf).await;
        };
        {
            let mut t = tls.borrow_mut();
            if !t.early.is_empty() {
                buf.clear();
                buf.append(&mut t.early);
                t.early = Vec::new();
                return (Ok(buf.len()), buf);
            }
        }
        loop {
            let (r, b) = self.tcp.read(buf).await;
            buf = b;
            let n = match r {
                Ok(0) => return (Ok(0), buf),
                Ok(n) => n,
                Err(e) => return (Err(e), buf),
            };
            match tls.borrow_mut().open(&mut buf, n, SPARE_BYTES_MIN) {
                Ok(0) => {}
                Ok(m) => return (Ok(m), buf),
                // The peer's `close_notify`: the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (Ok(0), buf),
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Whether the TLS session owes the peer bytes the writer should send now.
    pub fn owes(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.borrow().session.has_outgoing())
    }
}

impl WriteHalf {
    /// Writes all of `buf` (TLS: encrypted, after what the session owes the peer).
    pub async fn write_all(&mut self, buf: Vec<u8>) -> monoio::BufResult<usize, Vec<u8>> {
        let Some(tls) = self.tls.as_ref() else {
            return self.tcp.write_all(buf).await;
        };
        let mut out = Vec::new();
        if let Err(e) = tls.borrow_mut().session.send(&buf, &mut out) {
            return (Err(tls_io_error(e)), buf);
        }
        let (r, _) = self.tcp.write_all(out).await;
        (r.map(|_| buf.len()), buf)
    }

    /// Sends the TLS bytes the session owes the peer (a key update, an alert), if any.
    pub async fn flush_owed(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_ref() else {
            return Ok(());
        };
        let out = tls.borrow_mut().session.take_outgoing();
        if out.is_empty() {
            return Ok(());
        }
        self.tcp.write_all(out).await.0.map(|_| ())
    }

    /// Ends our side: what the session owes (an alert), or TLS `close_notify`, then the
    /// TCP FIN.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_ref() {
            let mut out = Vec::new();
            tls.borrow_mut().session.close_notify(&mut out);
            if !out.is_empty() {
                let (r, _) = self.tcp.write_all(out).await;
                r?;
            }
        }
        self.tcp.shutdown().await
    }
}

//! One TLS connection's record layer, sans-IO: bytes from the socket go in, the
//! application's bytes come out (and the other way round); the caller does the I/O.
//!
//! Built on rustls's unbuffered API (`UnbufferedServerConnection::process_tls_records`)
//! rather than the buffered `read_tls`/`process_new_packets`/`write_tls`: the buffered
//! connection keeps a deframing buffer of at least 4 KiB for its whole life (rustls
//! 0.23's `DeframerVecBuffer::prepare_read`), which alone would be half of the memory
//! goal of an idle TLS connection (docs/BENCHMARKS.md, "TLS"). Here the connection holds
//! no buffer between records: received bytes are processed where they arrived (the
//! shard's multishot inbox, a read buffer), and only an incomplete record is kept
//! ([`TlsSession::pending_len`], at most [`INCOMING_BYTES_MAX`]).

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

/// The most received bytes kept between calls: an incomplete record, or during the
/// handshake an incomplete flight. TLS records are at most 2^14 bytes of plaintext plus
/// 256 of expansion and a 5-byte header (RFC 8446 §5.2); a client's handshake flight
/// (its ClientHello, or its Finished) is far below 64 KiB, the bound rustls itself puts
/// on a handshake message. More: the connection fails with `record_overflow`.
pub const INCOMING_BYTES_MAX: usize = 64 * 1024;

/// Bytes of TLS overhead per record we reserve when encrypting (header 5, TLS 1.2
/// explicit nonce 8, AEAD tag 16, TLS 1.3 content type 1); rustls says how much it
/// needs when this is short, and we grow to that.
const RECORD_OVERHEAD_MAX: usize = 32;

/// Plaintext per record (RFC 8446 §5.1).
const RECORD_PLAINTEXT_MAX: usize = 16 * 1024;

/// Why a TLS connection failed. The alert for the peer (if any) is in the outgoing
/// bytes ([`TlsSession::take_outgoing`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// The peer broke the protocol (garbage, a bad record, a failed handshake).
    Protocol(rustls::Error),
    /// More than [`INCOMING_BYTES_MAX`] bytes of an incomplete record or flight.
    TooLarge,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "{e}"),
            TlsError::TooLarge => write!(
                f,
                "incomplete TLS record or handshake flight over {INCOMING_BYTES_MAX} bytes"
            ),
        }
    }
}

impl std::error::Error for TlsError {}

/// What a call to [`TlsSession::receive`] left the connection in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The handshake needs more bytes from the peer.
    Handshaking,
    /// Application data flows (both ways).
    Open,
    /// The peer sent `close_notify`: nothing more will come from it.
    PeerClosed,
}

/// One server-side TLS connection (boxed by its owner: the connection future of an
/// idle connection holds only the pointer).
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Received bytes not yet processed: an incomplete record or handshake flight.
    /// Empty, and unallocated, between records. At most [`INCOMING_BYTES_MAX`].
    incoming: Vec<u8>,
    /// TLS bytes for the peer not yet taken by the caller: the handshake's flights, an
    /// alert, a key update. Bounded by what one call produces (a flight is a few KiB;
    /// the caller takes them before reading more).
    outgoing: Vec<u8>,
    progress: Progress,
    /// The connection failed; nothing more is processed.
    failed: bool,
}

impl TlsSession {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            progress: Progress::Handshaking,
            failed: false,
        })
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.progress == Progress::Handshaking
    }

    /// The negotiated protocol and suite, for logs and tests.
    pub fn describe(&self) -> String {
        format!(
            "{:?} {:?}",
            self.conn.protocol_version(),
            self.conn.negotiated_cipher_suite().map(|s| s.suite())
        )
    }

    /// Where the connection stands.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Bytes of an incomplete record kept from earlier calls.
    pub fn pending_len(&self) -> usize {
        self.incoming.len()
    }

    /// Whether TLS bytes wait to be sent ([`take_outgoing`](Self::take_outgoing)).
    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The TLS bytes to send now (handshake flights, alerts, key updates).
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Processes `tls`, bytes just received from the peer: `on_plain` gets the
    /// application data they complete, in order; handshake replies and alerts go to the
    /// outgoing bytes. On an error the connection is failed (an alert for the peer is
    /// queued where TLS has one) and every later call fails.
    pub fn receive(
        &mut self,
        tls: &mut [u8],
        on_plain: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, TlsError> {
        if self.failed {
            return Err(TlsError::Protocol(rustls::Error::HandshakeNotComplete));
        }
        let r = if self.incoming.is_empty() {
            // The common case: whole records, processed where they arrived.
            let used = self.process(tls, on_plain);
            used.map(|used| {
                if used < tls.len() {
                    self.incoming.extend_from_slice(&tls[used..]);
                }
            })
        } else {
            let mut buf = std::mem::take(&mut self.incoming);
            buf.extend_from_slice(tls);
            let used = self.process(&mut buf, on_plain);
            used.map(|used| {
                buf.drain(..used);
                if buf.is_empty() {
                    // An idle connection keeps no buffer.
                    buf = Vec::new();
                }
                self.incoming = buf;
            })
        };
        if let Err(e) = r {
            return Err(self.fail(e));
        }
        if self.incoming.len() > INCOMING_BYTES_MAX {
            self.incoming = Vec::new();
            return Err(self.fail(TlsError::TooLarge));
        }
        Ok(self.progress)
    }

    /// Runs the connection over `buf` until it needs more bytes; returns how many bytes
    /// of `buf` are consumed (the rest is an incomplete record).
    fn process(
        &mut self,
        buf: &mut [u8],
        on_plain: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TlsError> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut buf[used..]);
            let state = state.map_err(TlsError::Protocol)?;
            let more = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(TlsError::Protocol)?;
                        discard += rec.discard;
                        on_plain(rec.payload);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut self.outgoing, |out| e.encode(out))?;
                    true
                }
                ConnectionState::TransmitTlsData(t) => {
                    // The bytes are in `outgoing`, which the caller sends before it
                    // reads again; rustls only needs to know they are taken.
                    t.done();
                    true
                }
                ConnectionState::BlockedHandshake => false,
                ConnectionState::WriteTraffic(_) => {
                    if self.progress == Progress::Handshaking {
                        self.progress = Progress::Open;
                    }
                    false
                }
                ConnectionState::PeerClosed => {
                    self.progress = Progress::PeerClosed;
                    true
                }
                ConnectionState::Closed => {
                    self.progress = Progress::PeerClosed;
                    false
                }
                // Early data is never enabled (`max_early_data_size` 0), and new states
                // are not expected from this rustls version: fail closed.
                _ => {
                    return Err(TlsError::Protocol(rustls::Error::General(
                        "unexpected TLS connection state".into(),
                    )))
                }
            };
            used += discard;
            if !more {
                return Ok(used);
            }
        }
    }

    /// Marks the connection failed and queues its alert (rustls queues one for most
    /// errors; it is taken out here).
    fn fail(&mut self, e: TlsError) -> TlsError {
        self.failed = true;
        if let TlsError::Protocol(_) = e {
            // After an error, rustls hands out what it queued (the alert) before it
            // reports the error again.
            for _ in 0..4 {
                let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
                match state {
                    Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                        if encode(&mut self.outgoing, |out| enc.encode(out)).is_err() {
                            break;
                        }
                    }
                    Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                    _ => break,
                }
            }
        }
        e
    }

    /// Encrypts `plain` into `out` (appended), after any TLS bytes still owed to the
    /// peer (a key update, say). Fails when the connection cannot send (handshake not
    /// done, failed, closed by us).
    pub fn send(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.failed {
            return Err(TlsError::Protocol(rustls::Error::HandshakeNotComplete));
        }
        out.append(&mut self.outgoing);
        let mut incoming = std::mem::take(&mut self.incoming);
        let r = self.with_write_traffic(&mut incoming, out, |w, out| {
            let records = plain.len().div_ceil(RECORD_PLAINTEXT_MAX).max(1);
            let guess = plain.len() + records * RECORD_OVERHEAD_MAX;
            encode_sized(out, guess, |buf| w.encrypt(plain, buf))
        });
        self.incoming = incoming;
        r.map_err(|e| self.fail(e))
    }

    /// Appends an encrypted `close_notify` alert to `out` (the polite end of a TLS
    /// connection, before the TCP FIN). Does nothing on a connection that cannot send.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if self.failed || self.progress == Progress::Handshaking {
            out.append(&mut self.outgoing);
            return;
        }
        out.append(&mut self.outgoing);
        let mut incoming = std::mem::take(&mut self.incoming);
        let _ = self.with_write_traffic(&mut incoming, out, |w, out| {
            encode_sized(out, RECORD_OVERHEAD_MAX, |buf| w.queue_close_notify(buf))
        });
        self.incoming = incoming;
        self.failed = true;
    }

    /// Drives the connection to its `WriteTraffic` state (emitting what it owes first,
    /// into `out`) and calls `f` there. `incoming` holds the unprocessed bytes kept from
    /// earlier calls (rustls wants them passed back as they were).
    fn with_write_traffic(
        &mut self,
        incoming: &mut Vec<u8>,
        out: &mut Vec<u8>,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), TlsError>,
    ) -> Result<(), TlsError> {
        let mut used = 0;
        let mut r = Err(TlsError::Protocol(rustls::Error::General(
            "TLS connection cannot send application data now".into(),
        )));
        // A handful of states at most (a queued key update: encode, transmit, write).
        for _ in 0..8 {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut incoming[used..]);
            used += discard;
            match state {
                Err(e) => {
                    r = Err(TlsError::Protocol(e));
                    break;
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    r = f(&mut w, out);
                    break;
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if let Err(e) = encode(out, |buf| e.encode(buf)) {
                        r = Err(e);
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(_) => break,
            }
        }
        incoming.drain(..used);
        r
    }
}

/// Appends what `write` encodes to `out`, growing it to the size rustls asks for.
fn encode(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut need = 512;
    loop {
        out.resize(start + need, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) if s.required_size > need => {
                need = s.required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(TlsError::Protocol(rustls::Error::General(e.to_string())));
            }
        }
    }
}

/// [`encode`] for encryption, starting from a size guess.
fn encode_sized(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut need = guess;
    loop {
        out.resize(start + need, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) if s.required_size > need => {
                need = s.required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(TlsError::Protocol(rustls::Error::General(e.to_string())));
            }
        }
    }
}

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

    /// The ALPN protocol agreed in the handshake, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use std::io::{Read, Write};

    /// A throwaway CA, a server certificate for `localhost` it signed, the server's
    /// configuration and a client configuration trusting the CA.
    pub(crate) struct Pki {
        pub server: Arc<rustls::ServerConfig>,
        pub roots: rustls::RootCertStore,
    }

    pub(crate) fn pki(rsa: bool) -> Pki {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "chatixia test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let alg = if rsa {
            &PKCS_RSA_SHA256
        } else {
            &PKCS_ECDSA_P256_SHA256
        };
        let key = KeyPair::generate_for(alg).unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = super::super::config::provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        let certified =
            rustls::sign::CertifiedKey::new(vec![cert.der().clone(), ca.der().clone()], signer);
        certified.keys_match().unwrap();
        let server = super::super::config::server_config(Arc::new(certified)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Pki { server, roots }
    }

    fn client_config(
        pki: &Pki,
        version: &'static rustls::SupportedProtocolVersion,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut c =
            rustls::ClientConfig::builder_with_provider(Arc::new(super::super::config::provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(pki.roots.clone())
                .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }

    fn client(
        pki: &Pki,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> rustls::ClientConnection {
        let cfg = client_config(pki, version, &[b"http/1.1"]);
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap()
    }

    /// Moves the client's TLS bytes to the server in pieces of `chunk` bytes; returns
    /// what the server decrypted and the server's last result.
    fn to_server(
        c: &mut rustls::ClientConnection,
        s: &mut TlsSession,
        chunk: usize,
    ) -> (Vec<u8>, Result<Progress, TlsError>) {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let mut plain = Vec::new();
        let mut last = Ok(s.progress());
        for piece in wire.chunks_mut(chunk.max(1)) {
            last = s.receive(piece, &mut |p| plain.extend_from_slice(p));
            if last.is_err() {
                break;
            }
        }
        (plain, last)
    }

    /// Moves the server's outgoing bytes to the client; returns what it decrypted.
    fn to_client(s: &mut TlsSession, extra: &[u8], c: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut wire = s.take_outgoing();
        wire.extend_from_slice(extra);
        let mut rd = &wire[..];
        let mut plain = Vec::new();
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
            let _ = c.reader().read_to_end(&mut plain);
        }
        plain
    }

    fn handshake(c: &mut rustls::ClientConnection, s: &mut TlsSession, chunk: usize) {
        for _ in 0..4 {
            let (_, r) = to_server(c, s, chunk);
            r.unwrap();
            to_client(s, &[], c);
            if !c.is_handshaking() && !s.is_handshaking() {
                return;
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn handshakes_and_carries_data_both_ways() {
        for rsa in [false, true] {
            let pki = pki(rsa);
            for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
                let mut s = TlsSession::new(pki.server.clone()).unwrap();
                let mut c = client(&pki, v);
                handshake(&mut c, &mut s, usize::MAX);
                assert_eq!(c.alpn_protocol(), Some(&b"http/1.1"[..]));
                assert_eq!(c.protocol_version(), Some(v.version));
                c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                let (plain, r) = to_server(&mut c, &mut s, usize::MAX);
                assert_eq!(r.unwrap(), Progress::Open);
                assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n");
                let mut out = Vec::new();
                s.send(b"HTTP/1.1 200 OK\r\n\r\n", &mut out).unwrap();
                assert_eq!(to_client(&mut s, &out, &mut c), b"HTTP/1.1 200 OK\r\n\r\n");
                assert_eq!(s.pending_len(), 0, "no buffer kept between records");
            }
        }
    }

    #[test]
    fn bytes_split_anywhere_keep_only_the_incomplete_record() {
        let pki = pki(false);
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        let mut c = client(&pki, &rustls::version::TLS13);
        handshake(&mut c, &mut s, 1);
        let msg: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        c.writer().write_all(&msg).unwrap();
        for chunk in [1, 7, 1000, 4096] {
            if chunk > 1 {
                c.writer().write_all(&msg).unwrap();
            }
            let (plain, r) = to_server(&mut c, &mut s, chunk);
            r.unwrap();
            assert_eq!(plain, msg, "chunk {chunk}");
            assert_eq!(s.pending_len(), 0);
        }
    }

    #[test]
    fn large_writes_span_records() {
        let pki = pki(false);
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        let mut c = client(&pki, &rustls::version::TLS13);
        handshake(&mut c, &mut s, usize::MAX);
        let msg: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut out = Vec::new();
        s.send(&msg, &mut out).unwrap();
        assert_eq!(to_client(&mut s, &out, &mut c), msg);
    }

    #[test]
    fn garbage_fails_with_an_alert() {
        let pki = pki(false);
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        // An application-data record before any handshake.
        let mut junk = b"\x17\x03\x03\x00\x05hello".to_vec();
        let r = s.receive(&mut junk, &mut |_| panic!("no plaintext"));
        assert!(matches!(r, Err(TlsError::Protocol(_))), "{r:?}");
        let alert = s.take_outgoing();
        assert_eq!(
            alert.first(),
            Some(&0x15),
            "a plaintext alert record: {alert:?}"
        );
        // A record header no TLS peer sends.
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        let mut junk = vec![0xff; 64];
        assert!(s.receive(&mut junk, &mut |_| {}).is_err());
        // Failed stays failed.
        assert!(s.receive(&mut [0x16, 3, 1], &mut |_| {}).is_err());
        let mut out = Vec::new();
        assert!(s.send(b"x", &mut out).is_err());
    }

    #[test]
    fn a_tampered_record_fails_with_an_encrypted_alert() {
        let pki = pki(false);
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        let mut c = client(&pki, &rustls::version::TLS13);
        handshake(&mut c, &mut s, usize::MAX);
        c.writer().write_all(b"hello").unwrap();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let r = s.receive(&mut wire, &mut |_| panic!("no plaintext"));
        assert!(
            matches!(r, Err(TlsError::Protocol(rustls::Error::DecryptError))),
            "{r:?}"
        );
        let alert = s.take_outgoing();
        assert!(!alert.is_empty());
        let mut rd = &alert[..];
        c.read_tls(&mut rd).unwrap();
        let e = c.process_new_packets().unwrap_err();
        assert!(e.to_string().contains("BadRecordMac"), "{e}");
    }

    #[test]
    fn an_endless_handshake_message_is_bounded() {
        let pki = pki(false);
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        // A ClientHello header announcing 65,535 bytes, then records of it that never
        // complete it.
        let mut first = vec![0x16, 3, 1, 0x40, 0x00, 1, 0x00, 0xff, 0xff];
        first.resize(5 + 0x4000, 0);
        let mut r = s.receive(&mut first, &mut |_| {});
        for _ in 0..8 {
            if r.is_err() {
                break;
            }
            let mut rec = vec![0x16, 3, 1, 0x40, 0x00];
            rec.resize(5 + 0x4000, 0);
            r = s.receive(&mut rec, &mut |_| {});
            assert!(s.pending_len() <= INCOMING_BYTES_MAX);
        }
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn close_notify_both_ways() {
        let pki = pki(false);
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        let mut c = client(&pki, &rustls::version::TLS13);
        handshake(&mut c, &mut s, usize::MAX);
        c.send_close_notify();
        let (plain, r) = to_server(&mut c, &mut s, usize::MAX);
        assert!(plain.is_empty());
        assert_eq!(r.unwrap(), Progress::PeerClosed);
        let mut out = Vec::new();
        s.close_notify(&mut out);
        assert!(!out.is_empty());
        let mut rd = &out[..];
        c.read_tls(&mut rd).unwrap();
        let st = c.process_new_packets().unwrap();
        assert!(st.peer_has_closed());
    }

    #[test]
    fn a_key_update_is_answered() {
        let pki = pki(false);
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        let mut c = client(&pki, &rustls::version::TLS13);
        handshake(&mut c, &mut s, usize::MAX);
        c.refresh_traffic_keys().unwrap();
        c.writer().write_all(b"after").unwrap();
        let (plain, r) = to_server(&mut c, &mut s, usize::MAX);
        r.unwrap();
        assert_eq!(plain, b"after");
        // Our own key update goes out before the next data.
        let mut out = Vec::new();
        s.send(b"reply", &mut out).unwrap();
        assert_eq!(to_client(&mut s, &out, &mut c), b"reply");
    }

    #[test]
    fn alpn_without_http1_is_refused() {
        let pki = pki(false);
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        let cfg = client_config(&pki, &rustls::version::TLS13, &[b"h2"]);
        let mut c =
            rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
        let (_, r) = to_server(&mut c, &mut s, usize::MAX);
        assert!(r.is_err(), "{r:?}");
        assert!(s.has_outgoing(), "a no_application_protocol alert");
        // No ALPN at all is served.
        let mut s = TlsSession::new(pki.server.clone()).unwrap();
        let cfg = client_config(&pki, &rustls::version::TLS13, &[]);
        let mut c =
            rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
        handshake(&mut c, &mut s, usize::MAX);
    }
}

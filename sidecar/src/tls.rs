//! TLS to the registry (`https://` token URLs and `wss://` signaling URLs) and to a
//! TURN server (`turns:` URLs). A rustls client (aws-lc-rs, as the server and str0m),
//! sans-IO: the driver moves bytes between the socket and [`TlsClient`].
//!
//! Trusted roots ([`client_config`]): the system's store, plus `SSL_CERT_FILE` (a PEM
//! file, e.g. a private CA) and `SSL_CERT_DIR` when set, as OpenSSL, and so the Python
//! agent, read them: the variables add to the system's directory of roots.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;

/// Plaintext read out of the TLS client per call: the driver hands it on at once.
const PLAIN_READ_BYTES: usize = 16 * 1024;

/// The trust roots: see the module documentation. Reads files: call it once, before
/// the shard starts. Fails when no root at all could be loaded.
pub fn roots() -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut errors = Vec::new();
    let mut add = |r: rustls_native_certs::CertificateResult| {
        errors.extend(r.errors.into_iter().map(|e| e.to_string()));
        roots.add_parsable_certificates(r.certs)
    };
    // With SSL_CERT_FILE or SSL_CERT_DIR set, this reads only those.
    add(rustls_native_certs::load_native_certs());
    if openssl_probe::has_ssl_cert_env_vars() {
        // …and the system's directory of roots still counts, as for OpenSSL.
        for dir in openssl_probe::candidate_cert_dirs() {
            add(rustls_native_certs::load_certs_from_paths(None, Some(dir)));
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "TLS: no trusted root certificates found (system store, SSL_CERT_FILE, SSL_CERT_DIR): {}",
            errors.join("; ")
        ));
    }
    for e in errors {
        tracing::debug!(error = %e, "TLS: a root certificate could not be loaded");
    }
    Ok(roots)
}

/// The client configuration for `roots`: TLS 1.3 and 1.2 (rustls's defaults), ALPN
/// `http/1.1`.
pub fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    config_with_alpn(roots, b"http/1.1")
}

/// The client configuration for TURN over TLS: as [`client_config`], with ALPN
/// `stun.turn` (RFC 7443), which a server that also serves HTTPS on the port (as
/// chatixia-core's HTTPS listener does) uses to tell TURN from HTTP.
pub fn turn_client_config(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, String> {
    config_with_alpn(roots, b"stun.turn")
}

fn config_with_alpn(
    roots: rustls::RootCertStore,
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(c))
}

/// One TLS client connection, sans-IO.
pub struct TlsClient {
    conn: rustls::ClientConnection,
}

impl TlsClient {
    /// A connection to `host` (checked against the server's certificate; an IP address
    /// is checked against its IP names).
    pub fn new(config: &Arc<rustls::ClientConfig>, host: &str) -> Result<TlsClient, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("TLS: bad server name {host:?}: {e}"))?;
        let conn =
            rustls::ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS: {e}"))?;
        Ok(TlsClient { conn })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether TLS bytes wait to be sent ([`TlsClient::take_tls`]).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// TLS bytes to send now (the handshake, alerts, key updates, sealed data).
    pub fn take_tls(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        out
    }

    /// Encrypts `plain`; returns the TLS bytes to send (with anything else owed).
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, String> {
        self.conn
            .writer()
            .write_all(plain)
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(self.take_tls())
    }

    /// Takes TLS bytes received from the server; appends the plaintext they complete to
    /// `plain`. `Ok(true)`: the server sent `close_notify`. `Err`: a protocol error or
    /// an untrusted certificate (with rustls's reason).
    pub fn feed(&mut self, mut tls: &[u8], plain: &mut Vec<u8>) -> Result<bool, String> {
        let mut closed = false;
        while !tls.is_empty() {
            self.conn
                .read_tls(&mut tls)
                .map_err(|e| format!("TLS: {e}"))?;
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| format!("TLS: {e}"))?;
            closed |= state.peer_has_closed();
            // Drained after every record batch: rustls bounds what it holds unread.
            let mut chunk = [0u8; PLAIN_READ_BYTES];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&chunk[..n]),
                    // Nothing more decrypted yet.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("TLS: {e}")),
                }
            }
        }
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_a_handshake_and_fails_cleanly_on_an_alert() {
        let cfg = client_config(rustls::RootCertStore::empty()).unwrap();
        let mut c = TlsClient::new(&cfg, "localhost").unwrap();
        assert!(c.is_handshaking());
        let hello = c.take_tls();
        assert_eq!(hello.first(), Some(&0x16), "a ClientHello record");
        // A fatal handshake_failure alert from the "server": an error, not a panic.
        let mut plain = Vec::new();
        let e = c
            .feed(b"\x15\x03\x03\x00\x02\x02\x28", &mut plain)
            .unwrap_err();
        assert!(e.contains("HandshakeFailure"), "{e}");
        assert!(TlsClient::new(&cfg, "not a name").is_err());
        assert!(TlsClient::new(&cfg, "127.0.0.1").is_ok());
    }
}

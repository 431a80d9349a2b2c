//! The TLS settings: certificate chain and key from PEM files (read on the control
//! thread, at start and on reload), and the rustls configuration every TLS connection
//! of every shard shares (an `Arc`, read-only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The ALPN protocol we speak (HTTP/1.1 only; the WebSocket upgrade rides on it). A
/// client that offers ALPN without it is refused with `no_application_protocol`
/// (RFC 7301 §3.2); one that offers no ALPN is served.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The ALPN protocol of TURN over TLS (RFC 7443). The `--turn-tls-listen` listeners
/// select it (a client that offers ALPN without it is refused; one that offers none is
/// served); the HTTPS listener selects it too when the embedded TURN server runs, and
/// hands such a connection to TURN ([`Configs::http`]).
pub const ALPN_TURN: &[u8] = b"stun.turn";

/// The certificate and key files (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate first, then its intermediates (the full chain).
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC), RSA or ECDSA (or Ed25519).
    pub key: PathBuf,
}

/// The protocol versions offered: TLS 1.3 and 1.2 (nothing older exists in rustls).
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The cipher suites offered, in the server's order of preference: AEADs only, and in
/// TLS 1.2 only with ECDHE (forward secrecy): no CBC, no RSA key exchange, no SHA-1 MAC.
fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::aws_lc_rs::cipher_suite as s;
    vec![
        s::TLS13_AES_128_GCM_SHA256,
        s::TLS13_AES_256_GCM_SHA384,
        s::TLS13_CHACHA20_POLY1305_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        s::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        s::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// The crypto provider: aws-lc-rs (already built for the sidecar's WebRTC stack), with
/// the suites above and its default key exchange groups (X25519MLKEM768, X25519,
/// P-256, P-384).
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: cipher_suites(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// Largest certificate-chain or key file read. A PEM chain of a few certificates is a
/// few KiB (a long chain with RSA-4096 keys stays under 32 KiB); past this the file is
/// refused with its name, instead of a wrong path (`/dev/zero`, a log) being read whole
/// at start or on every reload.
pub const TLS_FILE_BYTES_MAX: u64 = 1024 * 1024;

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let fail = |e: std::io::Error| format!("cannot read {flag} {}: {e}", path.display());
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(fail)?
        .take(TLS_FILE_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(fail)?;
    if buf.len() as u64 > TLS_FILE_BYTES_MAX {
        return Err(format!(
            "{flag} {}: larger than {TLS_FILE_BYTES_MAX} bytes; not a PEM file of a certificate chain or key",
            path.display()
        ));
    }
    Ok(buf)
}

/// Reads and checks the certificate chain and key: both parse, the key is one we can
/// sign with, and it belongs to the (first) certificate. Errors name the file.
pub fn load_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, String> {
    let cert_pem = read("--tls-cert", &files.cert)?;
    let key_pem = read("--tls-key", &files.key)?;
    let cert = files.cert.display();
    let key = files.key.display();
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {cert}: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {cert}: no certificate in the file (expected PEM \"BEGIN CERTIFICATE\" blocks, the server's first)"
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!("--tls-key {key}: no private key in the file (expected PEM PKCS#8, RSA or EC): {e}")
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("--tls-key {key}: unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "--tls-key {key} does not match the certificate in --tls-cert {cert} \
                 (the first certificate of the chain must be the key's)"
            ))
        }
        // The key cannot tell its public half: nothing to compare (not the case for
        // RSA, ECDSA or Ed25519 keys with aws-lc-rs).
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(format!("--tls-cert {cert}: invalid certificate: {e}")),
    }
    Ok(Arc::new(certified))
}

/// The rustls configuration for `key`: TLS 1.3 and 1.2, [`cipher_suites`], ALPN
/// `http/1.1`, any SNI (one certificate), no client certificates. No session
/// resumption: a ticket key or session cache would be state shared between shards
/// (rustls keeps its cache behind a lock); every connection does a full handshake.
pub fn server_config(key: Arc<CertifiedKey>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    cfg.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.max_early_data_size = 0;
    // `ignore_client_order` stays false: a client without AES hardware lists ChaCha20
    // first and gets it.
    Ok(Arc::new(cfg))
}

/// [`load_key`] then [`server_config`].
pub fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config(load_key(files)?)
}

/// The configurations one certificate serves: the HTTPS/WSS listener's, and TURN over
/// TLS's (`--turn-tls-listen`). Built together, from one key, at start and on each
/// reload, so both listeners always present the same certificate.
#[derive(Clone)]
pub struct Configs {
    /// ALPN `http/1.1`, and `stun.turn` after it when `turn` was asked for (a client
    /// offering both gets HTTP: the server's order decides).
    pub http: Arc<rustls::ServerConfig>,
    /// ALPN `stun.turn` only.
    pub turn: Arc<rustls::ServerConfig>,
}

/// [`Configs`] for `key`; `turn`: whether the HTTPS listener also takes ALPN
/// `stun.turn` (the embedded TURN server runs).
pub fn configs(key: Arc<CertifiedKey>, turn: bool) -> Result<Configs, String> {
    let base = server_config(key)?;
    let with_alpn = |alpn: Vec<Vec<u8>>| {
        let mut c = (*base).clone();
        c.alpn_protocols = alpn;
        Arc::new(c)
    };
    let http = if turn {
        with_alpn(vec![ALPN_HTTP1.to_vec(), ALPN_TURN.to_vec()])
    } else {
        base.clone()
    };
    Ok(Configs {
        turn: with_alpn(vec![ALPN_TURN.to_vec()]),
        http,
    })
}

/// [`load_key`] then [`configs`].
pub fn load_configs(files: &TlsFiles, turn: bool) -> Result<Configs, String> {
    configs(load_key(files)?, turn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_with_its_name() {
        let files = TlsFiles {
            cert: "/dev/zero".into(),
            key: "/dev/zero".into(),
        };
        let Err(e) = load_key(&files) else {
            panic!("an endless file was accepted")
        };
        assert!(e.contains("--tls-cert /dev/zero: larger than"), "{e}");
    }
}

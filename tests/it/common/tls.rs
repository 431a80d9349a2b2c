//! TLS for the black-box tests: a throwaway PKI made by the test (a root CA, an
//! intermediate, server certificates for `localhost` and 127.0.0.1 with ECDSA P-256 or
//! RSA 2048 keys) written as PEM files, servers started with them, and a blocking rustls
//! client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use rustls::pki_types::{CertificateDer, ServerName};
use wire::http::client::ResponseParser;

use super::{read_with, Opts, Resp, Server, TempDir};

/// The key of a server certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Ecdsa,
    Rsa,
}

/// PEM text of one DER object.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A certificate chain and key on disk.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM: the server certificate, then the intermediate.
    pub cert: PathBuf,
    /// PEM PKCS#8 key.
    pub key: PathBuf,
    /// The server certificate (DER), to tell which one a server presents.
    pub leaf: Vec<u8>,
    /// Base64 of the SHA-256 of the key's SubjectPublicKeyInfo (what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes).
    pub spki_sha256: String,
}

/// A root CA and an intermediate it signed; server certificates come from the
/// intermediate, so a server must send the full chain to be trusted.
pub struct Pki {
    pub dir: TempDir,
    root: CertifiedIssuer<'static, KeyPair>,
    inter: CertifiedIssuer<'static, KeyPair>,
    /// PEM of the root CA (what a client trusts: `curl --cacert`, `SSL_CERT_FILE`).
    pub ca_pem: PathBuf,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new();
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root =
            CertifiedIssuer::self_signed(ca_params("chatixia test root CA"), root_key).unwrap();
        let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut inter_params = ca_params("chatixia test intermediate CA");
        // Strict verifiers (Python 3.13's default) want it on every certificate below
        // the root.
        inter_params.use_authority_key_identifier_extension = true;
        let inter = CertifiedIssuer::signed_by(inter_params, inter_key, &root).unwrap();
        let ca_pem = dir.0.join("ca.pem");
        std::fs::write(&ca_pem, pem("CERTIFICATE", root.der())).unwrap();
        Pki {
            dir,
            root,
            inter,
            ca_pem,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1, written as `{name}.crt` (full
    /// chain) and `{name}.key`.
    pub fn issue(&self, name: &str, kind: KeyKind) -> CertFiles {
        let alg = match kind {
            KeyKind::Ecdsa => &PKCS_ECDSA_P256_SHA256,
            KeyKind::Rsa => &PKCS_RSA_SHA256,
        };
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.inter).unwrap();
        let files = CertFiles {
            cert: self.dir.0.join(format!("{name}.crt")),
            key: self.dir.0.join(format!("{name}.key")),
            leaf: cert.der().to_vec(),
            spki_sha256: {
                use rcgen::PublicKeyData;
                use sha2::Digest;
                let spki = key.subject_public_key_info();
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&spki))
            },
        };
        let chain = pem("CERTIFICATE", cert.der()) + &pem("CERTIFICATE", self.inter.der());
        std::fs::write(&files.cert, chain).unwrap();
        std::fs::write(&files.key, pem("PRIVATE KEY", &key.serialize_der())).unwrap();
        files
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.der().clone()).unwrap();
        roots
    }

    /// A client trusting the root CA, offering ALPN `http/1.1`.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        client_config(
            self.roots(),
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }
}

/// A client configuration (aws-lc-rs, as the server).
pub fn client_config(
    roots: rustls::RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A server with TLS: `files` on a TLS listener beside the plain one (`beside_plain`), or
/// on the `--listen` one alone.
pub struct TlsServer {
    pub server: Server,
    /// Where TLS is served (from `--tls-port-file`).
    pub tls_addr: SocketAddr,
    pub port_file: PathBuf,
    _dir: TempDir,
}

/// The TLS flags for `files`.
pub fn tls_args(files: &CertFiles) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        files.cert.display().to_string(),
        "--tls-key".into(),
        files.key.display().to_string(),
    ]
}

pub fn start(mut opts: Opts, files: &CertFiles, beside_plain: bool) -> TlsServer {
    let dir = TempDir::new();
    let port_file = dir.0.join("tls-addr");
    opts.args.extend(tls_args(files));
    opts.args.extend([
        "--tls-port-file".to_string(),
        port_file.display().to_string(),
    ]);
    if beside_plain {
        opts.args
            .extend(["--tls-listen".to_string(), "127.0.0.1:0".to_string()]);
    }
    let server = Server::with(opts);
    let tls_addr = read_port_file(&port_file);
    if !beside_plain {
        assert_eq!(
            tls_addr, server.addr,
            "TLS-only: --listen is the TLS listener"
        );
    }
    TlsServer {
        server,
        tls_addr,
        port_file,
        _dir: dir,
    }
}

pub fn read_port_file(path: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(a) = s.trim().parse() {
                return a;
            }
        }
        assert!(Instant::now() < deadline, "no {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One TLS connection (blocking rustls over a std socket).
pub struct TlsConn {
    pub tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    parser: ResponseParser,
}

impl TlsConn {
    /// Connects and completes the handshake (SNI `localhost`).
    pub fn connect(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> std::io::Result<TlsConn> {
        Self::connect_sni(addr, cfg, "localhost")
    }

    pub fn connect_sni(
        addr: SocketAddr,
        cfg: &Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> std::io::Result<TlsConn> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let conn =
            rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(TlsConn {
            tls,
            parser: ResponseParser::new(),
        })
    }

    /// The server certificate the server presented (DER).
    pub fn leaf(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// How many certificates the server sent (the full chain: 2).
    pub fn chain_len(&self) -> usize {
        self.tls.conn.peer_certificates().unwrap().len()
    }

    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Resp> {
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            out.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        self.tls.write_all(&bytes)?;
        self.tls.flush()?;
        read_with(&mut self.tls, &mut self.parser, method == "HEAD")
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.try_request("GET", path, &[], None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Reads until the server ends the connection; the bytes and how it ended.
    pub fn read_to_end(&mut self) -> (Vec<u8>, std::io::Result<()>) {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.tls.read(&mut buf) {
                Ok(0) => return (out, Ok(())),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Err(e)),
            }
        }
    }
}

/// `GET path` over a fresh TLS connection.
pub fn get(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, path: &str) -> Resp {
    TlsConn::connect(addr, cfg)
        .unwrap_or_else(|e| panic!("TLS connect to {addr}: {e}"))
        .get(path)
}

/// The first certificate of a PEM file (DER).
pub fn first_cert(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A raw read of whatever the server sends until it closes (or 10 s pass).
pub fn read_raw_until_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

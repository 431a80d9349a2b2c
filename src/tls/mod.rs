//! TLS on the listeners (issue 23): HTTPS and WSS served by the shards themselves.
//!
//! * [`config`]: the certificate chain and key (PEM), checked, and the rustls
//!   configuration (TLS 1.3 and 1.2, ECDHE with AEAD suites only, ALPN `http/1.1`);
//! * [`session`]: one connection's TLS state, sans-IO, on rustls's unbuffered API;
//! * [`transport`]: the byte stream the HTTP and WebSocket code reads and writes, plain
//!   or TLS;
//! * [`reload`]: certificates reloaded on SIGHUP and when the files change;
//! * [`metrics`]: handshakes, their failures, the certificate generation.
//!
//! docs/ARCHITECTURE.md ("TLS") says where this sits in the connection loop.

pub mod config;
pub mod metrics;
pub mod reload;
pub mod session;
pub mod transport;

pub use config::TlsFiles;
pub use reload::{Reloader, ShardTls};
pub use transport::{Detached, Transport};

use std::net::SocketAddr;
use std::time::Duration;

/// The TLS settings of a server (`--tls-cert`, `--tls-key`, `--tls-listen`,
/// `--tls-reload-interval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub files: TlsFiles,
    /// A TLS listener beside the plain one; `None`: the `--listen` listener is TLS.
    pub listen: Option<SocketAddr>,
    /// How often the files are checked for a change (zero: only on SIGHUP).
    pub reload_interval: Duration,
}

//! The TLS handshake of an accepted connection, on the shard that accepted it: the
//! connection's task reads and writes the socket and [`TlsSession`] does the rest. The
//! handshake must finish within `--http-header-timeout` of the accept (then the
//! connection is closed, as nginx's `ssl_handshake_timeout`; the first request's own
//! header deadline starts once it is done). Plain HTTP on the TLS port gets a readable
//! 400 (as nginx's 497), a protocol error an alert.

use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use reactor::timer::{select2, Either};

use super::linger::linger_close;
use super::metrics::ShardCounters;
use super::ShardCtx;
use crate::http::Response;
use crate::tls::metrics::Refusal;
use crate::tls::session::{Progress, TlsSession};
use crate::tls::Transport;

/// Bytes asked for per read during the handshake. A ClientHello (about 1.8 KiB with a
/// post-quantum key share, under 600 bytes without) and a client's second flight fit in
/// one read; a larger message takes several (the session keeps the part it has, up to
/// its `INCOMING_BYTES_MAX`).
const HANDSHAKE_READ_SIZE: usize = 4096;

/// How long writing the 400 to a plain HTTP client may take.
const REFUSE_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the 400 on the TLS port says.
pub const PLAINTEXT_REFUSAL: &str =
    "this port speaks TLS and a plain HTTP request was sent: use https:// (wss:// for WebSockets)";

/// Whether the first bytes of a connection are a plain HTTP request rather than TLS: a
/// TLS record starts with its content type (20–24; a handshake is 22), an SSLv2 hello
/// with a byte ≥ 0x80; an HTTP request with its method, an upper-case token.
pub fn looks_like_http(first: &[u8]) -> bool {
    first.first().is_some_and(|b| b.is_ascii_uppercase())
}

/// What a connection whose first bytes look like plain HTTP gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainHttp {
    /// The readable 400 (the HTTPS listeners).
    Answer400,
    /// Nothing special: the bytes go to TLS, which refuses them with an alert (the TURN
    /// listeners, where a ChannelData frame may start with an upper-case letter).
    Refuse,
}

/// Runs the handshake of `tcp` (accepted by this shard); `None` when the connection
/// ended (counted by reason in `ctx.tls`).
pub async fn handshake(
    ctx: &ShardCtx,
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Option<Transport> {
    handshake_with(ctx, tcp, config, PlainHttp::Answer400).await
}

/// [`handshake`], with `plain` saying what plain HTTP gets.
pub async fn handshake_with(
    ctx: &ShardCtx,
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    plain: PlainHttp,
) -> Option<Transport> {
    let deadline = ctx.config.http_client_limits.header_timeout;
    let shutdown = ctx.shard.shutdown_event().clone();
    let run = std::pin::pin!(monoio::time::timeout(deadline, run(tcp, config, plain)));
    let outcome = match select2(run, shutdown.wait()).await {
        Either::Left(Ok(r)) => r,
        Either::Left(Err(_elapsed)) => Err((Refusal::Timeout, None)),
        Either::Right(()) => Err((Refusal::Closed, None)),
    };
    match outcome {
        Ok(t) => {
            ShardCounters::inc(&ctx.tls.handshakes);
            Some(t)
        }
        Err((why, tcp)) => {
            ctx.tls.refuse(why);
            if let (Refusal::PlaintextHttp, Some(tcp)) = (why, tcp) {
                refuse_plaintext(tcp).await;
            }
            None
        }
    }
}

/// The handshake's I/O loop. On plain HTTP, hands the socket back for the 400.
async fn run(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    plain: PlainHttp,
) -> Result<Transport, (Refusal, Option<TcpStream>)> {
    let mut session = TlsSession::new(config).map_err(|_| (Refusal::Protocol, None))?;
    let mut early = Vec::new();
    let mut buf = Vec::with_capacity(HANDSHAKE_READ_SIZE);
    let mut first = true;
    loop {
        let (r, b) = tcp.read(buf).await;
        buf = b;
        let n = match r {
            Ok(0) | Err(_) => return Err((Refusal::Closed, None)),
            Ok(n) => n,
        };
        if first {
            first = false;
            if plain == PlainHttp::Answer400 && looks_like_http(&buf[..n]) {
                return Err((Refusal::PlaintextHttp, Some(tcp)));
            }
        }
        let progress = session.receive(&mut buf[..n], &mut |p| early.extend_from_slice(p));
        // The server's flight, or the alert that ends a failed handshake.
        if session.has_outgoing() {
            let (w, _) = tcp.write_all(session.take_outgoing()).await;
            if w.is_err() {
                return Err((Refusal::Closed, None));
            }
        }
        match progress {
            Err(_) => return Err((Refusal::Protocol, None)),
            Ok(Progress::Handshaking) => {}
            Ok(Progress::Open) => return Ok(Transport::tls(tcp, session, early)),
            Ok(Progress::PeerClosed) => return Err((Refusal::Closed, None)),
        }
    }
}

/// Answers plain HTTP on the TLS port: 400 with a JSON reason, then a lingering close
/// (the client may still be sending its request).
async fn refuse_plaintext(mut tcp: TcpStream) {
    let mut out = Vec::new();
    Response::error(400, PLAINTEXT_REFUSAL).encode(false, false, &mut out);
    if let Ok((Ok(_), _)) = monoio::time::timeout(REFUSE_WRITE_TIMEOUT, tcp.write_all(out)).await {
        linger_close(Transport::plain(tcp)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_http_from_tls() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"POST"));
        assert!(looks_like_http(b"PRI * HTTP/2.0"));
        assert!(!looks_like_http(&[0x16, 3, 1, 0, 200]));
        assert!(!looks_like_http(&[0x80, 0x2e, 1]));
        assert!(!looks_like_http(b""));
        assert!(!looks_like_http(b"\r\nGET"));
    }
}

//! Name resolution off the shard: `getaddrinfo` blocks, so it runs on a short-lived
//! helper thread and the shard polls for the answer on a timer.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long we wait for a name to resolve before giving up on this attempt.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the shard checks for the helper thread's answer.
const RESOLVE_POLL: Duration = Duration::from_millis(10);

/// Resolves `host:port`. IP literals and `localhost` are answered at once.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let name = format!("{host}:{port}");
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let r = name
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>())
                .map_err(|e| format!("{name}: {e}"));
            let _ = tx.send(r);
        })
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    loop {
        match rx.try_recv() {
            Ok(r) => return r,
            Err(mpsc::TryRecvError::Disconnected) => return Err("resolver thread died".into()),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if Instant::now() >= deadline {
            return Err(format!("{host}: resolution timed out"));
        }
        monoio::time::sleep(RESOLVE_POLL).await;
    }
}

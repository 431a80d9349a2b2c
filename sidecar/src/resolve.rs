//! Name resolution off the shard, sans-IO on the shard's side: `getaddrinfo` blocks, so
//! [`Lookup::start`] hands it to a short-lived helper thread and the driver asks
//! [`Lookup::poll`] on its own timer until the answer is in or the deadline passes.
//! Nothing here sleeps or reads the clock.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long we wait for a name to resolve before giving up on this attempt.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// `getaddrinfo` failed.
    Lookup(String),
    TimedOut(String),
    /// The helper thread could not start or died.
    Thread(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Lookup(e) => f.write_str(e),
            ResolveError::TimedOut(h) => write!(f, "{h}: resolution timed out"),
            ResolveError::Thread(e) => write!(f, "resolver thread: {e}"),
        }
    }
}

impl std::error::Error for ResolveError {}

type Answer = Result<Vec<SocketAddr>, ResolveError>;

/// One resolution in progress (or answered at once).
pub struct Lookup {
    host: String,
    ready: Option<Answer>,
    rx: Option<mpsc::Receiver<Answer>>,
    deadline: Instant,
}

impl Lookup {
    /// Starts resolving `host:port` at `now`. IP literals and `localhost` are answered
    /// at once, without a thread.
    pub fn start(host: &str, port: u16, now: Instant) -> Lookup {
        let mut l = Lookup {
            host: host.to_string(),
            ready: None,
            rx: None,
            deadline: now + RESOLVE_TIMEOUT,
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            l.ready = Some(Ok(vec![SocketAddr::new(ip, port)]));
            return l;
        }
        if host.eq_ignore_ascii_case("localhost") {
            l.ready = Some(Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]));
            return l;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let name = format!("{host}:{port}");
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let r = name
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<_>>())
                    .map_err(|e| ResolveError::Lookup(format!("{name}: {e}")));
                let _ = tx.send(r);
            });
        match spawned {
            Ok(_) => l.rx = Some(rx),
            Err(e) => l.ready = Some(Err(ResolveError::Thread(e.to_string()))),
        }
        l
    }

    /// The answer, once there is one (`None`: ask again later).
    pub fn poll(&mut self, now: Instant) -> Option<Answer> {
        if let Some(r) = self.ready.take() {
            return Some(r);
        }
        let rx = self.rx.as_ref()?;
        match rx.try_recv() {
            Ok(r) => Some(r),
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(ResolveError::Thread("died".into()))),
            Err(mpsc::TryRecvError::Empty) if now >= self.deadline => {
                Some(Err(ResolveError::TimedOut(self.host.clone())))
            }
            Err(mpsc::TryRecvError::Empty) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_answer_at_once_and_names_time_out() {
        let now = Instant::now();
        let mut l = Lookup::start("127.0.0.1", 9, now);
        assert_eq!(l.poll(now), Some(Ok(vec!["127.0.0.1:9".parse().unwrap()])));
        let mut l = Lookup::start("::1", 9, now);
        assert_eq!(l.poll(now), Some(Ok(vec!["[::1]:9".parse().unwrap()])));
        let mut l = Lookup::start("LOCALHOST", 9, now);
        assert!(matches!(l.poll(now), Some(Ok(_))));
    }
}

//! Command-line configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use reactor::driver::DriverChoice;

/// chatixia-core: the chatixia mesh server on a thread-per-core io_uring reactor.
#[derive(Parser, Debug, Clone)]
#[command(name = "chatixia-core", version, about)]
pub struct Cli {
    /// No subcommand: serve (the flags below). `bench`: the load generator.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Number of shards, one pinned per core (default: every core this process may use).
    #[arg(long)]
    pub cores: Option<usize>,

    /// Address to listen on. Default 0.0.0.0:8080, or 0.0.0.0:$PORT when PORT is set
    /// (as the reference registry does).
    #[arg(long)]
    pub listen: Option<SocketAddr>,

    /// Event-loop driver: auto (io_uring, else epoll), uring, or epoll.
    #[arg(long, default_value = "auto", value_parser = parse_driver)]
    pub io_driver: DriverChoice,

    /// Seconds a graceful shutdown (SIGTERM/SIGINT) may take before the rest is dropped.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_timeout: f64,

    /// Seconds an idle keep-alive HTTP connection is kept open.
    #[arg(long, default_value_t = 75.0)]
    pub http_idle_timeout: f64,

    /// Seconds a request's line and headers may take to arrive, in full (a trickle of
    /// bytes does not extend it); later: 408 and close. Also a body's grace period.
    #[arg(long, default_value_t = 10.0)]
    pub http_header_timeout: f64,

    /// Slowest average rate a request body may arrive at, in bytes per second, after
    /// the header timeout as grace; slower: 408 and close. 0: no minimum.
    #[arg(long, default_value_t = 1024)]
    pub http_body_rate_min: u64,

    /// Plain HTTP connections one client IP may hold on one shard (more: 503).
    #[arg(long, default_value_t = 1024)]
    pub max_http_connections_per_ip: usize,

    /// Seconds a finished (completed/failed) task stays readable before it is removed.
    #[arg(long, default_value_t = 3600.0)]
    pub task_retention: f64,

    /// STUN server URL for `GET /api/config` (repeatable). Default: the reference's
    /// `stun:stun.l.google.com:19302`; `--stun-url none` configures no STUN server.
    #[arg(long = "stun-url")]
    pub stun_urls: Vec<String>,

    /// Write the bound listen address (`ip:port`) to this file once listening.
    #[arg(long)]
    pub port_file: Option<std::path::PathBuf>,

    /// Testing only: enables `POST /debug/clock` to move the server's clock forward.
    #[arg(long, hide = true)]
    pub test_clock: bool,

    /// Largest signaling WebSocket message in bytes (larger: close 1009).
    #[arg(long, default_value_t = 64 * 1024)]
    pub ws_message_max: usize,

    /// Bytes queued for one signaling connection before it is closed with 1008 as a
    /// peer that does not read.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub ws_outbound_bytes_max: usize,

    /// Frames queued for one signaling connection (same rule as the bytes).
    #[arg(long, default_value_t = 1024)]
    pub ws_outbound_frames_max: usize,

    /// Seconds a silent signaling connection is kept; it is pinged at half of it.
    #[arg(long, default_value_t = 60.0)]
    pub ws_idle_timeout: f64,

    /// Signaling connections one shard runs (more: 503).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_connections_per_shard: usize,

    /// Signaling connections from one client IP (more: 503).
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_connections_per_ip: usize,

    /// Testing only: serve `GET /ws-echo`, a WebSocket that echoes every message, on the
    /// same connection path, codec and limits as `/ws`, for conformance suites
    /// (Autobahn). It needs no token: never enable it on an exposed listener.
    #[arg(long)]
    pub ws_echo: bool,

    /// Seconds between `malloc_trim(0)` calls on the control thread, which hand freed
    /// heap pages back to the kernel after load (glibc malloc only). 0: never.
    #[arg(long, default_value_t = 10.0)]
    pub malloc_trim_interval: f64,
}

/// Subcommands besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Load generator: measure a chatixia server (this one or another build) by URL.
    Bench(loadgen::BenchArgs),
}

fn parse_driver(s: &str) -> Result<DriverChoice, String> {
    s.parse()
}

impl Cli {
    /// The listen address after applying the `PORT` fallback.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        if let Some(a) = self.listen {
            return Ok(a);
        }
        match std::env::var("PORT") {
            Ok(p) => {
                let port: u16 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("PORT={p:?} is not a port number"))?;
                Ok(SocketAddr::from(([0, 0, 0, 0], port)))
            }
            Err(_) => Ok(SocketAddr::from(([0, 0, 0, 0], 8080))),
        }
    }

    pub fn shutdown_timeout(&self) -> Result<Duration, String> {
        secs("--shutdown-timeout", self.shutdown_timeout)
    }

    pub fn http_idle_timeout(&self) -> Result<Duration, String> {
        secs("--http-idle-timeout", self.http_idle_timeout)
    }

    /// The HTTP client deadlines and per-IP cap.
    pub fn http_client_limits(&self) -> Result<crate::server::conn::ClientLimits, String> {
        let header_timeout = secs("--http-header-timeout", self.http_header_timeout)?;
        if header_timeout.is_zero() {
            return Err("--http-header-timeout must be positive".into());
        }
        if self.max_http_connections_per_ip == 0 {
            return Err("--max-http-connections-per-ip must be at least 1".into());
        }
        Ok(crate::server::conn::ClientLimits {
            header_timeout,
            body_rate_min: self.http_body_rate_min,
            connections_per_ip_max: self.max_http_connections_per_ip,
        })
    }

    /// The signaling limits.
    pub fn ws_limits(&self) -> Result<crate::signaling::WsLimits, String> {
        let idle = secs("--ws-idle-timeout", self.ws_idle_timeout)?;
        if idle < Duration::from_secs(1) {
            return Err("--ws-idle-timeout must be at least 1 second".into());
        }
        Ok(crate::signaling::WsLimits {
            message_size_max: self.ws_message_max,
            outbound_bytes_max: self.ws_outbound_bytes_max,
            outbound_frames_max: self.ws_outbound_frames_max,
            idle_timeout: idle,
            connections_per_shard_max: self.max_connections_per_shard,
            connections_per_ip_max: self.max_connections_per_ip,
        })
    }

    pub fn malloc_trim_interval(&self) -> Result<Duration, String> {
        secs("--malloc-trim-interval", self.malloc_trim_interval)
    }

    pub fn task_retention(&self) -> Result<Duration, String> {
        secs("--task-retention", self.task_retention)
    }

    /// The STUN URLs after applying the default and `none`.
    pub fn stun_urls(&self) -> Vec<String> {
        if self.stun_urls.is_empty() {
            return crate::ice::default_stun_urls();
        }
        self.stun_urls
            .iter()
            .filter(|u| !u.eq_ignore_ascii_case("none") && !u.is_empty())
            .cloned()
            .collect()
    }
}

fn secs(flag: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && (0.0..1e9).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{flag} must be a non-negative number of seconds"))
    }
}

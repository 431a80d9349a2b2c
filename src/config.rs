//! Command-line configuration, and the `--config` file (`file`): every flag below is also
//! a key of the file; precedence command line > environment > file > default.

pub mod cluster;
pub mod file;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use reactor::driver::DriverChoice;

use crate::server::turn::settings::TurnSettings;
use ::turn::policy::Cidr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// chatixia-core: the chatixia mesh server on a thread-per-core io_uring reactor.
#[derive(Parser, Debug, Clone)]
#[command(name = "chatixia-core", version, about)]
pub struct Cli {
    /// No subcommand: serve (the flags below). `bench`: the load generator. `store`:
    /// check, back up, restore or export the durable state.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Read settings from this TOML file: each key is a flag below without its dashes
    /// (`cores = 4`). A flag on the command line wins over the file, and so does a
    /// flag's environment variable. `chatixia-core config example` prints every key.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where each setting came from (filled by [`file::load`], not a flag).
    #[arg(skip)]
    pub sources: file::Sources,

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

    /// Seconds a rejected or revoked pairing entry is kept (listed, and in the data
    /// directory) after its last change; then it is removed from both. Default 30 days.
    #[arg(long, default_value_t = 30.0 * 24.0 * 3600.0)]
    pub pairing_retention: f64,

    /// Seconds between tries to recover the state store after the disk refused a write
    /// (full, read-only, failing): each try reopens the database and writes the kept
    /// revocations (or a probe); the store takes writes again once one succeeds.
    #[arg(long, default_value_t = 2.0)]
    pub store_retry_interval: f64,

    /// Revocations kept in memory while the state store is unavailable, to be written once
    /// it recovers (each ≈ 1 KiB); past it a revocation still takes effect in memory but is
    /// answered 503 (not saved: repeat it after the store recovers).
    #[arg(long, default_value_t = 65_536)]
    pub store_retained_writes_max: usize,

    /// STUN server URL for `GET /api/config` (repeatable). Default: the reference's
    /// `stun:stun.l.google.com:19302`; `--stun-url none` configures no STUN server.
    #[arg(long = "stun-url")]
    pub stun_urls: Vec<String>,

    /// Write the bound listen address (`ip:port`) to this file once listening.
    #[arg(long)]
    pub port_file: Option<std::path::PathBuf>,

    /// TLS: PEM file of the certificate chain (the server's certificate first, then its
    /// intermediates). With --tls-key, the --listen listener serves HTTPS and WSS only,
    /// unless --tls-listen adds a TLS listener beside it.
    // The TLS flags need each other (`tls_settings` says which is missing), not by clap's
    // `requires`: that does not count a key of the config file as given.
    #[arg(long)]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS: PEM file of the certificate's private key (RSA or ECDSA; PKCS#8, PKCS#1 or
    /// SEC1). A key that does not match the certificate stops the start.
    #[arg(long)]
    pub tls_key: Option<std::path::PathBuf>,

    /// TLS: address of a TLS listener beside the plain --listen one (e.g. plain on
    /// 127.0.0.1:8080 for health checks, TLS on 0.0.0.0:443).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,

    /// TLS: write the bound TLS listen address (`ip:port`) to this file once listening
    /// (the --tls-listen one, or the --listen one when it is TLS).
    #[arg(long)]
    pub tls_port_file: Option<std::path::PathBuf>,

    /// TLS: seconds between checks of --tls-cert and --tls-key for a change; changed
    /// files are loaded for new connections (as on SIGHUP). 0: only on SIGHUP.
    #[arg(long, default_value_t = 1.0)]
    pub tls_reload_interval: f64,

    /// Testing only: enables `POST /debug/clock` to move the server's clock forward.
    /// Exists only in a build with the `test-switches` feature.
    #[cfg(feature = "test-switches")]
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
    /// (Autobahn). It needs no token: never enable it on an exposed listener. Exists only
    /// in a build with the `test-switches` feature.
    #[cfg(feature = "test-switches")]
    #[arg(long)]
    pub ws_echo: bool,

    /// Seconds between `malloc_trim(0)` calls on the control thread, which hand freed
    /// heap pages back to the kernel after load (glibc malloc only). 0: never.
    #[arg(long, default_value_t = 10.0)]
    pub malloc_trim_interval: f64,

    #[command(flatten)]
    pub store: StoreFlags,

    #[command(flatten)]
    pub auth: AuthFlags,

    #[command(flatten)]
    pub turn: TurnFlags,

    #[command(flatten)]
    pub cluster: cluster::ClusterFlags,

    /// Strict mode: agent routes (register, heartbeat, task create/update, route) need
    /// the agent's bearer JWT from /api/token, and an agent may only act as itself (else
    /// 403). Off by default: the PyPI chatixia agent (0.4.3) sends its X-API-Key but no
    /// bearer token; without the flag an agent is bound to the key or address that
    /// registered it.
    #[arg(long)]
    pub require_agent_auth: bool,

    /// INSECURE: serve the operator routes (pairing lists, approve/reject/revoke, agent
    /// delete) without an admin token, as the reference does (for its dashboard), and
    /// withhold nothing from task reads.
    #[arg(long)]
    pub insecure_open_admin: bool,

    /// Directory of the durable state (pairings, device-token hashes, revocations, invite
    /// codes, pending tasks); created if missing, locked while the server runs.
    #[arg(long, env = "CHATIXIA_DATA_DIR", default_value = crate::server::boot::DEFAULT_DATA_DIR)]
    pub data_dir: std::path::PathBuf,

    /// Bytes of records (keys and values) the durable store may hold. A change that
    /// would grow them past it is refused with 503 (nothing of it saved); changes that
    /// free space, and task claims, still pass. Clients without credentials stop at
    /// --anonymous-share-percent of it. A data directory already over it still loads.
    /// The file on disk is larger by the engine's page layout (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = chatixia_store::thread::DATA_BYTES_MAX_DEFAULT)]
    pub data_bytes_max: u64,

    /// Bytes of the durable store's page cache (its engine's default, 1 GiB, would hold
    /// every page written or loaded in memory).
    #[arg(long, default_value_t = chatixia_store::CACHE_BYTES_DEFAULT)]
    pub data_cache_bytes_max: usize,

    /// The API keys file (JSON, `{"keys": {"<key>": {"peer_id": …, "role": …}}}`), read
    /// once at start. Missing or malformed: a warning and the development key ak_dev_001,
    /// as the reference does, unless the path came from the command line or the config
    /// file (then the start fails). It holds secrets: keep it unreadable to other users.
    #[arg(
        long,
        env = "API_KEYS_FILE",
        default_value = "api_keys.json",
        value_name = "FILE"
    )]
    pub api_keys_file: PathBuf,

    /// File holding the server secret (the HS256 key of every JWT, and the key of the
    /// data directory's sealed tokens), in place of SIGNALING_SECRET; one trailing newline
    /// is ignored. SIGNALING_SECRET wins over this key in the config file, not over the
    /// flag on the command line. Neither: the public development secret, with a warning.
    #[arg(long, env = "SIGNALING_SECRET_FILE", value_name = "FILE")]
    pub signaling_secret_file: Option<PathBuf>,

    /// TURN server for `GET /api/config` (`turn:host:port?transport=udp`), with
    /// time-limited credentials from the TURN secret (TURN_SECRET or --turn-secret-file).
    #[arg(long, env = "TURN_URL", value_name = "URL")]
    pub turn_url: Option<String>,

    /// File holding the TURN shared secret (coturn's `use-auth-secret`), in place of
    /// TURN_SECRET (which wins over this key in the config file, as for the server secret).
    #[arg(long, env = "TURN_SECRET_FILE", value_name = "FILE")]
    pub turn_secret_file: Option<PathBuf>,
}

/// Limits on stored fields, store budgets and client quotas, list pages (see
/// `registry::Config` and `hub::Config`, which document each).
#[derive(clap::Args, Debug, Clone)]
pub struct StoreFlags {
    /// Bytes of one stored agent/task string field (agent_id, hostname, ip, skill, …);
    /// longer: 413.
    #[arg(long, default_value_t = 256)]
    pub agent_field_bytes_max: usize,

    /// Entries of one agent list (skills, mcp_servers, skill_names); more: 413.
    #[arg(long, default_value_t = 256)]
    pub agent_list_items_max: usize,

    /// Bytes of a task payload (JSON text); larger: 413.
    #[arg(long, default_value_t = 64 * 1024)]
    pub task_payload_bytes_max: usize,

    /// Bytes of a task's result and of its error; larger: 413.
    #[arg(long, default_value_t = 64 * 1024)]
    pub task_result_bytes_max: usize,

    /// Largest task ttl in seconds; above: 422.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub task_ttl_max: u64,

    /// Bytes of tasks one shard holds; full: 503.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub task_store_bytes_max: usize,

    /// Bytes of tasks one client (the identity of a valid X-API-Key or bearer token,
    /// else the source address) may hold on one shard: the tasks it submitted and the
    /// reports (state, result, error) it posted; a submission or update past it: 429.
    /// Admins: no quota.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub task_client_bytes_max: usize,

    /// Tasks one client (as for the bytes) may hold on one shard; over: 429.
    #[arg(long, default_value_t = 4096)]
    pub task_client_tasks_max: usize,

    /// Most items of one list page, and of an unpaged list before it is cut with
    /// `x-next-cursor`.
    #[arg(long, default_value_t = 1000)]
    pub list_page_items_max: usize,

    /// Bytes of one list response body; a page stops early (with `x-next-cursor`).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub list_response_bytes_max: usize,

    /// Bytes of agent records one shard holds; full: 503.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    pub agent_store_bytes_max: usize,

    /// Agents one client (as for tasks) may hold (have bound to it) on one shard; over:
    /// 429.
    #[arg(long, default_value_t = 1024)]
    pub agent_client_agents_max: usize,

    /// Bytes of agents one client may hold on one shard; a register or heartbeat that
    /// would pass it (a new agent, or one grown or taken over): 429.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub agent_client_bytes_max: usize,

    /// Format of new invite codes: `long` (12 Crockford base32 symbols, K7QM-3XPA-9T2D)
    /// or `digits6` (six digits, the only format the PyPI `chatixia pair` 0.4.3 accepts;
    /// far easier to guess, and guarded by the two limits below). `pair` accepts both.
    #[arg(long, default_value = "long")]
    pub pair_code_format: crate::pairing::CodeFormat,

    /// Wrong pairing codes one address (IPv6: one /64) may try in 24 h; then its `pair`
    /// attempts are 429 until its window ends. Right codes do not count.
    #[arg(long, default_value_t = crate::pairing::budget::AddressBudget::DEFAULT_WRONG_MAX)]
    pub pair_wrong_guesses_per_address_max: u32,

    /// Client addresses (IPv6: /64s) whose daily budget of wrong pairing codes one shard
    /// tracks; a new one in a full table makes it forget the least recently active (its
    /// count starts over; never a refusal). About 100 bytes each.
    #[arg(long, default_value_t = crate::pairing::budget::AddressBudget::DEFAULT_KEYS_MAX)]
    pub pair_budget_addresses_max: usize,

    /// Wrong six-digit pairing codes tried per shard per 60 s, from all addresses
    /// together; then every six-digit `pair` redemption on that shard is 429 until the
    /// window moves (long codes are not affected).
    #[arg(long, default_value_t = 30)]
    pub pair_wrong_guesses_per_shard_max: usize,

    /// Wrong six-digit pairing codes tried within one bucket of 1,000 codes (same first
    /// three digits) before the six-digit codes in it are burnt.
    #[arg(long, default_value_t = 3)]
    pub pair_bucket_wrong_guesses_max: u32,

    /// Live invite codes one API key may hold per shard (of 1,000); over: 429.
    #[arg(long, default_value_t = 100)]
    pub pair_codes_per_key_max: usize,

    /// Percent of each store's budget (tasks and agents: entries and bytes per shard;
    /// the durable store: --data-bytes-max) that all clients without a valid
    /// X-API-Key or bearer token may fill together; the rest is kept for
    /// authenticated agents and operators. Over: 503 for anonymous requests. 0 to 100.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub anonymous_share_percent: u8,
}

/// Failure budgets of the routes that check a secret, and JWT checks (see
/// `auth::failures`, which documents each).
#[derive(clap::Args, Debug, Clone)]
pub struct AuthFlags {
    /// Wrong secrets (API key, device token, claim secret, forged JWT) one client
    /// address (IPv6: its /64) may present per --auth-failure-window; then its attempts
    /// on every route that checks a secret get 429 with retry-after, a back-off that
    /// doubles with each further wrong secret.
    #[arg(long, default_value_t = 10)]
    pub auth_failures_per_ip_max: u32,

    /// Wrong secrets per --auth-failure-window from all addresses together (each shard
    /// enforces its share); once spent, addresses with recent wrong secrets get 429 until
    /// the window ends, while addresses without may still try.
    #[arg(long, default_value_t = 1000)]
    pub auth_failures_total_max: u32,

    /// Seconds of the failure budgets' window.
    #[arg(long, default_value_t = 60.0)]
    pub auth_failure_window: f64,

    /// Longest back-off in seconds for an address that keeps presenting wrong secrets.
    #[arg(long, default_value_t = 600.0)]
    pub auth_backoff_max: f64,

    /// Client addresses with recent wrong secrets one shard remembers (more: the one
    /// that would be forgotten soonest goes first).
    #[arg(long, default_value_t = 65_536)]
    pub auth_failure_addresses_max: usize,

    /// Seconds of clock skew allowed on a JWT's exp, nbf and iat (the reference allows
    /// 60 on exp), at most 60.
    #[arg(long, default_value_t = crate::auth::jwt::LEEWAY_SECS_DEFAULT)]
    pub jwt_leeway_secs: u64,
}

impl AuthFlags {
    /// The JWT leeway: at most [`crate::auth::jwt::REFERENCE_LEEWAY_SECS`], which the
    /// memory of revocations (`signaling::authz::REVOCATION_MEMORY`) is sized for.
    pub fn jwt_leeway_secs(&self) -> Result<u64, String> {
        let max = crate::auth::jwt::REFERENCE_LEEWAY_SECS;
        if self.jwt_leeway_secs > max {
            return Err(format!(
                "--jwt-leeway-secs must be at most {max} (a revoked peer's older tokens \
                 are refused for 300 + {max} s)"
            ));
        }
        Ok(self.jwt_leeway_secs)
    }

    /// The failure budgets.
    pub fn failure_limits(&self) -> Result<crate::auth::failures::FailureLimits, String> {
        let window = secs("--auth-failure-window", self.auth_failure_window)?;
        if window < Duration::from_secs(1) {
            return Err("--auth-failure-window must be at least 1 second".into());
        }
        let backoff_max = secs("--auth-backoff-max", self.auth_backoff_max)?;
        if backoff_max < Duration::from_secs(1) {
            return Err("--auth-backoff-max must be at least 1 second".into());
        }
        if self.auth_failures_per_ip_max == 0
            || self.auth_failures_total_max == 0
            || self.auth_failure_addresses_max == 0
        {
            return Err("--auth-failures-per-ip-max, --auth-failures-total-max and \
                 --auth-failure-addresses-max must be at least 1"
                .into());
        }
        Ok(crate::auth::failures::FailureLimits {
            per_client_max: self.auth_failures_per_ip_max,
            total_max: self.auth_failures_total_max,
            window,
            backoff_max,
            clients_max: self.auth_failure_addresses_max,
        })
    }
}

/// The embedded TURN server (issue 24; `crate::server::turn`, docs/PROTOCOL.md §12). Off
/// unless `--turn-listen` or `--turn-tls-listen` is given; needs `TURN_SECRET`.
#[derive(clap::Args, Debug, Clone)]
pub struct TurnFlags {
    /// Serve TURN (UDP and TCP) on this address (repeatable), e.g. 0.0.0.0:3478.
    #[arg(long = "turn-listen")]
    pub turn_listen: Vec<SocketAddr>,

    /// Serve TURN over TLS (turns:) on this address (repeatable), e.g. 0.0.0.0:5349,
    /// with the --tls-cert certificate (needs --tls-cert and --tls-key).
    #[arg(long = "turn-tls-listen")]
    pub turn_tls_listen: Vec<SocketAddr>,

    /// The address put in relayed addresses and advertised by /api/config; needed when
    /// a --turn-listen address is 0.0.0.0 or [::].
    #[arg(long)]
    pub turn_public_ip: Option<std::net::IpAddr>,

    /// Relay ports LO-HI, split between the shards.
    #[arg(long, default_value = "49152-65535")]
    pub turn_relay_ports: String,

    /// REALM of the TURN long-term credentials.
    #[arg(long, default_value = "chatixia")]
    pub turn_realm: String,

    /// Let relays reach this peer range (repeatable), over the default refusal of
    /// loopback, private, link-local, multicast and the server's own addresses.
    #[arg(long = "turn-allow-peer")]
    pub turn_allow_peer: Vec<String>,

    /// Refuse this peer range (repeatable; wins over --turn-allow-peer).
    #[arg(long = "turn-deny-peer")]
    pub turn_deny_peer: Vec<String>,

    /// Largest allocation lifetime granted, in seconds (the default lifetime is 600).
    #[arg(long, default_value_t = 3600)]
    pub turn_lifetime_max: u64,

    /// Allocations one shard holds; over: 508.
    #[arg(long, default_value_t = 10_000)]
    pub turn_allocations_per_shard_max: usize,

    /// Allocations of one peer id (credential user) on one shard; over: 486.
    #[arg(long, default_value_t = 16)]
    pub turn_allocations_per_user_max: usize,

    /// Allocations from one client IP on one shard; over: 486.
    #[arg(long, default_value_t = 64)]
    pub turn_allocations_per_ip_max: usize,

    /// Permissions of one allocation; over: 508.
    #[arg(long, default_value_t = 32)]
    pub turn_permissions_max: usize,

    /// Channels of one allocation; over: 508.
    #[arg(long, default_value_t = 32)]
    pub turn_channels_max: usize,

    /// Relayed bytes per second of one allocation, both ways; over: dropped. 0: none.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub turn_allocation_bytes_per_sec_max: u64,

    /// TURN TCP connections one shard holds; more: closed at once. Each holds at most
    /// about 132 KiB (a partial message, a read buffer, its outbound queue).
    #[arg(long, default_value_t = 1024)]
    pub turn_tcp_connections_max: usize,

    /// TURN TCP and TLS connections one client address holds on one shard (handshakes
    /// included); more: closed at once, counted as refused. Keeps one address from taking
    /// every slot of --turn-tcp-connections-max.
    #[arg(long, default_value_t = 16)]
    pub turn_tcp_connections_per_ip_max: usize,
}

impl TurnFlags {
    /// The embedded TURN server's settings, checked; `Ok(None)` when `--turn-listen` is
    /// not given. `secret` is the TURN REST shared secret (`TURN_SECRET` or
    /// `--turn-secret-file`: [`Cli::turn_secret`]); `cores` the shard count.
    pub fn settings(
        &self,
        secret: Option<&[u8]>,
        cores: usize,
    ) -> Result<Option<TurnSettings>, String> {
        let f = self;
        let all: Vec<SocketAddr> = f
            .turn_listen
            .iter()
            .chain(&f.turn_tls_listen)
            .copied()
            .collect();
        if all.is_empty() {
            return Ok(None);
        }
        let secret = secret.filter(|s| !s.is_empty()).ok_or(
            "--turn-listen and --turn-tls-listen need the TURN REST shared secret (TURN_SECRET or \
                 --turn-secret-file)",
        )?;
        let relay_ip = match f.turn_public_ip {
            Some(ip) if ip.is_unspecified() => {
                return Err("--turn-public-ip must be a concrete address".into())
            }
            Some(ip) => ip,
            None => match all.iter().find(|a| !a.ip().is_unspecified()) {
                Some(a) if all.iter().all(|b| !b.ip().is_unspecified()) => a.ip(),
                _ => {
                    return Err(
                        "--turn-listen or --turn-tls-listen on 0.0.0.0 or [::] needs --turn-public-ip (the address put in relayed addresses)"
                            .into(),
                    )
                }
            },
        };
        let first = all[0].ip();
        let relay_bind = if first.is_ipv4() == relay_ip.is_ipv4() {
            first
        } else if relay_ip.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let relay_ports = crate::server::turn::settings::parse_ports(&f.turn_relay_ports)?;
        let span = usize::from(relay_ports.1 - relay_ports.0) + 1;
        if span < cores {
            return Err(format!(
                "--turn-relay-ports {} has {span} ports: fewer than the {cores} shards",
                f.turn_relay_ports
            ));
        }
        let cidrs = |flag: &str, v: &[String]| -> Result<Vec<Cidr>, String> {
            v.iter()
                .map(|s| s.parse::<Cidr>().map_err(|e| format!("{flag}: {e}")))
                .collect()
        };
        if f.turn_lifetime_max < 1 {
            return Err("--turn-lifetime-max must be at least 1 second".into());
        }
        if f.turn_realm.is_empty() || f.turn_realm.len() > 127 {
            return Err("--turn-realm must be 1 to 127 bytes".into());
        }
        let mut nonce_key = [0u8; 32];
        getrandom::getrandom(&mut nonce_key)
            .map_err(|e| format!("no randomness for TURN nonces: {e}"))?;
        Ok(Some(TurnSettings {
            listen: f.turn_listen.clone(),
            tls_listen: f.turn_tls_listen.clone(),
            relay_ip,
            relay_bind,
            relay_ports,
            realm: f.turn_realm.clone(),
            secret: secret.to_vec(),
            nonce_key,
            lifetime_max_secs: f.turn_lifetime_max,
            allocations_per_shard_max: f.turn_allocations_per_shard_max,
            allocations_per_user_max: f.turn_allocations_per_user_max,
            allocations_per_ip_max: f.turn_allocations_per_ip_max,
            permissions_max: f.turn_permissions_max,
            channels_max: f.turn_channels_max,
            bytes_per_sec_max: f.turn_allocation_bytes_per_sec_max,
            tcp_connections_max: f.turn_tcp_connections_max,
            tcp_connections_per_ip_max: f.turn_tcp_connections_per_ip_max,
            allow: cidrs("--turn-allow-peer", &f.turn_allow_peer)?,
            deny: cidrs("--turn-deny-peer", &f.turn_deny_peer)?,
            credential_ttl_secs: crate::ice::TURN_CREDENTIAL_TTL_SECS,
            revoked_at_start: Vec::new(),
        }))
    }
}

/// Subcommands besides serving.
// Parsed once at start: the size of the load generator's arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Load generator: measure a chatixia server (this one or another build) by URL.
    Bench(loadgen::BenchArgs),
    /// The durable state: verify, back up (from a running server), restore, export.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The config file (`--config FILE`): print an example, or check the settings.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `chatixia-core config …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ConfigCommand {
    /// Print a config file in which every key appears, commented out, with its default
    /// and what it does (packaging/chatixia-core.toml is this output).
    Example,
    /// Check the settings as the server would take them (`chatixia-core --config FILE
    /// [flags] config check`): print every key with its value and where it came from
    /// (command line, environment, config file, default); exit 1 on a bad setting.
    Check,
}

/// `chatixia-core store …` (issue 22). Each exits 0 on success and 2 on a problem with
/// the data, with one line on stderr naming the file and what is wrong. The server secret
/// is `SIGNALING_SECRET`, as for the server.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum StoreCommand {
    /// Check a data directory offline (the server's start-up check: every page and every
    /// record) and report what it holds. Refused while a server runs on it.
    Verify {
        /// The data directory.
        #[arg(long, env = "CHATIXIA_DATA_DIR", default_value = crate::server::boot::DEFAULT_DATA_DIR)]
        data_dir: std::path::PathBuf,
    },
    /// Back up a running server's state to FILE without stopping it (GET
    /// /api/admin/backup: a consistent snapshot, written by the server's storage side).
    Backup {
        /// Where to write the backup (refused if it exists).
        #[arg(long)]
        to: std::path::PathBuf,
        /// The running server (plain HTTP).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An admin API key, exchanged at /api/token for an admin JWT. Without one, the
        /// command signs a short-lived admin JWT with SIGNALING_SECRET itself.
        #[arg(long, env = "CHATIXIA_ADMIN_API_KEY")]
        api_key: Option<String>,
    },
    /// Restore a backup (or export) into a data directory. Refused: a damaged backup, a
    /// backup written under another server secret, a directory a server runs on, and a
    /// directory that already holds a store unless --replace.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: std::path::PathBuf,
        /// The data directory.
        #[arg(long, env = "CHATIXIA_DATA_DIR", default_value = crate::server::boot::DEFAULT_DATA_DIR)]
        data_dir: std::path::PathBuf,
        /// Move an existing state.redb aside (to state.redb.before-restore) first.
        #[arg(long)]
        replace: bool,
    },
    /// Write a data directory's state as JSON lines (the backup format), offline. Device
    /// tokens appear only as keyed hashes or sealed. Refused while a server runs on it.
    Export {
        /// The data directory.
        #[arg(long, env = "CHATIXIA_DATA_DIR", default_value = crate::server::boot::DEFAULT_DATA_DIR)]
        data_dir: std::path::PathBuf,
        /// Write here instead of to stdout (refused if it exists).
        #[arg(long)]
        to: Option<std::path::PathBuf>,
    },
}

fn parse_driver(s: &str) -> Result<DriverChoice, String> {
    s.parse()
}

impl Cli {
    /// The listen address after applying the `PORT` fallback: `--listen` on the command
    /// line, else `PORT` (as 0.0.0.0:$PORT), else `listen` from the config file, else
    /// 0.0.0.0:8080 (the environment wins over the file, as for every setting).
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        let port = std::env::var("PORT").ok();
        if let Some(a) = self.listen {
            if port.is_none() || self.sources.source("listen") == file::Source::CommandLine {
                return Ok(a);
            }
        }
        match port {
            Some(p) => {
                let port: u16 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("PORT={p:?} is not a port number"))?;
                Ok(SocketAddr::from(([0, 0, 0, 0], port)))
            }
            None => Ok(SocketAddr::from(([0, 0, 0, 0], 8080))),
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

    /// The checks of the store flags that no service's config makes on its own.
    fn check_store_flags(&self) -> Result<(), String> {
        let f = &self.store;
        if f.pair_wrong_guesses_per_address_max == 0 {
            return Err("--pair-wrong-guesses-per-address-max must be at least 1".into());
        }
        if f.pair_budget_addresses_max == 0 {
            return Err("--pair-budget-addresses-max must be at least 1".into());
        }
        if f.list_page_items_max == 0 || f.task_client_tasks_max == 0 {
            return Err(
                "--list-page-items-max and --task-client-tasks-max must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// Auth's settings with these API keys and this JWT secret (read by `main` from the
    /// keys file and `SIGNALING_SECRET`): the failure budgets, the JWT leeway,
    /// `--require-agent-auth` and `--insecure-open-admin`.
    pub fn auth_config(
        &self,
        api_keys: crate::auth::ApiKeys,
        jwt_secret: Vec<u8>,
    ) -> Result<crate::auth::Config, String> {
        Ok(crate::auth::Config {
            failures: self.auth.failure_limits()?,
            jwt_leeway_secs: self.auth.jwt_leeway_secs()?,
            require_agent_auth: self.require_agent_auth,
            insecure_open_admin: self.insecure_open_admin,
            ..crate::auth::Config::new(api_keys, jwt_secret)
        })
    }

    /// Pairing's settings, with the keys derived from the server secret: the guessing
    /// guard and code format (`--pair-*`), `--pairing-retention`, list pages.
    pub fn pairing_config(
        &self,
        secrets: chatixia_store::Secrets,
    ) -> Result<crate::pairing::Config, String> {
        let f = &self.store;
        if f.pair_wrong_guesses_per_address_max == 0 {
            return Err("--pair-wrong-guesses-per-address-max must be at least 1".into());
        }
        Ok(crate::pairing::Config {
            guard: crate::pairing::GuardLimits {
                wrong_per_window_max: f.pair_wrong_guesses_per_shard_max,
                bucket_wrong_max: f.pair_bucket_wrong_guesses_max.max(1),
                codes_per_key_max: f.pair_codes_per_key_max,
                wrong_per_address_max: f.pair_wrong_guesses_per_address_max,
                budget_addresses_max: f.pair_budget_addresses_max,
                code_format: f.pair_code_format,
            },
            retention: self.pairing_retention()?,
            secrets,
            pages: self.page_limits(),
        })
    }

    /// `GET /api/config`'s settings: the STUN URLs (`--stun-url`) and TURN (`TURN_URL`
    /// and `TURN_SECRET`, read by `main`).
    pub fn ice_config(&self, turn: Option<(String, Vec<u8>)>) -> crate::ice::Config {
        crate::ice::Config {
            stun_urls: self.stun_urls(),
            turn,
        }
    }

    fn page_limits(&self) -> crate::shard::paging::PageLimits {
        crate::shard::paging::PageLimits {
            items_max: self.store.list_page_items_max,
            bytes_max: self.store.list_response_bytes_max,
        }
    }

    /// The registry's limits (field sizes, list pages).
    pub fn registry_config(&self) -> crate::registry::Config {
        let f = &self.store;
        crate::registry::Config {
            fields: crate::limits::FieldLimits {
                field_bytes_max: f.agent_field_bytes_max,
                list_items_max: f.agent_list_items_max,
            },
            pages: self.page_limits(),
            budget: crate::registry::AgentBudgetConfig {
                bytes_max: f.agent_store_bytes_max,
                client_agents_max: f.agent_client_agents_max,
                client_bytes_max: f.agent_client_bytes_max,
                anonymous_share_percent: f.anonymous_share_percent,
            },
        }
    }

    /// The hub's limits (task fields, payload and result sizes, `ttl`, list pages, the
    /// task store's budget and quotas) with finished tasks kept for `retention`
    /// (`--task-retention`); `stray_task_shards` is set once the store is split among
    /// the shards. Checks the store flags first.
    pub fn hub_config(&self, retention: Duration) -> Result<crate::hub::Config, String> {
        self.check_store_flags()?;
        let f = &self.store;
        Ok(crate::hub::Config {
            fields: crate::limits::FieldLimits {
                field_bytes_max: f.agent_field_bytes_max,
                list_items_max: f.agent_list_items_max,
            },
            payload_bytes_max: f.task_payload_bytes_max,
            result_bytes_max: f.task_result_bytes_max,
            ttl_max: f.task_ttl_max,
            pages: crate::shard::paging::PageLimits {
                items_max: f.list_page_items_max,
                bytes_max: f.list_response_bytes_max,
            },
            require_agent_auth: self.require_agent_auth,
            stray_task_shards: Vec::new(),
            tasks: crate::hub::TaskStoreConfig {
                retention,
                bytes_max: f.task_store_bytes_max,
                client_bytes_max: f.task_client_bytes_max,
                client_tasks_max: f.task_client_tasks_max,
                claim_bytes_max: f.list_response_bytes_max,
                anonymous_share_percent: f.anonymous_share_percent,
                ..crate::hub::TaskStoreConfig::default()
            },
        })
    }

    /// The TLS settings; `None` without --tls-cert and --tls-key. One of the two without
    /// the other, or --tls-listen or --tls-port-file without both, is an error naming
    /// what is missing (on the command line or in the config file alike).
    pub fn tls_settings(&self) -> Result<Option<crate::tls::TlsSettings>, String> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err("--tls-cert needs --tls-key (the certificate's private key)".into())
            }
            (None, Some(_)) => {
                return Err("--tls-key needs --tls-cert (the certificate chain)".into())
            }
            (None, None) => {
                for (set, flag) in [
                    (self.tls_listen.is_some(), "--tls-listen"),
                    (self.tls_port_file.is_some(), "--tls-port-file"),
                    // TURN over TLS serves the server's certificate.
                    (!self.turn.turn_tls_listen.is_empty(), "--turn-tls-listen"),
                ] {
                    if set {
                        return Err(format!("{flag} needs --tls-cert and --tls-key"));
                    }
                }
                return Ok(None);
            }
        };
        Ok(Some(crate::tls::TlsSettings {
            files: crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            },
            listen: self.tls_listen,
            reload_interval: secs("--tls-reload-interval", self.tls_reload_interval)?,
        }))
    }

    pub fn malloc_trim_interval(&self) -> Result<Duration, String> {
        secs("--malloc-trim-interval", self.malloc_trim_interval)
    }

    pub fn task_retention(&self) -> Result<Duration, String> {
        secs("--task-retention", self.task_retention)
    }

    pub fn pairing_retention(&self) -> Result<Duration, String> {
        secs("--pairing-retention", self.pairing_retention)
    }

    /// The storage thread's limits: outage recovery, and the size bound of the records
    /// (`--data-bytes-max`, its anonymous share, redb's cache).
    pub fn store_config(&self) -> Result<chatixia_store::StoreConfig, String> {
        let retry = secs("--store-retry-interval", self.store_retry_interval)?;
        if retry < Duration::from_millis(10) {
            return Err("--store-retry-interval must be at least 0.01 seconds".into());
        }
        Ok(chatixia_store::StoreConfig {
            retry_interval: retry,
            retained_writes_max: self.store_retained_writes_max,
            data_bytes_max: self.data_bytes_max,
            anonymous_data_bytes_max: crate::limits::share(
                usize::try_from(self.data_bytes_max).unwrap_or(usize::MAX),
                self.store.anonymous_share_percent,
            ) as u64,
            cache_bytes_max: self.data_cache_bytes_max,
            ..chatixia_store::StoreConfig::default()
        })
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

    /// The server secret: `--signaling-secret-file` from the command line, else
    /// `SIGNALING_SECRET`, else `SIGNALING_SECRET_FILE` or the config file's
    /// `signaling-secret-file`. `None`: none set (the public development secret).
    pub fn server_secret(&self) -> Result<Option<Vec<u8>>, String> {
        secret(
            "SIGNALING_SECRET",
            "signaling-secret-file",
            self.signaling_secret_file.as_deref(),
            self.sources.source("signaling-secret-file"),
        )
    }

    /// The TURN URL and secret, when both are set (`--turn-url` / `TURN_URL`, and
    /// `TURN_SECRET` / `--turn-secret-file`, the secret chosen as for the server secret).
    pub fn turn(&self) -> Result<Option<(String, Vec<u8>)>, String> {
        let url = self.turn_url.clone().filter(|u| !u.is_empty());
        let secret = self.turn_secret()?;
        match (url, secret) {
            (Some(url), Some(secret)) => Ok(Some((url, secret))),
            (Some(_), None) => {
                tracing::warn!(
                    "--turn-url is set but no TURN secret (TURN_SECRET or \
                     --turn-secret-file): GET /api/config lists no TURN server"
                );
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// The TURN REST shared secret: `TURN_SECRET`, else `--turn-secret-file` (chosen as
    /// for the server secret); shared by `--turn-url` credentials and the embedded TURN
    /// server (`--turn-listen`).
    pub fn turn_secret(&self) -> Result<Option<Vec<u8>>, String> {
        secret(
            "TURN_SECRET",
            "turn-secret-file",
            self.turn_secret_file.as_deref(),
            self.sources.source("turn-secret-file"),
        )
    }

    /// Every check the server makes of its settings at start, without starting it
    /// (`chatixia-core config check`).
    pub fn check(&self) -> Result<(), String> {
        self.listen_addr()?;
        self.shutdown_timeout()?;
        self.http_idle_timeout()?;
        self.http_client_limits()?;
        self.ws_limits()?;
        self.check_store_flags()?;
        self.store_config()?;
        self.task_retention()?;
        self.pairing_retention()?;
        self.malloc_trim_interval()?;
        self.auth.failure_limits()?;
        self.auth.jwt_leeway_secs()?;
        self.server_secret()?;
        self.turn()?;
        if let Some(tls) = self.tls_settings()? {
            // As at start: the files are read and the key must match the certificate.
            crate::tls::config::load(&tls.files)?;
        }
        Ok(())
    }
}

/// Largest secret file read (a secret is tens of bytes; this bounds what a wrong path
/// makes the start read).
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A secret from the variable `var` or from a file (the flag `key`), by the precedence
/// command line > environment > config file; both variables set is refused as unclear.
fn secret(
    var: &str,
    key: &str,
    path: Option<&Path>,
    source: file::Source,
) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::ffi::OsStringExt;
    let value = std::env::var_os(var).filter(|v| !v.is_empty());
    match (path, value) {
        (Some(p), _) if source == file::Source::CommandLine => read_secret(key, p).map(Some),
        (Some(_), Some(_)) if source == file::Source::Environment => {
            Err(format!("both {var} and {var}_FILE are set: set one"))
        }
        (_, Some(v)) => Ok(Some(v.into_vec())),
        (Some(p), None) => read_secret(key, p).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads a secret file (control thread, before the shards start), without one trailing
/// newline; warns when every user of the host may read it.
fn read_secret(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let what = |e: &dyn std::fmt::Display| format!("cannot read --{key} {}: {e}", path.display());
    let f = std::fs::File::open(path).map_err(|e| what(&e))?;
    let mut bytes = Vec::new();
    f.take(SECRET_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| what(&e))?;
    if bytes.len() as u64 > SECRET_FILE_BYTES_MAX {
        return Err(what(&format!(
            "longer than {SECRET_FILE_BYTES_MAX} bytes (SECRET_FILE_BYTES_MAX)"
        )));
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(what(&"the file is empty"));
    }
    if let Some(w) = file::world_readable(path) {
        tracing::warn!("{w}");
    }
    Ok(bytes)
}

fn secs(flag: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && (0.0..1e9).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{flag} must be a non-negative number of seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> TurnFlags {
        let mut v = vec!["chatixia-core"];
        v.extend_from_slice(args);
        Cli::parse_from(v).turn
    }

    #[test]
    fn tls_flags_come_in_pairs() {
        let tls = |args: &[&str]| {
            let mut v = vec!["chatixia-core"];
            v.extend_from_slice(args);
            Cli::parse_from(v).tls_settings().map(|s| s.is_some())
        };
        assert_eq!(tls(&[]), Ok(false));
        assert_eq!(
            tls(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]),
            Ok(true)
        );
        assert!(tls(&["--tls-cert", "c.pem"])
            .unwrap_err()
            .contains("--tls-key"));
        assert!(tls(&["--tls-key", "k.pem"])
            .unwrap_err()
            .contains("--tls-cert"));
        let e = tls(&["--tls-listen", "127.0.0.1:8443"]).unwrap_err();
        assert!(e.contains("--tls-listen needs"), "{e}");
        let e = tls(&["--tls-port-file", "p"]).unwrap_err();
        assert!(e.contains("--tls-port-file needs"), "{e}");
    }

    #[test]
    fn turn_settings_are_checked() {
        assert!(flags(&[]).settings(None, 2).unwrap().is_none());
        let f = flags(&["--turn-listen", "127.0.0.1:3478"]);
        let e = f.settings(None, 2).unwrap_err();
        assert!(e.contains("TURN_SECRET"), "{e}");
        let s = f.settings(Some(b"s"), 2).unwrap().unwrap();
        assert_eq!(s.relay_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.relay_ports, (49152, 65535));
        assert_eq!(s.shard_ports(0, 2), (49152, 57343));
        assert_eq!(s.shard_ports(1, 2), (57344, 65535));
        assert_eq!(
            s.urls(Some("turn.example")),
            vec![
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:3478?transport=tcp"
            ]
        );
        // TURN over TLS: `turns:` at the name the caller used, else the relay IP.
        let f = flags(&[
            "--turn-listen",
            "127.0.0.1:3478",
            "--turn-tls-listen",
            "127.0.0.1:5349",
        ]);
        let s = f.settings(Some(b"s"), 1).unwrap().unwrap();
        assert_eq!(s.tls_listen, ["127.0.0.1:5349".parse().unwrap()]);
        assert_eq!(
            s.urls(Some("turn.example")),
            vec![
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:3478?transport=tcp",
                "turns:turn.example:5349?transport=tcp"
            ]
        );
        assert_eq!(s.urls(None)[2], "turns:127.0.0.1:5349?transport=tcp");
        // TLS alone is enough to run TURN.
        let f = flags(&["--turn-tls-listen", "127.0.0.1:443"]);
        let s = f.settings(Some(b"s"), 1).unwrap().unwrap();
        assert_eq!(s.urls(None), vec!["turns:127.0.0.1:443?transport=tcp"]);
        let e = f.settings(None, 1).unwrap_err();
        assert!(e.contains("TURN_SECRET"), "{e}");
        let e = flags(&["--turn-listen", "0.0.0.0:3478"])
            .settings(Some(b"s"), 1)
            .unwrap_err();
        assert!(e.contains("--turn-public-ip"), "{e}");
        let f = flags(&[
            "--turn-listen",
            "0.0.0.0:3478",
            "--turn-public-ip",
            "203.0.113.5",
            "--turn-relay-ports",
            "50000-50002",
            "--turn-allow-peer",
            "127.0.0.0/8",
        ]);
        let s = f.settings(Some(b"s"), 3).unwrap().unwrap();
        assert_eq!(s.relay_bind, "0.0.0.0".parse::<IpAddr>().unwrap());
        for i in 0..3 {
            let (a, b) = s.shard_ports(i, 3);
            assert_eq!(a, b);
            assert_eq!(a, 50000 + i as u16);
        }
        assert!(f.settings(Some(b"s"), 4).is_err(), "3 ports for 4 shards");
        for bad in ["1-0", "x-2", "5", "0-10"] {
            let f = flags(&["--turn-listen", "127.0.0.1:1", "--turn-relay-ports", bad]);
            assert!(f.settings(Some(b"s"), 1).is_err(), "{bad}");
        }
        let f = flags(&["--turn-listen", "127.0.0.1:1", "--turn-allow-peer", "nope"]);
        let e = f.settings(Some(b"s"), 1).unwrap_err();
        assert!(e.contains("--turn-allow-peer"), "{e}");
    }
}

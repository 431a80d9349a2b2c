//! Command-line configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use reactor::driver::DriverChoice;

/// chatixia-core: the chatixia mesh server on a thread-per-core io_uring reactor.
#[derive(Parser, Debug, Clone)]
#[command(name = "chatixia-core", version, about)]
pub struct Cli {
    /// No subcommand: serve (the flags below). `bench`: the load generator. `store`:
    /// check, back up, restore or export the durable state.
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
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS: PEM file of the certificate's private key (RSA or ECDSA; PKCS#8, PKCS#1 or
    /// SEC1). A key that does not match the certificate stops the start.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// TLS: address of a TLS listener beside the plain --listen one (e.g. plain on
    /// 127.0.0.1:8080 for health checks, TLS on 0.0.0.0:443).
    #[arg(long, requires = "tls_cert")]
    pub tls_listen: Option<SocketAddr>,

    /// TLS: write the bound TLS listen address (`ip:port`) to this file once listening
    /// (the --tls-listen one, or the --listen one when it is TLS).
    #[arg(long, requires = "tls_cert")]
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
    #[arg(long, env = "CHATIXIA_DATA_DIR", default_value = crate::durable::DEFAULT_DATA_DIR)]
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
}

/// Limits on stored fields, store budgets and client quotas, list pages (see
/// `limits::StoreLimits`, which documents each).
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
    /// else the source address) may hold on one shard; over: 429. Admins: no quota.
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

    /// Agents one client (as for tasks) may create on one shard; over: 429.
    #[arg(long, default_value_t = 1024)]
    pub agent_client_agents_max: usize,

    /// Bytes of agents one client may create on one shard; over: 429.
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
        #[arg(long, env = "CHATIXIA_DATA_DIR", default_value = crate::durable::DEFAULT_DATA_DIR)]
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
        #[arg(long, env = "CHATIXIA_DATA_DIR", default_value = crate::durable::DEFAULT_DATA_DIR)]
        data_dir: std::path::PathBuf,
        /// Move an existing state.redb aside (to state.redb.before-restore) first.
        #[arg(long)]
        replace: bool,
    },
    /// Write a data directory's state as JSON lines (the backup format), offline. Device
    /// tokens appear only as keyed hashes or sealed. Refused while a server runs on it.
    Export {
        /// The data directory.
        #[arg(long, env = "CHATIXIA_DATA_DIR", default_value = crate::durable::DEFAULT_DATA_DIR)]
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

    /// The store limits.
    pub fn store_limits(&self) -> Result<crate::limits::StoreLimits, String> {
        let f = &self.store;
        if f.pair_wrong_guesses_per_address_max == 0 {
            return Err("--pair-wrong-guesses-per-address-max must be at least 1".into());
        }
        if f.list_page_items_max == 0 || f.task_client_tasks_max == 0 {
            return Err(
                "--list-page-items-max and --task-client-tasks-max must be at least 1".into(),
            );
        }
        Ok(crate::limits::StoreLimits {
            agent_field_bytes_max: f.agent_field_bytes_max,
            agent_list_items_max: f.agent_list_items_max,
            task_payload_bytes_max: f.task_payload_bytes_max,
            task_result_bytes_max: f.task_result_bytes_max,
            task_ttl_max: f.task_ttl_max,
            task_store_bytes_max: f.task_store_bytes_max,
            task_client_bytes_max: f.task_client_bytes_max,
            task_client_tasks_max: f.task_client_tasks_max,
            list_page_items_max: f.list_page_items_max,
            list_response_bytes_max: f.list_response_bytes_max,
            agent_budget: crate::registry::AgentBudgetConfig {
                bytes_max: f.agent_store_bytes_max,
                client_agents_max: f.agent_client_agents_max,
                client_bytes_max: f.agent_client_bytes_max,
                anonymous_share_percent: f.anonymous_share_percent,
            },
            pair_guard: crate::pairing::guard::GuardLimits {
                wrong_per_window_max: f.pair_wrong_guesses_per_shard_max,
                bucket_wrong_max: f.pair_bucket_wrong_guesses_max.max(1),
                codes_per_key_max: f.pair_codes_per_key_max,
                wrong_per_address_max: f.pair_wrong_guesses_per_address_max,
                code_format: f.pair_code_format,
            },
            anonymous_share_percent: f.anonymous_share_percent,
        })
    }

    /// The registry's limits (field sizes, list pages).
    pub fn registry_config(&self) -> crate::registry::Config {
        let f = &self.store;
        crate::registry::Config {
            fields: crate::limits::FieldLimits {
                field_bytes_max: f.agent_field_bytes_max,
                list_items_max: f.agent_list_items_max,
            },
            pages: crate::shard::paging::PageLimits {
                items_max: f.list_page_items_max,
                bytes_max: f.list_response_bytes_max,
            },
        }
    }

    /// The hub's limits (task fields, payload and result sizes, `ttl`, list pages);
    /// `stray_task_shards` is set once the store is split among the shards.
    pub fn hub_config(&self) -> crate::hub::Config {
        let f = &self.store;
        crate::hub::Config {
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
        }
    }

    /// The TLS settings; `None` without --tls-cert and --tls-key.
    pub fn tls_settings(&self) -> Result<Option<crate::tls::TlsSettings>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
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
}

fn secs(flag: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && (0.0..1e9).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{flag} must be a non-negative number of seconds"))
    }
}

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use chatixia_core::auth::ApiKeys;
use chatixia_core::config::file::{self, LoadError, Source};
use chatixia_core::config::{Cli, Command, ConfigCommand};
use chatixia_core::server::{self, ServerConfig};
use reactor::signals;
use reactor::{Reactor, Stopped};

// The process-wide allocator: glibc malloc (trimmed, see `trim_heap`) unless a feature
// picks another; compared in docs/BENCHMARKS.md, "Memory after load".
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match file::load(std::env::args_os()) {
        Ok(cli) => cli,
        Err(LoadError::Usage(e)) => e.exit(),
        Err(LoadError::File(e)) => {
            eprintln!("chatixia-core: {e}");
            return ExitCode::from(1);
        }
    };
    // The load generator logs only warnings by default: its output is the report.
    let default_filter = if cli.command.is_some() {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    for w in &cli.sources.warnings {
        tracing::warn!("{w}");
    }
    match cli.command.clone() {
        Some(Command::Bench(args)) => return loadgen::main(args),
        Some(Command::Store(cmd)) => {
            return match cli.server_secret() {
                Ok(secret) => chatixia_core::store_cli::main(cmd, secret),
                Err(e) => {
                    eprintln!("chatixia-core: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Config(ConfigCommand::Example)) => {
            print!("{}", file::example());
            return ExitCode::SUCCESS;
        }
        Some(Command::Config(ConfigCommand::Check)) => {
            print!("{}", file::report(&cli.sources));
            return match cli.check() {
                Ok(()) => {
                    if let Ok(addr) = cli.listen_addr() {
                        println!("# listen address in effect: {addr}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chatixia-core: {e}");
                    ExitCode::from(1)
                }
            };
        }
        None => {}
    }
    match run(cli) {
        Ok(code) => code,
        Err(Failure::Store(e)) => {
            // One line naming the file and the problem; the data needs an operator.
            eprintln!("chatixia-core: {}", e.replace(['\n', '\r'], " "));
            ExitCode::from(chatixia_core::store_cli::EXIT_STORE_PROBLEM)
        }
        Err(Failure::Other(e)) => {
            eprintln!("chatixia-core: {e}");
            ExitCode::from(1)
        }
    }
}

/// Why the server did not run: the data directory (exit status 2) or anything else (1).
enum Failure {
    Store(String),
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

/// How often the control thread repeats that the state store is still unavailable.
const STORE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Logs the state store's availability from the control thread: once when it becomes
/// unavailable, once per [`STORE_LOG_INTERVAL`] while it stays so, once when it recovers
/// (never once per refused request).
struct StoreWatch {
    down_since: Option<std::time::Instant>,
    last_log: std::time::Instant,
    refused_at_log: u64,
}

impl StoreWatch {
    fn poll(&mut self, handle: &chatixia_store::StoreHandle) {
        let health = handle.health();
        let stats = handle.stats();
        let now = std::time::Instant::now();
        let reason = health.reason.unwrap_or_default();
        match (self.down_since, health.available) {
            (None, false) => {
                tracing::error!(
                    "state store unavailable: {reason}; changes that need a write are \
                     refused with 503 until it recovers (retried in the background)"
                );
                self.down_since = Some(now);
                self.last_log = now;
                self.refused_at_log = stats.refused_unavailable;
            }
            (Some(since), false) if now - self.last_log >= STORE_LOG_INTERVAL => {
                tracing::warn!(
                    "state store still unavailable after {:.0} s: {reason}; {} writes \
                     refused in the last {:.0} s, {} revocations waiting to be saved",
                    (now - since).as_secs_f64(),
                    stats.refused_unavailable - self.refused_at_log,
                    (now - self.last_log).as_secs_f64(),
                    stats.retained
                );
                self.last_log = now;
                self.refused_at_log = stats.refused_unavailable;
            }
            (Some(since), true) => {
                // Warning level, as the error it ends: a log filtered to warnings shows both.
                tracing::warn!(
                    "state store available again after {:.1} s",
                    (now - since).as_secs_f64()
                );
                self.down_since = None;
            }
            _ => {}
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let addr = cli.listen_addr()?;
    let shutdown_timeout = cli.shutdown_timeout()?;
    let tls = cli.tls_settings()?;
    // With the embedded TURN server, the HTTPS listener also takes ALPN `stun.turn`.
    let turn_alpn = !cli.turn.turn_listen.is_empty() || !cli.turn.turn_tls_listen.is_empty();
    // TLS: the certificate and key are read and checked first (an unreadable, invalid or
    // mismatched file stops the start, naming it).
    let tls_config = match &tls {
        Some(t) => Some(chatixia_core::tls::config::load_configs(
            &t.files, turn_alpn,
        )?),
        None => None,
    };
    let mut config = ServerConfig::new(cli.http_idle_timeout()?);
    let task_retention = cli.task_retention()?;
    let store_config = cli.store_config()?;
    config.ws = cli.ws_limits()?;
    config.hub = cli.hub_config(task_retention)?;
    config.registry = cli.registry_config();
    #[cfg(feature = "test-switches")]
    {
        config.test_clock = cli.test_clock;
        config.ws_echo = cli.ws_echo;
        if config.ws_echo {
            tracing::warn!(
                "--ws-echo: GET /ws-echo echoes WebSocket messages without a token (testing only)"
            );
        }
        if config.test_clock {
            tracing::warn!("--test-clock: POST /debug/clock can move the server's clock");
        }
    }
    config.http_client_limits = cli.http_client_limits()?;
    let jwt_secret = cli
        .server_secret()?
        .unwrap_or_else(|| chatixia_core::auth::DEFAULT_SECRET.as_bytes().to_vec());
    config.auth = cli.auth_config(load_api_keys(&cli)?, jwt_secret)?;
    config.pairing = cli.pairing_config(config.auth.secrets.clone())?;
    config.ice = cli.ice_config(cli.turn()?);
    if config.auth.insecure_open_admin {
        tracing::warn!(
            "--insecure-open-admin: anyone who can reach the port can approve, revoke and \
             delete, and read every task's payload and result; use only behind a trusted \
             boundary"
        );
    }
    if config.auth.jwt_secret == chatixia_core::auth::DEFAULT_SECRET.as_bytes() {
        // Allowed (the suite, local runs), loudly: with the public development secret
        // anyone can mint JWTs, and the data directory's sealed tokens open with it.
        tracing::warn!(
            "SIGNALING_SECRET is not set: using the public development secret. Anyone can \
             mint tokens, and the data directory is protected by a known key. Set \
             SIGNALING_SECRET before exposing this server."
        );
    }
    // Control thread, before any shard starts: opening the store may block on the disk.
    let (store, snapshot) = open_store(
        &cli.data_dir,
        &config.auth.secrets,
        store_config,
        config.pairing.retention,
    )
    .map_err(Failure::Store)?;
    config.store = Some(store.handle());
    match reactor::sys::raise_nofile() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }

    #[cfg(feature = "test-switches")]
    if std::env::var_os("CHATIXIA_DENY_IO_URING").is_some() {
        // Test hook: refuse io_uring as a container's seccomp profile would, so the
        // epoll fallback is exercised against a real refusal from the kernel.
        reactor::sys::deny_io_uring().map_err(|e| format!("CHATIXIA_DENY_IO_URING: {e}"))?;
    }
    let mut builder = Reactor::builder().driver(cli.io_driver);
    if let Some(n) = cli.cores {
        builder = builder.cores(n);
    }
    let reactor = builder.build().map_err(|e| e.to_string())?;
    let (mut reloader, shard_tls) = match (&tls, tls_config) {
        (Some(t), Some(c)) => {
            let (r, parts) = chatixia_core::tls::reload::start(
                t.files.clone(),
                turn_alpn,
                c,
                reactor.cores(),
                t.reload_interval,
            );
            (Some(r), parts.into_iter().map(Some).collect())
        }
        _ => (None, (0..reactor.cores()).map(|_| None).collect::<Vec<_>>()),
    };
    // The embedded TURN server (issue 24): its settings, the revocations every shard
    // must know, and each shard's listening sockets (bound here: a busy port fails
    // the start).
    config.turn_server = cli
        .turn
        .settings(cli.turn_secret()?.as_deref(), reactor.cores())?;
    if let Some(t) = config.turn_server.as_mut() {
        t.revoked_at_start = snapshot
            .revocations
            .iter()
            .map(|r| (r.peer_id.clone(), r.not_before_secs))
            .collect();
    }
    let turn_sockets = match config.turn_server.as_mut() {
        Some(t) => chatixia_core::server::turn::settings::bind(t, reactor.cores())?,
        None => (0..reactor.cores()).map(|_| Default::default()).collect(),
    };
    let (boots, stray) =
        chatixia_core::server::boot::split(snapshot, reactor.cores(), &config.auth.secrets);
    if !stray.is_empty() {
        tracing::info!(shards = ?stray, "tasks re-homed for the new shard count; heartbeats also ask these shards");
    }
    config.hub.stray_task_shards = stray;
    let pair_guard = config.pairing.guard;
    let (bound, listeners) =
        reactor::listener::bind_reuseport(addr, reactor.cores()).map_err(|e| e.to_string())?;
    // The cluster link (issue 25): started before the shards, which link to it as they
    // start; the default node id names the port just bound.
    let (node, cluster_parts) = start_cluster(&cli, bound.port(), reactor.cores())?;
    config.cluster = node.clone();
    let config = Arc::new(config);
    // The TLS listener beside the plain one (SO_REUSEPORT per shard, as the plain one).
    let (tls_bound, tls_listeners) = match tls.as_ref().and_then(|t| t.listen) {
        Some(a) => {
            let (b, ls) = reactor::listener::bind_reuseport(a, reactor.cores())
                .map_err(|e| format!("--tls-listen: {e}"))?;
            (Some(b), ls.into_iter().map(Some).collect())
        }
        None => (
            tls.as_ref().map(|_| bound),
            (0..reactor.cores()).map(|_| None).collect::<Vec<_>>(),
        ),
    };
    let shard_tls: Vec<Option<server::ShardTlsListen>> = shard_tls
        .into_iter()
        .zip(tls_listeners)
        .map(|(t, listener)| t.map(|tls| server::ShardTlsListen { tls, listener }))
        .collect();

    // Block SIGINT/SIGTERM before any shard starts: threads inherit the mask, and this
    // thread takes the signals synchronously.
    signals::block_termination().map_err(|e| format!("cannot block signals: {e}"))?;
    let cores = reactor.cores();
    let driver = reactor.driver();
    let running = reactor
        .start(
            listeners
                .into_iter()
                .zip(boots)
                .zip(turn_sockets)
                .zip(shard_tls)
                .zip(cluster_parts)
                .map(|((((l, b), t), s), c)| (l, b, t, s, c))
                .collect(),
            move |shard, (listener, boot, turn, tls, cluster)| {
                server::run_shard(shard, listener, config.clone(), boot, turn, tls, cluster)
            },
        )
        .map_err(|e| e.to_string())?;
    match tls_bound {
        Some(tls) if tls == bound => {
            tracing::info!(%bound, cores, driver = %driver, "chatixia-core listening (TLS)")
        }
        Some(tls) => {
            tracing::info!(%bound, %tls, cores, driver = %driver, "chatixia-core listening (plain and TLS)")
        }
        None => tracing::info!(%bound, cores, driver = %driver, "chatixia-core listening"),
    }
    log_pairing_odds(&pair_guard, cores);
    if let Some(path) = &cli.port_file {
        write_port_file("--port-file", path, bound)?;
    }
    if let (Some(path), Some(tls)) = (&cli.tls_port_file, tls_bound) {
        write_port_file("--tls-port-file", path, tls)?;
    }

    let trim_interval = cli.malloc_trim_interval()?;
    let mut last_trim = std::time::Instant::now();
    let store_handle = store.handle();
    let mut watch = StoreWatch {
        down_since: None,
        last_log: last_trim,
        refused_at_log: 0,
    };
    loop {
        watch.poll(&store_handle);
        if !trim_interval.is_zero() && last_trim.elapsed() >= trim_interval {
            trim_heap();
            last_trim = std::time::Instant::now();
        }
        if let Some(r) = reloader.as_mut() {
            r.tick();
        }
        match signals::wait_termination(Duration::from_millis(200)) {
            Some(signals::Signal::Hangup) => match reloader.as_mut() {
                Some(r) => r.reload("SIGHUP"),
                None => tracing::info!("SIGHUP: nothing to reload (no TLS certificate)"),
            },
            Some(sig) => {
                tracing::info!(signal = ?sig, timeout = ?shutdown_timeout, "graceful shutdown");
                break;
            }
            None => {}
        }
        if let Some(i) = running.failed_shard() {
            return Err(Failure::Other(format!(
                "shard {i} stopped unexpectedly (see the log above)"
            )));
        }
        // Another live node holds this --node-id (found before the link was ever up):
        // the process stops, its shards first; the other's lease is not touched.
        if let Some(fatal) = node.as_ref().and_then(|n| n.node.fatal()) {
            let _ = running.shutdown(shutdown_timeout);
            store.close();
            return Err(Failure::Other(fatal));
        }
    }
    match running.shutdown(shutdown_timeout) {
        Stopped::Clean => tracing::info!("shutdown complete"),
        Stopped::TimedOut => {
            tracing::warn!("shutdown timeout reached; remaining connections were dropped")
        }
        Stopped::ShardFailed(i) => {
            return Err(Failure::Other(format!("shard {i} failed during shutdown")))
        }
    }
    // The node's lease goes back (the other nodes drop it at once rather than after
    // the lease), after the shards' last directory changes.
    if let Some(n) = &node {
        n.node.stop(CLUSTER_STOP_MAX);
    }
    // Commits what is queued and releases the data directory's lock.
    store.close();
    Ok(ExitCode::SUCCESS)
}

/// Longest the shutdown waits for the cluster link to send what it holds and hand the
/// node's lease back.
const CLUSTER_STOP_MAX: Duration = Duration::from_secs(2);

/// Starts the link to the cluster's Redis when `--cluster` is given: the node's lease,
/// its channel, the scripts of the services (signaling's directory, the registry's
/// mirror and bindings, pairing's approvals). One part per shard.
#[allow(clippy::type_complexity)]
fn start_cluster(
    cli: &Cli,
    port: u16,
    cores: usize,
) -> Result<
    (
        Option<server::cluster::NodeHandle>,
        Vec<Option<server::cluster::ShardCluster>>,
    ),
    Failure,
> {
    let none = || (0..cores).map(|_| None).collect();
    let Some(mut cfg) =
        chatixia_core::config::cluster::settings(&cli.cluster, port).map_err(Failure::Other)?
    else {
        return Ok((None, none()));
    };
    let signaling = chatixia_core::signaling::remote::on_connect(&cfg.prefix, &cfg.node_id);
    // Its stale directory entries go on every connect (before its shards assert what
    // they hold), and all of them at a graceful stop.
    cfg.on_stop.push(signaling.clone());
    cfg.on_connect.push(signaling);
    // Its shard count, for relays addressed to its shards' own channels.
    cfg.on_connect
        .push(chatixia_core::signaling::remote::on_connect_cores(
            &cfg.prefix,
            &cfg.node_id,
            cores,
        ));
    // The same for the registry's mirror (its agents).
    let registry = chatixia_core::registry::mirror::on_connect(&cfg.prefix, &cfg.node_id);
    cfg.on_stop.push(registry.clone());
    cfg.on_connect.push(registry);
    let node_id = cfg.node_id.clone();
    let bells: Vec<Arc<server::cluster::LateBell>> =
        (0..cores).map(|_| Arc::new(Default::default())).collect();
    let route: chatixia_cluster::Route = Arc::new(move |key: &[u8]| reactor::shard_of(key, cores));
    let (node, parts) = chatixia_cluster::Node::start(
        cfg,
        chatixia_core::signaling::remote::scripts()
            .into_iter()
            .chain(chatixia_core::registry::mirror::scripts())
            .chain(chatixia_core::registry::bindings::scripts())
            .chain(chatixia_core::pairing::cluster::scripts())
            .chain(chatixia_core::hub::cluster::scripts())
            .chain(chatixia_core::pairing::directory::scripts())
            .collect(),
        bells
            .iter()
            .map(|b| b.clone() as Arc<dyn chatixia_cluster::Doorbell>)
            .collect(),
        route,
    )
    .map_err(|e| Failure::Other(format!("--cluster: cannot start the link: {e}")))?;
    tracing::info!(node = %node_id, "cluster node: linking to Redis");

    let shards = parts
        .into_iter()
        .zip(bells)
        .map(|(parts, bell)| Some(server::cluster::ShardCluster { parts, bell }))
        .collect();
    Ok((
        Some(server::cluster::NodeHandle {
            node: Arc::new(node),
            id: node_id,
        }),
        shards,
    ))
}

/// Writes `addr` to `path` atomically (rename), so a reader never sees a partial address.
/// This is the control thread after the shards started, not a shard: blocking is fine.
fn write_port_file(
    flag: &str,
    path: &std::path::Path,
    addr: std::net::SocketAddr,
) -> Result<(), Failure> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::Other(format!("cannot write {flag} {}: {e}", path.display())))
}

/// Opens the data directory (lock, recovery, integrity check, secret check) and loads
/// every record; drops invite codes that expired, and rejected or revoked pairing entries
/// whose retention ran out, while the server was down. A damaged, locked or unreadable
/// directory is an error naming the file and the problem.
fn open_store(
    dir: &std::path::Path,
    secrets: &chatixia_store::Secrets,
    config: chatixia_store::StoreConfig,
    pairing_retention: Duration,
) -> Result<(chatixia_store::Store, chatixia_store::Snapshot), String> {
    let (store, mut snapshot) = chatixia_store::Store::open(dir, secrets, config)
        .map_err(|e| format!("cannot open the data directory: {e}"))?;
    if snapshot.data_bytes > config.data_bytes_max {
        // Loaded in full (nothing acknowledged is dropped); only growth is refused.
        tracing::warn!(
            data_bytes = snapshot.data_bytes,
            data_bytes_max = config.data_bytes_max,
            "the durable store holds more than --data-bytes-max: changes that grow it are \
             refused (503) until tasks finish or the bound is raised"
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut gone = snapshot.take_expired_invites(now);
    let retention_ns = u64::try_from(pairing_retention.as_nanos()).unwrap_or(u64::MAX);
    gone.extend(snapshot.take_retired_pairings(now.saturating_sub(retention_ns)));
    if !gone.is_empty() {
        // Best effort: a disk that refuses it leaves them for the next start.
        if let Err(e) = store.handle().write_blocking(gone) {
            tracing::warn!(error = %e, "cannot drop expired invite codes and retired pairing entries");
        }
    }
    tracing::info!(data_dir = %dir.display(), "{}", snapshot.summary());
    Ok((store, snapshot))
}

/// Hands the free pages at the top and inside every glibc malloc arena back to the
/// kernel (`malloc_trim(0)`): after a flood of connections, glibc keeps the freed
/// memory of each shard's arena mapped. Runs on the control thread, never a shard; it
/// takes each arena's lock briefly. A no-op under another allocator.
fn trim_heap() {
    #[cfg(not(any(feature = "mimalloc", feature = "jemalloc")))]
    reactor::sys::malloc_trim();
}

/// Reads `--api-keys-file` (`API_KEYS_FILE`, default `api_keys.json`) once, before the
/// shards start. From the environment or the default, as the reference does: no readable
/// file → the development key; a malformed file → a warning and the development key.
/// Named on the command line or in the config file, an operator asked for that file: a
/// missing or malformed one stops the start.
fn load_api_keys(cli: &Cli) -> Result<ApiKeys, String> {
    let path = cli.api_keys_file.display().to_string();
    let strict = matches!(
        cli.sources.source("api-keys-file"),
        Source::CommandLine | Source::File
    );
    // Read once on the control thread before any shard starts; shards get a parsed,
    // immutable copy and never touch the file.
    let bytes = match std::fs::read(&cli.api_keys_file) {
        Ok(b) => b,
        Err(e) if strict => return Err(format!("cannot read --api-keys-file {path}: {e}")),
        Err(e) => {
            tracing::warn!(%path, error = %e, "no API keys file; using the development key ak_dev_001");
            return Ok(ApiKeys::dev_default());
        }
    };
    if let Some(w) = file::world_readable(&cli.api_keys_file) {
        tracing::warn!("{w}");
    }
    match ApiKeys::parse(&bytes) {
        Ok(keys) => {
            tracing::info!(%path, keys = keys.len(), "API keys loaded");
            Ok(keys)
        }
        Err(e) if strict => Err(format!("--api-keys-file {path}: {e}")),
        Err(e) => {
            tracing::warn!(%path, error = %e, "malformed API keys file; using the development key ak_dev_001");
            Ok(ApiKeys::dev_default())
        }
    }
}

/// Says at start how guessable invite codes are with this configuration (docs/PROTOCOL.md
/// §5.3): the bound for 1,000 addresses guessing at full speed for a day.
fn log_pairing_odds(g: &chatixia_core::pairing::GuardLimits, shards: usize) {
    match g.code_format {
        chatixia_core::pairing::CodeFormat::Long => {
            let odds = g.long_code_daily_odds(shards);
            let odds_s = format!("{odds:.1e}");
            if odds < 1e-6 {
                tracing::info!(odds = %odds_s, "pairing: long invite codes; 1,000 guessing addresses hit a live code with a chance of at most this a day");
            } else {
                tracing::warn!(odds = %odds_s, "pairing: with this many shards and --pair-wrong-guesses-per-address-max, 1,000 guessing addresses could hit a live code with a chance above one in a million a day; lower the budget");
            }
        }
        chatixia_core::pairing::CodeFormat::Digits6 => tracing::warn!(
            "pairing: six-digit invite codes (--pair-code-format digits6, for chatixia pair 0.4.3): \
             a flood from many addresses may find a live code, and pauses six-digit pairing; see docs/PROTOCOL.md §5.3"
        ),
    }
}

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chatixia_core::config::Cli;
use chatixia_core::server::{self, ServerConfig};
use reactor::signals;
use reactor::{Reactor, Stopped};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chatixia-core: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let addr = cli.listen_addr()?;
    let shutdown_timeout = cli.shutdown_timeout()?;
    let config = Arc::new(ServerConfig {
        http_idle_timeout: cli.http_idle_timeout()?,
        http_limits: chatixia_core::http::Limits::default(),
    });
    match reactor::sys::raise_nofile() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }

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
    let (bound, listeners) =
        reactor::listener::bind_reuseport(addr, reactor.cores()).map_err(|e| e.to_string())?;

    // Block SIGINT/SIGTERM before any shard starts: threads inherit the mask, and this
    // thread takes the signals synchronously.
    signals::block_termination().map_err(|e| format!("cannot block signals: {e}"))?;
    let cores = reactor.cores();
    let driver = reactor.driver();
    let running = reactor
        .start(listeners, move |shard, listener| {
            server::run_shard(shard, listener, config.clone())
        })
        .map_err(|e| e.to_string())?;
    tracing::info!(%bound, cores, driver = %driver, "chatixia-core listening");

    loop {
        if let Some(sig) = signals::wait_termination(Duration::from_millis(200)) {
            tracing::info!(signal = ?sig, timeout = ?shutdown_timeout, "graceful shutdown");
            break;
        }
        if let Some(i) = running.failed_shard() {
            return Err(format!(
                "shard {i} stopped unexpectedly (see the log above)"
            ));
        }
    }
    match running.shutdown(shutdown_timeout) {
        Stopped::Clean => tracing::info!("shutdown complete"),
        Stopped::TimedOut => {
            tracing::warn!("shutdown timeout reached; remaining connections were dropped")
        }
        Stopped::ShardFailed(i) => return Err(format!("shard {i} failed during shutdown")),
    }
    Ok(ExitCode::SUCCESS)
}

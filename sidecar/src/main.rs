//! `chatixia-sidecar`: spawned by the Python agent with env vars and no arguments
//! (PROTOCOL.md §8; the variables are listed in `chatixia_sidecar::config`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use chatixia_sidecar::config::SidecarConfig;
use chatixia_sidecar::driver::{self, Prepared};
use reactor::{signals, Reactor};

/// How long a graceful stop may take before the shard is dropped.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn,is=warn,dimpl=warn")),
        )
        .with_writer(std::io::stderr)
        // The agent sends our stderr to a log file: no colour codes there.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatixia-sidecar: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), String> {
    let mut config = SidecarConfig::from_env()?;
    let registry_tls = config.token_url.is_tls() || config.signaling_url.is_tls();
    let turn_tls = config
        .turn
        .as_ref()
        .is_some_and(|t| t.url.starts_with("turns:"));
    if registry_tls || turn_tls {
        // The roots are files: read here, before the shard starts.
        let roots = chatixia_sidecar::tls::roots()?;
        if registry_tls {
            tracing::info!(roots = roots.len(), "TLS to the registry");
            config.tls = Some(chatixia_sidecar::tls::client_config(roots.clone())?);
        }
        if turn_tls {
            tracing::info!(roots = roots.len(), "TLS to the TURN server");
            config.turn_tls = Some(chatixia_sidecar::tls::turn_client_config(roots)?);
        }
    }
    str0m::crypto::from_feature_flags().install_process_default();
    let udp = driver::bind_udp().map_err(|e| format!("UDP: {e}"))?;
    let ipc_path = config.ipc_socket.clone();
    let ipc = driver::bind_ipc(&ipc_path).map_err(|e| format!("IPC socket {ipc_path}: {e}"))?;
    let done = Arc::new(AtomicBool::new(false));
    let trim = Arc::new(AtomicBool::new(false));
    let reactor = Reactor::builder()
        .cores(1)
        .pin(false)
        .driver(config.io_driver)
        .build()
        .map_err(|e| e.to_string())?;
    signals::block_termination().map_err(|e| format!("cannot block signals: {e}"))?;
    let prepared = Prepared {
        config,
        udp,
        ipc,
        done: done.clone(),
        trim: trim.clone(),
    };
    // The prepared sockets travel to the shard as its per-shard start value.
    let running = reactor
        .start::<(), _, _, _>(vec![prepared], move |_shard, p| driver::run(p))
        .map_err(|e| e.to_string())?;
    let mut result = Ok(());
    loop {
        if let Some(sig) = signals::wait_termination(Duration::from_millis(100)) {
            tracing::info!(signal = ?sig, "stopping");
            break;
        }
        if done.load(Ordering::Acquire) {
            break;
        }
        if trim.swap(false, Ordering::AcqRel) {
            // A burst of DataChannel traffic drained: give the freed heap back.
            reactor::sys::malloc_trim();
            tracing::debug!(target: "chatixia_sidecar::trim", "DataChannel traffic drained: heap trimmed");
        }
        if running.failed_shard().is_some() {
            result = Err("the sidecar shard stopped unexpectedly".to_string());
            break;
        }
    }
    running.shutdown(SHUTDOWN_TIMEOUT);
    // The shard has stopped: the control thread removes the socket file.
    let _ = std::fs::remove_file(&ipc_path);
    result
}

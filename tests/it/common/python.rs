//! The Python side of the interop tests: the venv from `scripts/setup-python.sh` (the
//! `chatixia` 0.4.3 agent and `aiortc` from PyPI), and child processes (the agent, a
//! Python peer) stopped as process groups.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long `scripts/setup-python.sh` may take (a first run downloads the wheels).
const SETUP_TIMEOUT: Duration = Duration::from_secs(900);

/// Longest a Python process (or a server started for it) may live, even if the test
/// process is killed outright (then no Drop runs): `timeout(1)` stops it.
const PROCESS_LIFETIME: &str = "300";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs scripts/setup-python.sh (idempotent) once per test process and returns the venv's
/// `bin` directory. Panics, with the script's explanation above, when there is no usable
/// venv: an interop test never passes without its peer (a later call runs the script
/// again). Every Python test is in this one binary, so the script's checks (several
/// Python start-ups) run once per suite, not once per test.
pub fn venv_bin() -> PathBuf {
    static VENV_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV_BIN.get_or_init(setup_venv).clone()
}

fn setup_venv() -> PathBuf {
    let script = repo_root().join("scripts/setup-python.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "scripts/setup-python.sh did not finish within {SETUP_TIMEOUT:?} \
                 (pip install hanging? see its output above)"
            );
        }
        thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    assert!(
        status.success(),
        "scripts/setup-python.sh failed ({status}); the interop tests need Python >= 3.12 \
         and the venv it creates (chatixia 0.4.3, aiortc; see its message above). \
         stdout: {out:?}"
    );
    let python = PathBuf::from(
        out.lines()
            .last()
            .unwrap_or_else(|| panic!("setup-python.sh printed no python path"))
            .trim(),
    );
    let bin = python.parent().unwrap().to_path_buf();
    for exe in ["python", "chatixia"] {
        assert!(
            bin.join(exe).is_file(),
            "the venv from scripts/setup-python.sh has no `{exe}` at {} — \
             delete target/pyenv and re-run the script",
            bin.join(exe).display()
        );
    }
    bin
}

/// `program` under `timeout --kill-after=5 300` when coreutils' timeout exists.
pub fn bounded(program: &Path) -> Command {
    let timeout = ["/usr/bin/timeout", "/bin/timeout"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file());
    match timeout {
        Some(t) => {
            let mut cmd = Command::new(t);
            cmd.arg("--kill-after=5").arg(PROCESS_LIFETIME).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Variables that would redirect an agent or its sidecar somewhere else, or send its
/// HTTP through a proxy: none of them may leak in from the caller's environment.
pub const AGENT_ENV_REMOVE: &[&str] = &[
    "SIGNALING_URL",
    "TOKEN_URL",
    "API_KEY",
    "IPC_SOCKET",
    "REGISTRY_URL",
    "CHATIXIA_REGISTRY_URL",
    "CHATIXIA_AGENT_ID",
    "SIDECAR_BINARY",
    "STUN_URLS",
    "ICE_SERVERS",
    "TURN_URL",
    "TURN_SECRET",
    "TURN_USERNAME",
    "TURN_PASSWORD",
    "ICE_TRANSPORT_POLICY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
];

/// A child process (optionally the leader of its own process group) that is stopped on
/// drop: SIGTERM to the group, then SIGKILL after a grace period.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub group: bool,
    pub grace: Duration,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill(1) keeps `unsafe` out of the tests.
    fn signal(&self, sig: &str) {
        let target = if self.group {
            format!("-{}", self.pid())
        } else {
            self.pid().to_string()
        };
        let _ = Command::new("kill")
            .args([sig, "--", &target])
            .stderr(Stdio::null())
            .status();
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn stop(&mut self) {
        if self.exited().is_none() {
            self.signal("-TERM");
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline && self.exited().is_none() {
                thread::sleep(Duration::from_millis(50));
            }
        }
        // The group may outlive its leader (the agent's sidecar): always finish it off.
        if self.group {
            self.signal("-KILL");
        } else if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `chatixia run agent.yaml` in `dir`, as the interop tests start it: bounded in time,
/// a clean environment (`AGENT_ENV_REMOVE`), the venv first on PATH (so a sidecar's
/// `#!/usr/bin/env python3` finds it), proxies off for loopback, output to
/// `dir/agent.log`, and a process group of its own so the sidecar it spawns stops with
/// it. The caller adds the scenario's variables and spawns.
pub fn agent_command(dir: &Path) -> Command {
    let venv = venv_bin();
    let path = std::env::join_paths(std::iter::once(venv.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    let mut cmd = bounded(&venv.join("chatixia"));
    cmd.arg("run").arg("agent.yaml").current_dir(dir);
    for k in AGENT_ENV_REMOVE {
        cmd.env_remove(k);
    }
    cmd.env("PATH", path)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("agent log"))
        .stderr(log)
        .process_group(0);
    cmd
}

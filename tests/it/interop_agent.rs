//! Interop: the real Python agent from PyPI (`chatixia` 0.4.3) against chatixia-core.
//!
//! 1. `scripts/setup-python.sh` creates (or reuses) the venv at `target/pyenv`.
//! 2. chatixia-core starts on a free loopback port with a temp `API_KEYS_FILE`.
//! 3. `chatixia run agent.yaml` starts, with `tests/fixtures/fake_sidecar.py` as its sidecar.
//! 4. The agent registers and heartbeats; it must show up `active` in
//!    `GET /api/registry/agents`.
//! 5. A `list_agents` task for it goes through `POST /api/hub/tasks`; the agent picks it up
//!    from a heartbeat's `pending_tasks`, runs the skill (which itself reads
//!    `GET /api/registry/agents`) and posts the result to `POST /api/hub/tasks/{id}`.
//!
//! Environment overrides:
//! - `CHATIXIA_CORE_BIN`: the server binary to test (default: this package's binary).
//! - `CHATIXIA_VENV`, `CHATIXIA_PYTHON`: passed on to `scripts/setup-python.sh`.
//!
//! Nothing leaves loopback: the agent talks only to the server given in agent.yaml (proxy
//! variables are removed), the fake sidecar makes no network connection at all, and the
//! server is started with `--stun-url none` when it supports that flag.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common;

use common::python::{agent_command, bounded, repo_root, venv_bin, Proc};

const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
const AGENT_ACTIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// The agent heartbeats every 15 s and picks tasks up only from a heartbeat's response.
const TASK_TIMEOUT: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------
// Processes and cleanup
// ---------------------------------------------------------------------------------------

/// A scratch directory, removed on drop unless the test is failing (then kept for the logs).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        // Short: the IPC socket lives in here and Unix socket paths are limited to 107 bytes.
        let base = if Path::new("/tmp").is_dir() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("cx-{tag}-{}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("interop: kept logs in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Everything the test started. Field order is drop order: the agent (and its sidecar)
/// goes first, then the server, then the scratch directory.
struct Harness {
    agent: Option<Proc>,
    server: Option<Proc>,
    dir: TempDir,
}

impl Harness {
    fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The tail of every log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["server.log", "agent.log", "sidecar.log"] {
            let text = fs::read_to_string(self.dir().join(name))
                .unwrap_or_else(|e| format!("(unreadable: {e})"));
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!(
                "\n----- {name} (last {} lines) -----\n",
                tail.len()
            ));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{msg}\n{}", self.logs());
    }

    /// Fail early, with the logs, when the agent or the server died.
    fn check_alive(&mut self, during: &str) {
        if let Some(st) = self.agent.as_mut().and_then(Proc::exited) {
            self.fail(format!("the chatixia agent exited ({st}) while {during}"));
        }
        if let Some(st) = self.server.as_mut().and_then(Proc::exited) {
            self.fail(format!("chatixia-core exited ({st}) while {during}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Minimal blocking HTTP/1.1 client (Connection: close)
// ---------------------------------------------------------------------------------------

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "HTTP {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Response, String> {
    let io = |e: std::io::Error| format!("{method} {path}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n");
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    s.write_all(req.as_bytes()).map_err(io)?;

    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(io)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line {line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(io)?;
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(io)?;
            let size_hex = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| format!("{method} {path}: bad chunk size {line:?}"))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).map_err(io)?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).map_err(io)?;
        }
    } else if let Some(n) = content_length {
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(io)?;
    } else {
        r.read_to_end(&mut body).map_err(io)?;
    }
    Ok(Response { status, body })
}

// ---------------------------------------------------------------------------------------
// Setup steps
// ---------------------------------------------------------------------------------------

fn server_binary() -> PathBuf {
    match std::env::var_os("CHATIXIA_CORE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_chatixia-core")),
    }
}

/// Whether the server binary knows `flag` (feature detection across builds).
fn server_supports(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

/// Starts the server on loopback port 0 and reads the port it got from `--port-file`
/// (no "find a free port, then start" race), then waits for /healthz.
fn start_server(h: &mut Harness, api_keys_file: &Path, secret: &str) -> SocketAddr {
    let bin = server_binary();
    assert!(
        bin.is_file(),
        "server binary {} does not exist (CHATIXIA_CORE_BIN?)",
        bin.display()
    );
    let no_stun = server_supports(&bin, "--stun-url");
    let port_file = h.dir().join("server.port");
    {
        let _ = fs::remove_file(&port_file);
        let log = fs::File::create(h.dir().join("server.log")).unwrap();
        let mut cmd = bounded(&bin);
        cmd.arg("--cores")
            .arg("2")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--port-file")
            .arg(&port_file)
            .arg("--shutdown-timeout")
            .arg("2");
        if no_stun {
            cmd.arg("--stun-url").arg("none");
        }
        cmd.current_dir(h.dir())
            .env("API_KEYS_FILE", api_keys_file)
            .env("SIGNALING_SECRET", secret)
            .env_remove("PORT")
            .env_remove("TURN_URL")
            .env_remove("TURN_SECRET")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        h.server = Some(Proc {
            name: "chatixia-core",
            child,
            group: true,
            grace: Duration::from_secs(5),
        });
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if let Some(st) = h.server.as_mut().unwrap().exited() {
                h.fail(format!("chatixia-core exited at startup ({st})"));
            }
            let addr = fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            if let Some(addr) = addr {
                if matches!(http(addr, "GET", "/healthz", None), Ok(r) if r.status == 200) {
                    return addr;
                }
            }
            if Instant::now() > deadline {
                h.fail(format!(
                    "chatixia-core did not write {} and answer /healthz within {SERVER_START_TIMEOUT:?}",
                    port_file.display()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn start_agent(h: &mut Harness, venv_bin: &Path, addr: SocketAddr, agent_id: &str, api_key: &str) {
    let sidecar = repo_root().join("tests/fixtures/fake_sidecar.py");
    assert!(sidecar.is_file(), "missing {}", sidecar.display());
    let socket = h.dir().join("sidecar.sock");
    let registry = format!("http://{addr}");
    // `provider` only has to pass validation: `chatixia run` never calls an LLM (the
    // registry task path and the mesh skills are plain HTTP), so no key is configured.
    let manifest = format!(
        "name: {agent_id}\n\
         description: chatixia-core interop test agent\n\
         registry: {registry}\n\
         provider: openai\n\
         model: none\n\
         sidecar:\n  binary: {sidecar}\n  api_key: {api_key}\n  socket: {socket}\n\
         skills:\n  builtin:\n    - list_agents\n",
        sidecar = sidecar.display(),
        socket = socket.display(),
    );
    fs::write(h.dir().join("agent.yaml"), manifest).unwrap();

    let mut cmd = agent_command(h.dir());
    // What the agent would derive from `registry`, spelled out.
    cmd.env("SIGNALING_URL", format!("ws://{addr}/ws"))
        .env("TOKEN_URL", format!("{registry}/api/token"));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", venv_bin.join("chatixia").display()));
    h.agent = Some(Proc {
        name: "chatixia agent",
        child,
        group: true,
        grace: Duration::from_secs(3),
    });
}

fn get_json(h: &Harness, addr: SocketAddr, path: &str) -> Value {
    match http(addr, "GET", path, None).and_then(|r| {
        if r.status == 200 {
            r.json()
        } else {
            Err(format!(
                "GET {path}: HTTP {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ))
        }
    }) {
        Ok(v) => v,
        Err(e) => h.fail(e),
    }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[test]
fn python_agent_registers_heartbeats_and_runs_a_list_agents_task() {
    // (a) The venv with the real agent.
    let venv_bin = venv_bin();

    let mut h = Harness {
        agent: None,
        server: None,
        dir: TempDir::new("interop"),
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let agent_id = format!("interop-agent-{}", std::process::id());
    let api_key = format!("ak_interop_{nanos:x}");
    let secret = format!("interop-secret-{nanos:x}");

    // (b) The server, with an API key for the agent.
    let api_keys_file = h.dir().join("api_keys.json");
    let keys =
        json!({"keys": {&api_key: {"peer_id": format!("{agent_id}-sidecar"), "role": "agent"}}});
    fs::write(&api_keys_file, keys.to_string()).unwrap();
    let addr = start_server(&mut h, &api_keys_file, &secret);

    // (c) The agent, with the fake sidecar.
    start_agent(&mut h, &venv_bin, addr, &agent_id, &api_key);

    // (d) It registers and heartbeats: `active` in the registry.
    let deadline = Instant::now() + AGENT_ACTIVE_TIMEOUT;
    let record = loop {
        h.check_alive("waiting for it to register");
        // Not fatal yet: if the server cannot take the registration, the agent exits
        // with the more telling message (check_alive above reports it with its log).
        let last = match http(addr, "GET", "/api/registry/agents", None) {
            Ok(r) if r.status == 200 => match r.json() {
                Ok(agents) => {
                    let Some(list) = agents.as_array() else {
                        h.fail(format!(
                            "GET /api/registry/agents is not an array: {agents}"
                        ));
                    };
                    let found = list
                        .iter()
                        .find(|a| a["agent_id"] == agent_id.as_str() && a["health"] == "active");
                    if let Some(a) = found {
                        break a.clone();
                    }
                    agents.to_string()
                }
                Err(e) => e,
            },
            Ok(r) => format!("HTTP {} {:?}", r.status, String::from_utf8_lossy(&r.body)),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            h.fail(format!(
                "agent {agent_id} not `active` in GET /api/registry/agents within \
                 {AGENT_ACTIVE_TIMEOUT:?}; last answer: {last}"
            ));
        }
        thread::sleep(POLL);
    };
    assert_eq!(
        record["sidecar_peer_id"],
        format!("{agent_id}-sidecar"),
        "{record}"
    );

    // The sidecar was started by the agent, with the contract's env.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fs::read_to_string(h.dir().join("sidecar.log")).unwrap_or_default();
        if log.contains("\"agent connected\"") {
            for want in [
                format!("\"API_KEY\": \"{api_key}\""),
                format!("\"SIGNALING_URL\": \"ws://{addr}/ws\""),
                format!("\"TOKEN_URL\": \"http://{addr}/api/token\""),
                format!(
                    "\"IPC_SOCKET\": \"{}\"",
                    h.dir().join("sidecar.sock").display()
                ),
            ] {
                if !log.contains(&want) {
                    h.fail(format!("the sidecar's env lacks {want}"));
                }
            }
            break;
        }
        if Instant::now() > deadline {
            h.fail("the agent never connected to the fake sidecar's IPC socket");
        }
        thread::sleep(POLL);
    }

    // (e) A list_agents task for it, picked up through a heartbeat and completed.
    let submit = json!({"skill": "list_agents", "target_agent_id": agent_id, "payload": {}});
    let task_id = match http(addr, "POST", "/api/hub/tasks", Some(&submit)).and_then(|r| r.json()) {
        Ok(v) => match v["task_id"].as_str() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => h.fail(format!("POST /api/hub/tasks: no task_id in {v}")),
        },
        Err(e) => h.fail(e),
    };
    let deadline = Instant::now() + TASK_TIMEOUT;
    let task = loop {
        h.check_alive("waiting for the task");
        let t = get_json(&h, addr, &format!("/api/hub/tasks/{task_id}"));
        match t["state"].as_str() {
            Some("completed") => break t,
            Some("failed") => h.fail(format!("task {task_id} failed: {t}")),
            Some(_) => {}
            None => h.fail(format!("GET /api/hub/tasks/{task_id}: no state in {t}")),
        }
        if Instant::now() > deadline {
            h.fail(format!(
                "task {task_id} not completed within {TASK_TIMEOUT:?} (the agent heartbeats \
                 every 15 s); last record: {t}"
            ));
        }
        thread::sleep(POLL);
    };
    assert_eq!(task["assigned_agent_id"], agent_id.as_str(), "{task}");
    let result = task["result"].as_str().unwrap_or_default();
    assert!(
        !result.is_empty(),
        "completed task has an empty result: {task}"
    );
    // The skill's own GET /api/registry/agents, rendered by the agent: it lists itself.
    assert!(
        result.contains("## Mesh Agents")
            && result.contains(&format!("**{agent_id}** **(you)** [active]")),
        "unexpected list_agents result: {result:?}\n{}",
        h.logs()
    );

    // (f) Clean shutdown happens in Harness's Drop (agent group first, then the server).
    let agent = h.agent.as_mut().unwrap();
    eprintln!("interop: {} pid {} ok", agent.name, agent.pid());
}

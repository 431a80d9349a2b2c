//! End to end: two `chatixia` agents from PyPI (0.4.3) run with OUR `chatixia-sidecar`
//! as `sidecar.binary`, against chatixia-core. They connect over a DataChannel; a hub
//! task with skill `delegate` for agent alpha makes alpha send a `task_request` to beta
//! over that DataChannel, and beta's `task_response` comes back the same way.
//!
//! Why no LLM is involved: the agent's heartbeat loop runs a hub task's skill handler
//! directly (`runner._execute_task`); `delegate` (`mesh_skills.handle_delegate`) with
//! `target_agent_id` sends the `task_request` over P2P when the target's sidecar
//! (`{target}-sidecar`) is a connected peer; beta answers it in `_handle_p2p_message`
//! with its `list_agents` handler, a plain `GET /api/registry/agents`.
//!
//! What proves the DataChannel path (and not the registry fallback, which would post a
//! second hub task for beta and poll it): the hub holds exactly one task; both sidecars'
//! logs show the `task_request` and the `task_response` with the same request id going
//! out of one and into the other over the DataChannel; the result is beta's rendering
//! (`**beta** **(you)**`). And both sidecars got `STUN_URLS=none` through the agent's env
//! (they log that no STUN server is configured): nothing leaves loopback.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::python::{agent_command, Proc};
use common::{json, Opts, Server, TempDir, Value};

/// The agent heartbeats every 15 s and picks tasks up only from a heartbeat's response;
/// the delegation itself is one DataChannel round trip.
const TASK_TIMEOUT: Duration = Duration::from_secs(45);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

struct Agent {
    name: &'static str,
    proc: Proc,
    dir: TempDir,
}

impl Agent {
    fn start(server: &Server, name: &'static str, skills: &[&str]) -> Agent {
        let dir = TempDir::new();
        let socket = dir.0.join("sidecar.sock");
        let skills: String = skills.iter().map(|s| format!("    - {s}\n")).collect();
        // `provider` only has to pass validation: no LLM is called (see the module doc).
        let manifest = format!(
            "name: {name}\n\
             description: chatixia-sidecar end-to-end test agent\n\
             registry: http://{addr}\n\
             provider: openai\n\
             model: none\n\
             sidecar:\n  binary: {sidecar}\n  api_key: ak_{name}\n  socket: {socket}\n\
             skills:\n  builtin:\n{skills}",
            addr = server.addr,
            sidecar = common::sidecar::sidecar_binary().display(),
            socket = socket.display(),
        );
        std::fs::write(dir.0.join("agent.yaml"), manifest).unwrap();
        let mut cmd = agent_command(&dir.0);
        // Passed on to the sidecar by the agent (MeshClient copies its env).
        cmd.env("STUN_URLS", "none").env(
            "RUST_LOG",
            "info,str0m=warn,is=warn,dimpl=warn,chatixia_sidecar::engine=debug",
        );
        let child = cmd.spawn().expect("spawn chatixia agent");
        Agent {
            name,
            proc: Proc {
                name: "chatixia agent",
                child,
                group: true,
                grace: Duration::from_secs(3),
            },
            dir,
        }
    }

    fn peer_id(&self) -> String {
        format!("{}-sidecar", self.name)
    }

    /// The sidecar's log (the agent sends its stdout and stderr to `<socket>.log`).
    fn sidecar_log(&self) -> String {
        std::fs::read_to_string(self.sidecar_log_path()).unwrap_or_default()
    }

    fn sidecar_log_path(&self) -> PathBuf {
        self.dir.0.join("sidecar.log")
    }

    fn logs(&self) -> String {
        let agent = std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default();
        format!(
            "\n----- {} agent.log -----\n{agent}\n----- {} sidecar.log -----\n{}",
            self.name,
            self.name,
            self.sidecar_log()
        )
    }
}

fn all_logs(agents: &[&Agent], server: &Server) -> String {
    let mut s: String = agents.iter().map(|a| a.logs()).collect();
    s.push_str(&format!("\n----- server log -----\n{}", server.log()));
    s
}

/// Waits until `cond` holds, failing with every log.
fn wait_for(
    what: &str,
    timeout: Duration,
    agents: &mut [&mut Agent],
    server: &Server,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        let exited = agents
            .iter_mut()
            .find_map(|a| a.proc.exited().map(|st| (a.name, st)));
        if let Some((name, st)) = exited {
            let refs: Vec<&Agent> = agents.iter().map(|a| &**a).collect();
            panic!(
                "agent {name} exited ({st}) while waiting for {what}{}",
                all_logs(&refs, server)
            );
        }
        if Instant::now() > deadline {
            let refs: Vec<&Agent> = agents.iter().map(|a| &**a).collect();
            panic!("no {what} within {timeout:?}{}", all_logs(&refs, server));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `request_id` of the first log line with all of `needles`.
fn logged_request_id(log: &str, needles: &[&str]) -> Option<String> {
    log.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .and_then(|l| l.split("request_id=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn two_agents_delegate_over_the_datachannel() {
    let mut o = Opts::cores(2);
    o.keys = Some(
        json!({"keys": {
            "ak_alpha": {"peer_id": "alpha-sidecar", "role": "agent"},
            "ak_beta": {"peer_id": "beta-sidecar", "role": "agent"},
        }})
        .to_string(),
    );
    let server = Server::with(o);
    // alpha runs the hub task (`delegate`); beta answers over the mesh with the handler
    // the task_request names. beta does not list `delegate`, so the hub cannot assign
    // the task to it.
    let mut beta = Agent::start(&server, "beta", &["list_agents"]);
    let mut alpha = Agent::start(&server, "alpha", &["delegate", "list_agents"]);

    // Both sidecars (ours, spawned by the agents) connect to each other.
    let (a_path, b_path) = (alpha.sidecar_log_path(), beta.sidecar_log_path());
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for(
        "DataChannel between the two sidecars",
        CONNECT_TIMEOUT,
        &mut [&mut alpha, &mut beta],
        &server,
        || {
            read(&a_path).contains("peer connected peer=beta-sidecar")
                && read(&b_path).contains("peer connected peer=alpha-sidecar")
        },
    );
    for a in [&alpha, &beta] {
        let log = a.sidecar_log();
        assert!(
            log.contains("no STUN server configured"),
            "STUN_URLS=none did not reach {}'s sidecar:\n{log}",
            a.name
        );
        assert!(
            log.contains(&format!("authenticated peer_id={}", a.peer_id())),
            "{log}"
        );
    }
    // Both agents are registered and active.
    wait_for(
        "both agents active in the registry",
        CONNECT_TIMEOUT,
        &mut [&mut alpha, &mut beta],
        &server,
        || {
            let agents = server.get("/api/registry/agents").json();
            ["alpha", "beta"].iter().all(|n| {
                agents
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["agent_id"] == *n && a["health"] == "active")
            })
        },
    );

    // Alpha's agent runs its first heartbeat right after joining the mesh, while it may
    // still be reading the sidecar's queued peer events: a task claimed by that heartbeat
    // can find beta not yet known and take the HTTP fallback. So the task is posted once
    // that heartbeat is done (last_heartbeat past registered_at); the next heartbeat, 15 s
    // later, claims it with the mesh known.
    wait_for(
        "alpha's first heartbeat after joining the mesh",
        CONNECT_TIMEOUT,
        &mut [&mut alpha, &mut beta],
        &server,
        || {
            let a = server.get("/api/registry/agents/alpha").json();
            // RFC 3339 times of one fixed format: their text orders as their time.
            let (hb, reg) = (a["last_heartbeat"].as_str(), a["registered_at"].as_str());
            hb.is_some() && reg.is_some() && hb > reg
        },
    );

    // The hub task: alpha delegates a `list_agents` to beta.
    let r = server.post_json(
        "/api/hub/tasks",
        &json!({
            "skill": "delegate",
            "target_agent_id": "alpha",
            "source_agent_id": "test",
            "payload": {"message": "who is on the mesh?", "target_agent_id": "beta", "skill": "list_agents"},
        }),
    );
    let task_id = r.json()["task_id"].as_str().unwrap().to_string();
    let mut task = Value::Null;
    wait_for(
        "the delegate task completed",
        TASK_TIMEOUT,
        &mut [&mut alpha, &mut beta],
        &server,
        || {
            task = server.get(&format!("/api/hub/tasks/{task_id}")).json();
            assert_ne!(task["state"], "failed", "{task}");
            task["state"] == "completed"
        },
    );
    let logs = all_logs(&[&alpha, &beta], &server);
    assert_eq!(task["assigned_agent_id"], "alpha", "{task}");
    let result = task["result"].as_str().unwrap_or_default();
    assert!(
        result.contains("## Mesh Agents") && result.contains("**beta** **(you)**"),
        "the result is not beta's list_agents: {result:?}{logs}"
    );

    // Over the DataChannel: the request left alpha's sidecar for beta's and came in
    // there; the response went back the same way, with the same request id.
    let (a_log, b_log) = (alpha.sidecar_log(), beta.sidecar_log());
    let out = [
        "DataChannel message out",
        "peer=beta-sidecar",
        "kind=task_request",
    ];
    let id = logged_request_id(&a_log, &out)
        .unwrap_or_else(|| panic!("alpha's sidecar sent no task_request to beta{logs}"));
    assert!(!id.is_empty(), "{logs}");
    let rid = format!("request_id={id}");
    for (log, needles) in [
        (
            &b_log,
            [
                "DataChannel message in",
                "peer=alpha-sidecar",
                "kind=task_request",
            ],
        ),
        (
            &b_log,
            [
                "DataChannel message out",
                "peer=alpha-sidecar",
                "kind=task_response",
            ],
        ),
        (
            &a_log,
            [
                "DataChannel message in",
                "peer=beta-sidecar",
                "kind=task_response",
            ],
        ),
    ] {
        assert!(
            log.lines()
                .any(|l| needles.iter().all(|n| l.contains(n)) && l.contains(&rid)),
            "no {needles:?} with {rid}{logs}"
        );
    }
    // No registry fallback: the fallback posts its own hub task for beta.
    let tasks = server.get("/api/hub/tasks/all").json();
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 1, "a fallback task was created: {tasks:?}");
    assert_eq!(tasks[0]["id"], task_id.as_str());
    eprintln!("delegate over the DataChannel: request_id {id}, task {task_id}");
}

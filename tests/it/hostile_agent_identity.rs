//! Issue 20, finding 2: in the default configuration (no `--require-agent-auth`) a
//! client without credentials cannot act as an agent another client registered, and
//! cannot read another agent's tasks. Clients are told apart by source address (the
//! harness binds client sockets to 127.0.0.x) or by their API key; the unmodified PyPI
//! agent keeps working (its sidecar key binds its agent id).

use crate::common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::python::{agent_command, repo_root, Proc};
use common::*;

const VICTIM: u8 = 1;
const ATTACKER: u8 = 2;
const BOSS: u8 = 3;

const KEYS: &str = r#"{"keys": {
    "ak_test_admin": {"peer_id": "admin-1", "role": "admin"},
    "ak_alpha": {"peer_id": "alpha-sidecar", "role": "agent"},
    "ak_beta": {"peer_id": "beta-sidecar", "role": "agent"}
}}"#;

fn server(cores: usize, args: &[&str]) -> Server {
    let mut o = Opts::cores(cores);
    o.keys = Some(KEYS.to_owned());
    o.args = args.iter().map(|a| a.to_string()).collect();
    Server::with(o)
}

/// One request from source address 127.0.0.`last`.
fn from(
    s: &Server,
    last: u8,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    if bytes.is_some() {
        h.push(("Content-Type", "application/json"));
    }
    s.conn_from(Ipv4Addr::new(127, 0, 0, last))
        .request(method, path, &h, bytes.as_deref())
}

fn post(s: &Server, last: u8, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    from(s, last, "POST", path, headers, Some(body))
}

fn get(s: &Server, last: u8, path: &str, headers: &[(&str, &str)]) -> Resp {
    from(s, last, "GET", path, headers, None)
}

fn submit(s: &Server, last: u8, body: &Value) -> String {
    let r = post(s, last, "/api/hub/tasks", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["task_id"].as_str().unwrap().to_owned()
}

#[test]
fn anonymous_clients_cannot_act_as_an_agent_registered_from_another_address() {
    let s = server(2, &[]);
    let r = post(
        &s,
        VICTIM,
        "/api/registry/agents",
        &[],
        &json!({"agent_id": "payroll-bot", "hostname": "h", "capabilities": {"skills": ["payroll"]}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = submit(
        &s,
        BOSS,
        &json!({"target_agent_id": "payroll-bot", "source_agent_id": "boss",
                "payload": {"salary": "SECRET-4711"}}),
    );

    // The attacker can neither heartbeat as the agent (and be handed its task) nor
    // re-register it; the record stays as the victim made it.
    let hb = json!({"agent_id": "payroll-bot", "hostname": "evil", "skill_names": ["payroll"]});
    let r = post(&s, ATTACKER, "/api/hub/heartbeat", &[], &hb);
    let why = r.error(403);
    assert!(
        why.contains("bound to the address that registered it"),
        "{why}"
    );
    assert!(
        !r.text().contains("SECRET") && !why.contains("127.0.0.1"),
        "{why}"
    );
    let again = json!({"agent_id": "payroll-bot", "hostname": "evil"});
    post(&s, ATTACKER, "/api/registry/agents", &[], &again).error(403);
    let rec = s.get("/api/registry/agents/payroll-bot").json();
    assert_eq!(rec["hostname"], "h", "{rec}");

    // Nor read the task's payload, nor report it while pending.
    let t = get(&s, ATTACKER, &format!("/api/hub/tasks/{id}"), &[]).json();
    assert_eq!(
        (&t["state"], &t["payload"], &t["withheld"]),
        (&json!("pending"), &Value::Null, &json!(true)),
        "{t}"
    );
    let all = get(&s, ATTACKER, "/api/hub/tasks/all", &[]);
    assert!(!all.text().contains("SECRET"), "{}", all.text());
    let forged = json!({"state": "completed", "result": "forged"});
    let why = post(&s, ATTACKER, &format!("/api/hub/tasks/{id}"), &[], &forged).error(403);
    assert!(why.contains("not claimed yet"), "{why}");

    // The victim, from its address, gets its task; the attacker cannot post its result.
    let r = post(
        &s,
        VICTIM,
        "/api/hub/heartbeat",
        &[],
        &json!({"agent_id": "payroll-bot"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let claimed = r.json();
    assert_eq!(claimed["pending_tasks"][0]["id"], id.as_str(), "{claimed}");
    assert_eq!(
        claimed["pending_tasks"][0]["payload"]["salary"],
        "SECRET-4711"
    );
    let why = post(&s, ATTACKER, &format!("/api/hub/tasks/{id}"), &[], &forged).error(403);
    assert!(why.contains("assigned to agent `payroll-bot`"), "{why}");
    let done = json!({"state": "completed", "result": "paid"});
    let r = post(&s, VICTIM, &format!("/api/hub/tasks/{id}"), &[], &done);
    assert_eq!(r.text(), r#"{"status":"ok"}"#);

    // The submitter reads the result; the attacker does not; an admin does.
    let t = get(&s, BOSS, &format!("/api/hub/tasks/{id}"), &[]).json();
    assert_eq!(
        (&t["result"], &t["payload"]["salary"]),
        (&json!("paid"), &json!("SECRET-4711"))
    );
    assert!(t.get("withheld").is_none(), "{t}");
    let t = get(&s, ATTACKER, &format!("/api/hub/tasks/{id}"), &[]).json();
    assert_eq!(
        (&t["state"], &t["result"]),
        (&json!("completed"), &json!("")),
        "{t}"
    );
    let admin = s.bearer("ak_test_admin");
    let t = get(
        &s,
        ATTACKER,
        &format!("/api/hub/tasks/{id}"),
        &[("Authorization", &admin)],
    );
    assert_eq!(t.json()["result"], "paid", "{}", t.text());
}

#[test]
fn an_agent_registered_with_its_key_is_not_taken_without_it() {
    let s = server(2, &[]);
    let alpha_key = [("X-API-Key", "ak_alpha")];
    let reg = |id: &str| json!({"agent_id": id, "hostname": "h"});
    let hb = |id: &str| json!({"agent_id": id, "skill_names": ["x"]});
    let r = post(
        &s,
        VICTIM,
        "/api/registry/agents",
        &alpha_key,
        &reg("alpha"),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Without alpha's key: not from its own address, not from another, not with beta's.
    let why = post(&s, VICTIM, "/api/hub/heartbeat", &[], &hb("alpha")).error(403);
    // (review20: the bound peer is no longer named, only what would be accepted.)
    assert!(
        why.contains("bound to another API key or token") && !why.contains("peer `"),
        "{why}"
    );
    post(&s, ATTACKER, "/api/hub/heartbeat", &[], &hb("alpha")).error(403);
    let beta_key = [("X-API-Key", "ak_beta")];
    post(&s, ATTACKER, "/api/hub/heartbeat", &beta_key, &hb("alpha")).error(403);
    // An unknown key counts as none; a bad bearer token is 401.
    let unknown = [("X-API-Key", "ak_dev_001")];
    post(
        &s,
        ATTACKER,
        "/api/registry/agents",
        &unknown,
        &reg("alpha"),
    )
    .error(403);
    let bad = [("Authorization", "Bearer not.a.jwt")];
    post(&s, VICTIM, "/api/hub/heartbeat", &bad, &hb("alpha")).error(401);
    // With it (or its JWT), from anywhere.
    for auth in [
        ("X-API-Key", "ak_alpha".to_owned()),
        ("Authorization", s.bearer("ak_alpha")),
    ] {
        let r = post(
            &s,
            ATTACKER,
            "/api/hub/heartbeat",
            &[(auth.0, &auth.1)],
            &hb("alpha"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // A squatter registers `gamma` first, anonymously; the real gamma (another address)
    // cannot take it, an admin token moves it (the squatter loses it), and after an
    // admin deletes it the real gamma registers it.
    let r = post(&s, ATTACKER, "/api/registry/agents", &[], &reg("gamma"));
    assert_eq!(r.status, 200, "{}", r.text());
    post(&s, VICTIM, "/api/registry/agents", &[], &reg("gamma")).error(403);
    let admin = s.bearer("ak_test_admin");
    let r = post(
        &s,
        BOSS,
        "/api/registry/agents",
        &[("Authorization", &admin)],
        &reg("gamma"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let why = post(&s, ATTACKER, "/api/hub/heartbeat", &[], &hb("gamma")).error(403);
    // (review20: the bound peer is not named to a requester without its credential.)
    assert!(
        why.contains("bound to another API key or token") && !why.contains("admin-1"),
        "{why}"
    );
    let r = from(
        &s,
        BOSS,
        "DELETE",
        "/api/registry/agents/gamma",
        &[("Authorization", &admin)],
        None,
    );
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
    let r = post(&s, VICTIM, "/api/registry/agents", &[], &reg("gamma"));
    assert_eq!(r.status, 200, "{}", r.text());
    post(&s, ATTACKER, "/api/hub/heartbeat", &[], &hb("gamma")).error(403);
    // The agent's own key takes its id back from whoever holds it.
    let r = post(&s, ATTACKER, "/api/registry/agents", &[], &reg("beta"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&s, VICTIM, "/api/hub/heartbeat", &beta_key, &hb("beta"));
    assert_eq!(r.status, 200, "{}", r.text());
    post(&s, ATTACKER, "/api/hub/heartbeat", &[], &hb("beta")).error(403);
}

#[test]
fn task_lists_withhold_payload_result_and_error_without_admin() {
    let s = server(2, &[]);
    for i in 0..3 {
        submit(
            &s,
            VICTIM,
            &json!({"skill": "s", "payload": {"n": i, "secret": "SECRET"}}),
        );
    }
    let fields = [
        "id",
        "skill",
        "target_agent_id",
        "source_agent_id",
        "assigned_agent_id",
        "payload",
        "state",
        "result",
        "error",
        "created_at",
        "updated_at",
        "ttl",
    ];
    // Another client: every task, in the reference hub's shape, payload withheld; paged
    // the same way.
    let r = get(&s, ATTACKER, "/api/hub/tasks/all", &[]);
    let list = r.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for t in list {
        for k in fields {
            assert!(t.get(k).is_some(), "task lacks {k}: {t}");
        }
        assert_eq!(
            (&t["payload"], &t["withheld"]),
            (&Value::Null, &json!(true)),
            "{t}"
        );
    }
    let page = get(&s, ATTACKER, "/api/hub/tasks/all?limit=2", &[]);
    assert!(!page.text().contains("SECRET"), "{}", page.text());
    let cursor = page.header("x-next-cursor").unwrap().to_owned();
    let rest = get(
        &s,
        ATTACKER,
        &format!("/api/hub/tasks/all?limit=2&cursor={cursor}"),
        &[],
    );
    assert_eq!(rest.json().as_array().unwrap().len(), 1);
    assert!(!rest.text().contains("SECRET"));
    // The submitter, an admin token or an admin API key: everything.
    let admin = s.bearer("ak_test_admin");
    for (last, h) in [
        (VICTIM, vec![]),
        (ATTACKER, vec![("Authorization", admin.as_str())]),
        (ATTACKER, vec![("X-API-Key", "ak_test_admin")]),
    ] {
        let r = get(&s, last, "/api/hub/tasks/all", &h);
        assert_eq!(r.text().matches("SECRET").count(), 3, "{}", r.text());
        assert!(!r.text().contains("withheld"), "{}", r.text());
    }
    // With the admin plane open (the reference hub), the list is the operator's view.
    let open = server(1, &["--insecure-open-admin"]);
    submit(
        &open,
        VICTIM,
        &json!({"skill": "s", "payload": {"secret": "SECRET"}}),
    );
    let r = get(&open, ATTACKER, "/api/hub/tasks/all", &[]);
    assert!(r.text().contains("SECRET"), "{}", r.text());
}

/// Tasks are durable while pending or assigned, and so is who submitted and who claimed
/// them: after `kill -9` and a restart with another core count, another address still
/// cannot report or read them. (Agents, and so their bindings, are not durable.)
#[test]
fn who_submitted_and_who_claimed_a_task_survive_kill_9() {
    let data = TempDir::new();
    let opts = |cores: usize| {
        let mut o = Opts::cores(cores);
        o.keys = Some(KEYS.to_owned());
        o.args = vec!["--data-dir".into(), data.0.join("d").display().to_string()];
        o.env = vec![("SIGNALING_SECRET".into(), "identity-test-secret".into())];
        o
    };
    let mut s = Server::with(opts(1));
    let claimed = submit(
        &s,
        BOSS,
        &json!({"target_agent_id": "alpha", "payload": {"s": "SECRET"}}),
    );
    let pending = submit(
        &s,
        BOSS,
        &json!({"target_agent_id": "nobody", "payload": {"s": "SECRET"}}),
    );
    let key = [("X-API-Key", "ak_alpha")];
    let r = post(
        &s,
        VICTIM,
        "/api/hub/heartbeat",
        &key,
        &json!({"agent_id": "alpha"}),
    );
    assert_eq!(
        r.json()["pending_tasks"][0]["id"],
        claimed.as_str(),
        "{}",
        r.text()
    );
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = Server::with(opts(2));

    let forged = json!({"state": "completed", "result": "forged"});
    let why = post(
        &s,
        ATTACKER,
        &format!("/api/hub/tasks/{claimed}"),
        &[],
        &forged,
    )
    .error(403);
    assert!(why.contains("assigned to agent `alpha`"), "{why}");
    let why = post(
        &s,
        ATTACKER,
        &format!("/api/hub/tasks/{pending}"),
        &[],
        &forged,
    )
    .error(403);
    assert!(why.contains("not claimed yet"), "{why}");
    for id in [&claimed, &pending] {
        let t = get(&s, ATTACKER, &format!("/api/hub/tasks/{id}"), &[]);
        assert!(!t.text().contains("SECRET"), "{}", t.text());
        let t = get(&s, BOSS, &format!("/api/hub/tasks/{id}"), &[]).json();
        assert_eq!(t["payload"]["s"], "SECRET", "{t}");
    }
    // The claimer's key reports it (from another address, too).
    let done = json!({"state": "completed", "result": "ok"});
    let r = post(
        &s,
        ATTACKER,
        &format!("/api/hub/tasks/{claimed}"),
        &key,
        &done,
    );
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
}

// ---------------------------------------------------------------------------------------
// The unmodified PyPI agent (chatixia 0.4.3) with the fake sidecar
// ---------------------------------------------------------------------------------------

/// The agent heartbeats every 15 s and picks tasks up only from a heartbeat's response;
/// a delegated task takes two heartbeats and a poll (every 3 s).
const TASK_TIMEOUT: Duration = Duration::from_secs(75);

fn start_agent(s: &Server, dir: &Path, name: &str, api_key: Option<&str>, skill: &str) -> Proc {
    let sidecar = repo_root().join("tests/fixtures/fake_sidecar.py");
    let key = api_key.map_or(String::new(), |k| format!("  api_key: {k}\n"));
    let manifest = format!(
        "name: {name}\ndescription: identity test agent\nregistry: http://{addr}\n\
         provider: openai\nmodel: none\n\
         sidecar:\n  binary: {sidecar}\n{key}  socket: {socket}\n\
         skills:\n  builtin:\n    - {skill}\n",
        addr = s.addr,
        sidecar = sidecar.display(),
        socket = dir.join("sidecar.sock").display(),
    );
    std::fs::write(dir.join("agent.yaml"), manifest).unwrap();
    let child = agent_command(dir)
        .spawn()
        .expect("start the chatixia agent");
    Proc {
        name: "chatixia agent",
        child,
        group: true,
        grace: Duration::from_secs(3),
    }
}

fn agent_logs(dirs: &[&Path]) -> String {
    dirs.iter()
        .map(|d| std::fs::read_to_string(d.join("agent.log")).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

/// Waits for `cond`, failing early (with the agents' logs) if an agent exits.
fn wait(
    what: &str,
    agents: &mut [Proc],
    dirs: &[&Path],
    s: &Server,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + TASK_TIMEOUT;
    while !cond() {
        if let Some(st) = agents.iter_mut().find_map(Proc::exited) {
            panic!(
                "an agent exited ({st}) waiting for {what}:\n{}",
                agent_logs(dirs)
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {TASK_TIMEOUT:?}:\n{}\n{}",
            agent_logs(dirs),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Two unmodified PyPI agents (chatixia 0.4.3) with the fake sidecar. `alpha` has its
/// sidecar key (peer `alpha-sidecar`), which it sends on register, heartbeat and its
/// task results: the key binds its id. `gamma` has no key the server knows (it then
/// sends `ak_dev_001`): its address binds its id. gamma's task makes it delegate a
/// `list_agents` to alpha through the hub (the agent's fallback: it submits and polls
/// that task with no credentials at all). Both complete their tasks; another address
/// can neither take their tasks, nor post or read their results.
#[test]
fn the_unmodified_pypi_agent_keeps_its_identity_and_its_tasks() {
    let s = server(2, &[]);
    let (dir_a, dir_g) = (TempDir::new(), TempDir::new());
    let dirs = [dir_a.0.as_path(), dir_g.0.as_path()];
    let mut agents = [
        start_agent(&s, dirs[0], "alpha", Some("ak_alpha"), "list_agents"),
        start_agent(&s, dirs[1], "gamma", None, "delegate"),
    ];
    wait("both agents active", &mut agents, &dirs, &s, || {
        let all = s.get("/api/registry/agents").json();
        ["alpha", "gamma"].iter().all(|n| {
            all.as_array()
                .unwrap()
                .iter()
                .any(|a| a["agent_id"] == *n && a["health"] == "active")
        })
    });
    let tasks = [
        ("alpha", "list_agents", json!({"note": "SECRET"})),
        (
            "gamma",
            "delegate",
            json!({"message": "SECRET", "target_agent_id": "alpha", "skill": "list_agents"}),
        ),
    ]
    .map(|(name, skill, payload)| {
        let id = submit(
            &s,
            BOSS,
            &json!({"skill": skill, "target_agent_id": name, "source_agent_id": "boss",
                    "payload": payload}),
        );
        // Whether or not the agent claimed it already: the attacker is refused, and
        // gets no payload.
        let hb = json!({"agent_id": name, "skill_names": [skill]});
        let r = post(&s, ATTACKER, "/api/hub/heartbeat", &[], &hb);
        r.error(403);
        assert!(!r.text().contains("SECRET"));
        (name, id)
    });
    for (name, id) in &tasks {
        let mut task = Value::Null;
        wait(
            &format!("{name}'s task completed"),
            &mut agents,
            &dirs,
            &s,
            || {
                task = get(&s, BOSS, &format!("/api/hub/tasks/{id}"), &[]).json();
                assert_ne!(task["state"], "failed", "{task}");
                task["state"] == "completed"
            },
        );
        assert_eq!(task["assigned_agent_id"], *name, "{task}");
        let result = task["result"].as_str().unwrap();
        assert!(result.contains("**alpha**"), "{task}");
        // The attacker can neither overwrite the result nor read it.
        let forged = json!({"state": "completed", "result": "forged"});
        post(&s, ATTACKER, &format!("/api/hub/tasks/{id}"), &[], &forged).error(403);
        let t = get(&s, ATTACKER, &format!("/api/hub/tasks/{id}"), &[]).json();
        assert_eq!(
            (&t["result"], &t["withheld"]),
            (&json!(""), &json!(true)),
            "{t}"
        );
    }
    // gamma's delegated task went through the hub (submitted by gamma, run by alpha);
    // nothing of the three tasks is readable from another address.
    let all = get(&s, ATTACKER, "/api/hub/tasks/all", &[]).json();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|t| t["withheld"] == true), "{all:?}");
    let mine = s.get("/api/hub/tasks/all").json();
    let sub = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source_agent_id"] == "gamma");
    let sub = sub.unwrap_or_else(|| panic!("no delegated task: {mine}"));
    assert_eq!(
        (&sub["assigned_agent_id"], &sub["state"]),
        (&json!("alpha"), &json!("completed"))
    );
}

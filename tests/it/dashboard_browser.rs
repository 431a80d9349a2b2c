//! The operator dashboard in a real browser: headless Debian chromium driven by
//! Playwright (tests/dashboard/browser_test.py) against a server with an admin key.
//! The script signs in, reads agents, tasks and a pending pairing, approves and revokes
//! it from the page, and watches a new agent appear; this side checks the server's
//! view at each step (approval through the API, the device's WebSocket closed with
//! 4001) and registers the new agent. Then the same over HTTPS (issue 23): the page on a
//! TLS listener beside the plain one, the browser trusting the test certificate's key.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::python::{bounded, repo_root, venv_bin};
use common::ws::{join, recv_close};
use common::Server;
use serde_json::json;

const SHARDS: usize = 2;

fn agent(srv: &Server, id: &str, skills: &[&str]) {
    let r = srv.post_json(
        "/api/registry/agents",
        &json!({"agent_id": id, "hostname": format!("{id}.lan"), "ip": "10.1.0.7", "port": 8001,
                "mode": "auto", "capabilities": {"skills": skills}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn dashboard_in_chromium() {
    dashboard(false);
}

#[test]
fn dashboard_in_chromium_over_https() {
    dashboard(true);
}

fn dashboard(https: bool) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} is missing: scripts/test.sh installs Debian's chromium (apt-get install -y chromium)"
    );
    let python = venv_bin().join("python");
    let pki = common::tls::Pki::new();
    let cert = pki.issue("dashboard", common::tls::KeyKind::Ecdsa);
    let tls_srv = https.then(|| common::tls::start(common::Opts::cores(SHARDS), &cert, true));
    let plain_srv = (!https).then(|| Server::start(SHARDS));
    let (srv, base): (&Server, String) = match (&tls_srv, &plain_srv) {
        (Some(t), _) => (
            &t.server,
            format!("https://localhost:{}", t.tls_addr.port()),
        ),
        (None, Some(s)) => (s, format!("http://{}", s.addr)),
        (None, None) => unreachable!(),
    };

    agent(srv, "agent-alpha", &["translate"]);
    agent(srv, "agent-beta", &["search"]);
    for skill in ["translate", "search"] {
        let r = srv.post_json(
            "/api/hub/tasks",
            &json!({"skill": skill, "source_agent_id": "agent-alpha", "payload": {}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // agent-beta claims the search task.
    let r = srv.post_json(
        "/api/hub/heartbeat",
        &json!({"agent_id": "agent-beta", "hostname": "agent-beta.lan", "ip": "10.1.0.7",
                "port": 8001, "mode": "auto", "skill_names": ["search"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // A pending pairing.
    let r = srv.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_admin")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_string();
    let r = srv.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "edge-camera"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let entry = r.json()["id"].as_str().unwrap().to_string();
    let device_peer = r.json()["peer_id"].as_str().unwrap().to_string();
    // The device's own path to its token once approved (lists never carry it).
    let claim_secret = r.json()["claim_secret"].as_str().unwrap().to_string();

    let admin_jwt = common::ws::jwt_from_key(srv, "ak_test_admin");
    let mut child = bounded(&python)
        .arg(repo_root().join("tests/dashboard/browser_test.py"))
        .env("BASE", &base)
        .env("SPKI", if https { cert.spki_sha256.as_str() } else { "" })
        .env("ADMIN_KEY", "ak_test_admin")
        .env("AGENT_KEY", "ak_test_agent")
        .env("ENTRY_ID", &entry)
        .env("DEVICE_NAME", "edge-camera")
        .env("NEW_AGENT", "agent-gamma")
        .env("SHARDS", SHARDS.to_string())
        .env("CHROMIUM", &chromium)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the Playwright script");
    let mut to_script = child.stdin.take().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut device_ws = None;
    let mut steps = Vec::new();
    for line in lines {
        let line = line.expect("script output");
        eprintln!("browser_test: {line}");
        let Some(step) = line.strip_prefix("STEP ") else {
            if line == "DONE" {
                steps.push("done".to_string());
            }
            continue;
        };
        match step {
            "approved" => {
                // Approved through the page: the API says so (with the admin token).
                let bearer = format!("Bearer {admin_jwt}");
                let r = srv.req(
                    "GET",
                    "/api/pairing/all",
                    &[("Authorization", bearer.as_str())],
                    None,
                );
                assert_eq!(r.status, 200, "{}", r.text());
                let all = r.json();
                let e = all
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["id"] == entry.as_str())
                    .expect("entry listed");
                assert_eq!(e["status"], "approved", "{e}");
                assert!(e.get("device_token").is_none(), "lists carry no token: {e}");
                let claim = format!("Bearer {claim_secret}");
                let r = srv.req(
                    "GET",
                    &format!("/api/pairing/{entry}/status"),
                    &[("Authorization", claim.as_str())],
                    None,
                );
                assert_eq!(r.status, 200, "{}", r.text());
                let status = r.json();
                let device_token = status["device_token"].as_str().expect("claimed token");
                let r = srv.req(
                    "POST",
                    "/api/token",
                    &[("X-Device-Token", device_token)],
                    None,
                );
                assert_eq!(r.status, 200, "{}", r.text());
                let jwt = r.json()["token"].as_str().unwrap().to_string();
                let (ws, _) = join(srv, &device_peer, &jwt);
                device_ws = Some(ws);
            }
            "revoked" => {
                let ws = device_ws
                    .as_mut()
                    .expect("device connected before revoking");
                let (code, reason) = recv_close(ws);
                assert_eq!(
                    code, 4001,
                    "revoking from the page closes the device: {reason}"
                );
            }
            "watching" => agent(srv, "agent-gamma", &["ocr"]),
            other => panic!("unknown step {other}"),
        }
        steps.push(step.to_string());
        writeln!(to_script, "go").unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the browser script failed ({status})");
    assert_eq!(steps, ["approved", "revoked", "watching", "done"]);
}

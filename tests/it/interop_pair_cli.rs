//! Interop (issue 20, finding 5): the unmodified PyPI `chatixia pair` 0.4.3 against
//! chatixia-core. Its CLI refuses any code that is not exactly six digits before it
//! sends anything, so:
//!
//! * with `--pair-code-format digits6` the server issues six-digit codes and
//!   `chatixia pair CODE` pairs (entry pending, `.chatixia/pairing.json` written);
//! * with the default long codes the CLI refuses the code locally, and the documented
//!   way for a 0.4.3 agent is to redeem the code with any HTTP client (README
//!   "Pairing"): the same `POST /api/pairing/pair` body the CLI would send.

use crate::common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::python::{bounded, venv_bin, AGENT_ENV_REMOVE};
use common::{json, Opts, Server, TempDir, Value};

fn gen_code(s: &Server) -> String {
    let r = s.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_admin")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["code"].as_str().unwrap().to_owned()
}

/// `chatixia pair CODE` in `dir` (which holds agent.yaml), with a clean environment.
fn chatixia_pair(dir: &Path, code: &str) -> Output {
    let mut cmd: Command = bounded(&venv_bin().join("chatixia"));
    cmd.arg("pair").arg(code).current_dir(dir);
    for k in AGENT_ENV_REMOVE {
        cmd.env_remove(k);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null());
    cmd.output().expect("run chatixia pair")
}

fn manifest(dir: &Path, name: &str, s: &Server) {
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "name: {name}\ndescription: pairing interop\nregistry: http://{}\n\
             provider: openai\nmodel: none\n",
            s.addr
        ),
    )
    .unwrap();
}

fn entry_named(s: &Server, name: &str) -> Value {
    let all = s.admin_get("/api/pairing/all").json();
    all.as_array()
        .unwrap()
        .iter()
        .find(|e| e["agent_name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no entry for {name}: {all}"))
}

#[test]
fn chatixia_pair_0_4_3_pairs_with_six_digit_codes() {
    let mut o = Opts::cores(2);
    o.args = vec!["--pair-code-format".into(), "digits6".into()];
    let s = Server::with(o);
    let dir = TempDir::new();
    manifest(&dir.0, "cli-agent", &s);
    let code = gen_code(&s);
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    let out = chatixia_pair(&dir.0, &code);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout.contains("Paired! Status: pending_approval"),
        "{stdout}"
    );
    let e = entry_named(&s, "cli-agent");
    assert_eq!(e["status"], "pending_approval");
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.0.join(".chatixia/pairing.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["entry_id"], e["id"]);
    assert_eq!(saved["peer_id"], e["peer_id"]);
    // The operator approves; the code was single use.
    let a = s.admin_req(
        "POST",
        &format!("/api/pairing/{}/approve", e["id"].as_str().unwrap()),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let again = chatixia_pair(&dir.0, &code);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("invalid or expired pairing code"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn long_codes_are_redeemed_with_any_http_client() {
    let s = Server::start(2);
    let dir = TempDir::new();
    manifest(&dir.0, "cli-agent", &s);
    let code = gen_code(&s);
    // The 0.4.3 CLI refuses it locally: nothing reaches the server.
    let out = chatixia_pair(&dir.0, &code);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invite code must be exactly 6 digits"),
        "{stderr}"
    );
    assert_eq!(s.admin_get("/api/pairing/all").json(), json!([]));
    // README's way: the body the CLI would have sent, from any HTTP client.
    let r = s.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "cli-agent"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(entry_named(&s, "cli-agent")["status"], "pending_approval");
}

//! Two PyPI `chatixia` agents (0.4.3) with our sidecar against a TLS-only server: the
//! README's two-agents quickstart with `registry: https://localhost:PORT`, the test's
//! own CA trusted through `SSL_CERT_FILE` (our sidecar: the token exchange over
//! `https://`, the signaling WebSocket over `wss://`) and `REQUESTS_CA_BUNDLE` (the
//! agent's own HTTP client, `requests`, reads that one). Passing means what the
//! quickstart promises: each sidecar logs `peer connected peer=<other>-sidecar` (its
//! DataChannel to the other is open), each agent says it is connected, and the registry
//! lists both as active.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::python::{agent_command, Proc};
use common::tls::{self, KeyKind, Pki};
use common::{Opts, TempDir, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn two_agents_meet_through_a_tls_only_server() {
    let pki = Pki::new();
    let files = pki.issue("registry", KeyKind::Ecdsa);
    let mut o = Opts::cores(2);
    o.keys = Some(
        r#"{"keys": {
          "ak_alpha_change_me": {"peer_id": "alpha-sidecar", "role": "agent"},
          "ak_beta_change_me": {"peer_id": "beta-sidecar", "role": "agent"}
        }}"#
        .into(),
    );
    let srv = tls::start(o, &files, false);
    let registry = format!("https://localhost:{}", srv.tls_addr.port());
    let sidecar = common::sidecar::sidecar_binary();
    let work = TempDir::new();
    let start = |name: &str| -> Proc {
        let dir = work.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = format!(
            "name: {name}\ndescription: agent {name}\nregistry: {registry}\nprovider: openai\n\
             model: gpt-4o-mini\nsidecar:\n  binary: {}\n  api_key: ak_{name}_change_me\n  \
             socket: {}/chatixia-{name}.sock\nskills:\n  builtin:\n    - list_agents\n",
            sidecar.display(),
            work.0.display()
        );
        std::fs::write(dir.join("agent.yaml"), yaml).unwrap();
        let mut cmd = agent_command(&dir);
        cmd.env("STUN_URLS", "none")
            .env("SSL_CERT_FILE", &pki.ca_pem)
            .env("REQUESTS_CA_BUNDLE", &pki.ca_pem);
        Proc {
            name: "chatixia agent",
            child: cmd.spawn().expect("spawn chatixia agent"),
            group: true,
            grace: Duration::from_secs(3),
        }
    };
    let mut alpha = start("alpha");
    let mut beta = start("beta");
    let sidecar_log = |name: &str| read(&work.0.join(format!("chatixia-{name}.log")));
    let agent_log = |name: &str| read(&work.0.join(name).join("agent.log"));
    let logs = || {
        format!(
            "\n--- alpha agent ---\n{}\n--- alpha sidecar ---\n{}\n--- beta agent ---\n{}\n\
             --- beta sidecar ---\n{}\n--- server ---\n{}",
            agent_log("alpha"),
            sidecar_log("alpha"),
            agent_log("beta"),
            sidecar_log("beta"),
            srv.server.log()
        )
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        // The agents print their banner after the sidecar is up: the sidecars may meet
        // before the second banner reaches the log, so wait for both (as
        // tests/readme_two_agents.rs does).
        let banner = |name: &str| {
            agent_log(name).contains(&format!("Agent '{name}' connected to mesh at {registry}"))
        };
        if sidecar_log("alpha").contains("peer connected peer=beta-sidecar")
            && sidecar_log("beta").contains("peer connected peer=alpha-sidecar")
            && banner("alpha")
            && banner("beta")
        {
            break;
        }
        for (name, a) in [("alpha", &mut alpha), ("beta", &mut beta)] {
            if let Some(st) = a.exited() {
                panic!("agent {name} exited ({st}){}", logs());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not see each other within {CONNECT_TIMEOUT:?}{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for name in ["alpha", "beta"] {
        let line = format!("Agent '{name}' connected to mesh at {registry}");
        assert!(agent_log(name).contains(&line), "{line:?}{}", logs());
        assert!(
            sidecar_log(name).contains("TLS to the registry"),
            "the sidecar used TLS{}",
            logs()
        );
    }
    let cfg = pki.client();
    let agents: Value = tls::get(srv.tls_addr, &cfg, "/api/registry/agents").json();
    for n in ["alpha", "beta"] {
        assert!(
            agents
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["agent_id"] == n && a["health"] == "active"),
            "{n} is not active: {agents}{}",
            logs()
        );
    }
    // Every connection was TLS: nothing could reach a plain listener (there is none).
    let metrics = tls::get(srv.tls_addr, &cfg, "/metrics").text();
    assert!(metrics.contains("chatixia_tls_handshakes_total"));
}

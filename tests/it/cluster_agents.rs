//! README's "Two agents in five minutes" across two nodes of a cluster (issue 25): the
//! section's keys file and agent blocks, with alpha pointed at node 1 and beta at node 2
//! of one Redis. Passing means what the section promises, across nodes: each agent says
//! it is connected, each sidecar logs `peer connected peer=<other>-sidecar` (the
//! DataChannel is open, signaled through both nodes and Redis), and the registry of
//! EITHER node lists both agents as active.

use crate::common;
use crate::readme_two_agents::{code_blocks, section};

use std::process::Command;
use std::time::{Duration, Instant};

use common::python::{agent_command, Proc};
use common::{Opts, Server, TempDir, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

fn node(redis: &common::redis::Redis, id: &str, keys: &str) -> Server {
    let mut o = Opts::cores(1);
    o.keys = Some(keys.to_string());
    o.args = vec![
        "--cluster".into(),
        redis.url(),
        "--node-id".into(),
        id.into(),
    ];
    let srv = Server::with(o);
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.get("/readyz").status != 200 {
        assert!(Instant::now() < deadline, "{id} never ready: {}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    srv
}

#[test]
fn readme_two_agents_on_two_nodes_see_each_other() {
    let Some(redis) = common::redis::start(&[]) else {
        return;
    };
    let text = section();
    let blocks = code_blocks(&text);
    let block = |pred: &dyn Fn(&(String, String)) -> bool| -> String {
        blocks
            .iter()
            .find(|b| pred(b))
            .expect("README block")
            .1
            .clone()
    };
    let keys = block(&|(l, _)| l == "json");
    let write_agents = block(&|(_, b)| b.contains("agent.yaml <<EOF"));
    let n1 = node(&redis, "node-1", &keys);
    let n2 = node(&redis, "node-2", &keys);

    // The README's block, alpha's half pointed at node 1 and beta's at node 2.
    let work = TempDir::new();
    let sidecar = common::sidecar::sidecar_binary();
    let split = write_agents
        .find("cat > agents/beta/agent.yaml")
        .expect("the block writes beta's agent.yaml after alpha's");
    let (alpha_half, beta_half) = write_agents.split_at(split);
    let script = [
        alpha_half.replace("127.0.0.1:8080", &n1.addr.to_string()),
        beta_half.replace("127.0.0.1:8080", &n2.addr.to_string()),
    ]
    .concat()
    .replace(
        "$PWD/target/release/chatixia-sidecar",
        &sidecar.display().to_string(),
    )
    .replace("/tmp/chatixia-", &format!("{}/chatixia-", work.0.display()));
    let st = Command::new("bash")
        .args(["-euc", &script])
        .current_dir(&work.0)
        .status()
        .expect("bash");
    assert!(
        st.success(),
        "the README's agent.yaml block failed:\n{script}"
    );

    let start = |name: &str| -> Proc {
        let dir = work.0.join("agents").join(name);
        let mut cmd = agent_command(&dir);
        cmd.env("STUN_URLS", "none");
        Proc {
            name: "chatixia agent",
            child: cmd.spawn().expect("spawn chatixia agent"),
            group: true,
            grace: Duration::from_secs(3),
        }
    };
    let mut alpha = start("alpha");
    let mut beta = start("beta");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let sidecar_log = |name: &str| read(work.0.join(format!("chatixia-{name}.log")));
    let agent_log = |name: &str| read(work.0.join("agents").join(name).join("agent.log"));
    let logs = || {
        format!(
            "\n--- alpha agent ---\n{}\n--- alpha sidecar ---\n{}\n--- beta agent ---\n{}\n\
             --- beta sidecar ---\n{}\n--- node 1 ---\n{}\n--- node 2 ---\n{}",
            agent_log("alpha"),
            sidecar_log("alpha"),
            agent_log("beta"),
            sidecar_log("beta"),
            n1.log(),
            n2.log()
        )
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let banner = |name: &str, srv: &Server| {
            agent_log(name).contains(&format!(
                "Agent '{name}' connected to mesh at http://{}",
                srv.addr
            ))
        };
        if sidecar_log("alpha").contains("peer connected peer=beta-sidecar")
            && sidecar_log("beta").contains("peer connected peer=alpha-sidecar")
            && banner("alpha", &n1)
            && banner("beta", &n2)
        {
            break;
        }
        for (name, p) in [("alpha", &mut alpha), ("beta", &mut beta)] {
            if let Some(st) = p.exited() {
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
    // Either node's registry lists both (the other's from the cluster's mirror).
    for srv in [&n1, &n2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let agents: Value = srv.get("/api/registry/agents").json();
            let active = |n: &str| {
                agents
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["agent_id"] == n && a["health"] == "active")
            };
            if active("alpha") && active("beta") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not both active: {agents}{}",
                srv.addr,
                logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

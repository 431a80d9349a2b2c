//! README.md's "Two agents in five minutes", followed as written: the keys file is the
//! section's JSON block, the agent directories are made by running the section's shell
//! block that writes them (with the test server's address, this build's sidecar and a
//! temporary directory substituted for `127.0.0.1:8080`, `$PWD/target/release/…` and
//! `/tmp/`), and each agent is started with the section's command (`STUN_URLS=none
//! chatixia run agent.yaml` in its directory; the PyPI `chatixia` 0.4.3 from
//! scripts/setup-python.sh's venv). Passing means what the section promises: each agent
//! prints that it is connected to the mesh, each sidecar logs `peer connected
//! peer=<other>-sidecar` next to its socket (our sidecar logs that, and tells its agent,
//! only once the DataChannel to that peer is open), and the registry lists both agents
//! as active.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::python::{agent_command, Proc};
use common::{Opts, Server, TempDir, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);

/// The section's text, from its heading to the next `## `.
pub(crate) fn section() -> String {
    let readme =
        std::fs::read_to_string(common::python::repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find("## Two agents in five minutes")
        .expect("README.md has a \"Two agents in five minutes\" section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |i| i + 1);
    rest[..end].to_string()
}

/// The fenced code blocks of `text` as (language, body), indentation removed.
pub(crate) fn code_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, usize, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(fence) = trimmed.strip_prefix("```") {
            match cur.take() {
                None => cur = Some((fence.trim().to_string(), indent, String::new())),
                Some((lang, _, body)) => out.push((lang, body)),
            }
        } else if let Some((_, ind, body)) = cur.as_mut() {
            body.push_str(line.get(*ind..).unwrap_or(line.trim_start()));
            body.push('\n');
        }
    }
    out
}

struct Agent {
    name: &'static str,
    dir: PathBuf,
    proc: Proc,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn readme_two_agents_see_each_other() {
    let text = section();
    let blocks = code_blocks(&text);
    let find = |pred: &dyn Fn(&(String, String)) -> bool, what: &str| -> String {
        blocks
            .iter()
            .find(|b| pred(b))
            .unwrap_or_else(|| panic!("the README section has no {what} block:\n{text}"))
            .1
            .clone()
    };
    let install = find(&|(_, b)| b.contains("pip install"), "pip install");
    assert!(install.contains("chatixia==0.4.3"), "{install}");
    assert!(install.contains("python3.12"), "{install}");
    let keys = find(&|(l, _)| l == "json", "keys file (json)");
    let run = find(&|(_, b)| b.contains("scripts/run.sh"), "server start");
    assert!(
        run.contains("API_KEYS_FILE=$PWD/api_keys.json") && run.contains("--stun-url none"),
        "{run}"
    );
    let write_agents = find(&|(_, b)| b.contains("agent.yaml <<EOF"), "agent.yaml");
    let starts: Vec<String> = blocks
        .iter()
        .filter(|(_, b)| b.contains("chatixia run agent.yaml"))
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(starts.len(), 2, "one start command per agent:\n{text}");
    for (s, name) in starts.iter().zip(["alpha", "beta"]) {
        assert!(
            s.contains(&format!("cd agents/{name} && STUN_URLS=none")),
            "{s}"
        );
    }

    // The keys file: one key per agent, mapped to `<name>-sidecar`.
    let keys_v: Value = serde_json::from_str(&keys).expect("the keys block is JSON");
    let peers: Vec<&str> = keys_v["keys"]
        .as_object()
        .expect("{\"keys\": {…}}")
        .values()
        .map(|e| e["peer_id"].as_str().unwrap())
        .collect();
    assert_eq!(peers, ["alpha-sidecar", "beta-sidecar"]);
    let mut o = Opts::cores(1);
    o.keys = Some(keys);
    let server = Server::with(o);

    // The agent directories, made by the README's own shell block.
    let work = TempDir::new();
    let sidecar = common::sidecar::sidecar_binary();
    let script = write_agents
        .replace("127.0.0.1:8080", &server.addr.to_string())
        .replace(
            "$PWD/target/release/chatixia-sidecar",
            &sidecar.display().to_string(),
        )
        // Only the socket paths of the README's block: the sidecar's path (already put in
        // above) may itself lie under /tmp/ when the clone does.
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

    let start = |name: &'static str| -> Agent {
        let dir = work.0.join("agents").join(name);
        let yaml = read(&dir.join("agent.yaml"));
        assert!(
            yaml.contains(&format!("binary: {}", sidecar.display())),
            "sidecar.binary is not the absolute path:\n{yaml}"
        );
        let mut cmd = agent_command(&dir);
        cmd.env("STUN_URLS", "none");
        let child = cmd.spawn().expect("spawn chatixia agent");
        Agent {
            name,
            dir,
            proc: Proc {
                name: "chatixia agent",
                child,
                group: true,
                grace: Duration::from_secs(3),
            },
        }
    };
    let mut alpha = start("alpha");
    let mut beta = start("beta");

    let sidecar_log = |name: &str| read(&work.0.join(format!("chatixia-{name}.log")));
    let logs = |a: &Agent, b: &Agent| {
        format!(
            "\n--- alpha agent ---\n{}\n--- alpha sidecar ---\n{}\n--- beta agent ---\n{}\n\
             --- beta sidecar ---\n{}\n--- server ---\n{}",
            a.log(),
            sidecar_log("alpha"),
            b.log(),
            sidecar_log("beta"),
            server.log()
        )
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        // The agents print their banner after the sidecar is up: the sidecars may meet before
        // the second banner reaches the log, so wait for both.
        let banner = |a: &Agent| {
            a.log().contains(&format!(
                "Agent '{}' connected to mesh at http://{}",
                a.name, server.addr
            ))
        };
        let seen = sidecar_log("alpha").contains("peer connected peer=beta-sidecar")
            && sidecar_log("beta").contains("peer connected peer=alpha-sidecar")
            && banner(&alpha)
            && banner(&beta);
        if seen {
            break;
        }
        let exited = [&mut alpha, &mut beta]
            .into_iter()
            .find_map(|a| a.proc.exited().map(|st| (a.name, st)));
        if let Some((name, st)) = exited {
            panic!("agent {name} exited ({st}){}", logs(&alpha, &beta));
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not see each other within {CONNECT_TIMEOUT:?}{}",
            logs(&alpha, &beta)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the section says each agent prints.
    for a in [&alpha, &beta] {
        let line = format!(
            "Agent '{}' connected to mesh at http://{}",
            a.name, server.addr
        );
        assert!(a.log().contains(&line), "{line:?}{}", logs(&alpha, &beta));
    }
    let agents = server.get("/api/registry/agents").json();
    for n in ["alpha", "beta"] {
        assert!(
            agents
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["agent_id"] == n && a["health"] == "active"),
            "{n} is not active: {agents}"
        );
    }
}

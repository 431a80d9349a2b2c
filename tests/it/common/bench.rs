//! Running `chatixia-core bench …` from tests.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Opts, Server, TempDir};

/// The keys file `bench keys --count n --meshes m` prints.
pub fn keys(count: usize, meshes: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .args(["bench", "keys", "--count", &count.to_string(), "--meshes"])
        .arg(meshes.to_string())
        .output()
        .expect("run bench keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A server loading a keys file for `count` peers, and that file's path.
pub struct Bench {
    pub server: Server,
    pub keys_path: std::path::PathBuf,
    _dir: TempDir,
}

impl Bench {
    pub fn start(cores: usize, count: usize, meshes: usize, args: &[&str]) -> Bench {
        let dir = TempDir::new();
        let keys = keys(count, meshes);
        let keys_path = dir.0.join("api_keys.json");
        std::fs::write(&keys_path, &keys).unwrap();
        let mut o = Opts::cores(cores);
        o.keys = Some(keys);
        o.args = args.iter().map(|s| s.to_string()).collect();
        Bench {
            server: Server::with(o),
            keys_path,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Runs `bench <scenario> --url … --keys … --json <args>`; returns the report.
    pub fn run(&self, scenario: &str, args: &[&str]) -> Value {
        let url = self.url();
        let mut all: Vec<&str> = vec!["bench", scenario, "--url", &url, "--keys"];
        all.extend([self.keys_path.to_str().unwrap(), "--json", "--no-pin"]);
        all.extend(args);
        let (code, stdout, stderr) = run(&all);
        assert_eq!(code, Some(0), "bench {scenario} failed: {stderr}\n{stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }
}

/// Runs the binary (bounded to 120 s); returns exit code, stdout, stderr.
pub fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = TempDir::new();
    let (o, e) = (dir.0.join("out"), dir.0.join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .args(args)
        .env("CHATIXIA_DATA_DIR", dir.0.join("data"))
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .expect("spawn bench");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("bench did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        std::fs::read_to_string(o).unwrap(),
        std::fs::read_to_string(e).unwrap(),
    )
}

/// Checks a latency summary: positive and ordered.
pub fn check_latency(l: &Value) {
    let g = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("no {k} in {l}"));
    assert!(g("count") > 0, "{l}");
    assert!(g("min") > 0, "{l}");
    assert!(
        g("p50") <= g("p99") && g("p99") <= g("p999") && g("p999") <= g("max"),
        "{l}"
    );
}

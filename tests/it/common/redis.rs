//! A real `redis-server` for the cluster tests (issue 25), on loopback. Redis cannot bind
//! port 0 and report it, so a port is picked and the start retried with another when it
//! is taken (Redis exits at once, saying so in its log).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    extra: Vec<String>,
}

/// `redis-server` on PATH, or `None` after `common::skip` (which fails under CI=true).
pub fn start(extra: &[&str]) -> Option<Redis> {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        super::skip("redis-server is not installed (apt-get install redis-server)");
        return None;
    }
    let mut r = Redis {
        port: 0,
        child: None,
        dir: TempDir::new(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    // Tests of one process start several: each tries its own ports.
    static STARTED: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for attempt in 0..20u16 {
        // Below the ephemeral range (32768-60999), spread by process, server and attempt.
        let port = 20_000
            + ((std::process::id() as u16)
                .wrapping_mul(7)
                .wrapping_add(nth.wrapping_mul(977))
                .wrapping_add(attempt.wrapping_mul(131)))
                % 12_000;
        r.port = port;
        if r.spawn() {
            return Some(r);
        }
    }
    panic!("redis-server did not start on any of 20 ports");
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("redis.log")
    }

    /// Starts redis-server on `self.port`; false when the port was taken.
    fn spawn(&mut self) -> bool {
        let _ = std::fs::remove_file(self.log_path());
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            // Ours is ready once its own log says so (a ping could reach another
            // test's Redis on this port while ours fails to bind and exits).
            if self.log().contains("Ready to accept connections") && self.ping() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn ping(&self) -> bool {
        // A Redis with `--requirepass` answers NOAUTH: it is up all the same.
        match self.try_cmd(&["PING"]) {
            Ok(Reply::Simple(s)) => s == "PONG",
            Ok(Reply::Error(e)) => e.starts_with("NOAUTH"),
            _ => false,
        }
    }

    /// Kills Redis (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends Redis `kill SIG` (`-STOP` stalls it without closing a connection: it reads
    /// nothing, so what is written to it fills the socket buffers; `-CONT` resumes it).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Starts Redis again on the same port (empty: no persistence in these tests).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "port {} stayed taken", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One command over a fresh connection (RESP, by hand: a test's independent client).
    pub fn cmd(&self, args: &[&str]) -> Reply {
        self.try_cmd(args).expect("redis command")
    }

    pub fn try_cmd(&self, args: &[&str]) -> std::io::Result<Reply> {
        try_cmd_at(self.port, args)
    }

    /// Calls of a command so far (`INFO commandstats`), scripts' calls included.
    pub fn calls(&self, command: &str) -> u64 {
        let Reply::Bulk(info) = self.cmd(&["INFO", "commandstats"]) else {
            panic!("INFO")
        };
        let key = format!("cmdstat_{}:calls=", command.to_lowercase());
        info.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Nil,
    Array(Vec<Reply>),
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    let (t, rest) = line.split_at(1.min(line.len()));
    let bad = || std::io::Error::other(format!("bad reply {line:?}"));
    Ok(match t {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Nil
            } else {
                let mut b = vec![0; n as usize + 2];
                r.read_exact(&mut b)?;
                b.truncate(n as usize);
                Reply::Bulk(String::from_utf8_lossy(&b).into())
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            let mut v = Vec::new();
            for _ in 0..n.max(0) {
                v.push(read_reply(r)?);
            }
            if n < 0 {
                Reply::Nil
            } else {
                Reply::Array(v)
            }
        }
        _ => return Err(bad()),
    })
}

/// `redis-sentinel` on loopback monitoring the primary on `primary` as `m` (quorum 1, down
/// after 1 s, failover timeout 3 s), with its own config file (Sentinel rewrites it).
pub struct Sentinel {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

/// The name the test Sentinels monitor the primary under.
pub const MASTER: &str = "m";

/// A Sentinel for the primary on `primary`, or `None` after `common::skip`.
pub fn sentinel(primary: u16) -> Option<Sentinel> {
    if Command::new("redis-sentinel")
        .arg("--version")
        .output()
        .is_err()
    {
        super::skip("redis-sentinel is not installed (apt-get install redis-sentinel)");
        return None;
    }
    static STARTED: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for attempt in 0..20u16 {
        let port = 20_000
            + ((std::process::id() as u16)
                .wrapping_mul(13)
                .wrapping_add(nth.wrapping_mul(1_409))
                .wrapping_add(attempt.wrapping_mul(157))
                .wrapping_add(6_000))
                % 12_000;
        let dir = TempDir::new();
        let conf = dir.0.join("sentinel.conf");
        let log = dir.0.join("sentinel.log");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nlogfile {}\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 3000\n",
                log.display(),
                dir.0.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-sentinel");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break; // the port was taken: another
            }
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("+monitor master")
            {
                return Some(Sentinel {
                    port,
                    child: Some(child),
                    dir,
                });
            }
            assert!(Instant::now() < deadline, "redis-sentinel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("redis-sentinel did not start on any of 20 ports");
}

impl Sentinel {
    /// Waits until it lists a replica of the primary it could promote.
    pub fn wait_for_replica(&self, within: Duration) {
        self.wait_for_replicas(1, within);
    }

    /// Waits until it lists `n` replicas of the primary it could promote.
    pub fn wait_for_replicas(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = matches!(
                self.cmd(&["SENTINEL", "replicas", MASTER]),
                Ok(Reply::Array(rs)) if rs.iter().filter(|r| match r {
                    Reply::Array(kv) => {
                        let field = |k: &str| kv.chunks(2).find(|c| c[0] == Reply::Bulk(k.into())).map(|c| &c[1]);
                        field("flags") == Some(&Reply::Bulk("slave".into()))
                            && field("master-link-status") == Some(&Reply::Bulk("ok".into()))
                    }
                    _ => false,
                }).count() >= n
            );
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel lists no healthy replica: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("sentinel.log")).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> std::io::Result<Reply> {
        try_cmd_at(self.port, args)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A primary with one replica and a Sentinel watching them (the replica attached), and
/// the `redis+sentinel://` URL the nodes join; `None` after `common::skip`.
pub fn sentinel_pair() -> Option<(Redis, Redis, Sentinel, String)> {
    let primary = start(&["--repl-diskless-sync-delay", "0"])?;
    let replica = start(&[
        "--replicaof",
        "127.0.0.1",
        &primary.port.to_string(),
        "--repl-diskless-sync-delay",
        "0",
    ])?;
    let sentinel = sentinel(primary.port)?;
    sentinel.wait_for_replica(Duration::from_secs(15));
    let url = format!("redis+sentinel://127.0.0.1:{}/{MASTER}", sentinel.port);
    Some((primary, replica, sentinel, url))
}

/// The ids of the clients of the Redis on `port` whose name `named` accepts
/// (`CLIENT LIST`, in its order).
pub fn client_ids_at(port: u16, named: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(Reply::Bulk(list)) = try_cmd_at(port, &["CLIENT", "LIST"]) else {
        panic!("CLIENT LIST")
    };
    let field = |l: &str, k: &str| {
        l.split(' ')
            .find_map(|f| f.strip_prefix(k))
            .map(str::to_string)
    };
    list.lines()
        .filter(|l| field(l, "name=").is_some_and(|n| named(&n)))
        .filter_map(|l| field(l, "id="))
        .collect()
}

/// One command to a Redis (or a Sentinel) on `port` over a fresh connection.
pub fn try_cmd_at(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes())?;
    read_reply(&mut BufReader::new(s))
}

/// A primary with two replicas and a Sentinel watching them (both attached), and the
/// `redis+sentinel://` URL; `None` after `common::skip`.
pub fn sentinel_trio() -> Option<(Redis, [Redis; 2], Sentinel, String)> {
    let primary = start(&["--repl-diskless-sync-delay", "0"])?;
    let port = primary.port.to_string();
    let replica = || {
        start(&[
            "--replicaof",
            "127.0.0.1",
            &port,
            "--repl-diskless-sync-delay",
            "0",
        ])
    };
    let replicas = [replica()?, replica()?];
    let sentinel = sentinel(primary.port)?;
    sentinel.wait_for_replicas(2, Duration::from_secs(20));
    let url = format!("redis+sentinel://127.0.0.1:{}/{MASTER}", sentinel.port);
    Some((primary, replicas, sentinel, url))
}

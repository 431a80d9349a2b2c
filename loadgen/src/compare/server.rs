//! The two things compared: each is a command the tool starts itself (fresh for every
//! run, pinned to the same CPU set) or the URL of a server someone else runs.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server has to exit after SIGTERM before it gets SIGKILL (the reference
/// may ignore SIGTERM while connections are open).
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Bytes of a server's log quoted when it fails to start or dies.
const LOG_TAIL_BYTES: usize = 600;

/// What `--baseline` / `--candidate` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// `http://host:port`: a running server; its PID (for CPU and RSS) if given.
    Url { url: String, pid: Option<u32> },
    /// A command line, run as `sh -c 'exec <command>'`: one program with its arguments
    /// (so the PID the tool gets is the server's). It is configured by environment:
    /// PORT, API_KEYS_FILE, SIGNALING_SECRET, TOKIO_WORKER_THREADS=1, STUN_URLS=none, and
    /// CHATIXIA_DATA_DIR (a fresh, empty data directory per run).
    Command(String),
}

impl Spec {
    pub fn parse(s: &str, pid: Option<u32>) -> Result<Spec, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty server spec: give a command or an http:// URL".into());
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            super::super::net::Target::parse(s, None)?;
            Ok(Spec::Url {
                url: s.trim_end_matches('/').to_owned(),
                pid,
            })
        } else if pid.is_some() {
            Err("a PID is only for a URL target (a command's PID is known)".into())
        } else {
            Ok(Spec::Command(s.to_owned()))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Spec::Url { url, pid: Some(p) } => format!("{url} (pid {p})"),
            Spec::Url { url, pid: None } => url.clone(),
            Spec::Command(c) => c.clone(),
        }
    }
}

/// One side of the comparison.
#[derive(Debug, Clone)]
pub struct Side {
    /// `baseline` or `candidate`.
    pub role: &'static str,
    /// A display name (`--baseline-name`).
    pub name: String,
    pub spec: Spec,
}

/// How started servers are run.
#[derive(Debug, Clone)]
pub struct Launch {
    /// `taskset -c` CPU list every started server is pinned to.
    pub cpus: String,
    pub keys: PathBuf,
    pub secret: String,
    /// Where server logs go.
    pub log_dir: PathBuf,
}

/// A server ready for one run.
pub struct Running {
    pub url: String,
    pub pid: Option<u32>,
    child: Option<Child>,
    log: Option<PathBuf>,
}

/// Reads the TCP port process `pid` listens on, from `/proc` (the sockets among its open
/// files that are in LISTEN state): servers are started with `PORT=0` and the kernel picks
/// the port, so no other program can take it between a check and the bind (a port merely
/// found free could be, and was, taken by then). The reference takes no `--port-file`,
/// so this works for any server. `None` until it listens.
pub fn listening_port(pid: u32) -> Option<u16> {
    listening_ports(pid).into_iter().next()
}

/// Every TCP port process `pid` listens on (see [`listening_port`]).
fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| listen_ports_in(&text, &inodes))
        .collect()
}

/// The local ports of the sockets of `inodes` in LISTEN state (`0A`) in the text of a
/// `/proc/net/tcp{,6}` table.
fn listen_ports_in(table: &str, inodes: &[String]) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// The end of a log, on one line (for an error message).
pub fn log_tail(path: &Path) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    let tail = &s[s.len().saturating_sub(LOG_TAIL_BYTES)..];
    String::from_utf8_lossy(tail).trim().replace('\n', " | ")
}

impl Running {
    /// Starts `side` (a command) fresh, or checks that its URL answers.
    pub fn start(side: &Side, launch: &Launch, tag: &str) -> Result<Running, String> {
        let cmd = match &side.spec {
            Spec::Url { url, pid } => {
                let t = super::super::net::Target::parse(url, None)?;
                TcpStream::connect_timeout(&t.addr, Duration::from_secs(3))
                    .map_err(|e| format!("{url} does not answer: {e}"))?;
                return Ok(Running {
                    url: url.clone(),
                    pid: *pid,
                    child: None,
                    log: None,
                });
            }
            Spec::Command(c) => c,
        };
        let log = launch.log_dir.join(format!("{tag}.log"));
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        // Every run starts from an empty data directory of its own (chatixia-core keeps
        // durable state there; two runs must not share one, nor inherit its records).
        let data_dir = launch.log_dir.join(format!("{tag}.data"));
        let _ = std::fs::remove_dir_all(&data_dir);
        // taskset execs sh, sh raises its open-file limit to the hard limit (10,000
        // connections need more than the usual 1,024) and execs the command: the PID
        // stays the server's.
        let script = format!("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec {cmd}");
        let child = Command::new("taskset")
            .args(["-c", &launch.cpus, "sh", "-c", &script])
            // The kernel picks the port; it is read back from /proc (`listening_port`).
            .env("PORT", "0")
            .env("API_KEYS_FILE", &launch.keys)
            .env("SIGNALING_SECRET", &launch.secret)
            .env("TOKIO_WORKER_THREADS", "1")
            .env("STUN_URLS", "none")
            .env("CHATIXIA_DATA_DIR", &data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting `taskset -c {} {cmd}`: {e}", launch.cpus))?;
        let pid = child.id();
        let mut running = Running {
            url: String::new(),
            pid: Some(pid),
            child: Some(child),
            log: Some(log),
        };
        let t0 = Instant::now();
        loop {
            running.check_alive()?;
            let port = if is_a_wrapper(pid) {
                None
            } else {
                listening_port(pid)
            };
            if let Some(port) = port {
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    running.url = format!("http://127.0.0.1:{port}");
                    break;
                }
            }
            if t0.elapsed() > START_TIMEOUT {
                running.stop();
                return Err(format!(
                    "`{cmd}` did not listen (PORT=0) within {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_a_wrapper(pid) {
            running.stop();
            return Err(format!(
                "`{cmd}` is not a single program (its PID is a shell's): give the server \
                 binary and its arguments"
            ));
        }
        Ok(running)
    }

    /// An error with the log's tail when a started server has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        if let Some(c) = &mut self.child {
            if let Ok(Some(status)) = c.try_wait() {
                let tail = self.log.as_deref().map(log_tail).unwrap_or_default();
                self.child = None;
                return Err(format!("the server exited ({status}): {tail}"));
            }
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]. A URL target is left running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

/// Whether process `pid` is still a shell or launcher rather than the program it was to
/// exec (a command that is not one program: its PID would not be the one measured).
pub fn is_a_wrapper(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    matches!(
        comm.trim(),
        "sh" | "taskset" | "bash" | "dash" | "ip" | "env"
    )
}

/// SIGTERM (by the `kill` program: no `unsafe` here), then SIGKILL after
/// [`STOP_GRACE`]; the child is reaped either way.
pub fn stop_child(c: &mut Child) {
    if let Ok(Some(_)) = c.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let t0 = Instant::now();
    while t0.elapsed() < STOP_GRACE {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The default CPU set for started servers: the last CPU (the load generator's shards
/// pin themselves from CPU 0 up).
pub fn default_cpus() -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n - 1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_port_is_read_from_proc() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:8D5B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 00000000:94E7 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n\
   2: 0100007F:94E7 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n";
        assert_eq!(listen_ports_in(table, &["222".into()]), [0x94E7]);
        assert!(
            listen_ports_in(table, &["333".into()]).is_empty(),
            "not listening"
        );
        assert!(
            listen_ports_in(table, &["444".into()]).is_empty(),
            "not ours"
        );
        // A real listener of this process (other tests may hold some too).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
    }

    #[test]
    fn specs_are_urls_or_commands() {
        assert_eq!(
            Spec::parse("http://127.0.0.1:8080/", Some(7)).unwrap(),
            Spec::Url {
                url: "http://127.0.0.1:8080".into(),
                pid: Some(7)
            }
        );
        assert_eq!(
            Spec::parse(" ./chatixia-core --cores 1 ", None).unwrap(),
            Spec::Command("./chatixia-core --cores 1".into())
        );
        assert!(Spec::parse("", None).is_err());
        assert!(Spec::parse("./server", Some(3)).is_err());
        assert!(Spec::parse("http://x:1/api", None).is_err());
    }
}

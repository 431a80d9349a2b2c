//! The network of `bench compare --sidecar`: two network namespaces joined by a veth
//! pair, with the signaling server in namespace A on the veth address. The reference
//! sidecar gathers no loopback candidates, so two sidecars on one host need addresses
//! on a real interface; the namespaces give them that without touching the host's own
//! network. Neither namespace has a default route, so nothing can leave the machine
//! (and a sidecar's default public STUN server fails fast; every process here also
//! gets `STUN_URLS=none`).
//!
//! Everything is made with iproute2's `ip` (run as a plain program: this is the load
//! generator, not a shard) under names unique to the run ([`Names`]), so two runs never
//! collide. Cleanup happens on every path: [`Lab`]'s `Drop` stops the server, and a
//! watcher process started before anything is made removes the namespaces, with every
//! process still in them, and the sockets' folder as soon as its stdin closes: when the
//! `Lab` is dropped, and also when this process dies without dropping it (Ctrl-C,
//! SIGTERM, SIGKILL, an aborting panic). The watcher ignores SIGINT, SIGHUP and SIGTERM
//! and has a process group of its own, so the signal that ends the run does not end it.

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{is_a_wrapper, log_tail, stop_child};

/// Namespace A's end of the veth pair (the signaling server listens here) and B's.
/// Each run has namespaces of its own, so every run can use the same addresses.
pub const IP_A: &str = "10.203.0.1";
pub const IP_B: &str = "10.203.0.2";
const PREFIX_LEN: u8 = 24;
/// The signaling server's port in namespace A (nothing else listens there).
pub const PORT: u16 = 18080;
/// How long the signaling server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the watcher may take to remove everything once told to.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The names of one run's namespaces, veth ends and sockets' folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub ns_a: String,
    pub ns_b: String,
    /// Interface names: at most 15 bytes (IFNAMSIZ - 1).
    pub veth_a: String,
    pub veth_b: String,
    /// Where the sidecars' IPC sockets go: short, since a Unix socket path has at most
    /// 107 bytes (`--out` can be anywhere).
    pub socket_dir: PathBuf,
}

impl Names {
    /// The names for `tag` (at most 12 characters of `[0-9a-z]`, see [`run_tag`]).
    pub fn new(tag: &str, tmp: &Path) -> Names {
        Names {
            ns_a: format!("cxbench-a-{tag}"),
            ns_b: format!("cxbench-b-{tag}"),
            veth_a: format!("cxa{tag}"),
            veth_b: format!("cxb{tag}"),
            socket_dir: tmp.join(format!("cxbench-{tag}")),
        }
    }
}

/// A tag no other run has: this process's id and 16 random bits, in hex (at most 10
/// characters: PIDs are below 2^22).
pub fn run_tag() -> Result<String, String> {
    let mut r = [0u8; 2];
    getrandom::getrandom(&mut r).map_err(|e| format!("random: {e}"))?;
    Ok(format!("{:x}{:02x}{:02x}", std::process::id(), r[0], r[1]))
}

/// The effective user id from the text of /proc/self/status (`Uid: real effective …`).
pub fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Refuses, with the reason, unless this process can make network namespaces: root
/// (read from /proc/self/status: no `unsafe` for geteuid here) and iproute2's `ip`.
pub fn check_privileges() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    match effective_uid(&status) {
        Some(0) => {}
        Some(uid) => {
            return Err(format!(
                "--sidecar needs root (it makes two network namespaces with `ip netns \
                 add`); this process runs as uid {uid}: run it with sudo"
            ))
        }
        None => return Err("--sidecar needs root; cannot read this process's uid".into()),
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err("--sidecar needs iproute2's `ip` on PATH (it makes the namespaces)".into()),
    }
}

/// Runs `ip <args>`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The watcher (see the module comment): `$1`, `$2` the namespaces, `$3` the sockets'
/// folder. `ip netns pids` lists every process in a namespace, ours or not.
const WATCHER: &str = r#"trap '' INT HUP TERM
cat >/dev/null
for ns in "$1" "$2"; do
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
done
rm -rf "$3"
"#;

/// Whether a LISTEN socket on `port` is in a /proc/net/tcp or tcp6 table.
pub fn listens(table: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl local_address rem_address st …; state 0A is LISTEN.
        f.len() > 3 && f[3] == "0A" && f[1].rsplit_once(':').is_some_and(|(_, p)| p == want)
    })
}

/// UDP datagrams dropped for want of buffer space (`RcvbufErrors` + `SndbufErrors`)
/// from the text of /proc/net/snmp.
pub fn udp_buffer_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let mut sum = 0;
    let mut found = 0;
    for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
        if n == "RcvbufErrors" || n == "SndbufErrors" {
            sum += v.parse::<u64>().ok()?;
            found += 1;
        }
    }
    (found == 2).then_some(sum)
}

/// Which namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    A,
    B,
}

/// The two namespaces, the veth pair and the signaling server; removed on drop.
pub struct Lab {
    pub names: Names,
    /// In a cell: runs share the lab and find out through it that the server died.
    server: RefCell<Option<Child>>,
    server_log: PathBuf,
    watcher: Option<(Child, ChildStdin)>,
}

impl Lab {
    /// Makes the namespaces and the veth pair and starts `server_cmd` (one program,
    /// exec'd) in namespace A with `server_env`, waiting until it listens on [`PORT`].
    pub fn start(
        names: Names,
        server_cmd: &str,
        server_env: &[(&str, String)],
        server_log: PathBuf,
    ) -> Result<Lab, String> {
        // The watcher first: whatever is made after it is removed on every path.
        let mut watcher = Command::new("sh")
            .args(["-c", WATCHER, "cxbench-watcher"])
            .arg(&names.ns_a)
            .arg(&names.ns_b)
            .arg(&names.socket_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the cleanup watcher (sh): {e}"))?;
        let stdin = watcher.stdin.take().expect("piped");
        let lab = Lab {
            names,
            server: RefCell::new(None),
            server_log,
            watcher: Some((watcher, stdin)),
        };
        lab.make()?;
        lab.start_server(server_cmd, server_env)?;
        Ok(lab)
    }

    fn make(&self) -> Result<(), String> {
        let n = &self.names;
        std::fs::create_dir_all(&n.socket_dir)
            .map_err(|e| format!("{}: {e}", n.socket_dir.display()))?;
        ip(&["netns", "add", &n.ns_a])?;
        ip(&["netns", "add", &n.ns_b])?;
        // Made inside the namespaces: the pair never exists in this one.
        ip(&[
            "link", "add", &n.veth_a, "netns", &n.ns_a, "type", "veth", "peer", "name", &n.veth_b,
            "netns", &n.ns_b,
        ])?;
        for (ns, dev, addr) in [(&n.ns_a, &n.veth_a, IP_A), (&n.ns_b, &n.veth_b, IP_B)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/{PREFIX_LEN}"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    fn start_server(&self, cmd: &str, env: &[(&str, String)]) -> Result<(), String> {
        let log = std::fs::File::create(&self.server_log)
            .map_err(|e| format!("{}: {e}", self.server_log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        // `ip netns exec` execs sh, which execs the command: the PID is the server's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.names.ns_a, "sh", "-c"])
            .arg(format!("exec {cmd}"))
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .env("PORT", PORT.to_string())
            .env("STUN_URLS", "none")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting the signaling server `{cmd}`: {e}"))?;
        let pid = child.id();
        *self.server.borrow_mut() = Some(child);
        let own_ns = std::fs::read_link("/proc/self/ns/net").ok();
        let t0 = Instant::now();
        loop {
            self.check_server()?;
            // Its tables are namespace A's once it has switched (`ip` does that first).
            let moved = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != own_ns;
            let table = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{f}"));
            if moved
                && !is_a_wrapper(pid)
                && ["tcp", "tcp6"]
                    .iter()
                    .any(|f| table(f).is_ok_and(|t| listens(&t, PORT)))
            {
                return Ok(());
            }
            if t0.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "the signaling server `{cmd}` did not listen on port {PORT} in namespace \
                     A within {START_TIMEOUT:?} (it must be one program, exec'd, and listen \
                     on PORT): {}",
                    log_tail(&self.server_log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An error with the log's tail when the signaling server has exited.
    pub fn check_server(&self) -> Result<(), String> {
        let mut server = self.server.borrow_mut();
        let Some(c) = server.as_mut() else {
            return Err(format!(
                "the signaling server is not running: {}",
                log_tail(&self.server_log)
            ));
        };
        if let Ok(Some(status)) = c.try_wait() {
            *server = None;
            return Err(format!(
                "the signaling server exited ({status}): {}",
                log_tail(&self.server_log)
            ));
        }
        Ok(())
    }

    pub fn ns(&self, which: Ns) -> &str {
        match which {
            Ns::A => &self.names.ns_a,
            Ns::B => &self.names.ns_b,
        }
    }

    /// The server's base URL, as both namespaces reach it.
    pub fn server_url(&self) -> String {
        format!("http://{IP_A}:{PORT}")
    }

    /// UDP datagrams both namespaces have dropped so far (buffer full; cumulative).
    pub fn udp_drops(&self) -> Result<u64, String> {
        let mut sum = 0;
        for which in [Ns::A, Ns::B] {
            let ns = self.ns(which);
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("reading {ns}'s /proc/net/snmp: {e}"))?;
            sum += udp_buffer_errors(&String::from_utf8_lossy(&out.stdout))
                .ok_or_else(|| format!("{ns}: no UDP counters in /proc/net/snmp"))?;
        }
        Ok(sum)
    }

    /// Starts `cmd` (one program, exec'd) in a namespace with exactly the environment
    /// `env` (plus PATH and HOME), stdout discarded and stderr to `log`.
    pub fn spawn_in(
        &self,
        which: Ns,
        cmd: &str,
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Child, String> {
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(which), "env", "-i"])
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("HOME=/tmp");
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.args(["sh", "-c"])
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("starting `{cmd}` in {}: {e}", self.ns(which)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.get_mut().take() {
            stop_child(&mut c);
        }
        // Closing its stdin tells the watcher to remove everything; wait for it, so the
        // namespaces are gone when the run returns.
        if let Some((mut w, stdin)) = self.watcher.take() {
            drop(stdin);
            let t0 = Instant::now();
            while t0.elapsed() < CLEANUP_TIMEOUT {
                if let Ok(Some(_)) = w.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = writeln!(
                std::io::stderr(),
                "bench compare: removing namespaces {} and {} is taking long; it goes on \
                 in the background",
                self.names.ns_a,
                self.names.ns_b
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_run_and_fit_the_kernel_limits() {
        let t = run_tag().unwrap();
        assert!(
            t.len() <= 12 && t.chars().all(|c| c.is_ascii_hexdigit()),
            "{t}"
        );
        // The longest tag: a PID near 2^22 (pid_max's ceiling).
        let n = Names::new(&format!("{:x}ffff", (1u32 << 22) - 1), Path::new("/tmp"));
        assert!(n.veth_a.len() <= 15 && n.veth_b.len() <= 15, "{n:?}");
        assert_ne!(n.ns_a, n.ns_b);
        assert_eq!(n.socket_dir, Path::new("/tmp/cxbench-3fffffffff"));
        // Room for the sockets: "<dir>/<pair>.a.sock" well under 107 bytes.
        assert!(n.socket_dir.as_os_str().len() + 20 < 107);
    }

    #[test]
    fn reads_the_effective_uid() {
        let s = "Name:\tx\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(s), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
        assert_eq!(effective_uid("Name: x\n"), None);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(effective_uid(&own).is_some());
    }

    #[test]
    fn finds_a_listening_port() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                 0: 00000000:46A0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
                 1: 0100000A:9C40 0100000A:46A0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert!(listens(t, 18080));
        // 0x9C40 = 40000 is an established connection's port, not a listener.
        assert!(!listens(t, 40000));
        assert!(!listens(t, 80));
        let t6 = "  sl  local_address remote_address st\n   \
                  0: 00000000000000000000000000000000:46A0 00000000000000000000000000000000:0000 0A 0\n";
        assert!(listens(t6, 18080));
        assert!(!listens("", 18080));
    }

    #[test]
    fn counts_udp_buffer_drops() {
        let s = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                 Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                 Udp: 10 0 7 12 5 2 0 0 0\n\
                 UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                 UdpLite: 0 0 0 0 100 100 0 0 0\n";
        assert_eq!(udp_buffer_errors(s), Some(7));
        assert_eq!(udp_buffer_errors("Udp: InDatagrams\nUdp: 1\n"), None);
        assert_eq!(udp_buffer_errors(""), None);
        let own = std::fs::read_to_string("/proc/net/snmp").unwrap();
        assert!(udp_buffer_errors(&own).is_some());
    }
}

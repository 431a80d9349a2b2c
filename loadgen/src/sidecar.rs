//! `bench sidecar`: the DataChannel data plane of running sidecars, driven over their
//! IPC sockets (PROTOCOL.md §8: JSON objects, one per line) exactly as the Python agent
//! drives them, so it measures any sidecar binary the same way (ours or the reference).
//! It runs no reactor and no shard: plain threads on blocking sockets, so its sleeps
//! between phases and its `/proc` reads block nobody but itself.
//!
//! The sidecars are started by the caller (scripts/bench-sidecar.sh runs them in two
//! network namespaces; a Unix socket path works across them). This command connects to
//! the sender A and to one or more receivers B (`--b-socket`/`--b-peer`/`--b-pid`, once
//! per receiver, in the same order), waits until A lists every B and a warm-up `ping`
//! from A has reached each B, then writes `--count` `send` lines into A as fast as A
//! takes them (A's backpressure throttles the writer through the socket), message `i`
//! to receiver `i mod N` (round-robin), while a reader thread per B takes its `message`
//! lines. With `--repeat R` that measured block runs R times back to back on the same
//! connections (each waits until the previous one was delivered whole), so short runs
//! are measured more than once and the first (cold) run can be told from the warm ones.
//! It reports msg/s and MB/s (from the first write to the last message read at any B),
//! in-order delivery (per receiver), each sidecar's CPU per message (nanosecond
//! scheduler time from /proc/PID/task/*/schedstat over all repetitions; the 10 ms
//! utime+stime ticks of /proc/PID/stat as a cross-check) and each sidecar's RSS idle
//! (peers open), right after the run and after a drain pause. With several receivers
//! the `receiver` figures are theirs together: CPU summed, RSS the largest.
//!
//! It uses plain threads and blocking sockets, not the reactor: a few sockets, and the
//! sidecars are the processes under test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Sender sidecar's IPC socket (its `IPC_SOCKET`).
    #[arg(long)]
    pub a_socket: PathBuf,
    /// Receiver sidecar's IPC socket; give it once per receiver (with as many
    /// `--b-peer`, in the same order) to send round-robin to several.
    #[arg(long, required = true)]
    pub b_socket: Vec<PathBuf>,
    /// Receiver sidecar's peer id (the `target_peer` of its `send`s); once per
    /// `--b-socket`.
    #[arg(long, required = true)]
    pub b_peer: Vec<String>,
    /// Sender sidecar's process id: report its CPU and RSS.
    #[arg(long)]
    pub a_pid: Option<u32>,
    /// Receiver sidecar's process id: report its CPU and RSS; none, or once per
    /// `--b-socket`.
    #[arg(long)]
    pub b_pid: Vec<u32>,
    /// Messages to send from A per repetition (round-robin over the receivers).
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// Bytes of filler in each message's payload (`payload.d`); the DataChannel message
    /// is this plus the MeshMessage envelope (`message_bytes` in the report).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Measured repetitions of `--count` messages on the same connections, back to back
    /// (msg/s is reported per repetition; CPU over all of them).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Seconds to wait for the sockets, for A to list every B, and for the warm-up pings.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Seconds the measured run (all repetitions) may take before it is reported as
    /// incomplete.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Milliseconds to wait after the run before the "drained" RSS reading.
    #[arg(long, default_value_t = 3000)]
    pub drain_ms: u64,
    /// Free text copied into the report (e.g. `ours`, `reference`).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Bytes of `send` lines written to A per `write_all`: large enough that the writer
/// costs little per line, small enough that backpressure stays fine-grained.
const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;

/// Capacity of the buffered reader on each IPC socket (one 16 KiB message line fits
/// many times; lines longer than this are still read whole, just in several reads).
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Receivers one run may drive: a reader thread and a socket each. Far above the
/// 50-peer case; more is refused with an error.
pub const RECEIVERS_MAX: usize = 1024;

/// Messages one run may send in all (`--count` × `--repeat`): the in-order bookkeeping
/// keeps a bit per message. More is refused with an error.
pub const MESSAGES_MAX: u64 = 100_000_000;

/// Request ids of warm-up pings start with this; measured messages carry `0`, `1`, ….
const WARMUP_PREFIX: &str = "warmup-";

/// One line from a sidecar, reduced to what the benchmark looks at (unknown fields,
/// including the message payload, are skipped by serde without being stored).
#[derive(Deserialize, Debug, Default)]
struct Line {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    payload: LinePayload,
}

#[derive(Deserialize, Debug, Default)]
struct LinePayload {
    message: Option<Msg>,
    peers: Option<Vec<String>>,
    reason: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
struct Msg {
    #[serde(default)]
    request_id: String,
}

/// What a reader thread hands the main thread.
enum Ev {
    /// A measured message (its sequence number) read at this instant.
    Seq(u64, Instant),
    /// A warm-up ping arrived.
    Warm,
    PeerList(Vec<String>),
    Error(String),
    /// Any other line (peer_connected, …): ignored.
    Other,
    /// The socket closed or failed.
    Closed(String),
}

fn classify(line: &[u8]) -> Ev {
    let l: Line = match serde_json::from_slice(line) {
        Ok(l) => l,
        Err(e) => return Ev::Error(format!("invalid JSON line from the sidecar: {e}")),
    };
    match l.kind.as_str() {
        "message" => match l.payload.message {
            Some(m) if m.request_id.starts_with(WARMUP_PREFIX) => Ev::Warm,
            Some(m) => match m.request_id.parse() {
                Ok(n) => Ev::Seq(n, Instant::now()),
                Err(_) => Ev::Other,
            },
            None => Ev::Other,
        },
        "peer_list" => Ev::PeerList(l.payload.peers.unwrap_or_default()),
        "error" => Ev::Error(l.payload.reason.unwrap_or_default()),
        _ => Ev::Other,
    }
}

/// Connects to a sidecar's socket, waiting for the file as the agent does.
fn connect_stream(path: &Path, deadline: Instant) -> Result<UnixStream, String> {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("cannot connect to {}: {e}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Starts a thread that classifies every line `stream` sends and hands it to `tx`
/// tagged with `tag` (the receiver's index).
fn spawn_reader(stream: &UnixStream, tag: usize, tx: Sender<(usize, Ev)>) -> Result<(), String> {
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            let ev = match r.read_until(b'\n', &mut line) {
                Ok(0) => Ev::Closed("the sidecar closed the IPC socket".into()),
                Err(e) => Ev::Closed(format!("IPC read failed: {e}")),
                Ok(_) => classify(&line),
            };
            let last = matches!(ev, Ev::Closed(_));
            if tx.send((tag, ev)).is_err() || last {
                return;
            }
        }
    });
    Ok(())
}

fn send_line(mut s: &UnixStream, v: Value) -> Result<(), String> {
    let mut b = v.to_string().into_bytes();
    b.push(b'\n');
    s.write_all(&b)
        .map_err(|e| format!("IPC write failed: {e}"))
}

/// utime+stime of a process (from /proc/PID/stat, in USER_HZ = 100 ticks per second,
/// which Linux fixes for user space on every architecture).
pub fn cpu_of(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // from the last ')'. utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')').ok_or_else(|| format!("{path}: no ')'"))? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64, String> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: bad field"))
    };
    // rest starts at field 3 (state): field n is f[n - 3].
    Ok(Duration::from_millis((tick(11)? + tick(12)?) * 10))
}

/// Nanoseconds on the CPU of each live thread of a process (the first field of
/// /proc/PID/task/TID/schedstat: the scheduler's `sum_exec_runtime`, ns resolution,
/// where /proc/PID/stat counts 10 ms ticks). Keyed by thread id.
pub fn thread_cpu_ns(pid: u32) -> Result<HashMap<u32, u64>, String> {
    let dir = format!("/proc/{pid}/task");
    let mut out = HashMap::new();
    for e in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let Ok(e) = e else { continue };
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read: skip it.
        let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.insert(tid, ns);
        }
    }
    if out.is_empty() {
        return Err(format!("{dir}: no readable schedstat"));
    }
    Ok(out)
}

/// CPU a process used between two [`thread_cpu_ns`] readings: per thread, its time at
/// the end less its time at the start (0 for a thread born since). A thread that
/// exited in between is missing at the end, so its time since the start is not counted
/// (the sidecars under test keep their threads for the whole run).
pub fn cpu_between(start: &HashMap<u32, u64>, end: &HashMap<u32, u64>) -> Duration {
    let ns: u64 = end
        .iter()
        .map(|(tid, e)| e.saturating_sub(start.get(tid).copied().unwrap_or(0)))
        .sum();
    Duration::from_nanos(ns)
}

/// Per-process readings.
#[derive(Default)]
struct Proc {
    pid: Option<u32>,
    cpu_start: Option<Duration>,
    cpu_end: Option<Duration>,
    sched_start: Option<HashMap<u32, u64>>,
    sched_end: Option<HashMap<u32, u64>>,
    rss_idle: Option<u64>,
    rss_after: Option<u64>,
    rss_drained: Option<u64>,
}

impl Proc {
    fn new(pid: Option<u32>) -> Proc {
        Proc {
            pid,
            ..Proc::default()
        }
    }
    fn rss(&self) -> Option<u64> {
        self.pid.and_then(|p| super::ws_idle::rss_kib(p).ok())
    }
    fn start(&mut self) {
        self.cpu_start = self.pid.and_then(|p| cpu_of(p).ok());
        self.sched_start = self.pid.and_then(|p| thread_cpu_ns(p).ok());
    }
    fn end(&mut self) {
        self.cpu_end = self.pid.and_then(|p| cpu_of(p).ok());
        self.sched_end = self.pid.and_then(|p| thread_cpu_ns(p).ok());
    }
    /// CPU seconds over the run: scheduler nanoseconds, else ticks.
    fn cpu_s(&self) -> Option<f64> {
        self.sched_s().or_else(|| self.ticks_s())
    }
    fn sched_s(&self) -> Option<f64> {
        match (&self.sched_start, &self.sched_end) {
            (Some(a), Some(b)) => Some(cpu_between(a, b).as_secs_f64()),
            _ => None,
        }
    }
    fn ticks_s(&self) -> Option<f64> {
        match (self.cpu_start, self.cpu_end) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        }
    }
}

/// The `sender`/`receiver` object of the report for processes `ps` (several receivers:
/// CPU summed, RSS the largest).
fn proc_report(ps: &[Proc], messages: u64) -> Value {
    let sum = |get: &dyn Fn(&Proc) -> Option<f64>| -> Option<f64> {
        ps.iter().map(get).sum::<Option<f64>>()
    };
    let max = |get: &dyn Fn(&Proc) -> Option<u64>| -> Option<u64> {
        ps.iter()
            .map(get)
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .max()
    };
    let cpu = sum(&Proc::cpu_s);
    let ticks = sum(&Proc::ticks_s);
    let per_msg = |c: f64| round2(c * 1e6 / messages.max(1) as f64);
    let pid = if ps.len() == 1 { ps[0].pid } else { None };
    json!({
        "pid": pid,
        "processes": ps.len(),
        "cpu_s": cpu.map(|c| (c * 1e6).round() / 1e6),
        "cpu_us_per_msg": cpu.map(per_msg),
        "cpu_source": if ps.iter().all(|p| p.sched_s().is_some()) { "schedstat" } else { "stat ticks" },
        "cpu_ticks_s": ticks,
        "cpu_ticks_us_per_msg": ticks.map(per_msg),
        "rss_idle_kib": max(&|p: &Proc| p.rss_idle),
        "rss_after_kib": max(&|p: &Proc| p.rss_after),
        "rss_drained_kib": max(&|p: &Proc| p.rss_drained),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// In-order delivery bookkeeping: message `seq` goes to receiver `seq mod receivers`,
/// and each receiver must see its messages in increasing order, each once.
struct Order {
    seen: Vec<bool>,
    receivers: u64,
    distinct: u64,
    /// The sequence number each receiver expects next.
    next: Vec<u64>,
    out_of_order: u64,
    duplicates: u64,
    unknown: u64,
}

impl Order {
    fn new(count: u64, receivers: usize) -> Order {
        Order {
            seen: vec![false; count as usize],
            receivers: receivers as u64,
            distinct: 0,
            next: (0..receivers as u64).collect(),
            out_of_order: 0,
            duplicates: 0,
            unknown: 0,
        }
    }
    /// Receiver `r` read message `seq`.
    fn take(&mut self, r: usize, seq: u64) {
        let Some(s) = self.seen.get_mut(seq as usize) else {
            self.unknown += 1;
            return;
        };
        if seq % self.receivers != r as u64 {
            self.unknown += 1;
            return;
        }
        if *s {
            self.duplicates += 1;
            return;
        }
        *s = true;
        self.distinct += 1;
        if seq != self.next[r] {
            self.out_of_order += 1;
        }
        self.next[r] = seq + self.receivers;
    }
    fn in_order(&self) -> bool {
        self.out_of_order == 0 && self.duplicates == 0 && self.unknown == 0
    }
}

/// The `send` line for message `i` (built by hand: only the request id changes, and the
/// filler is plain ASCII that needs no escaping).
fn send_line_bytes(out: &mut Vec<u8>, target: &str, i: u64, filler: &str) {
    let _ = writeln!(
        out,
        "{{\"type\":\"send\",\"payload\":{{\"target_peer\":{target},\"message\":{{\"type\":\"task_stream_chunk\",\"request_id\":\"{i}\",\"source_agent\":\"bench-a\",\"target_agent\":\"bench-b\",\"payload\":{{\"d\":\"{filler}\"}}}}}}}}"
    );
}

/// Waits until A lists every B and a warm-up ping from A has reached each B.
fn warm_up(
    peers: &[String],
    a: &UnixStream,
    a_rx: &Receiver<(usize, Ev)>,
    b_rx: &Receiver<(usize, Ev)>,
    deadline: Instant,
) -> Result<(), String> {
    let mut listed = false;
    // The peers of `peers` that A's last `peer_list` lacked (all until one arrives).
    let mut unlisted: Vec<&str> = peers.iter().map(String::as_str).collect();
    let mut warm = vec![false; peers.len()];
    let mut k = 0u64;
    loop {
        if Instant::now() > deadline {
            return Err(if listed {
                let missing: Vec<&str> = peers
                    .iter()
                    .zip(&warm)
                    .filter(|(_, w)| !**w)
                    .map(|(p, _)| p.as_str())
                    .collect();
                format!("a warm-up ping to {} did not arrive", missing.join(", "))
            } else {
                format!(
                    "A did not list peer {} (is B connected?)",
                    unlisted.join(", ")
                )
            });
        }
        if !listed {
            send_line(a, json!({"type":"list_peers","payload":{}}))?;
        } else {
            for (p, _) in peers.iter().zip(&warm).filter(|(_, w)| !**w) {
                send_line(
                    a,
                    json!({"type":"send","payload":{"target_peer":p,"message":{
                        "type":"ping","request_id":format!("{WARMUP_PREFIX}{k}"),
                        "source_agent":"bench-a","target_agent":"bench-b","payload":{}}}}),
                )?;
                k += 1;
            }
        }
        let until = Instant::now() + Duration::from_millis(250);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Ok((_, ev)) = a_rx.recv_timeout(left.min(Duration::from_millis(10))) {
                match ev {
                    Ev::PeerList(p) => {
                        unlisted = peers
                            .iter()
                            .filter(|b| !p.contains(b))
                            .map(String::as_str)
                            .collect();
                        listed = unlisted.is_empty();
                    }
                    Ev::Closed(e) => return Err(format!("A: {e}")),
                    _ => {}
                }
            }
            while let Ok((i, ev)) = b_rx.try_recv() {
                match ev {
                    Ev::Warm => warm[i] = true,
                    Ev::Closed(e) => return Err(format!("B {}: {e}", peers[i])),
                    _ => {}
                }
            }
            if warm.iter().all(|w| *w) {
                return Ok(());
            }
        }
    }
}

pub fn run(args: Args) -> Result<(Value, bool), String> {
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    if args.repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    let n = args.b_socket.len();
    if n != args.b_peer.len() {
        return Err(format!(
            "{n} --b-socket but {} --b-peer: give one peer id per receiver socket",
            args.b_peer.len()
        ));
    }
    if !args.b_pid.is_empty() && args.b_pid.len() != n {
        return Err(format!(
            "{n} --b-socket but {} --b-pid: give none or one per receiver",
            args.b_pid.len()
        ));
    }
    if n > RECEIVERS_MAX {
        return Err(format!("at most {RECEIVERS_MAX} receivers (got {n})"));
    }
    let total = args
        .count
        .checked_mul(u64::from(args.repeat))
        .filter(|t| *t <= MESSAGES_MAX)
        .ok_or_else(|| format!("--count × --repeat is over {MESSAGES_MAX} messages"))?;
    let connect_deadline = Instant::now() + Duration::from_secs_f64(args.connect_timeout);
    let a = connect_stream(&args.a_socket, connect_deadline)?;
    let (a_tx, a_rx) = mpsc::channel();
    spawn_reader(&a, 0, a_tx)?;
    let (b_tx, b_rx) = mpsc::channel();
    let mut bs = Vec::with_capacity(n);
    for (i, path) in args.b_socket.iter().enumerate() {
        let b = connect_stream(path, connect_deadline)?;
        spawn_reader(&b, i, b_tx.clone())?;
        bs.push(b);
    }
    drop(b_tx);
    let t_warm = Instant::now();
    warm_up(&args.b_peer, &a, &a_rx, &b_rx, connect_deadline)?;
    let warm_up_s = t_warm.elapsed().as_secs_f64();
    // Late warm-up pings still in flight: let them land before the idle reading.
    std::thread::sleep(Duration::from_millis(500));
    while b_rx.try_recv().is_ok() {}

    let mut pa = Proc::new(args.a_pid);
    let mut pbs: Vec<Proc> = if args.b_pid.is_empty() {
        vec![Proc::new(None)]
    } else {
        args.b_pid.iter().map(|p| Proc::new(Some(*p))).collect()
    };
    pa.rss_idle = pa.rss();
    pbs.iter_mut().for_each(|p| p.rss_idle = p.rss());
    pa.start();
    pbs.iter_mut().for_each(Proc::start);
    let own_cpu0 = super::cpu_now();

    let filler = "x".repeat(args.size);
    let targets: Vec<String> = args
        .b_peer
        .iter()
        .map(|p| Value::String(p.clone()).to_string())
        .collect();
    let mut probe = Vec::new();
    send_line_bytes(&mut probe, &targets[0], 0, &filler);
    let probe: Value = serde_json::from_slice(&probe).map_err(|e| e.to_string())?;
    let message_bytes = probe["payload"]["message"].to_string().len();

    let count = args.count;
    let mut order = Order::new(total, n);
    let mut errors_a: (u64, Option<String>) = (0, None);
    let mut errors_b: (u64, Option<String>) = (0, None);
    let mut failure = None;
    let mut write_s = Some(0.0);
    // Per repetition: seconds from its first write to its last message read.
    let mut reps: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let note = |e: &mut (u64, Option<String>), r: String| {
        e.0 += 1;
        e.1.get_or_insert(r);
    };
    let t_all = Instant::now();
    'reps: for rep in 0..u64::from(args.repeat) {
        let first = rep * count;
        let mut w = a.try_clone().map_err(|e| e.to_string())?;
        let (filler, targets) = (filler.clone(), targets.clone());
        let t0 = Instant::now();
        let writer = std::thread::spawn(move || -> Result<Duration, String> {
            let mut batch = Vec::with_capacity(WRITE_BATCH_BYTES_MAX + filler.len() + 256);
            for i in first..first + count {
                let target = &targets[(i % targets.len() as u64) as usize];
                send_line_bytes(&mut batch, target, i, &filler);
                if batch.len() >= WRITE_BATCH_BYTES_MAX {
                    w.write_all(&batch)
                        .map_err(|e| format!("IPC write failed: {e}"))?;
                    batch.clear();
                }
            }
            w.write_all(&batch)
                .map_err(|e| format!("IPC write failed: {e}"))?;
            Ok(t0.elapsed())
        });
        let mut last = t0;
        while order.distinct < first + count {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                failure = Some(format!("the run did not finish within {}s", args.timeout));
                break;
            };
            match b_rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok((r, Ev::Seq(seq, at))) => {
                    order.take(r, seq);
                    last = at;
                }
                Ok((_, Ev::Error(r))) => note(&mut errors_b, r),
                Ok((r, Ev::Closed(e))) => {
                    failure = Some(format!("B {}: {e}", args.b_peer[r]));
                    break;
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    failure = Some("B's readers stopped".into());
                    break;
                }
            }
            while let Ok((_, ev)) = a_rx.try_recv() {
                match ev {
                    Ev::Error(r) => note(&mut errors_a, r),
                    Ev::Closed(e) => failure = Some(format!("A: {e}")),
                    _ => {}
                }
            }
            if failure.is_some() {
                break;
            }
        }
        reps.push(last.duration_since(t0).as_secs_f64().max(1e-9));
        if writer.is_finished() {
            match writer.join() {
                Ok(Ok(d)) => write_s = write_s.map(|s| s + d.as_secs_f64()),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                    write_s = None;
                }
                Err(_) => write_s = None,
            }
        } else {
            // Unblock a writer stuck on a sidecar that stopped reading.
            let _ = a.shutdown(std::net::Shutdown::Both);
            write_s = None;
        }
        if failure.is_some() {
            break 'reps;
        }
    }
    let all_s = t_all.elapsed().as_secs_f64();
    pa.end();
    pbs.iter_mut().for_each(Proc::end);
    let own_cpu = super::cpu_now().saturating_sub(own_cpu0);
    pa.rss_after = pa.rss();
    pbs.iter_mut().for_each(|p| p.rss_after = p.rss());
    if failure.is_none() {
        std::thread::sleep(Duration::from_millis(args.drain_ms));
        pa.rss_drained = pa.rss();
        pbs.iter_mut().for_each(|p| p.rss_drained = p.rss());
    }

    let delivered = order.distinct;
    let ok = failure.is_none() && delivered == total && order.in_order();
    // One repetition: messages over its seconds (the last may be incomplete).
    let rate = |i: usize, secs: f64| -> f64 {
        let done = delivered.saturating_sub(i as u64 * count).min(count);
        done as f64 / secs
    };
    let rates: Vec<f64> = reps.iter().enumerate().map(|(i, s)| rate(i, *s)).collect();
    let median = |v: &[f64]| -> Option<f64> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| {
            let m = v.len() / 2;
            if v.len() % 2 == 1 {
                v[m]
            } else {
                (v[m - 1] + v[m]) / 2.0
            }
        })
    };
    // msg/s: of the one run, or the median over the repetitions.
    let msg_per_s = median(&rates).unwrap_or(0.0);
    let secs = median(&reps).unwrap_or(1e-9);
    let mut report = json!({
        "scenario": "sidecar",
        "label": args.label,
        "count": count,
        "size": args.size,
        "receivers": n,
        "repeat": args.repeat,
        "message_bytes": message_bytes,
        "delivered": delivered,
        "in_order": order.in_order(),
        "out_of_order": order.out_of_order,
        "duplicates": order.duplicates,
        "seconds": round2(secs * 1000.0) / 1000.0,
        "write_seconds": write_s,
        "msg_per_s": msg_per_s.round(),
        "payload_mb_per_s": round2(msg_per_s * args.size as f64 / 1e6),
        "message_mb_per_s": round2(msg_per_s * message_bytes as f64 / 1e6),
        "warm_up_s": round2(warm_up_s),
        "sender": proc_report(std::slice::from_ref(&pa), total),
        "receiver": proc_report(&pbs, total),
        "errors": {"a": errors_a.0, "a_first": errors_a.1, "b": errors_b.0, "b_first": errors_b.1},
        "loadgen_cpu_s": round2(own_cpu.as_secs_f64()),
        "failure": failure,
    });
    if args.repeat > 1 {
        report["repetitions"] = json!({
            "seconds_all": round2(all_s * 1000.0) / 1000.0,
            "msg_per_s": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "first_msg_per_s": rates.first().map(|r| r.round()),
            "warm_median_msg_per_s": median(rates.get(1..).unwrap_or(&[])).map(f64::round),
        });
    }
    Ok((report, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_lines_are_valid_json() {
        let mut b = Vec::new();
        send_line_bytes(&mut b, "\"peer-b\"", 7, "xyz");
        assert_eq!(*b.last().unwrap(), b'\n');
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "send");
        assert_eq!(v["payload"]["target_peer"], "peer-b");
        assert_eq!(v["payload"]["message"]["request_id"], "7");
        assert_eq!(v["payload"]["message"]["payload"]["d"], "xyz");
    }

    #[test]
    fn classifies_lines() {
        let m = br#"{"type":"message","payload":{"from_peer":"a","message":{"type":"x","request_id":"42","payload":{"d":"zz"}}}}"#;
        assert!(matches!(classify(m), Ev::Seq(42, _)));
        let w = br#"{"payload":{"message":{"request_id":"warmup-3"}},"type":"message"}"#;
        assert!(matches!(classify(w), Ev::Warm));
        let p = br#"{"type":"peer_list","payload":{"peers":["b"]}}"#;
        assert!(matches!(classify(p), Ev::PeerList(v) if v == ["b"]));
        let e = br#"{"type":"error","payload":{"reason":"no"}}"#;
        assert!(matches!(classify(e), Ev::Error(r) if r == "no"));
        assert!(matches!(classify(b"{nope"), Ev::Error(_)));
        assert!(matches!(
            classify(br#"{"type":"peer_connected","payload":{"peer_id":"b"}}"#),
            Ev::Other
        ));
    }

    #[test]
    fn order_bookkeeping() {
        let mut o = Order::new(4, 1);
        for s in [0, 1, 3, 2, 2, 9] {
            o.take(0, s);
        }
        assert_eq!(o.distinct, 4);
        assert_eq!(o.out_of_order, 2);
        assert_eq!(o.duplicates, 1);
        assert_eq!(o.unknown, 1);
        assert!(!o.in_order());
        let mut o = Order::new(3, 1);
        (0..3).for_each(|s| o.take(0, s));
        assert!(o.in_order());
    }

    #[test]
    fn order_round_robin_per_receiver() {
        // Three receivers: 0 gets 0, 3, 6; 1 gets 1, 4; 2 gets 2, 5. Interleaving
        // across receivers is fine; order within each is what counts.
        let mut o = Order::new(7, 3);
        for (r, s) in [(2, 2), (0, 0), (1, 1), (0, 3), (2, 5), (1, 4), (0, 6)] {
            o.take(r, s);
        }
        assert_eq!(o.distinct, 7);
        assert!(o.in_order());
        // A message at the wrong receiver, and one skipped then late.
        let mut o = Order::new(7, 3);
        o.take(1, 0);
        assert_eq!(o.unknown, 1);
        o.take(0, 3);
        o.take(0, 0);
        assert_eq!(o.out_of_order, 2);
        assert!(!o.in_order());
    }

    #[test]
    fn schedstat_cpu_per_thread() {
        let me = std::process::id();
        let a = thread_cpu_ns(me).unwrap();
        assert!(a.contains_key(&me), "{a:?}");
        // Burn a little CPU on this thread between the readings.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = thread_cpu_ns(me).unwrap();
        assert!(cpu_between(&a, &b) > Duration::ZERO);
        // A thread missing at the end counts nothing; one new counts from 0.
        let start: HashMap<u32, u64> = [(1, 100), (2, 50)].into();
        let end: HashMap<u32, u64> = [(1, 130), (3, 7)].into();
        assert_eq!(cpu_between(&start, &end), Duration::from_nanos(37));
        assert!(thread_cpu_ns(u32::MAX).is_err());
    }

    #[test]
    fn reads_own_cpu() {
        assert!(cpu_of(std::process::id()).is_ok());
        assert!(cpu_of(u32::MAX).is_err());
    }
}

//! `bench sidecar`: the DataChannel data plane of two running sidecars, driven over their
//! IPC sockets (PROTOCOL.md §8: JSON objects, one per line) exactly as the Python agent
//! drives them, so it measures any sidecar binary the same way (ours or the reference).
//!
//! The sidecars are started by the caller (scripts/bench-sidecar.sh runs them in two
//! network namespaces; a Unix socket path works across them). This command connects to
//! both sockets, waits until A lists B and a warm-up `ping` from A reaches B, then writes
//! `--count` `send` lines into A as fast as A takes them (A's backpressure throttles the
//! writer through the socket) while a reader thread takes B's `message` lines. It reports
//! msg/s and MB/s (from the first write to the last message read at B), in-order
//! delivery, each sidecar's CPU per message (utime+stime from /proc/PID/stat over the
//! run), and each sidecar's RSS idle (one peer open), right after the run and after a
//! drain pause.
//!
//! It uses plain threads and blocking sockets, not the reactor: two sockets, and the
//! sidecars are the processes under test.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Sender sidecar's IPC socket (its `IPC_SOCKET`).
    #[arg(long)]
    pub a_socket: PathBuf,
    /// Receiver sidecar's IPC socket.
    #[arg(long)]
    pub b_socket: PathBuf,
    /// Receiver sidecar's peer id (the `target_peer` of every `send`).
    #[arg(long)]
    pub b_peer: String,
    /// Sender sidecar's process id: report its CPU and RSS.
    #[arg(long)]
    pub a_pid: Option<u32>,
    /// Receiver sidecar's process id: report its CPU and RSS.
    #[arg(long)]
    pub b_pid: Option<u32>,
    /// Messages to send A → B.
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// Bytes of filler in each message's payload (`payload.d`); the DataChannel message
    /// is this plus the MeshMessage envelope (`message_bytes` in the report).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to wait for the sockets, for A to list B, and for the warm-up ping.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Seconds the measured run may take before it is reported as incomplete.
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

/// Connects to a sidecar's socket (waiting for the file, as the agent does) and starts
/// a thread that classifies every line it sends.
fn connect(path: &Path, deadline: Instant) -> Result<(UnixStream, Receiver<Ev>), String> {
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("cannot connect to {}: {e}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
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
            if tx.send(ev).is_err() || last {
                return;
            }
        }
    });
    Ok((stream, rx))
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

/// Per-process readings.
#[derive(Default)]
struct Proc {
    pid: Option<u32>,
    cpu_start: Option<Duration>,
    cpu_end: Option<Duration>,
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
    fn cpu(&self) -> Option<Duration> {
        self.pid.and_then(|p| cpu_of(p).ok())
    }
    fn report(&self, count: u64) -> Value {
        let cpu = match (self.cpu_start, self.cpu_end) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        json!({
            "pid": self.pid,
            "cpu_s": cpu,
            "cpu_us_per_msg": cpu.map(|c| round2(c * 1e6 / count.max(1) as f64)),
            "rss_idle_kib": self.rss_idle,
            "rss_after_kib": self.rss_after,
            "rss_drained_kib": self.rss_drained,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// In-order delivery bookkeeping for the receiver.
struct Order {
    seen: Vec<bool>,
    distinct: u64,
    next: u64,
    out_of_order: u64,
    duplicates: u64,
    unknown: u64,
}

impl Order {
    fn new(count: u64) -> Order {
        Order {
            seen: vec![false; count as usize],
            distinct: 0,
            next: 0,
            out_of_order: 0,
            duplicates: 0,
            unknown: 0,
        }
    }
    fn take(&mut self, seq: u64) {
        let Some(s) = self.seen.get_mut(seq as usize) else {
            self.unknown += 1;
            return;
        };
        if *s {
            self.duplicates += 1;
            return;
        }
        *s = true;
        self.distinct += 1;
        if seq != self.next {
            self.out_of_order += 1;
        }
        self.next = seq + 1;
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

/// Waits until A lists B and a warm-up ping from A has reached B.
fn warm_up(
    args: &Args,
    a: &UnixStream,
    a_rx: &Receiver<Ev>,
    b_rx: &Receiver<Ev>,
    deadline: Instant,
) -> Result<(), String> {
    let mut listed = false;
    let mut k = 0u64;
    loop {
        if Instant::now() > deadline {
            return Err(if listed {
                format!("a warm-up ping to {} did not arrive", args.b_peer)
            } else {
                format!("A did not list peer {} (is B connected?)", args.b_peer)
            });
        }
        if !listed {
            send_line(a, json!({"type":"list_peers","payload":{}}))?;
        } else {
            send_line(
                a,
                json!({"type":"send","payload":{"target_peer":args.b_peer,"message":{
                    "type":"ping","request_id":format!("{WARMUP_PREFIX}{k}"),
                    "source_agent":"bench-a","target_agent":"bench-b","payload":{}}}}),
            )?;
            k += 1;
        }
        let until = Instant::now() + Duration::from_millis(250);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Ok(ev) = a_rx.recv_timeout(left.min(Duration::from_millis(10))) {
                match ev {
                    Ev::PeerList(p) if p.contains(&args.b_peer) => listed = true,
                    Ev::Closed(e) => return Err(format!("A: {e}")),
                    _ => {}
                }
            }
            match b_rx.try_recv() {
                Ok(Ev::Warm) => return Ok(()),
                Ok(Ev::Closed(e)) => return Err(format!("B: {e}")),
                _ => {}
            }
        }
    }
}

pub fn run(args: Args) -> Result<(Value, bool), String> {
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    let connect_deadline = Instant::now() + Duration::from_secs_f64(args.connect_timeout);
    let (a, a_rx) = connect(&args.a_socket, connect_deadline)?;
    let (_b, b_rx) = connect(&args.b_socket, connect_deadline)?;
    let t_warm = Instant::now();
    warm_up(&args, &a, &a_rx, &b_rx, connect_deadline)?;
    let warm_up_s = t_warm.elapsed().as_secs_f64();
    // Late warm-up pings still in flight: let them land before the idle reading.
    std::thread::sleep(Duration::from_millis(500));
    while b_rx.try_recv().is_ok() {}

    let mut pa = Proc::new(args.a_pid);
    let mut pb = Proc::new(args.b_pid);
    pa.rss_idle = pa.rss();
    pb.rss_idle = pb.rss();
    pa.cpu_start = pa.cpu();
    pb.cpu_start = pb.cpu();
    let own_cpu0 = super::cpu_now();

    let filler = "x".repeat(args.size);
    let target = Value::String(args.b_peer.clone()).to_string();
    let mut probe = Vec::new();
    send_line_bytes(&mut probe, &target, 0, &filler);
    let probe: Value = serde_json::from_slice(&probe).map_err(|e| e.to_string())?;
    let message_bytes = probe["payload"]["message"].to_string().len();

    let count = args.count;
    let mut w = a.try_clone().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || -> Result<Duration, String> {
        let mut batch = Vec::with_capacity(WRITE_BATCH_BYTES_MAX + filler.len() + 256);
        for i in 0..count {
            send_line_bytes(&mut batch, &target, i, &filler);
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

    let mut order = Order::new(count);
    let mut errors_a: (u64, Option<String>) = (0, None);
    let mut errors_b: (u64, Option<String>) = (0, None);
    let mut last = t0;
    let mut failure = None;
    let deadline = t0 + Duration::from_secs_f64(args.timeout);
    let note = |e: &mut (u64, Option<String>), r: String| {
        e.0 += 1;
        e.1.get_or_insert(r);
    };
    while order.distinct < count {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            failure = Some(format!("the run did not finish within {}s", args.timeout));
            break;
        };
        match b_rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(Ev::Seq(n, at)) => {
                order.take(n);
                last = at;
            }
            Ok(Ev::Error(r)) => note(&mut errors_b, r),
            Ok(Ev::Closed(e)) => {
                failure = Some(format!("B: {e}"));
                break;
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                failure = Some("B's reader stopped".into());
                break;
            }
        }
        while let Ok(ev) = a_rx.try_recv() {
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
    let elapsed = last.duration_since(t0);
    pa.cpu_end = pa.cpu();
    pb.cpu_end = pb.cpu();
    let own_cpu = super::cpu_now().saturating_sub(own_cpu0);
    pa.rss_after = pa.rss();
    pb.rss_after = pb.rss();
    let write_s = if writer.is_finished() {
        match writer.join() {
            Ok(Ok(d)) => Some(d.as_secs_f64()),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                None
            }
            Err(_) => None,
        }
    } else {
        // Unblock a writer stuck on a sidecar that stopped reading.
        let _ = a.shutdown(std::net::Shutdown::Both);
        None
    };
    if failure.is_none() {
        std::thread::sleep(Duration::from_millis(args.drain_ms));
        pa.rss_drained = pa.rss();
        pb.rss_drained = pb.rss();
    }

    let secs = elapsed.as_secs_f64().max(1e-9);
    let delivered = order.distinct;
    let ok = failure.is_none() && delivered == count && order.in_order();
    let report = json!({
        "scenario": "sidecar",
        "label": args.label,
        "count": count,
        "size": args.size,
        "message_bytes": message_bytes,
        "delivered": delivered,
        "in_order": order.in_order(),
        "out_of_order": order.out_of_order,
        "duplicates": order.duplicates,
        "seconds": round2(secs * 1000.0) / 1000.0,
        "write_seconds": write_s,
        "msg_per_s": (delivered as f64 / secs).round(),
        "payload_mb_per_s": round2(delivered as f64 * args.size as f64 / secs / 1e6),
        "message_mb_per_s": round2(delivered as f64 * message_bytes as f64 / secs / 1e6),
        "warm_up_s": round2(warm_up_s),
        "sender": pa.report(count),
        "receiver": pb.report(count),
        "errors": {"a": errors_a.0, "a_first": errors_a.1, "b": errors_b.0, "b_first": errors_b.1},
        "loadgen_cpu_s": round2(own_cpu.as_secs_f64()),
        "failure": failure,
    });
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
        let mut o = Order::new(4);
        for s in [0, 1, 3, 2, 2, 9] {
            o.take(s);
        }
        assert_eq!(o.distinct, 4);
        assert_eq!(o.out_of_order, 2);
        assert_eq!(o.duplicates, 1);
        assert_eq!(o.unknown, 1);
        assert!(!o.in_order());
        let mut o = Order::new(3);
        (0..3).for_each(|s| o.take(s));
        assert!(o.in_order());
    }

    #[test]
    fn reads_own_cpu() {
        assert!(cpu_of(std::process::id()).is_ok());
        assert!(cpu_of(u32::MAX).is_err());
    }
}

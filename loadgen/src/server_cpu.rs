//! The server's CPU time (utime + stime from /proc/PID/stat) over a scenario's measured
//! window. Shards decide the window (after token fetch and warm-up), so a control
//! thread samples the counter every [`SAMPLE_EVERY`] and the window's CPU time is read
//! from the samples just outside it (never narrower than the window). The kernel counts
//! in clock ticks of 10 ms (USER_HZ is 100 on Linux), so windows of seconds are needed.
//!
//! This thread is a control thread: it reads procfs and sleeps; no shard does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How often the sampler reads /proc/PID/stat.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Samples kept; at one per 10 ms this is 10 minutes. When full the oldest half is
/// dropped (a window is always recent).
const SAMPLES_MAX: usize = 60_000;
/// Clock ticks per second of the utime/stime fields (USER_HZ; fixed at 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_stat_ticks(&s).ok_or_else(|| format!("{path}: no utime/stime"))
}

/// utime (field 14) + stime (field 15) of a /proc/PID/stat line. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted after `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so field n is f[n - 3].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Samples a process's CPU ticks on a control thread until dropped.
pub struct Sampler {
    pid: u32,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    pub fn start(pid: u32) -> Result<Sampler, String> {
        let first = cpu_ticks(pid).map_err(|e| format!("--server-pid {pid}: {e}"))?;
        // The Mutex is shared by this control thread and the main thread only; no
        // shard touches it.
        let samples = Arc::new(Mutex::new(vec![(Instant::now(), first)]));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::Builder::new()
            .name("server-cpu".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(SAMPLE_EVERY);
                    let Ok(t) = cpu_ticks(pid) else { return };
                    let mut v = s.lock().expect("not poisoned");
                    if v.len() >= SAMPLES_MAX {
                        v.drain(..SAMPLES_MAX / 2);
                    }
                    v.push((Instant::now(), t));
                }
            })
            .map_err(|e| format!("starting the CPU sampler: {e}"))?;
        Ok(Sampler { pid, samples, stop })
    }

    /// CPU seconds between the last sample at or before `from` and the first at or
    /// after `to` (the latest sample if none is after), and that span in seconds.
    pub fn between(&self, from: Instant, to: Instant) -> Option<(f64, f64)> {
        let mut v = self.samples.lock().expect("not poisoned");
        if let Ok(t) = cpu_ticks(self.pid) {
            v.push((Instant::now(), t));
        }
        span(&v, from, to)
    }

    /// `{"pid", "window_s", "cpu_s", "cpu_us_per_op", "cpu_percent"}`.
    pub fn report(&self, from: Instant, to: Instant, ops: u64) -> Value {
        match self.between(from, to) {
            Some((cpu_s, span_s)) => json!({
                "pid": self.pid,
                "window_s": super::round3(span_s),
                "cpu_s": super::round3(cpu_s),
                "cpu_us_per_op": (ops > 0).then(|| super::round3(cpu_s * 1e6 / ops as f64)),
                "cpu_percent": super::round3(100.0 * cpu_s / span_s.max(1e-9)),
            }),
            None => json!({"pid": self.pid, "error": "no CPU samples around the window"}),
        }
    }
}

/// Several processes' [`Sampler::report`]s (the nodes of a cluster) as one:
/// `{"pids", "window_s" (the widest), "cpu_s", "cpu_us_per_op", "cpu_percent"}` summed
/// over them (100 = one core busy), and each report under `"each"`. A process without
/// samples makes the sum's fields absent (`"error"` says which), not smaller.
pub fn sum(each: Vec<Value>, ops: u64) -> Value {
    let pids: Vec<Value> = each.iter().map(|r| r["pid"].clone()).collect();
    if let Some(bad) = each.iter().find(|r| r.get("error").is_some()) {
        return json!({"pids": pids, "error": format!("no CPU samples for pid {}", bad["pid"]), "each": each});
    }
    let cpu_s: f64 = each.iter().filter_map(|r| r["cpu_s"].as_f64()).sum();
    let window_s = each
        .iter()
        .filter_map(|r| r["window_s"].as_f64())
        .fold(0.0, f64::max);
    json!({
        "pids": pids,
        "window_s": super::round3(window_s),
        "cpu_s": super::round3(cpu_s),
        "cpu_us_per_op": (ops > 0).then(|| super::round3(cpu_s * 1e6 / ops as f64)),
        "cpu_percent": super::round3(100.0 * cpu_s / window_s.max(1e-9)),
        "each": each,
    })
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn span(v: &[(Instant, u64)], from: Instant, to: Instant) -> Option<(f64, f64)> {
    let a = v.iter().rev().find(|(t, _)| *t <= from).or(v.first())?;
    let b = v.iter().find(|(t, _)| *t >= to).or(v.last())?;
    if b.0 < a.0 {
        return None;
    }
    Some((
        b.1.saturating_sub(a.1) as f64 / TICKS_PER_S,
        (b.0 - a.0).as_secs_f64(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_odd_names() {
        let line = "1234 (my (odd) srv) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_stat_ticks(line), Some(290));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn reads_our_own_cpu() {
        assert!(cpu_ticks(std::process::id()).is_ok());
        assert!(cpu_ticks(u32::MAX).is_err());
    }

    #[test]
    fn several_processes_are_summed() {
        let a = json!({"pid": 1, "window_s": 2.0, "cpu_s": 0.5, "cpu_us_per_op": 50.0, "cpu_percent": 25.0});
        let b = json!({"pid": 2, "window_s": 2.01, "cpu_s": 0.25, "cpu_us_per_op": 25.0, "cpu_percent": 12.5});
        let s = sum(vec![a, b], 10_000);
        assert_eq!(s["pids"], json!([1, 2]));
        assert_eq!(s["cpu_s"], 0.75);
        assert_eq!(s["cpu_us_per_op"], 75.0);
        assert_eq!(s["window_s"], 2.01);
        assert_eq!(s["each"].as_array().unwrap().len(), 2);
        let bad = sum(
            vec![
                json!({"pid": 3, "error": "x"}),
                json!({"pid": 4, "cpu_s": 1.0}),
            ],
            1,
        );
        assert!(bad.get("cpu_us_per_op").is_none());
        assert!(bad["error"].as_str().unwrap().contains('3'));
    }

    #[test]
    fn windows_take_the_samples_just_outside() {
        let t0 = Instant::now();
        let at = |ms: u64, ticks: u64| (t0 + Duration::from_millis(ms), ticks);
        let v = [at(0, 0), at(10, 1), at(20, 5), at(30, 9), at(40, 9)];
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let (cpu, span_s) = span(&v, ms(15), ms(25)).unwrap();
        assert_eq!(cpu, 0.08);
        assert!((span_s - 0.02).abs() < 1e-9);
        // A window past the last sample ends at the last sample.
        assert_eq!(span(&v, ms(35), ms(99)).unwrap().0, 0.0);
        assert_eq!(span(&[], ms(0), ms(1)), None);
    }
}

//! Redis's own command counts (`INFO commandstats`) around a scenario's measured window,
//! for `bench ws-relay --redis URL`: how many Redis commands the cluster's nodes issued
//! per relayed message. Commands a script runs (`redis.call` inside `EVALSHA`) are
//! counted by Redis under their own names as well as the `EVALSHA`.
//!
//! Read by control threads only, over a blocking connection of its own (no shard).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

/// How long one `INFO` may take before the read is given up (a stopped Redis).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of an `INFO commandstats` reply accepted (a few hundred commands of ~100 bytes).
const INFO_BYTES_MAX: usize = 1 << 20;

/// Calls per command (`cmdstat_<name>:calls=N`), lower-case names.
pub type Counts = BTreeMap<String, u64>;

/// A `--redis` URL parsed (the cluster's own parser: same syntax as `--cluster`).
#[derive(Clone, Debug)]
pub struct Stats {
    url: chatixia_cluster::RedisUrl,
}

impl Stats {
    pub fn parse(url: &str) -> Result<Stats, String> {
        let url = chatixia_cluster::parse_url(url).map_err(|e| format!("--redis {e}"))?;
        if !matches!(url.addr, chatixia_cluster::Addr::Direct { .. }) {
            return Err("--redis: a redis://HOST:PORT URL (the Redis to count commands on)".into());
        }
        Ok(Stats { url })
    }

    /// `INFO commandstats` now, as calls per command.
    pub fn read(&self) -> Result<Counts, String> {
        let at = match &self.url.addr {
            chatixia_cluster::Addr::Direct { host, port } => format!("{host}:{port}"),
            chatixia_cluster::Addr::Sentinel(_) => return Err("--redis: not a redis:// URL".into()),
        };
        let s = TcpStream::connect(&at).map_err(|e| format!("--redis {at}: {e}"))?;
        s.set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        if let Some(pw) = &self.url.password {
            let mut args = vec!["AUTH"];
            if let Some(u) = &self.url.user {
                args.push(u);
            }
            args.push(pw);
            w.write_all(&command(&args))
                .map_err(|e| format!("--redis {at}: {e}"))?;
            let line = read_line(&mut r)?;
            if !line.starts_with('+') {
                return Err(format!("--redis {at}: AUTH answered {line}"));
            }
        }
        w.write_all(&command(&["INFO", "commandstats"]))
            .map_err(|e| format!("--redis {at}: {e}"))?;
        let line = read_line(&mut r)?;
        let n: usize = line
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("--redis {at}: INFO answered {line}"))?;
        if n > INFO_BYTES_MAX {
            return Err(format!("--redis {at}: INFO reply of {n} bytes"));
        }
        let mut body = vec![0; n + 2];
        r.read_exact(&mut body)
            .map_err(|e| format!("--redis {at}: {e}"))?;
        body.truncate(n);
        Ok(parse_commandstats(&String::from_utf8_lossy(&body)))
    }
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    out.into_bytes()
}

fn read_line(r: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    r.take(4096)
        .read_line(&mut line)
        .map_err(|e| format!("--redis: {e}"))?;
    Ok(line.trim_end().to_owned())
}

/// `cmdstat_evalsha:calls=12,usec=…` lines → {"evalsha": 12, …}.
pub fn parse_commandstats(info: &str) -> Counts {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_lowercase(), calls))
        })
        .collect()
}

/// `after - before` per command (commands with no calls in between left out).
pub fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Calls of every command but `INFO` and `AUTH` (this module's own).
pub fn total(c: &Counts) -> u64 {
    c.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "info" | "auth"))
        .map(|(_, v)| v)
        .sum()
}

/// The report's `redis` object: the commands Redis ran over the measured window
/// (`window_s` long, `messages` relayed in it), per message; and, when an idle window
/// was measured (`idle`: its counts and seconds, before any peer connected), the same
/// less the idle rate × the window (the links' lease renewals and probes).
pub fn report(
    url: &str,
    window: &Counts,
    window_s: f64,
    messages: u64,
    idle: Option<(&Counts, f64)>,
) -> Value {
    let r3 = super::round3;
    let per = |n: f64| (messages > 0).then(|| r3(n / messages as f64 * 1000.0) / 1000.0);
    let get = |c: &Counts, k: &str| c.get(k).copied().unwrap_or(0) as f64;
    let (evalsha, spublish, all) = (
        get(window, "evalsha"),
        get(window, "spublish"),
        total(window) as f64,
    );
    let mut v = json!({
        "url": url,
        "window_s": r3(window_s),
        "calls": window,
        "evalsha_per_msg": per(evalsha),
        "spublish_per_msg": per(spublish),
        "all_calls_per_msg": per(all),
    });
    if let Some((idle, idle_s)) = idle {
        let rate = |n: f64| n / idle_s.max(1e-9);
        let less = |n: f64, i: f64| per((n - rate(i) * window_s).max(0.0));
        v["idle"] = json!({
            "window_s": r3(idle_s),
            "calls": idle,
            "evalsha_per_s": r3(rate(get(idle, "evalsha"))),
            "spublish_per_s": r3(rate(get(idle, "spublish"))),
            "all_calls_per_s": r3(rate(total(idle) as f64)),
        });
        v["less_idle"] = json!({
            "evalsha_per_msg": less(evalsha, get(idle, "evalsha")),
            "spublish_per_msg": less(spublish, get(idle, "spublish")),
            "all_calls_per_msg": less(all, total(idle) as f64),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\ncmdstat_spublish:calls=7,usec=9\r\ncmdstat_info:calls=2,usec=1\r\n";
        let c = parse_commandstats(info);
        assert_eq!(c["evalsha"], 12);
        assert_eq!(c["spublish"], 7);
        assert_eq!(total(&c), 19);
        let mut later = c.clone();
        *later.get_mut("evalsha").unwrap() += 100;
        later.insert("hget".into(), 100);
        let d = delta(&c, &later);
        assert_eq!(d.len(), 2);
        assert_eq!(d["evalsha"], 100);
        let r = report("redis://x", &d, 1.0, 100, None);
        assert_eq!(r["evalsha_per_msg"], 1.0);
        assert_eq!(r["spublish_per_msg"], 0.0);
        assert_eq!(r["all_calls_per_msg"], 2.0);
        let idle: Counts = [("evalsha".to_string(), 10)].into();
        let r = report("redis://x", &d, 1.0, 100, Some((&idle, 2.0)));
        assert_eq!(r["less_idle"]["evalsha_per_msg"], 0.95);
    }
}

//! `bench http`: a mix of heartbeat, register, list-agents and topology requests (or
//! `GET /healthz`, which any server answers) over keep-alive connections, either closed
//! loop (each connection sends its next request when the previous answer arrives) or
//! open loop at `--rate` requests per second.
//!
//! Open loop corrects coordinated omission: every request has an intended send time
//! on a fixed schedule, and its latency is measured from that time, so a stalled server
//! shows up as queueing delay instead of as fewer, faster-looking samples.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::net::{HttpConn, Rng, Target};
use super::{Common, Errors, Live};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Keep-alive connections in all (spread over the shards).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests per second in all: open loop on a fixed schedule. Without it: closed
    /// loop, as fast as answers come.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Weights of the request kinds: heartbeat, register, list, topology, and healthz
    /// (`GET /healthz`: no state, any server answers it; not in the default mix).
    #[arg(long, default_value = "heartbeat=50,register=10,list=20,topology=20")]
    pub mix: String,
    /// Distinct agent ids used (the first N peers of the keys file; default 100, so
    /// list and topology answers stay a realistic size: topology grows with the
    /// square of the active agents).
    #[arg(long)]
    pub agents: Option<usize>,
    /// Each connection sends for one agent only (connection `c` for agent `c` mod the
    /// agents), as an agent process does with its own keep-alive connection; without
    /// it each request takes the next agent, so one connection speaks for many.
    #[arg(long)]
    pub agent_per_connection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Heartbeat,
    Register,
    List,
    Topology,
    Healthz,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Heartbeat => "heartbeat",
            Op::Register => "register",
            Op::List => "list",
            Op::Topology => "topology",
            Op::Healthz => "healthz",
        }
    }
}

fn parse_mix(s: &str) -> Result<Vec<(Op, u64)>, String> {
    let mut mix = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("--mix {s:?}: expected name=weight,…"))?;
        let op = match name.trim() {
            "heartbeat" => Op::Heartbeat,
            "register" => Op::Register,
            "list" => Op::List,
            "topology" => Op::Topology,
            "healthz" => Op::Healthz,
            other => return Err(format!("--mix: unknown request kind {other:?}")),
        };
        let w: u64 = w
            .trim()
            .parse()
            .map_err(|_| format!("--mix: bad weight in {part:?}"))?;
        if w > 0 {
            mix.push((op, w));
        }
    }
    if mix.is_empty() {
        return Err("--mix: no request kind with a positive weight".into());
    }
    Ok(mix)
}

fn pick(mix: &[(Op, u64)], rng: &mut Rng) -> Op {
    let total: u64 = mix.iter().map(|(_, w)| w).sum();
    let mut x = rng.next_u64() % total;
    for (op, w) in mix {
        if x < *w {
            return *op;
        }
        x -= w;
    }
    mix[0].0
}

struct ShardIn {
    target: Target,
    agents: Vec<(String, String)>, // (peer id, api key)
    conns: usize,
    /// First global connection index of this shard (spreads open-loop start offsets).
    conn_base: usize,
    conns_total: usize,
    rate: Option<f64>,
    mix: Vec<(Op, u64)>,
    warmup: Duration,
    duration: Duration,
    token_concurrency: usize,
    live: Arc<Live>,
    agent_per_connection: bool,
}

struct ShardOut {
    state: State,
    fatal: Option<super::net::Fail>,
    /// The measured window (after the warm-up).
    window: Option<(Instant, Instant)>,
}

/// What one shard counted.
struct State {
    hist: hdrhistogram::Histogram<u64>,
    ops: BTreeMap<Op, (u64, u64)>,
    errors: Errors,
    measured: u64,
    late: u64,
    unsent: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            hist: super::histogram(),
            ops: BTreeMap::new(),
            errors: Errors::default(),
            measured: 0,
            late: 0,
            unsent: 0,
        }
    }
}

async fn shard(input: ShardIn) -> ShardOut {
    let keys: Vec<String> = input.agents.iter().map(|(_, k)| k.clone()).collect();
    let tokens = match super::tokens::fetch_all(
        &input.target,
        &keys,
        input.token_concurrency,
        &Arc::new(Default::default()),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            return ShardOut {
                state: State::default(),
                fatal: Some(e),
                window: None,
            }
        }
    };
    Live::add(&input.live.tokens, tokens.len() as u64);
    let bearer: Rc<[String]> = tokens.iter().map(|t| format!("Bearer {}", t.jwt)).collect();
    let agents: Rc<[(String, String)]> = input.agents.clone().into();
    let state = Rc::new(RefCell::new(State::default()));
    let start = Instant::now();
    let measure_from = start + input.warmup;
    let end = measure_from + input.duration;
    let mix: Rc<[(Op, u64)]> = input.mix.clone().into();
    let mut tasks = Vec::new();
    for c in 0..input.conns {
        let (state, mix, agents, bearer, target, live) = (
            state.clone(),
            mix.clone(),
            agents.clone(),
            bearer.clone(),
            input.target.clone(),
            input.live.clone(),
        );
        // Open loop: this connection's share of the rate, its start offset spread so
        // the connections do not fire in lockstep.
        let schedule = input.rate.map(|r| {
            let interval = Duration::from_secs_f64(input.conns_total as f64 / r);
            let offset = interval.mul_f64((input.conn_base + c) as f64 / input.conns_total as f64);
            (interval, start + offset)
        });
        let sticky = input.agent_per_connection;
        tasks.push(monoio::spawn(async move {
            let mut rng = super::net::Rng::seeded();
            let mut conn: Option<HttpConn> = None;
            let mut k: u32 = 0;
            let mut agent = c;
            loop {
                let intended = match schedule {
                    Some((interval, first)) => {
                        let t = first + interval * k;
                        k += 1;
                        t
                    }
                    None => Instant::now(),
                };
                if intended >= end {
                    break;
                }
                let now = Instant::now();
                if now >= end {
                    // Open loop behind schedule at the end: what was due and not sent
                    // is reported, not sent late (the run is bounded in time).
                    if let Some((interval, _)) = schedule {
                        let from = intended.max(measure_from);
                        let n = (end - from).as_nanos() / interval.as_nanos().max(1) + 1;
                        state.borrow_mut().unsent += n as u64;
                    }
                    break;
                }
                if intended > now {
                    monoio::time::sleep(intended - now).await;
                } else if schedule.is_some() && now - intended > Duration::from_millis(1) {
                    state.borrow_mut().late += 1;
                }
                let op = pick(&mix, &mut rng);
                agent = if sticky {
                    c % agents.len()
                } else {
                    (agent + 1) % agents.len()
                };
                let (peer, _) = &agents[agent];
                let body;
                let (method, path, body) = match op {
                    Op::Heartbeat => {
                        body = json!({"agent_id": peer, "hostname": "bench", "status": "active",
                            "skill_names": ["bench"], "sidecar_peer_id": peer})
                        .to_string();
                        ("POST", "/api/hub/heartbeat", Some(body.as_bytes()))
                    }
                    Op::Register => {
                        body = json!({"agent_id": peer, "hostname": "bench", "ip": "127.0.0.1",
                            "sidecar_peer_id": peer, "capabilities": {"skills": ["bench"]}})
                        .to_string();
                        ("POST", "/api/registry/agents", Some(body.as_bytes()))
                    }
                    Op::List => ("GET", "/api/registry/agents", None),
                    Op::Topology => ("GET", "/api/hub/network/topology", None),
                    Op::Healthz => ("GET", "/healthz", None),
                };
                let r = async {
                    if conn.is_none() {
                        conn = Some(HttpConn::open(&target, None).await?);
                    }
                    conn.as_mut()
                        .expect("opened above")
                        .request(
                            method,
                            path,
                            &[
                                ("Content-Type", "application/json"),
                                ("Authorization", &bearer[agent]),
                            ],
                            body,
                        )
                        .await
                }
                .await;
                let done = Instant::now();
                let measured = intended >= measure_from;
                let backoff = {
                    let mut st = state.borrow_mut();
                    match r {
                        Ok(resp) if (200..300).contains(&resp.status) => {
                            Live::add(&live.ok, 1);
                            if measured {
                                super::record(&mut st.hist, done - intended);
                                st.measured += 1;
                                st.ops.entry(op).or_default().0 += 1;
                            }
                            false
                        }
                        Ok(resp) => {
                            Live::add(&live.errors, 1);
                            if measured {
                                st.ops.entry(op).or_default().1 += 1;
                                st.errors.add(&super::net::Fail::new(
                                    format!("http {}", resp.status),
                                    format!("{method} {path} answered {}", resp.status),
                                ));
                            }
                            false
                        }
                        Err(e) => {
                            Live::add(&live.errors, 1);
                            conn = None;
                            if measured {
                                st.ops.entry(op).or_default().1 += 1;
                            }
                            st.errors.add(&e);
                            true
                        }
                    }
                };
                if backoff {
                    // Do not spin on a refusing server.
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let st = Rc::try_unwrap(state)
        .ok()
        .expect("all tasks done")
        .into_inner();
    ShardOut {
        state: st,
        fatal: None,
        window: Some((measure_from, end)),
    }
}

pub fn run(args: Args) -> Result<(Value, bool), String> {
    let setup = super::setup(&args.common)?;
    let mix = parse_mix(&args.mix)?;
    let warmup = super::secs("--warmup", args.warmup)?;
    let duration = super::secs("--duration", args.duration)?;
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err("--rate must be a positive number of requests per second".into());
        }
    }
    let cores = args.common.cores;
    let concurrency = args.concurrency.max(cores);
    let n_agents = args.agents.unwrap_or(100).clamp(1, setup.peers.len());
    let agents: Vec<(String, String)> = setup.peers[..n_agents]
        .iter()
        .map(|p| (p.peer_id.clone(), p.key.clone()))
        .collect();
    let live = Arc::new(Live::default());
    let mut inputs = Vec::new();
    let mut base = 0;
    let dealt = super::deal(&agents, cores);
    for (s, agents) in dealt.into_iter().enumerate() {
        let conns = concurrency / cores + usize::from(s < concurrency % cores);
        let agents = if agents.is_empty() {
            vec![(setup.peers[0].peer_id.clone(), setup.peers[0].key.clone())]
        } else {
            agents
        };
        inputs.push(ShardIn {
            target: setup.target.clone(),
            agents,
            conns,
            conn_base: base,
            conns_total: concurrency,
            rate: args.rate,
            mix: mix.clone(),
            warmup,
            duration,
            token_concurrency: args.common.token_concurrency,
            live: live.clone(),
            agent_per_connection: args.agent_per_connection,
        });
        base += conns;
    }
    let l = live.clone();
    let outs = super::run_on_shards(
        &args.common,
        inputs,
        warmup + duration + Duration::from_secs(60),
        move || {
            format!(
                "http: {} ok, {} errors",
                Live::get(&l.ok),
                Live::get(&l.errors)
            )
        },
        shard,
    )?;
    let mut hist = super::histogram();
    let mut ops: BTreeMap<Op, (u64, u64)> = BTreeMap::new();
    let mut errors = Errors::default();
    let (mut measured, mut late, mut unsent) = (0, 0, 0);
    let mut window = None;
    for o in outs {
        window = super::union(window, o.window);
        if let Some(f) = o.fatal {
            return Err(format!("fetching tokens: {}", f.detail));
        }
        let o = o.state;
        hist.add(&o.hist).map_err(|e| e.to_string())?;
        for (op, (a, b)) in o.ops {
            let e = ops.entry(op).or_default();
            e.0 += a;
            e.1 += b;
        }
        errors.merge(o.errors);
        measured += o.measured;
        late += o.late;
        unsent += o.unsent;
    }
    let failed: u64 = ops.values().map(|(_, e)| e).sum();
    let report = json!({
        "scenario": "http",
        "mode": if args.rate.is_some() { "open loop (fixed rate, coordinated omission corrected)" } else { "closed loop (fixed concurrency)" },
        "concurrency": concurrency,
        "target_rate_rps": args.rate,
        "warmup_s": warmup.as_secs_f64(),
        "duration_s": duration.as_secs_f64(),
        "agents": n_agents,
        "tokens_fetched": Live::get(&live.tokens),
        "requests": {"ok": measured, "failed": failed},
        "throughput_rps": super::round3(measured as f64 / duration.as_secs_f64()),
        "late_sends": if args.rate.is_some() { Some(late) } else { None },
        // Open loop: requests due in the window but not sent by its end (the server
        // fell behind the rate; their latency would exceed the window).
        "unsent_behind_schedule": if args.rate.is_some() { Some(unsent) } else { None },
        "latency_us": super::summary(&hist),
        "ops": ops.iter().map(|(op, (ok, err))| (op.name().to_owned(), json!({"ok": ok, "failed": err}))).collect::<serde_json::Map<_, _>>(),
        "errors": errors.to_json(),
        "error_details": errors.details(),
    });
    let ok = measured > 0;
    let mut report = report;
    super::add_server_cpu(&setup, &mut report, window, measured);
    Ok((super::finish(&setup, &args.common, report), ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix = parse_mix("heartbeat=3,list=1,topology=0").unwrap();
        assert_eq!(mix.len(), 2);
        let mut rng = Rng::seeded();
        let hb = (0..4000)
            .filter(|_| pick(&mix, &mut rng) == Op::Heartbeat)
            .count();
        assert!((2700..3300).contains(&hb), "{hb}");
        assert_eq!(parse_mix("healthz=1").unwrap(), vec![(Op::Healthz, 1)]);
        assert!(parse_mix("nope=1").is_err());
        assert!(parse_mix("list=0").is_err());
    }
}

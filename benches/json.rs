//! JSON parsing on the server's hot or large paths: serde_json (what the server uses)
//! against simd-json, end to end on each path, with the real types and calls.
//!
//! For each input, three ways to the same result:
//! - `serde_json`: what the code does today (`wire::json::parse_body`, which is the
//!   depth scan plus `serde_json::from_slice`; `interpret` for a relayed frame;
//!   `SignalMessage::parse` on the client side).
//! - `simd_json`: the same depth scan (`JSON_DEPTH_MAX` must still hold), a mutable
//!   copy of the input (simd-json parses in place; the server would have to copy the
//!   request body too), then `simd_json::serde::from_slice`.
//! - `simd_json_reused`: as `simd_json`, but with the copy buffer and simd-json's
//!   `Buffers` kept from one parse to the next (what a shard could keep); the best case.
//! - `serde_json_same_route` (task create only): the route the simd-json path has to
//!   take (payload through a `serde_json::Value`, see below) with serde_json as the
//!   parser, to tell what the parser changes from what the route changes.
//! - `serde_json_payload_not_canonical` (task create only): not a path the server could
//!   take; serde_json with the payload left as a `RawValue`, to show what `Payload`'s
//!   canonical form costs on top of parsing.
//!
//! Error paths are not timed: a simd-json path would keep the exact messages and status
//! codes only by parsing again with serde_json when simd-json refuses an input.
//!
//! Where simd-json cannot produce the same value, the closest it can do is measured and
//! the difference is named: a task `payload` is a `serde_json::value::RawValue` (numbers
//! kept as sent), which simd-json's serde deserializer does not support, so its path
//! goes through a `serde_json::Value` (numbers beyond f64 change); a relayed signaling
//! payload is spliced as raw bytes, so its path decodes the payload and encodes it again.
//! Before timing, each pair of paths is checked to give the same result on its input.
//!
//! Run: `cargo bench --bench json -- --warm-up-time 1 --measurement-time 3`
//! (results in docs/BENCHMARKS.md, "JSON parsing: serde_json vs simd-json").

use std::borrow::Cow;
use std::time::{Duration, Instant};

use chatixia_core::hub::{Payload, TaskSubmission, TaskUpdate};
use chatixia_core::registry::Heartbeat;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use simd_json::prelude::{ValueObjectAccess, ValueObjectAccessAsScalar, Writable};
use simd_json::Buffers;
use wire::json::{check_depth, parse_body, JsonBody, JSON_DEPTH_MAX};
use wire::ws::signaling::client::count_peer_list;
use wire::ws::signaling::{
    interpret, peer_list_frame, relay_text_frame, Action, RelayKind, SignalMessage,
};

// ---- Inputs ---------------------------------------------------------------------------

/// Deterministic prose: words of 2 to 9 letters, a newline every ~80 characters and a
/// quoted word now and then (escapes in the JSON text, as agents' text has).
fn prose(len: usize, seed: u64) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut x = seed | 1;
    let mut line = 0;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = 2 + (x % 8) as usize;
        let word: String = (0..n)
            .map(|i| (b'a' + ((x >> (8 + 5 * i)) % 26) as u8) as char)
            .collect();
        match x % 23 {
            0 => s.push_str(&format!("\"{word}\"")),
            _ => s.push_str(&word),
        }
        line += n + 1;
        if line > 80 {
            s.push('\n');
            line = 0;
        } else {
            s.push(' ');
        }
    }
    s.truncate(len);
    s
}

/// A heartbeat as the load generator sends it (~110 bytes).
fn heartbeat() -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"agent_id": "peer-000042", "hostname": "bench",
        "status": "active", "skill_names": ["bench"], "sidecar_peer_id": "peer-000042"}),
    )
    .unwrap()
}

/// A task submission whose payload is about `payload_len` bytes of JSON: a chat-style
/// object (a prompt, options with numbers, and messages), keys not sorted.
fn task_create(payload_len: usize) -> Vec<u8> {
    let mut messages = Vec::new();
    let mut used = 200;
    let mut i = 0u64;
    while used < payload_len {
        let content = prose(
            900.min(payload_len.saturating_sub(used + 60)).max(20),
            i + 7,
        );
        used += content.len() + 60;
        messages.push(
            serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
            "content": content, "tokens": 100 + i * 17}),
        );
        i += 1;
    }
    let payload = serde_json::json!({"prompt": prose(120, 99), "model": "local",
        "options": {"temperature": 0.2, "max_tokens": 512, "stream": false},
        "messages": messages});
    // `json!` sorts keys; an agent's dict does not: put the payload's keys out of order.
    let payload = serde_json::to_string(&payload).unwrap().replacen(
        "{\"messages\"",
        "{\"zz\":1,\"messages\"",
        1,
    );
    format!(r#"{{"skill":"summarize","source_agent_id":"agent-1","ttl":600,"payload":{payload}}}"#)
        .into_bytes()
}

/// A task update carrying a result of `len` bytes of text.
fn task_update(len: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"state": "completed", "result": prose(len, 5)})).unwrap()
}

/// An SDP offer of about 3 KiB, as the sidecar sends it (the frame of
/// `benches/signaling.rs`).
fn offer() -> Vec<u8> {
    let sdp = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
               m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
               a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n\
               a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n\
               a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n"
        .repeat(6);
    SignalMessage::sdp("offer", "agent-a", "agent-b", sdp)
        .to_text()
        .into_bytes()
}

/// The server's `peer_list` frame with `n` peers.
fn peer_list(n: usize) -> Vec<u8> {
    let ids: Vec<String> = (0..n)
        .map(|i| format!("agent-{i:05}-{:06x}", i * 7919))
        .collect();
    peer_list_frame(ids.iter().map(String::as_str))
}

// ---- The simd-json paths --------------------------------------------------------------

/// Scratch a shard could keep between parses: the copy of the input and simd-json's
/// buffers.
struct Scratch {
    copy: Vec<u8>,
    buffers: Buffers,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            copy: Vec::new(),
            buffers: Buffers::new(64 * 1024),
        }
    }
}

/// `parse_body` with simd-json: depth scan, copy, parse. `None` where serde_json would
/// have to parse again for the error message.
fn simd_body<T: DeserializeOwned>(bytes: &[u8], scratch: Option<&mut Scratch>) -> Option<T> {
    check_depth(bytes, JSON_DEPTH_MAX).ok()?;
    match scratch {
        None => simd_json::serde::from_slice(&mut bytes.to_vec()).ok(),
        Some(s) => {
            let Scratch { copy, buffers } = s;
            copy.clear();
            copy.extend_from_slice(bytes);
            simd_json::serde::from_slice_with_buffers(copy, buffers).ok()
        }
    }
}

/// [`TaskSubmission`] with the payload as a `serde_json::Value`, which simd-json can
/// fill (it cannot fill a `RawValue`).
#[derive(Deserialize)]
struct SubmissionTree {
    #[serde(default)]
    skill: String,
    #[serde(default)]
    target_agent_id: String,
    #[serde(default)]
    source_agent_id: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default = "ttl_default")]
    ttl: u64,
}

/// [`TaskSubmission`] with the payload left as sent (no canonical form).
#[derive(Deserialize)]
#[allow(dead_code)] // Read only by the benchmark's timing.
struct SubmissionRaw {
    #[serde(default)]
    skill: String,
    #[serde(default)]
    target_agent_id: String,
    #[serde(default)]
    source_agent_id: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
    #[serde(default = "ttl_default")]
    ttl: u64,
}

fn ttl_default() -> u64 {
    chatixia_core::hub::DEFAULT_TTL_SECS
}

impl From<SubmissionTree> for TaskSubmission {
    fn from(t: SubmissionTree) -> Self {
        TaskSubmission {
            skill: t.skill,
            target_agent_id: t.target_agent_id,
            source_agent_id: t.source_agent_id,
            // A Value's text is canonical (sorted keys, compact), as `Payload`'s.
            payload: Payload::from(t.payload),
            ttl: t.ttl,
        }
    }
}

/// The relay the server builds from a frame (`interpret`, then the framed relay).
fn relay_serde(text: &[u8]) -> Option<Vec<u8>> {
    match interpret(text, "agent-a") {
        Action::Relay {
            kind,
            target,
            payload,
        } => Some(relay_text_frame(kind, "agent-a", &target, payload)),
        _ => None,
    }
}

/// The same relay with simd-json: it cannot hand back the payload's bytes, so the
/// payload is decoded into simd-json's borrowed tree and encoded again.
fn relay_simd(text: &[u8], scratch: Option<&mut Scratch>) -> Option<Vec<u8>> {
    check_depth(text, JSON_DEPTH_MAX).ok()?;
    let mut own;
    let (input, buffers) = match scratch {
        None => {
            own = text.to_vec();
            (&mut own[..], None)
        }
        Some(s) => {
            let Scratch { copy, buffers } = s;
            copy.clear();
            copy.extend_from_slice(text);
            (&mut copy[..], Some(buffers))
        }
    };
    let v = match buffers {
        None => simd_json::to_borrowed_value(input).ok()?,
        Some(b) => simd_json::value::borrowed::to_value_with_buffers(input, b).ok()?,
    };
    if v.get_str("peer_id")? != "agent-a" {
        return None;
    }
    let kind = match v.get_str("type")? {
        "offer" => RelayKind::Offer,
        "answer" => RelayKind::Answer,
        "ice_candidate" => RelayKind::IceCandidate,
        _ => return None,
    };
    let target: Cow<'_, str> = Cow::Borrowed(v.get_str("target_id")?);
    let payload = v
        .get("payload")
        .map_or_else(|| "null".to_owned(), |p| p.encode());
    Some(relay_text_frame(kind, "agent-a", &target, &payload))
}

/// `SignalMessage::parse` with simd-json.
fn signal_simd(text: &str, scratch: Option<&mut Scratch>) -> Option<SignalMessage> {
    simd_body::<SignalMessage>(text.as_bytes(), scratch)
}

// ---- Where the two parsers disagree ----------------------------------------------------

/// How `T` reads `input` with each parser: `None` when both agree (both refuse, or both
/// give equal values), else a line saying what each did.
fn disagreement<T>(input: &str) -> Option<String>
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let a = serde_json::from_str::<T>(input);
    let b = simd_json::serde::from_slice::<T>(&mut input.as_bytes().to_vec());
    let show = |r: Result<String, String>| r.unwrap_or_else(|e| format!("refused ({e})"));
    match (&a, &b) {
        (Ok(x), Ok(y)) if x == y => return None,
        (Err(_), Err(_)) => return None,
        _ => {}
    }
    let name = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("?");
    Some(format!(
        "{name} {input}\n    serde_json: {}\n    simd-json:  {}",
        show(a.map(|v| format!("{v:?}")).map_err(|e| e.to_string())),
        show(b.map(|v| format!("{v:?}")).map_err(|e| e.to_string()))
    ))
}

/// Prints the inputs on which simd-json accepts what serde_json refuses, refuses what it
/// accepts, or reads another value (before the timings; docs/BENCHMARKS.md quotes them).
/// Both refuse the rest (trailing characters, duplicate fields, lone surrogates, control
/// characters, a byte-order mark, trailing commas, leading zeros), with other messages.
fn disagreements() {
    let heartbeat = [
        r#"{"agent_id":"a","goals_count":-0}"#,
        r#"{"agent_id":"a","x":123456789012345678901234567890}"#,
        r#"{"agent_id":"a","x":1e400}"#,
        r#"{"agent_id":"a","port":8000.0}"#,
        r#"{"agent_id":"a","skills_count":01}"#,
        r#"{"agent_id":"a"} x"#,
        "\u{feff}{\"agent_id\":\"a\"}",
    ];
    let update = [
        r#"{"state":"x","state":"y"}"#,
        r#"{"state":"x","result":"\ud800"}"#,
        "{\"state\":\"a\u{1}b\"}",
        r#"{"state":"x",}"#,
    ];
    let signal = [
        r#"{"type":"t","payload":2.2250738585072011e-308}"#,
        r#"{"type":"t","payload":1.00000000000000011102230246251565404236316680908203125}"#,
        r#"{"type":"t","payload":-0}"#,
        r#"{"type":"t","payload":-9223372036854775809}"#,
        r#"{"type":"t","payload":0.1}"#,
    ];
    let lines: Vec<String> = (heartbeat.iter())
        .filter_map(|i| disagreement::<Heartbeat>(i))
        .chain(update.iter().filter_map(|i| disagreement::<TaskUpdate>(i)))
        .chain(
            signal
                .iter()
                .filter_map(|i| disagreement::<SignalMessage>(i)),
        )
        .chain(disagreement::<TaskSubmission>(r#"{"payload":{"a":1}}"#))
        .collect();
    let total = heartbeat.len() + update.len() + signal.len() + 1;
    eprintln!(
        "serde_json and simd-json disagree on {} of {total} inputs:",
        lines.len()
    );
    for l in lines {
        eprintln!("  {l}");
    }
}

// ---- The benchmark --------------------------------------------------------------------

/// One way to the result, called once per iteration (inputs and results black-boxed).
type Way<'a> = (&'static str, Box<dyn FnMut() + 'a>);

/// Rounds of the interleaved comparison: enough for stable quartiles, about half a
/// second per pair.
const INTERLEAVED_ROUNDS: usize = 300;

/// How long one batch of the baseline's calls takes in the interleaved comparison: long
/// enough to time well, short enough that load changes little within a round.
const INTERLEAVED_BATCH: Duration = Duration::from_micros(500);

/// Times every way with criterion, then compares each with the first (`serde_json`)
/// interleaved: rounds of one batch of each, in alternating order, and the median of the
/// per-round ratios. On a shared machine whose load moves during a run, criterion's
/// numbers for two ways are taken seconds apart; the interleaved ratio is not.
fn case(c: &mut Criterion, name: &str, input: &[u8], mut ways: Vec<Way<'_>>) {
    println!("json/{name}: {} bytes", input.len());
    let mut g = c.benchmark_group(format!("json/{name}"));
    g.throughput(Throughput::Bytes(input.len() as u64));
    for (way, f) in ways.iter_mut() {
        g.bench_function(*way, |b| b.iter(&mut *f));
    }
    g.finish();
    if std::env::var("JSON_BENCH_INTERLEAVED").as_deref() == Ok("0") || !selected(name) {
        return;
    }
    let (first, rest) = ways.split_at_mut(1);
    let base = &mut first[0].1;
    let start = Instant::now();
    let mut batch = 0usize;
    while start.elapsed() < INTERLEAVED_BATCH {
        base();
        batch += 1;
    }
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        t.elapsed().as_secs_f64()
    };
    for (way, f) in rest {
        let mut ratios: Vec<f64> = (0..INTERLEAVED_ROUNDS)
            .map(|round| match round % 2 {
                0 => {
                    let a = time(base);
                    time(f) / a
                }
                _ => {
                    let b = time(f);
                    b / time(base)
                }
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let q = |n: usize| ratios[n * (INTERLEAVED_ROUNDS - 1) / 4];
        println!(
            "interleaved json/{name}/{way} / serde_json: x{:.2} (quartiles x{:.2} to x{:.2}; \
             {INTERLEAVED_ROUNDS} rounds of {batch} calls)",
            q(2),
            q(1),
            q(3)
        );
    }
}

/// Whether criterion's filter (the command line's positional arguments, taken as
/// substrings) selects the case; no filter selects all.
fn selected(name: &str) -> bool {
    const WITH_VALUE: [&str; 14] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--profile-time",
        "--output-format",
        "--color",
    ];
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    filters.is_empty()
        || filters
            .iter()
            .any(|f| format!("json/{name}/").contains(f.as_str()))
}

/// A request body: `parse_body::<T>` against simd-json into `T` (`convert` from `S`,
/// the type simd-json can fill).
fn body_case<T, S>(c: &mut Criterion, name: &str, input: &[u8], convert: fn(S) -> T)
where
    T: JsonBody + PartialEq + std::fmt::Debug,
    S: DeserializeOwned,
{
    let want = parse_body::<T>(input).expect("serde_json parses the input");
    assert_eq!(simd_body::<S>(input, None).map(convert), Some(want));
    let mut ways: Vec<Way<'_>> = vec![(
        "serde_json",
        Box::new(|| {
            black_box(parse_body::<T>(black_box(input)).unwrap());
        }),
    )];
    if std::any::type_name::<S>() != std::any::type_name::<T>() {
        // The simd-json path's route with serde_json as the parser: what the parser
        // alone changes.
        let serde_tree = |bytes: &[u8]| {
            check_depth(bytes, JSON_DEPTH_MAX).ok()?;
            serde_json::from_slice::<S>(bytes).ok().map(convert)
        };
        assert_eq!(serde_tree(input), simd_body::<S>(input, None).map(convert));
        ways.push((
            "serde_json_same_route",
            Box::new(move || {
                black_box(serde_tree(black_box(input)).unwrap());
            }),
        ));
        // Not a path the server could take (the payload is left as sent): what parsing
        // alone costs, without `Payload`'s canonical form.
        ways.push((
            "serde_json_payload_not_canonical",
            Box::new(|| {
                check_depth(input, JSON_DEPTH_MAX).unwrap();
                black_box(serde_json::from_slice::<SubmissionRaw>(black_box(input)).unwrap());
            }),
        ));
    }
    ways.push((
        "simd_json",
        Box::new(|| {
            black_box(convert(simd_body::<S>(black_box(input), None).unwrap()));
        }),
    ));
    let mut scratch = Scratch::new();
    ways.push((
        "simd_json_reused",
        Box::new(move || {
            black_box(convert(
                simd_body::<S>(black_box(input), Some(&mut scratch)).unwrap(),
            ));
        }),
    ));
    case(c, name, input, ways);
}

fn bench(c: &mut Criterion) {
    disagreements();
    body_case::<Heartbeat, Heartbeat>(c, "heartbeat", &heartbeat(), |h| h);
    body_case::<TaskSubmission, SubmissionTree>(
        c,
        "task_create_1k",
        &task_create(1024),
        Into::into,
    );
    body_case::<TaskSubmission, SubmissionTree>(
        c,
        "task_create_64k",
        &task_create(63 * 1024),
        Into::into,
    );
    body_case::<TaskUpdate, TaskUpdate>(c, "task_update_64k", &task_update(63 * 1024), |u| u);

    // Server: a relayed offer (interpret + the relay frame).
    let offer = offer();
    let want = relay_serde(&offer).unwrap();
    let got = relay_simd(&offer, None).unwrap();
    // Same frame up to the payload's key order (simd-json keeps the input's order here;
    // nothing promises it for larger objects).
    let a: serde_json::Value = serde_json::from_slice(&want[4..]).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&got[4..]).unwrap();
    assert_eq!(a, b);
    let input = &offer[..];
    let mut scratch = Scratch::new();
    case(
        c,
        "relay_offer_3k",
        input,
        vec![
            (
                "serde_json",
                Box::new(|| {
                    black_box(relay_serde(black_box(input)).unwrap());
                }),
            ),
            (
                "simd_json",
                Box::new(|| {
                    black_box(relay_simd(black_box(input), None).unwrap());
                }),
            ),
            (
                "simd_json_reused",
                Box::new(|| {
                    black_box(relay_simd(black_box(input), Some(&mut scratch)).unwrap());
                }),
            ),
        ],
    );

    // Client (sidecar): an offer and a peer list of 1,000 peers read with
    // `SignalMessage::parse`; the load generator counts peer lists (`count_peer_list`).
    let list = peer_list(1000);
    for (name, input) in [
        ("client_offer_3k", &offer),
        ("client_peer_list_1000", &list),
    ] {
        let text = std::str::from_utf8(input).unwrap();
        let want = SignalMessage::parse(text).unwrap();
        assert_eq!(signal_simd(text, None), Some(want));
        let mut scratch = Scratch::new();
        let mut ways: Vec<Way<'_>> = vec![
            (
                "serde_json",
                Box::new(|| {
                    black_box(SignalMessage::parse(black_box(text)).unwrap());
                }),
            ),
            (
                "simd_json",
                Box::new(|| {
                    black_box(signal_simd(black_box(text), None).unwrap());
                }),
            ),
            (
                "simd_json_reused",
                Box::new(move || {
                    black_box(signal_simd(black_box(text), Some(&mut scratch)).unwrap());
                }),
            ),
        ];
        if name == "client_peer_list_1000" {
            assert_eq!(count_peer_list(input), Some(1000));
            ways.push((
                "loadgen_count_peer_list",
                Box::new(|| {
                    black_box(count_peer_list(black_box(input)).unwrap());
                }),
            ));
        }
        case(c, name, input, ways);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

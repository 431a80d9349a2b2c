//! Issue 13, finding 4: guessing six-digit invite codes (`--pair-code-format digits6`)
//! from many addresses finds nothing (a global wrong-guess rate on the code's shard,
//! buckets of codes burnt after a few wrong tries), and the per-IP table forgets old
//! addresses instead of locking out newcomers.
//!
//! Issue 20, finding 5: with long codes (the default) a flood of guesses from 1,000
//! addresses neither locks out nor burns the codes of honest users, and each address
//! has a daily budget of wrong codes.

use crate::common;
use common::*;
use std::net::Ipv4Addr;

fn server(cores: usize, extra: &[&str]) -> Server {
    let mut o = Opts::cores(cores);
    o.args = extra.iter().map(|s| s.to_string()).collect();
    Server::with(o)
}

fn gen_code(s: &Server) -> String {
    let r = s.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_admin")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["code"].as_str().unwrap().to_owned()
}

fn pair_body(code: &str) -> Value {
    json!({"code": code, "agent_name": "guesser"})
}

#[test]
fn four_hundred_addresses_do_not_find_a_code() {
    let s = server(2, &["--pair-code-format", "digits6"]);
    let real = gen_code(&s);
    let real_n: u32 = real.parse().unwrap();
    // 1,999 wrong guesses (none in the real code's bucket of 1,000, so it is not
    // burnt and can be used once the attack is over), the real code as guess 1,500.
    let mut guesses: Vec<String> = (0u32..)
        .map(|k| (k * 7919 + 13) % 1_000_000)
        .filter(|c| c / 1000 != real_n / 1000)
        .take(1999)
        .map(|c| format!("{c:06}"))
        .collect();
    guesses.insert(1500, real.clone());
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (i, chunk) in guesses.chunks(5).enumerate() {
        // 400 addresses, 5 guesses each: within the per-address limit.
        let ip = Ipv4Addr::new(127, 0, 2 + (i / 200) as u8, 1 + (i % 200) as u8);
        let mut c = s.conn_from(ip);
        for code in chunk {
            let r = c.post_json("/api/pairing/pair", &pair_body(code));
            assert_ne!(r.status, 200, "guess {code} was accepted: {}", r.text());
            if r.status == 429 {
                let why = r.error(429);
                assert!(why.contains("wrong pairing codes"), "{why}");
            }
            *statuses.entry(r.status).or_default() += 1;
        }
    }
    assert_eq!(statuses.values().sum::<usize>(), 2000);
    // At most the global budget (30 per shard per minute) was ever looked up.
    assert!(
        statuses.get(&401).copied().unwrap_or(0) <= 60,
        "{statuses:?}"
    );
    assert_eq!(s.admin_get("/api/pairing/all").json(), json!([]));
    // After the window, the real code still works for its owner.
    s.advance(61.0);
    let r = s
        .conn_from(Ipv4Addr::new(127, 0, 9, 9))
        .post_json("/api/pairing/pair", &pair_body(&real));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn wrong_guesses_near_a_code_burn_it() {
    let s = server(1, &["--pair-code-format", "digits6"]);
    let real = gen_code(&s);
    let n: u32 = real.parse().unwrap();
    let near: Vec<String> = (0..1000)
        .map(|k| n / 1000 * 1000 + k)
        .filter(|&c| c != n)
        .take(3)
        .map(|c| format!("{c:06}"))
        .collect();
    for (i, code) in near.iter().enumerate() {
        let r = s
            .conn_from(Ipv4Addr::new(127, 0, 3, 1 + i as u8))
            .post_json("/api/pairing/pair", &pair_body(code));
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let r = s
        .conn_from(Ipv4Addr::new(127, 0, 3, 100))
        .post_json("/api/pairing/pair", &pair_body(&real));
    assert_eq!(r.status, 401, "burnt: {}", r.text());
}

#[test]
fn a_fresh_address_is_not_locked_out_after_66000_others() {
    let s = server(1, &[]);
    let code = gen_code(&s);
    // 66,000 distinct addresses, one attempt each (a malformed code: rate-counted,
    // then refused with 400, so the global wrong-guess budget is not involved).
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let body = serde_json::to_vec(&pair_body("abc")).unwrap();
                let req = format!(
                    "POST /api/pairing/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let mut bytes = req.into_bytes();
                bytes.extend_from_slice(&body);
                let mut refused = 0;
                for n in (t * 16_500)..((t + 1) * 16_500) {
                    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n);
                    let sock = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::STREAM,
                        None,
                    )
                    .unwrap();
                    sock.bind(&std::net::SocketAddr::from((ip, 0)).into()).unwrap();
                    sock.connect(&addr.into()).unwrap();
                    let mut st: std::net::TcpStream = sock.into();
                    st.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                        .unwrap();
                    use std::io::{Read, Write};
                    st.write_all(&bytes).unwrap();
                    let mut buf = [0u8; 12];
                    st.read_exact(&mut buf).unwrap();
                    if &buf[9..12] == b"429" {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let refused: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(refused, 0, "newcomers were refused");
    let r = s
        .conn_from(Ipv4Addr::new(127, 2, 0, 1))
        .post_json("/api/pairing/pair", &pair_body(&code));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn one_api_key_cannot_take_every_invite_code() {
    let s = server(1, &[]);
    let mut c = s.conn();
    // Today's shard holds 1,000 live codes; the flood stops at the first refusal.
    let mut made = 0;
    let refusal = loop {
        let r = c.request(
            "POST",
            "/api/pairing/generate-code",
            &[("X-API-Key", "ak_test_agent")],
            None,
        );
        if r.status != 200 || made > 1000 {
            break r;
        }
        made += 1;
    };
    let why = refusal.error(429);
    assert!(why.contains("--pair-codes-per-key-max"), "{why}");
    assert_eq!(made, 100);
    // Another key still gets codes.
    gen_code(&s);
}

/// A guess shaped like `like` (the format the server issues): six digits, or twelve
/// Crockford base32 symbols grouped by four. `n` picks it.
fn guess_like(like: &str, n: u64) -> String {
    if like.len() == 6 && like.bytes().all(|b| b.is_ascii_digit()) {
        return format!("{:06}", n % 1_000_000);
    }
    const SYMBOLS: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let s: String = (0..12)
        .map(|i| char::from(SYMBOLS[((n >> (5 * i)) & 31) as usize]))
        .collect();
    format!("{}-{}-{}", &s[0..4], &s[4..8], &s[8..12])
}

/// Attacker threads that stop (and are joined) when dropped, so a failing assertion ends
/// the flood before the server goes away.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<std::collections::BTreeMap<u16, u64>>>,
}

impl Flood {
    /// Stops the flood and adds up the statuses every thread saw.
    fn finish(mut self) -> std::collections::BTreeMap<u16, u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = std::collections::BTreeMap::new();
        for t in std::mem::take(&mut self.threads) {
            for (k, v) in t.join().unwrap() {
                *total.entry(k).or_default() += v;
            }
        }
        total
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Issue 20, finding 5: 1,000 source addresses guess at full speed (each as fast as
/// the server answers, in the issued format and as six digits) while, in several
/// rounds, honest users with valid codes pair at the first try from their own
/// addresses. Nothing is locked, no code is burnt, no guess wins, and every table the
/// flood touches stays within its limit.
#[test]
fn a_thousand_addresses_at_full_speed_do_not_stop_honest_pairings() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const ADDRESSES: usize = 1000;
    const THREADS: usize = 8;
    const ROUNDS: usize = 5;
    const HONEST_PER_ROUND: usize = 4;
    let s = server(2, &[]);
    let shape = gen_code(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (stop, sent) = (stop.clone(), sent.clone());
            let shape = shape.clone();
            let s_addr = s.addr;
            std::thread::spawn(move || {
                let mut conns: Vec<std::net::TcpStream> = (t..ADDRESSES)
                    .step_by(THREADS)
                    .map(|i| {
                        let ip = Ipv4Addr::new(127, 10, (i / 250) as u8, 1 + (i % 250) as u8);
                        let sock = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::STREAM,
                            None,
                        )
                        .unwrap();
                        sock.bind(&std::net::SocketAddr::from((ip, 0)).into())
                            .unwrap();
                        sock.connect(&s_addr.into()).unwrap();
                        let st: std::net::TcpStream = sock.into();
                        st.set_nodelay(true).unwrap();
                        st.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                            .unwrap();
                        st
                    })
                    .collect();
                let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64) << 32;
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for (k, st) in conns.iter_mut().enumerate() {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Half in the issued format, half six digits.
                        let code = if k % 2 == 0 {
                            guess_like(&shape, seed)
                        } else {
                            format!("{:06}", seed % 1_000_000)
                        };
                        let body = serde_json::to_vec(&pair_body(&code)).unwrap();
                        let head = format!(
                            "POST /api/pairing/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        use std::io::Write;
                        st.write_all(head.as_bytes()).unwrap();
                        st.write_all(&body).unwrap();
                        buf.clear();
                        let r = read_response(st, &mut buf);
                        *statuses.entry(r.status).or_default() += 1;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                statuses
            })
        })
        .collect();
    let flood = Flood {
        stop: stop.clone(),
        threads,
    };

    // Let the flood reach full speed before the first honest user comes.
    let warm = std::time::Instant::now();
    while sent.load(Ordering::Relaxed) < 3 * ADDRESSES as u64 * 5 {
        assert!(warm.elapsed().as_secs() < 120, "the flood did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut paired = 0;
    for round in 0..ROUNDS {
        for u in 0..HONEST_PER_ROUND {
            let code = gen_code(&s);
            let ip = Ipv4Addr::new(127, 20, round as u8, 1 + u as u8);
            let r = s.conn_from(ip).post_json(
                "/api/pairing/pair",
                &json!({"code": code, "agent_name": format!("honest-{round}-{u}")}),
            );
            assert_eq!(
                r.status,
                200,
                "round {round}, user {u}, after {} flood requests: {}",
                sent.load(Ordering::Relaxed),
                r.text()
            );
            paired += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let total = flood.finish();
    eprintln!("flood: {total:?}; honest pairings: {paired}");
    assert_eq!(total.get(&200), None, "a guess won: {total:?}");
    // Each address got at most its 5 evaluated attempts per minute; the rest was refused.
    let evaluated = total.get(&401).copied().unwrap_or(0);
    assert!(evaluated <= ADDRESSES as u64 * 5 * 2, "{total:?}");
    assert!(
        total.get(&429).copied().unwrap_or(0) > evaluated,
        "{total:?}"
    );
    let entries = s.admin_get("/api/pairing/all").json();
    assert_eq!(entries.as_array().unwrap().len(), paired);
    // The refusals are counted, and the tables stay within their limits.
    let m = s.get("/metrics").text();
    eprintln!(
        "{}",
        m.lines()
            .filter(|l| l.starts_with("chatixia_pair"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let sum = |series: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with(series) && l[series.len()..].starts_with('{'))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(
        sum("chatixia_pair_refused_total"),
        total.get(&429).copied().unwrap_or(0),
        "every refusal counted"
    );
    assert_eq!(sum("chatixia_pair_codes_burnt_total"), 0, "nothing burnt");
    // One rate-limit entry and one budget entry per address (1,000 attackers and 20
    // honest users), far below the 65,536 per shard.
    let addresses = (ADDRESSES + ROUNDS * HONEST_PER_ROUND) as u64;
    assert_eq!(sum("chatixia_pair_rate_addresses"), addresses);
    assert_eq!(sum("chatixia_pair_budget_keys"), addresses);
}

/// Issue 20: one address (IPv6: one /64) gets `--pair-wrong-guesses-per-address-max`
/// wrong codes in 24 h; then its attempts are 429 (naming the flag, with retry-after),
/// even with a right code, which stays live for others. Right codes are not counted;
/// the window ends 24 h after its first wrong code.
#[test]
fn an_address_has_a_daily_budget_of_wrong_codes() {
    let s = server(2, &["--pair-wrong-guesses-per-address-max", "7"]);
    let me = Ipv4Addr::new(127, 0, 5, 1);
    let pair_from = |ip: Ipv4Addr, code: &str| {
        s.conn_from(ip)
            .post_json("/api/pairing/pair", &pair_body(code))
    };
    // Three right codes: refunded, they do not count.
    for _ in 0..3 {
        let code = gen_code(&s);
        assert_eq!(pair_from(me, &code).status, 200);
    }
    for i in 0..7 {
        // Past the per-IP rate limit (5 per 60 s): only the daily budget is in play.
        s.advance(61.0);
        let r = pair_from(me, &format!("0000-0000-000{i}"));
        assert_eq!(r.error(401), "invalid or expired pairing code", "guess {i}");
    }
    s.advance(61.0);
    let code = gen_code(&s);
    let r = pair_from(me, &code);
    let why = r.error(429);
    assert!(
        why.contains("7 wrong pairing codes")
            && why.contains("--pair-wrong-guesses-per-address-max"),
        "{why}"
    );
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((86_400 - 8 * 61..86_400).contains(&wait), "{wait}");
    // The code was not looked up: another address redeems it.
    assert_eq!(pair_from(Ipv4Addr::new(127, 0, 5, 2), &code).status, 200);
    // A day after the first wrong code, the address starts over.
    s.advance(wait as f64);
    let code = gen_code(&s);
    let r = pair_from(me, &code);
    assert_eq!(r.status, 200, "{}", r.text());
    let m = s.get("/metrics").text();
    assert!(
        m.lines()
            .filter(|l| l.starts_with("chatixia_pair_refused_total") && l.contains("address"))
            .any(|l| l.ends_with(" 1")),
        "{m}"
    );
}

//! Issue 13, finding 4: guessing invite codes from many addresses finds nothing (a
//! global wrong-guess rate on the code's shard, buckets of codes burnt after a few
//! wrong tries), and the per-IP table forgets old addresses instead of locking out
//! newcomers.

mod common;
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
    let s = server(2, &[]);
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
    let s = server(1, &[]);
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

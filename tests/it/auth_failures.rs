//! Issue 20, finding 4: every route that checks a secret has a failure budget per client
//! address and in total, with a back-off (429 + `retry-after`) that is answered before
//! the secret is looked at, while a right secret from another address still works, and
//! the failures are counted in `/metrics`. Real sockets from several loopback source
//! addresses (127.0.0.N).

use crate::common;

use std::net::Ipv4Addr;

use common::{json, Conn, Opts, Resp, Server};

/// The default budget per address and window.
const PER_IP: usize = 10;

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

fn server(cores: usize, extra: &[&str]) -> Server {
    let mut o = Opts::cores(cores);
    o.args = extra.iter().map(|s| s.to_string()).collect();
    Server::with(o)
}

/// Sum of a `/metrics` series over shards, for the samples whose labels contain all
/// of `labels` (`key="value"` pairs).
fn metric(s: &Server, name: &str, labels: &[&str]) -> u64 {
    let text = s.get("/metrics").text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

/// Asserts a refusal by the failure budget and returns its `retry-after`.
fn assert_backoff(r: &Resp) -> u64 {
    let msg = r.error(429);
    assert!(msg.contains("--auth-failures"), "{msg}");
    let secs: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("retry-after in seconds");
    assert!((1..=600).contains(&secs), "{secs}");
    secs
}

fn token_req(c: &mut Conn, header: &str, value: &str) -> Resp {
    c.request("POST", "/api/token", &[(header, value)], None)
}

#[test]
fn wrong_api_keys_back_off_while_a_right_key_works_from_another_address() {
    let s = server(2, &[]);
    let mut attacker = s.conn_from(ip(2));
    for i in 0..PER_IP {
        let r = token_req(&mut attacker, "X-API-Key", &format!("ak_guess_{i}"));
        assert_eq!((r.status, r.body.len()), (401, 0), "guess {i}");
    }
    // The budget is spent: refused before the key is looked at.
    let first = assert_backoff(&token_req(&mut attacker, "X-API-Key", "ak_guess_x"));
    assert!(first >= 50, "the rest of the window: {first}");
    // The right key from that address gets the same answer (nothing is revealed).
    assert_backoff(&token_req(&mut attacker, "X-API-Key", "ak_test_agent"));
    for _ in 0..50 {
        assert_backoff(&token_req(&mut attacker, "X-API-Key", "ak_guess_y"));
    }
    // Another address is not affected, while the flood goes on.
    let mut honest = s.conn_from(ip(3));
    let r = token_req(&mut honest, "X-API-Key", "ak_test_admin");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_backoff(&token_req(&mut attacker, "X-API-Key", "ak_guess_z"));
    // Counted: exactly the wrong keys that were looked at; refusals separately.
    let failures = metric(
        &s,
        "chatixia_auth_failures_total",
        &[r#"route="token""#, r#"kind="api_key""#],
    );
    assert_eq!(failures, PER_IP as u64);
    let refused = metric(&s, "chatixia_auth_refused_total", &[r#"route="token""#]);
    assert_eq!(refused, 53);
    assert_eq!(metric(&s, "chatixia_auth_failure_addresses", &[]), 1);
    // Once the back-off is over the address may try again: a right key works, and a
    // correct secret never costs budget...
    s.advance(first as f64);
    for _ in 0..20 {
        let r = token_req(&mut attacker, "X-API-Key", "ak_test_agent");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // ...but a wrong one doubles the back-off at once.
    let r = token_req(&mut attacker, "X-API-Key", "ak_guess_again");
    assert_eq!(r.status, 401);
    let second = assert_backoff(&token_req(&mut attacker, "X-API-Key", "ak_test_agent"));
    assert!(second > first, "doubled: {first} then {second}");
}

#[test]
fn a_flood_from_many_addresses_spends_the_total_but_fresh_addresses_still_get_in() {
    // Total budget 20 per window (one shard: all of it here), 10 per address.
    let s = server(1, &["--auth-failures-total-max", "20"]);
    let mut conns: Vec<Conn> = (10..40).map(|n| s.conn_from(ip(n))).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let r = token_req(c, "X-API-Key", &format!("ak_flood_{i}"));
        assert_eq!(
            r.status, 401,
            "address {i}: its first wrong key is looked at"
        );
    }
    // The total is spent: every address that failed recently is refused, with the flag
    // of the total named...
    for c in conns.iter_mut() {
        let r = token_req(c, "X-API-Key", "ak_test_agent");
        assert_backoff(&r);
        assert!(
            r.text().contains("--auth-failures-total-max"),
            "{}",
            r.text()
        );
    }
    // ...while an address without recent failures gets in with a right key.
    for n in [200, 201, 202] {
        let r = token_req(&mut s.conn_from(ip(n)), "X-API-Key", "ak_test_agent");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        metric(&s, "chatixia_auth_failures_total", &[r#"route="token""#]),
        30
    );
}

#[test]
fn wrong_device_tokens_back_off() {
    let s = server(2, &[]);
    let mut c = s.conn_from(ip(4));
    for i in 0..PER_IP {
        let r = token_req(&mut c, "X-Device-Token", &format!("dt_{i:032x}"));
        assert_eq!(r.status, 401, "guess {i}");
    }
    assert_backoff(&token_req(&mut c, "X-Device-Token", "dt_next"));
    // A request without any secret is not a failure, and a right key elsewhere works.
    let r = token_req(&mut s.conn_from(ip(5)), "X-Other", "x");
    assert_eq!(r.status, 401);
    let r = token_req(&mut s.conn_from(ip(5)), "X-API-Key", "ak_test_agent");
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(
            &s,
            "chatixia_auth_failures_total",
            &[r#"route="token""#, r#"kind="device_token""#]
        ),
        PER_IP as u64
    );
}

#[test]
fn generate_code_with_wrong_keys_backs_off() {
    let s = server(2, &[]);
    let mut c = s.conn_from(ip(6));
    let gen = |c: &mut Conn, key: &str| {
        c.request(
            "POST",
            "/api/pairing/generate-code",
            &[("X-API-Key", key)],
            None,
        )
    };
    for i in 0..PER_IP {
        assert_eq!(gen(&mut c, &format!("ak_wrong_{i}")).status, 401);
    }
    assert_backoff(&gen(&mut c, "ak_test_agent"));
    let r = gen(&mut s.conn_from(ip(7)), "ak_test_agent");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        metric(
            &s,
            "chatixia_auth_failures_total",
            &[r#"route="generate_code""#, r#"kind="api_key""#]
        ),
        PER_IP as u64
    );
    assert_eq!(
        metric(
            &s,
            "chatixia_auth_refused_total",
            &[r#"route="generate_code""#]
        ),
        1
    );
}

#[test]
fn pairing_status_with_wrong_claim_secrets_backs_off() {
    let s = server(2, &[]);
    let r = s.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_agent")],
        None,
    );
    let code = r.json()["code"].as_str().unwrap().to_owned();
    let v = s
        .post_json(
            "/api/pairing/pair",
            &json!({"code": code, "agent_name": "dev"}),
        )
        .json();
    let id = v["id"].as_str().unwrap().to_owned();
    let secret = format!("Bearer {}", v["claim_secret"].as_str().unwrap());
    let path = format!("/api/pairing/{id}/status");
    let mut c = s.conn_from(ip(8));
    for i in 0..PER_IP {
        let wrong = format!("Bearer cs_{i:032x}");
        let r = c.request("GET", &path, &[("Authorization", &wrong)], None);
        r.error(401);
    }
    assert_backoff(&c.request("GET", &path, &[("Authorization", &secret)], None));
    // The device itself, from its own address, still reads its status.
    let r = s
        .conn_from(ip(9))
        .request("GET", &path, &[("Authorization", &secret)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        metric(
            &s,
            "chatixia_auth_failures_total",
            &[r#"route="pairing_status""#, r#"kind="claim_secret""#]
        ),
        PER_IP as u64
    );
}

/// A well-formed admin JWT signed with the wrong key.
fn forged_admin_jwt(n: usize) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": format!("ops-{n}"), "role": "admin", "iat": now, "exp": now + 300});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"a guessed secret"),
    )
    .unwrap()
}

#[test]
fn forged_admin_tokens_back_off_but_expired_ones_do_not_count() {
    let s = server(2, &[]);
    // An admin token of ours that has expired is refused (401) but is no guess: it
    // does not spend the budget, however often it is sent.
    let old = s.admin_token();
    s.advance(400.0);
    let mut c = s.conn_from(ip(11));
    let bearer = |t: &str| format!("Bearer {t}");
    for _ in 0..3 * PER_IP {
        let r = c.request(
            "GET",
            "/api/pairing/all",
            &[("Authorization", &bearer(&old))],
            None,
        );
        assert_eq!(r.error(401), "invalid token: expired signature");
    }
    // Forged tokens are guesses, on the operator routes and the dashboard's alike.
    for i in 0..PER_IP {
        let path = if i % 2 == 0 {
            "/api/pairing/all"
        } else {
            "/api/dashboard/summary"
        };
        let r = c.request(
            "GET",
            path,
            &[("Authorization", &bearer(&forged_admin_jwt(i)))],
            None,
        );
        assert_eq!(r.error(401), "invalid token: invalid signature");
    }
    let fresh = s.admin_token();
    let r = c.request(
        "GET",
        "/api/dashboard/summary",
        &[("Authorization", &bearer(&fresh))],
        None,
    );
    assert_backoff(&r);
    let r = c.request(
        "POST",
        "/api/pairing/00000000/approve",
        &[("Authorization", &bearer(&fresh))],
        None,
    );
    assert_backoff(&r);
    // The operator at another address is not locked out.
    let r = s.conn_from(ip(12)).request(
        "GET",
        "/api/pairing/all",
        &[("Authorization", &bearer(&fresh))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        metric(
            &s,
            "chatixia_auth_failures_total",
            &[r#"route="admin""#, r#"kind="jwt""#]
        ),
        PER_IP as u64
    );
    assert_eq!(
        metric(&s, "chatixia_auth_refused_total", &[r#"route="admin""#]),
        2
    );
}

/// A `/ws` upgrade from `from` with `token` in the query; the refusal's status.
fn ws_upgrade(s: &Server, from: Ipv4Addr, token: &str) -> Resp {
    s.conn_from(from).request(
        "GET",
        &format!("/ws?token={token}"),
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
}

#[test]
fn forged_signaling_tokens_back_off() {
    let s = server(2, &[]);
    // Each upgrade is a new connection, which either shard may take: a shard that has
    // not seen the address fail yet looks at one more token before it asks the owner
    // (at most `cores - 1` beyond the budget).
    let mut looked_at = 0;
    let mut last = None;
    for i in 0..40 {
        let r = ws_upgrade(&s, ip(13), &forged_admin_jwt(i));
        match r.status {
            401 => looked_at += 1,
            429 => last = Some(assert_backoff(&r)),
            other => panic!("status {other}: {}", r.text()),
        }
    }
    assert!(
        (PER_IP..=PER_IP + s.cores - 1).contains(&looked_at),
        "{looked_at} tokens looked at"
    );
    assert!(last.is_some());
    // A valid token from another address still opens /ws.
    let good = common::ws::jwt_for("agent-x", 300);
    assert!(common::ws::connect(&s, &good).is_ok());
    assert_eq!(
        metric(
            &s,
            "chatixia_auth_failures_total",
            &[r#"route="ws""#, r#"kind="jwt""#]
        ),
        looked_at as u64
    );
}

#[test]
fn forged_agent_tokens_back_off_under_require_agent_auth() {
    let s = server(2, &["--require-agent-auth"]);
    let mut c = s.conn_from(ip(14));
    let hb = serde_json::to_vec(&json!({"agent_id": "agent-x", "hostname": "h"})).unwrap();
    let heartbeat = |c: &mut Conn, token: &str| {
        c.request(
            "POST",
            "/api/hub/heartbeat",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &format!("Bearer {token}")),
            ],
            Some(&hb),
        )
    };
    for i in 0..PER_IP {
        heartbeat(&mut c, &forged_admin_jwt(i)).error(401);
    }
    let real = common::ws::jwt_from_key(&s, "ak_test_agent");
    assert_backoff(&heartbeat(&mut c, &real));
    let r = heartbeat(&mut s.conn_from(ip(15)), &real);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        metric(
            &s,
            "chatixia_auth_failures_total",
            &[r#"route="agent""#, r#"kind="jwt""#]
        ),
        PER_IP as u64
    );
}

#[test]
fn budgets_are_flags() {
    let s = server(
        1,
        &[
            "--auth-failures-per-ip-max",
            "2",
            "--auth-failure-window",
            "10",
        ],
    );
    let mut c = s.conn_from(ip(16));
    assert_eq!(token_req(&mut c, "X-API-Key", "a").status, 401);
    assert_eq!(token_req(&mut c, "X-API-Key", "b").status, 401);
    let secs = assert_backoff(&token_req(&mut c, "X-API-Key", "c"));
    assert!(secs <= 10, "the rest of a 10 s window: {secs}");
    s.advance(secs as f64);
    assert_eq!(token_req(&mut c, "X-API-Key", "ak_test_agent").status, 200);
}

//! Bearer tokens verified once per shard (`auth::verified`), over real sockets: a
//! client presenting the same token request after request is answered from the cache
//! (counted in `/metrics`), and nothing it accepts changes: a forged token is verified
//! in full and counted as a wrong secret every time, and a cached token stops working
//! when it expires, in both the default mode and under `--require-agent-auth`.

use crate::common;
use common::turn_rig::metric;
use common::*;

const VERIFICATIONS: &str = "chatixia_auth_token_verifications_total";

/// Our token's header and claims under a signature made with another key.
fn forged(ours: &str) -> String {
    let claims = ours.trim_start_matches("Bearer ");
    let (message, _) = claims.rsplit_once('.').unwrap();
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "agent-x", "role": "agent", "iat": 1, "exp": 2}),
        &jsonwebtoken::EncodingKey::from_secret(b"a guessed secret"),
    )
    .unwrap();
    format!("Bearer {message}.{}", other.rsplit_once('.').unwrap().1)
}

#[test]
fn a_token_is_verified_once_and_still_refused_once_expired() {
    for args in [vec![], vec!["--require-agent-auth"]] {
        let mut o = Opts::cores(1);
        o.args = args.iter().map(|a| a.to_string()).collect();
        let s = Server::with(o);
        let token = s.bearer("ak_test_agent");
        let body = serde_json::to_vec(&json!({"agent_id": "agent-x", "hostname": "h"})).unwrap();
        let mut c = s.conn();
        let mut heartbeat = |auth: &str| {
            c.request(
                "POST",
                "/api/hub/heartbeat",
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", auth),
                ],
                Some(&body),
            )
        };
        let count = |how: &str| metric(&s, VERIFICATIONS, &format!("how=\"{how}\""));
        let (cached0, full0) = (count("cached"), count("full"));
        for _ in 0..20 {
            let r = heartbeat(&token);
            assert_eq!(r.status, 200, "{args:?}: {}", r.text());
        }
        assert_eq!(count("full") - full0, 1, "{args:?}: verified in full once");
        assert_eq!(
            count("cached") - cached0,
            19,
            "{args:?}: then from the cache"
        );

        // A forged token: 401 each time, each verified in full and counted as a guess.
        let fake = forged(&token);
        let guesses = || metric(&s, "chatixia_auth_failures_total", "route=\"agent\"");
        let (full1, guesses1) = (count("full"), guesses());
        for _ in 0..3 {
            let r = heartbeat(&fake);
            assert_eq!(r.status, 401, "{args:?}: {}", r.text());
            assert!(r.text().contains("invalid signature"), "{}", r.text());
        }
        assert_eq!(count("full") - full1, 3, "{args:?}");
        assert_eq!(guesses() - guesses1, 3, "{args:?}");

        // The cached token expires on time (its lifetime is 300 s, the leeway 5 s).
        s.advance(310.0);
        let r = heartbeat(&token);
        assert_eq!(r.status, 401, "{args:?}: {}", r.text());
        assert!(r.text().contains("expired signature"), "{}", r.text());
        // A fresh token works again.
        let fresh = s.bearer("ak_test_agent");
        assert_eq!(heartbeat(&fresh).status, 200, "{args:?}");
    }
}

//! Auth's workflows on the simulator (issue 21): `POST /api/token`, the failure budget
//! across shards (the owner's ledger, the other shards' hints), the admin and agent
//! checks, with full mailboxes. (The device-token flow with pairing is in
//! `server::sim::pairing`.)

use std::net::{IpAddr, Ipv4Addr};

use super::{config, world, SimNode};
use crate::auth::budget::admit;
use crate::auth::failures::{Failure, SecretRoute};
use crate::auth::{api, jwt, DeviceGrant, Presented};
use crate::server::Msg;
use crate::shard::sim::Sim;
use crate::shard::{Error, Kind};
use crate::time::UnixTime;

const T0: UnixTime = UnixTime(1_800_000_000_000_000_000);
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn cfg(sim: &Sim<Msg, SimNode>) -> crate::auth::Config {
    sim.node(0).config.auth.clone()
}

/// `POST /api/token` as the router runs it: the budget first, then the exchange.
fn token(
    sim: &Sim<Msg, SimNode>,
    on: usize,
    api_key: Option<&str>,
    device_token: Option<&str>,
) -> Result<api::Issued, Error> {
    let (sh, cfg) = (sim.shard(on), cfg(sim));
    let (api_key, device_token) = (api_key.map(str::to_owned), device_token.map(str::to_owned));
    sim.block_on(async move {
        admit(&sh, CLIENT, SecretRoute::Token).await?;
        api::token(
            &sh,
            &cfg,
            api_key.as_deref(),
            device_token.as_deref(),
            CLIENT,
        )
        .await
    })
}

/// Indexes `token` on its owner shard, as pairing's approval does.
fn index(sim: &Sim<Msg, SimNode>, token: &str, entry_id: u32) {
    let key = crate::auth::tokens::token_key_of(&cfg(sim).secrets, token);
    let owner = reactor::shard_of(&key, sim.count());
    let grant = DeviceGrant {
        peer_id: "agent-0a0b0c".into(),
        role: crate::auth::DEVICE_TOKEN_ROLE.into(),
        mesh: None,
        entry_id,
    };
    sim.node(owner)
        .state
        .tokens
        .borrow_mut()
        .insert(key, grant)
        .unwrap();
}

/// Every shard's `(failures, refused)` counters, summed.
fn counted(sim: &Sim<Msg, SimNode>, f: Failure, r: SecretRoute) -> (u64, u64) {
    (0..sim.count()).fold((0, 0), |(a, b), s| {
        let (fails, refused) = sim.node(s).state.auth_counters.snapshot();
        (a + fails[f.index()], b + refused[r.index()])
    })
}

#[test]
fn an_api_key_or_an_indexed_device_token_is_exchanged_for_a_jwt_on_any_shard() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 5);
        let secret = cfg(&sim).jwt_secret;
        index(&sim, "dt_0123", 0x0bad_c0de);
        for on in 0..shards {
            let issued = token(&sim, on, Some("ak_dev_001"), Some("dt_0123")).unwrap();
            assert_eq!(issued.device_entry, None, "the API key wins");
            let issued = token(&sim, on, Some("ak_nope"), Some("dt_0123")).unwrap();
            assert_eq!(issued.device_entry, Some(0x0bad_c0de));
            assert_eq!(issued.body.peer_id, "agent-0a0b0c");
            let claims = jwt::verify(&secret, &issued.body.token, T0.as_secs()).unwrap();
            assert_eq!(
                (claims.sub.as_str(), claims.role.as_str()),
                ("agent-0a0b0c", "agent")
            );
        }
        // The unknown API key beside a good device token is a failure all the same
        // (issue 20: otherwise a device's holder guesses keys outside the budget).
        let n = shards as u64;
        assert_eq!(
            counted(&sim, Failure::TokenApiKey, SecretRoute::Token),
            (n, 0)
        );
        // Neither header: 401, no body, not a failure.
        assert_eq!(
            token(&sim, 0, None, None).unwrap_err(),
            Error::bare(Kind::Unauthorized)
        );
        assert_eq!(counted(&sim, Failure::TokenApiKey, SecretRoute::Token).0, n);
    }
}

/// Wrong secrets from one address spend its budget (default 10 per window) whichever
/// shard takes them: the owner counts them, another shard's hint makes it ask; then the
/// address is refused (429, retry-after) before its secret is looked at, even a good one.
#[test]
fn wrong_secrets_spend_the_address_budget_on_any_shard() {
    for shards in [1, 2, 4] {
        for on in 0..shards {
            let sim = world(shards, config(), T0, 9);
            index(&sim, "dt_good", 1);
            let max = cfg(&sim).failures.per_client_max;
            for i in 0..max {
                let (key, device) = if i % 2 == 0 {
                    (Some("ak_wrong"), None)
                } else {
                    (None, Some("dt_wrong"))
                };
                let e = token(&sim, on, key, device).unwrap_err();
                assert_eq!(e, Error::bare(Kind::Unauthorized));
            }
            let e = token(&sim, on, None, Some("dt_good")).unwrap_err();
            assert_eq!(e.kind, Kind::TooMany, "{shards} shards, on {on}: {e}");
            assert!(e.retry_after.is_some_and(|s| s >= 1));
            assert!(e.message.unwrap().contains("--auth-failures-per-ip-max"));
            let half = u64::from(max / 2);
            assert_eq!(
                counted(&sim, Failure::TokenApiKey, SecretRoute::Token),
                (half, 1)
            );
            assert_eq!(
                counted(&sim, Failure::TokenDeviceToken, SecretRoute::Token).0,
                half
            );
            // The ledger is on the address's owner only.
            let held: Vec<usize> = (0..shards)
                .map(|s| sim.node(s).state.auth_failures.borrow().len())
                .collect();
            assert_eq!(held.iter().sum::<usize>(), 1, "{held:?}");
            // After the back-off, the good token works again.
            sim.advance(cfg(&sim).failures.window * 2);
            assert!(token(&sim, on, None, Some("dt_good")).is_ok());
        }
    }
}

/// The device-token index's owner is overloaded: 503 after the ask patience, no token.
/// A failure told to an overloaded owner is not lost: the shard that took it asks the
/// owner before the address's next attempt (503 while it still cannot).
#[test]
fn a_full_owner_mailbox_is_a_503_and_a_failure_is_not_forgotten() {
    let sim = world(2, config(), T0, 13);
    index(&sim, "dt_0123", 1);
    let key = crate::auth::tokens::token_key_of(&cfg(&sim).secrets, "dt_0123");
    let owner = reactor::shard_of(&key, 2);
    sim.set_full(owner, true);
    let e = token(&sim, 1 - owner, None, Some("dt_0123")).unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    assert!(sim.stats(1 - owner).asks_refused.get() >= 1);
    sim.set_full(owner, false);

    let addr_owner = reactor::shard_of(&[192, 0, 2, 7][..], 2);
    let other = 1 - addr_owner;
    sim.set_full(addr_owner, true);
    // The failure is counted here; the owner's mailbox stays full.
    assert_eq!(
        token(&sim, other, Some("ak_wrong"), None).unwrap_err(),
        Error::bare(Kind::Unauthorized)
    );
    assert_eq!(sim.node(addr_owner).state.auth_failures.borrow().len(), 0);
    // The next attempt asks the owner first: still full, 503.
    let e = token(&sim, other, Some("ak_dev_001"), None).unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    sim.set_full(addr_owner, false);
    assert!(token(&sim, other, Some("ak_dev_001"), None).is_ok());
}

#[test]
fn admin_and_agent_checks_count_only_forged_tokens() {
    let mut c = config();
    c.auth.require_agent_auth = true;
    let sim = world(2, c, T0, 19);
    let cfg = cfg(&sim);
    let now = T0.as_secs();
    let admin = format!(
        "Bearer {}",
        jwt::issue(&cfg.jwt_secret, "ops", "admin", now)
    );
    let agent = format!(
        "Bearer {}",
        jwt::issue(&cfg.jwt_secret, "alpha", "agent", now)
    );
    let forged = format!("Bearer {}", jwt::issue(b"not ours", "ops", "admin", now));
    let run_admin = |h: Option<String>| {
        let (sh, cfg) = (sim.shard(1), cfg.clone());
        sim.block_on(async move {
            crate::auth::admin::authorize(&sh, &cfg, h.as_deref(), CLIENT)
                .await
                .map(|c| c.sub)
        })
    };
    assert_eq!(run_admin(Some(admin.clone())).unwrap(), "ops");
    assert_eq!(run_admin(None).unwrap_err().kind, Kind::Unauthorized);
    let e = run_admin(Some(agent.clone())).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_deref()),
        (
            Kind::Forbidden,
            Some("admin role required (token role: agent)")
        )
    );
    assert_eq!(counted(&sim, Failure::Admin, SecretRoute::Admin).0, 0);
    assert_eq!(
        run_admin(Some(forged.clone())).unwrap_err().kind,
        Kind::Unauthorized
    );
    assert_eq!(counted(&sim, Failure::Admin, SecretRoute::Admin).0, 1);

    // --require-agent-auth: an agent acts as itself only; a forged token is a failure.
    let principal = |h: Option<String>, agent_id: &'static str| {
        let (sh, cfg) = (sim.shard(0), cfg.clone());
        sim.block_on(async move {
            let presented = Presented {
                authorization: h.as_deref(),
                api_key: None,
            };
            crate::auth::agent::principal(&sh, &cfg, presented, CLIENT, Some(agent_id)).await
        })
    };
    let p = principal(Some(agent.clone()), "alpha").unwrap();
    assert_eq!(p.peer.as_deref(), Some("alpha"));
    assert_eq!(
        principal(Some(agent), "beta").unwrap_err().kind,
        Kind::Forbidden
    );
    assert!(principal(Some(admin), "beta").unwrap().admin);
    assert_eq!(
        principal(None, "alpha").unwrap_err().kind,
        Kind::Unauthorized
    );
    assert_eq!(counted(&sim, Failure::Agent, SecretRoute::Agent).0, 0);
    assert_eq!(
        principal(Some(forged), "alpha").unwrap_err().kind,
        Kind::Unauthorized
    );
    assert_eq!(counted(&sim, Failure::Agent, SecretRoute::Agent).0, 1);
}

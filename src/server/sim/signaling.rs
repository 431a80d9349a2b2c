//! Signaling's workflows and owner-side operations on the simulator (issue 21): N shards
//! in one thread, the server's own dispatch, simulated time, full mailboxes.

use std::net::{IpAddr, Ipv4Addr};

use super::{config, world, SimNode};
use crate::server::Msg;
use crate::shard::sim::{Sim, SimShard};
use crate::shard::{self, Kind, ShardId, ASK_PATIENCE};
use crate::signaling::api::{acquire_ip, admit, peers, release_ip};
use crate::signaling::ops::{Op, Relay, Reply};
use crate::time::UnixTime;
use crate::ws::codec::close_code;

const T0: UnixTime = UnixTime(1_800_000_000_000_000_000);

type World = Sim<Msg, SimNode>;

/// A peer id owned by shard `s` of `n` (the `i`-th such).
fn owned_by(s: ShardId, n: usize, prefix: &str, i: usize) -> String {
    (0..)
        .map(|k| format!("{prefix}-{k}"))
        .filter(|id| reactor::shard_of(id.as_bytes(), n) == s)
        .nth(i)
        .unwrap()
}

/// An address and the shard that counts its connections.
fn address(n: usize, last: u8) -> (IpAddr, ShardId) {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, last));
    (ip, reactor::shard_of(ip.to_string().as_bytes(), n))
}

/// Whether `ip` may open one more connection, by its owner's count (acquiring and
/// releasing once probes it).
fn has_room(sim: &World, owner: ShardId, ip: IpAddr) -> bool {
    let t = &sim.node(owner).state.ws;
    let room = t.ip_acquire(ip);
    if room {
        t.ip_release(ip);
    }
    room
}

fn acquire(sim: &World, from: ShardId, ip: IpAddr) -> Result<(), shard::Error> {
    let sh = sim.shard(from);
    sim.block_on(async move { acquire_ip(&sh, ip).await })
}

#[test]
fn an_address_is_counted_on_its_owner_from_every_shard() {
    for shards in [1, 2, 4] {
        let mut c = config();
        c.ws.connections_per_ip_max = 3;
        let sim = world(shards, c, T0, 5);
        let (ip, owner) = address(shards, 7);
        for i in 0..3 {
            acquire(&sim, i % shards, ip).unwrap();
        }
        let e = acquire(&sim, shards - 1, ip).unwrap_err();
        assert_eq!(e.kind, Kind::Unavailable);
        assert_eq!(
            e.message.as_deref(),
            Some("too many signaling connections from this address")
        );
        assert_eq!(sim.node(shards - 1).state.ws.refused.get(), 1);
        assert!(!has_room(&sim, owner, ip), "{shards} shards: three held");
        // A release from any shard gives one back, on the owner.
        let sh = sim.shard((owner + 1) % shards);
        sim.block_on(async move { release_ip(&sh, ip).await });
        assert!(has_room(&sim, owner, ip));
        acquire(&sim, 0, ip).unwrap();
        // Another address is counted apart.
        let (other, _) = address(shards, 8);
        acquire(&sim, 0, other).unwrap();
    }
}

#[test]
fn a_full_owner_refuses_an_acquire_before_anything_is_counted() {
    let mut c = config();
    c.ws.connections_per_ip_max = 1;
    let sim = world(2, c, T0, 9);
    let ip = (1..)
        .map(|i| address(2, i))
        .find(|(_, owner)| *owner == 1)
        .unwrap()
        .0;
    sim.set_full(1, true);
    let t0 = sim.now();
    let e = acquire(&sim, 0, ip).unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    assert!(e.message.unwrap().contains("shard 1 is overloaded"));
    assert!(sim.now().saturating_duration_since(t0) >= ASK_PATIENCE);
    assert_eq!(sim.stats(0).asks_refused.get(), 1);
    assert_eq!(
        sim.node(0).state.ws.refused.get(),
        0,
        "not the address's limit"
    );
    sim.set_full(1, false);
    assert!(has_room(&sim, 1, ip), "nothing was counted");
    acquire(&sim, 0, ip).unwrap();
}

#[test]
fn a_release_waits_for_room_then_gives_up() {
    let mut c = config();
    c.ws.connections_per_ip_max = 1;
    let sim = std::rc::Rc::new(world(2, c, T0, 11));
    let ip = (1..)
        .map(|i| address(2, i))
        .find(|(_, owner)| *owner == 1)
        .unwrap()
        .0;
    acquire(&sim, 0, ip).unwrap();
    assert!(!has_room(&sim, 1, ip));
    // The owner's mailbox is full for a moment (thousands of connections closing at
    // once): the release waits and goes through.
    sim.set_full(1, true);
    let sh = sim.shard(0);
    sim.spawn(async move { release_ip(&sh, ip).await });
    let (world, sh) = (sim.clone(), sim.shard(1));
    sim.spawn(async move {
        shard::Shard::sleep(&sh, std::time::Duration::from_millis(5)).await;
        world.set_full(1, false);
    });
    sim.run();
    assert!(has_room(&sim, 1, ip), "released");
    assert_eq!(sim.stats(0).asks_waited.get(), 1);
    assert_eq!(sim.stats(0).asks_refused.get(), 0);
    // Full for longer than the patience: given up (logged), the slot stays taken.
    acquire(&sim, 0, ip).unwrap();
    sim.set_full(1, true);
    let sh = sim.shard(0);
    let t0 = sim.now();
    sim.block_on(async move { release_ip(&sh, ip).await });
    assert!(sim.now().saturating_duration_since(t0) >= ASK_PATIENCE);
    assert_eq!(sim.stats(0).asks_refused.get(), 1);
    sim.set_full(1, false);
    assert!(!has_room(&sim, 1, ip));
}

fn authorize(sim: &World, from: ShardId, peer: &str, mesh: Option<&str>) -> Reply {
    let sh = sim.shard(from);
    let op = Op::PeerAuthorize(Box::new((peer.to_owned(), mesh.map(str::to_owned))));
    let peer = peer.to_owned();
    sim.block_on(async move { shard::ask_owner(&sh, &peer, op).await })
        .unwrap()
}

fn deauthorize(sim: &World, from: ShardId, peer: &str) -> Reply {
    let sh = sim.shard(from);
    let op = Op::PeerDeauthorize(Box::new(peer.to_owned()));
    let peer = peer.to_owned();
    sim.block_on(async move { shard::ask_owner(&sh, &peer, op).await })
        .unwrap()
}

fn admit_on(sim: &World, peer: &str) -> Result<usize, shard::Error> {
    admit_with(sim, peer, None)
}

/// Admission with the peer's approval at another node of a cluster (`cluster`).
fn admit_with(
    sim: &World,
    peer: &str,
    cluster: Option<Option<Box<str>>>,
) -> Result<usize, shard::Error> {
    let owner = reactor::shard_of(peer.as_bytes(), sim.count());
    let sh: SimShard<Msg, SimNode> = sim.shard(owner);
    let keys = crate::auth::ApiKeys::dev_default();
    admit(&sh, &keys, peer.to_owned(), false, cluster)
}

#[test]
fn an_approval_at_another_node_authorizes_unless_a_revocation_is_known_here() {
    let sim = world(2, config(), T0, 3);
    let peer = owned_by(1, 2, "paired", 0);
    // Approved elsewhere, in its mesh: it may signal here, in that mesh.
    let key = admit_with(&sim, &peer, Some(Some("blue".into()))).unwrap();
    let ws = &sim.node(1).state.ws;
    assert_eq!(ws.authorization(key).unwrap(), (true, Some("blue".into())));
    // The default mesh.
    let other = owned_by(1, 2, "paired-too", 0);
    let key = admit_with(&sim, &other, Some(None)).unwrap();
    assert_eq!(ws.authorization(key).unwrap(), (true, None));
    // A revocation this node learnt of wins over a record not removed yet.
    let revoked = owned_by(1, 2, "revoked", 0);
    sim.node(1)
        .state
        .authz
        .borrow_mut()
        .restore_revoked(&revoked, T0);
    let e = admit_with(&sim, &revoked, Some(None)).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_deref()),
        (Kind::Unauthorized, Some("pairing revoked"))
    );
    // An API key's mesh is its own whatever the cluster says.
    let key = admit_with(&sim, crate::auth::keys::DEV_PEER_ID, Some(Some("x".into()))).unwrap();
    let owner = reactor::shard_of(crate::auth::keys::DEV_PEER_ID.as_bytes(), 2);
    assert_eq!(
        sim.node(owner).state.ws.authorization(key).unwrap(),
        (true, None)
    );
}

#[test]
fn approvals_and_revocations_reach_the_peer_on_its_owner() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 3);
        let peer = owned_by(shards - 1, shards, "paired", 0);
        let owner = shards - 1;
        // Connected before its approval: admitted, may not signal.
        let key = admit_on(&sim, &peer).unwrap();
        let slot = |sim: &World| sim.node(owner).state.ws.authorization(key).unwrap();
        assert_eq!(slot(&sim), (false, None));
        // Approved from any shard: the owner's PeerAuthz counts it, the live connection
        // may signal at once, in the entry's mesh.
        assert!(matches!(
            authorize(&sim, 0, &peer, Some("blue")),
            Reply::Done
        ));
        assert_eq!(slot(&sim), (true, Some("blue".into())));
        assert_eq!(
            sim.node(owner).state.authz.borrow().mesh(&peer),
            Some(Some("blue"))
        );
        // A second entry with the same peer id: one revocation leaves it authorized.
        authorize(&sim, shards / 2, &peer, None);
        deauthorize(&sim, 0, &peer);
        assert!(sim.node(owner).state.authz.borrow().contains(&peer));
        assert_eq!(sim.node(owner).state.ws.close_reason(key), None);
        // The last one: revoked, the live connection closes 4001, a new one is refused.
        deauthorize(&sim, 0, &peer);
        assert!(sim.node(owner).state.authz.borrow().is_revoked(&peer));
        assert_eq!(
            sim.node(owner).state.ws.close_reason(key),
            Some((close_code::REVOKED, "pairing revoked".into()))
        );
        let e = admit_on(&sim, &peer).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_deref()),
            (Kind::Unauthorized, Some("pairing revoked"))
        );
        // Nothing was held on any other shard.
        for s in (0..shards).filter(|s| *s != owner) {
            assert!(!sim.node(s).state.authz.borrow().contains(&peer));
        }
    }
}

#[test]
fn an_approval_to_a_full_owner_is_refused_and_changes_nothing() {
    let sim = world(2, config(), T0, 4);
    let peer = owned_by(1, 2, "p", 0);
    sim.set_full(1, true);
    let sh = sim.shard(0);
    let op = Op::PeerAuthorize(Box::new((peer.clone(), None)));
    let p = peer.clone();
    let e = sim
        .block_on(async move { shard::ask_owner(&sh, &p, op).await })
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    sim.set_full(1, false);
    assert!(!sim.node(1).state.authz.borrow().contains(&peer));
}

#[test]
fn admission_holds_the_shard_limit_and_shutdown() {
    let mut c = config();
    c.ws.connections_per_shard_max = 1;
    let sim = world(1, c, T0, 2);
    // The dev key's peer is authorized by its key, in the default mesh.
    let key = admit_on(&sim, crate::auth::keys::DEV_PEER_ID).unwrap();
    assert!(sim.node(0).state.ws.authorization(key).unwrap().0);
    let e = admit_on(&sim, "another").unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_deref()),
        (
            Kind::Unavailable,
            Some("too many signaling connections on this shard")
        )
    );
    assert_eq!(sim.node(0).state.ws.refused.get(), 1);
    sim.node(0).state.ws.unregister(key);
    sim.node(0).state.ws.close_all();
    let e = admit_on(&sim, "another").unwrap_err();
    assert_eq!(e.message.as_deref(), Some("server shutting down"));
}

/// Connects (registers in the owner's table) authorized peers of a mesh.
fn connect(sim: &World, peer: &str, mesh: Option<&str>) -> (ShardId, usize) {
    let owner = reactor::shard_of(peer.as_bytes(), sim.count());
    let key =
        sim.node(owner)
            .state
            .ws
            .register(peer.into(), mesh.map(Into::into), true, T0.as_secs());
    (owner, key)
}

#[test]
fn peer_lists_gather_a_mesh_from_every_shard() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 8);
        let mut blue: Vec<String> = (0..6).map(|i| format!("blue-{i}")).collect();
        for p in &blue {
            connect(&sim, p, Some("blue"));
        }
        connect(&sim, "red-0", Some("red"));
        connect(&sim, "plain-0", None);
        let sh = sim.shard(0);
        let mut got: Vec<String> = sim
            .block_on(async move { peers(&sh, Some("blue".into()), "blue-0".into()).await })
            .unwrap()
            .into_iter()
            .map(String::from)
            .collect();
        got.sort();
        blue.remove(0);
        assert_eq!(got, blue, "{shards} shards");
        let sh = sim.shard(shards - 1);
        let plain = sim
            .block_on(async move { peers(&sh, None, "nobody".into()).await })
            .unwrap();
        assert_eq!(plain, vec![Box::<str>::from("plain-0")]);
    }
}

#[test]
fn a_peer_list_with_a_full_shard_is_a_503() {
    let sim = world(4, config(), T0, 6);
    for i in 0..8 {
        connect(&sim, &format!("m-{i}"), None);
    }
    sim.set_full(2, true);
    let sh = sim.shard(0);
    let t0 = sim.now();
    let e = sim
        .block_on(async move { peers(&sh, None, "m-0".into()).await })
        .unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    assert!(e.message.unwrap().contains("shard 2 is overloaded"));
    assert!(sim.now().saturating_duration_since(t0) >= ASK_PATIENCE);
}

#[test]
fn a_relay_is_delivered_by_the_targets_owner_within_its_mesh() {
    let sim = world(2, config(), T0, 12);
    let target = owned_by(1, 2, "t", 0);
    let (_, key) = connect(&sim, &target, Some("blue"));
    let relay = |mesh: Option<&str>, frame: &[u8]| {
        Op::Relay(Box::new(Relay {
            target: target.as_str().into(),
            mesh: mesh.map(Into::into),
            frame: frame.into(),
        }))
    };
    let sh = sim.shard(0);
    let (a, b) = (relay(Some("blue"), b"one"), relay(Some("red"), b"two"));
    sim.block_on(async move {
        shard::tell(&sh, 1, a).await.unwrap();
        shard::tell(&sh, 1, b).await.unwrap();
    });
    let t = &sim.node(1).state.ws;
    assert_eq!(t.relayed.get(), 1, "another mesh's relay is dropped");
    let (out, _) = crate::signaling::store::take_output(t, key);
    assert_eq!(&out[..], b"one");
    // A target shard whose mailbox stays full: the tell gives up (the session answers
    // the sender with an error frame) and nothing is queued.
    sim.set_full(1, true);
    let sh = sim.shard(0);
    let c = relay(Some("blue"), b"three");
    let r = sim.block_on(async move { shard::tell(&sh, 1, c).await });
    assert_eq!(r.unwrap_err().kind, Kind::Unavailable);
    sim.set_full(1, false);
    assert_eq!(t.relayed.get(), 1);
}

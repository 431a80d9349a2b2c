//! Pair tests on simulated time (in the manner of quinn-proto's `Pair` and str0m's
//! `progress(l, r)`): two engines wired together in memory, no sockets. A tiny
//! signaling relay forwards `target_id` messages (and lets a test reorder, strip or
//! drop them), the "network" carries datagrams between the engines' addresses, and
//! [`Relay`] is a minimal in-memory TURN server. Time only moves when nothing is in
//! flight, to the earliest `poll_timeout`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::ipc::Framed;
use crate::stun::{self, attr, method, Class, Message};

const A: &str = "agent-a-sidecar";
const B: &str = "agent-b-sidecar";

struct Side {
    id: String,
    e: Engine,
    addr: SocketAddr,
    /// Events for the agent, parsed.
    agent: Vec<Value>,
    registers: u32,
    /// Its TURN TCP connection's local address, when it uses TURN over TCP.
    tcp: Option<SocketAddr>,
}

impl Side {
    fn new(now: Instant, id: &str, addr: &str, relay_only: bool, seed: u64) -> Side {
        let addr: SocketAddr = addr.parse().unwrap();
        Side {
            id: id.to_string(),
            e: Engine::new(now, vec![addr], relay_only, seed),
            addr,
            agent: Vec::new(),
            registers: 0,
            tcp: None,
        }
    }

    fn events(&self, kind: &str) -> usize {
        self.agent.iter().filter(|v| v["type"] == kind).count()
    }

    fn connected(&self) -> bool {
        self.e.connected_peers().len() == 1
    }
}

/// A signaling message in flight to side `to`.
type Sig = (usize, String);

/// Sees every signaling message (recipient, message); false drops it.
type SigFilter = Box<dyn FnMut(usize, &mut Value) -> bool>;

struct Pair {
    now: Instant,
    s: [Side; 2],
    sig: VecDeque<Sig>,
    udp: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    relay: Option<Relay>,
    /// Peer-to-peer datagrams are delivered (false: the link is cut).
    link_up: bool,

    /// Called on every signaling message; returns false to drop it.
    sig_filter: SigFilter,
}

impl Pair {
    fn new() -> Pair {
        let now = Instant::now();
        Pair {
            now,
            s: [
                Side::new(now, A, "10.0.0.1:1000", false, 1),
                Side::new(now, B, "10.0.0.2:2000", false, 2),
            ],
            sig: VecDeque::new(),
            udp: VecDeque::new(),
            relay: None,
            link_up: true,
            sig_filter: Box::new(|_, _| true),
        }
    }

    fn input(&mut self, i: usize, input: Input<'_>) {
        self.s[i].e.handle_input(self.now, input).unwrap();
        self.drain(i);
    }

    /// Both sides authenticated and their signaling open.
    fn signaling_up(&mut self) {
        for i in 0..2 {
            let id = self.s[i].id.clone();
            self.input(i, Input::Identity(id));
            self.input(i, Input::SignalingOpen);
        }
    }

    /// The server's `peer_list` to side `i`.
    fn peer_list(&mut self, i: usize) {
        let other = self.s[1 - i].id.clone();
        let m = json!({"type":"peer_list","peer_id":"registry","payload":{"peers":[other]}});
        self.input(i, Input::SignalingText(&m.to_string()));
    }

    fn drain(&mut self, i: usize) {
        loop {
            match self.s[i].e.poll_output() {
                Output::Transmit { sock, dest, data } => {
                    assert_eq!(sock, 0);
                    self.udp.push_back((self.s[i].addr, dest, data));
                }
                Output::Signal(text) => {
                    let mut v: Value = serde_json::from_str(&text).unwrap();
                    if v["type"] == "register" {
                        self.s[i].registers += 1;
                        continue;
                    }
                    let to = v["target_id"].as_str().unwrap().to_string();
                    let j = self.s.iter().position(|s| s.id == to).unwrap();
                    if (self.sig_filter)(j, &mut v) {
                        self.sig.push_back((j, v.to_string()));
                    }
                }
                Output::Agent { line, .. } => {
                    self.s[i].agent.push(serde_json::from_slice(&line).unwrap())
                }
                Output::IpcResume | Output::Registered | Output::TurnReconnect => {}
                Output::TurnStream(data) => {
                    let src = self.s[i].tcp.expect("TURN over TCP");
                    let server = self.relay.as_ref().expect("a relay").server;
                    self.udp.push_back((src, server, data));
                }
                Output::Timeout(t) => {
                    // The cheap deadline is never later than the exact one.
                    assert!(t <= self.s[i].e.next_deadline());
                    return;
                }
            }
        }
    }

    /// Delivers what is in flight now; false if nothing was.
    fn deliver(&mut self) -> bool {
        let mut any = false;
        while let Some((j, text)) = self.sig.pop_front() {
            any = true;
            self.input(j, Input::SignalingText(&text));
        }
        let batch: Vec<_> = self.udp.drain(..).collect();
        for (src, dst, data) in batch {
            any = true;
            if let Some(r) = self.relay.as_mut() {
                if dst == r.server {
                    let out = r.on_client(src, &data);
                    self.udp.extend(out);
                    continue;
                }
                if dst == r.relayed {
                    if self.link_up {
                        if let Some(d) = r.on_peer(src, &data) {
                            self.udp.push_back(d);
                        }
                    }
                    continue;
                }
            }
            // The relay's messages to a side on TCP arrive on its stream, cut in two
            // (the engine must reassemble them).
            if let Some(j) = self.s.iter().position(|s| s.tcp == Some(dst)) {
                let (a, b) = data.split_at(data.len() / 2);
                self.input(j, Input::TurnStream(a));
                self.input(j, Input::TurnStream(b));
                continue;
            }
            let from_relay = self.relay.as_ref().is_some_and(|r| src == r.server);
            if !self.link_up && !from_relay {
                continue;
            }

            if let Some(j) = self.s.iter().position(|s| s.addr == dst) {
                self.input(
                    j,
                    Input::Datagram {
                        sock: 0,
                        source: src,
                        data: &data,
                    },
                );
            }
        }
        any
    }

    /// Runs until `done` holds or `limit` of simulated time passes; true if it held.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.deliver() {
                continue;
            }
            if self.now >= end {
                return false;
            }
            let next = self.s[0].e.poll_timeout().min(self.s[1].e.poll_timeout());
            self.now = next.clamp(self.now + Duration::from_millis(1), end);
            for i in 0..2 {
                if self.s[i].e.poll_timeout() <= self.now {
                    self.input(i, Input::Timeout);
                }
            }
        }
    }

    fn connect(&mut self) {
        assert!(
            self.run_until(Duration::from_secs(10), |p| p.s[0].connected()
                && p.s[1].connected()),
            "the pair did not connect"
        );
    }

    fn send(&mut self, i: usize, text: &str) {
        let target = self.s[1 - i].id.clone();
        let line = json!({"type":"send","payload":{"target_peer":target,"message":{"type":"chat","payload":text}}});
        let lines = [Framed::Line(line.to_string().into_bytes())];
        self.input(i, Input::Ipc(&lines));
    }

    fn received_count(&self, i: usize) -> usize {
        self.s[i]
            .agent
            .iter()
            .filter(|v| v["type"] == "message")
            .count()
    }

    fn received(&self, i: usize) -> Vec<String> {
        self.s[i]
            .agent
            .iter()
            .filter(|v| v["type"] == "message")
            .map(|v| {
                v["payload"]["message"]["payload"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

/// Removes the `a=candidate` lines of an offer or answer.
fn strip_sdp_candidates(v: &mut Value) {
    if let Some(sdp) = v["payload"]["sdp"].as_str() {
        let kept: Vec<&str> = sdp
            .split("\r\n")
            .filter(|l| !l.starts_with("a=candidate"))
            .collect();
        v["payload"]["sdp"] = Value::String(kept.join("\r\n"));
    }
}

#[test]
fn offer_answer_connects_and_carries_messages() {
    let mut p = Pair::new();
    p.signaling_up();
    p.peer_list(0);
    p.connect();
    assert_eq!(p.s[0].events("peer_connected"), 1);
    assert_eq!(p.s[1].events("peer_connected"), 1);
    for n in 0..20 {
        p.send(0, &format!("m{n}"));
    }
    p.send(1, "back");
    p.run_until(Duration::from_secs(5), |p| {
        p.received(1).len() == 20 && p.received(0).len() == 1
    });
    let want: Vec<String> = (0..20).map(|n| format!("m{n}")).collect();
    assert_eq!(p.received(1), want, "in order, all of them");
    assert_eq!(p.received(0), vec!["back".to_string()]);
    assert_eq!(p.s[0].e.stats.unmatched_datagrams, 0);
}

#[test]
fn big_backlog_pauses_the_agent_by_message_count_then_drains_in_order() {
    let mut p = Pair::new();
    p.signaling_up();
    p.peer_list(0);
    p.connect();
    // The link stalls: nothing is acknowledged, so messages pile up in flight.
    p.link_up = false;
    let n = DC_BUFFERED_HIGH_MESSAGES + IPC_BATCH_LINES_MAX;
    let target = p.s[1].id.clone();
    let lines: Vec<Framed> = (0..n)
        .map(|i| {
            let v = json!({"type":"send","payload":{"target_peer":target,"message":{"type":"chat","payload":format!("m{i}")}}});
            Framed::Line(v.to_string().into_bytes())
        })
        .collect();
    for batch in lines.chunks(IPC_BATCH_LINES_MAX) {
        p.input(0, Input::Ipc(batch));
    }
    p.udp.clear();
    // Far under the byte limit (small messages), over the message limit.
    assert!(p.s[0].e.ipc_paused(), "paused by message count");
    p.link_up = true;
    let resumed = p.run_until(Duration::from_secs(20), |p| p.received(1).len() == n);
    assert!(resumed, "delivered {} of {n}", p.received(1).len());
    let want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(p.received(1), want);
    assert!(!p.s[0].e.ipc_paused(), "drained: reading again");
}

/// After a burst of more than [`TRIM_AFTER_BYTES`] drains, the engine says so once
/// (the driver then trims the heap), and the peer's outbox and in-flight list are back
/// to a small capacity; before the drain, and again without new traffic, it says no.
#[test]
fn a_drained_burst_is_reported_once_and_peer_queues_shrink() {
    let mut p = Pair::new();
    p.signaling_up();
    p.peer_list(0);
    p.connect();
    assert!(!p.s[0].e.drained_after_burst(p.now), "no traffic yet");
    p.link_up = false;
    let target = p.s[1].id.clone();
    let filler = "x".repeat(4000);
    let n = TRIM_AFTER_BYTES / filler.len() + 10;
    let lines: Vec<Framed> = (0..n)
        .map(|i| {
            let v = json!({"type":"send","payload":{"target_peer":target,"message":{"type":"chat","request_id":format!("{i}"),"payload":{"d":filler}}}});
            Framed::Line(v.to_string().into_bytes())
        })
        .collect();
    for batch in lines.chunks(IPC_BATCH_LINES_MAX) {
        p.input(0, Input::Ipc(batch));
    }
    p.udp.clear();
    assert!(p.s[0].e.ipc_paused());
    assert!(
        !p.s[0].e.drained_after_burst(p.now),
        "a backlog is not a drain"
    );
    let k = p.s[0].e.peers.get(&target).unwrap();
    let grown = p.s[0].e.peers.slab[k].outbox.capacity();
    assert!(grown > PEER_QUEUE_KEEP_CAPACITY, "{grown}");
    p.link_up = true;
    let delivered = p.run_until(Duration::from_secs(30), |p| p.received_count(1) == n);
    assert!(delivered, "delivered {} of {n}", p.received_count(1));
    // Let the last acknowledgements arrive.
    p.run_until(Duration::from_secs(2), |_| false);
    assert!(!p.s[0].e.ipc_paused());
    // Everything acknowledged: reported once it stayed so for TRIM_QUIET (the engine's
    // timer asks for the checks), and the queues are small again.
    let t0 = p.now;
    assert!(
        !p.s[0].e.drained_after_burst(t0),
        "not quiet long enough yet"
    );
    assert!(!p.s[0].e.drained_after_burst(t0 + TRIM_QUIET / 2));
    assert!(p.s[0].e.poll_timeout() <= p.now + TRIM_CHECK_INTERVAL);
    assert!(
        p.s[0].e.drained_after_burst(t0 + TRIM_QUIET),
        "the drain was not reported"
    );
    let peer = &p.s[0].e.peers.slab[k];
    assert!(peer.outbox.capacity() <= PEER_QUEUE_KEEP_CAPACITY);
    assert!(peer.inflight.capacity() <= PEER_QUEUE_KEEP_CAPACITY);
    let later = t0 + 10 * TRIM_QUIET;
    assert!(
        !p.s[0].e.drained_after_burst(later),
        "reported once per burst"
    );
    // The receiving side saw the same traffic come in and drains too; new traffic in
    // the quiet period restarts it.
    assert!(!p.s[1].e.drained_after_burst(t0));
    p.send(1, "more");
    assert!(!p.s[1].e.drained_after_burst(t0 + TRIM_QUIET));
    p.run_until(Duration::from_secs(2), |_| false);
    let t1 = p.now;
    assert!(!p.s[1].e.drained_after_burst(t1));
    assert!(p.s[1].e.drained_after_burst(t1 + TRIM_QUIET));
}

#[test]
fn glare_both_offer_at_once() {
    let mut p = Pair::new();
    p.signaling_up();
    // Both get the other in their peer_list before any offer arrives.
    p.peer_list(0);
    p.peer_list(1);
    p.connect();
    // The smaller id kept its offer; the other answered it: one connection each side.
    assert_eq!(p.s[0].e.peer_count(), 1);
    assert_eq!(p.s[1].e.peer_count(), 1);
    assert_eq!(p.s[0].events("peer_connected"), 1);
    assert_eq!(p.s[1].events("peer_connected"), 1);
    p.send(1, "after glare");
    p.run_until(Duration::from_secs(2), |p| !p.received(0).is_empty());
    assert_eq!(p.received(0), vec!["after glare".to_string()]);
}

#[test]
fn early_candidates_before_the_offer() {
    let mut p = Pair::new();
    // A's offer is held back until its trickled candidates have reached B, and the
    // SDPs carry no candidates: B keeps them for the peer it does not have yet and
    // hands them to the `Rtc` the offer creates. (str0m's answering side does not
    // start checks itself, so the pair would also connect through A's checks and
    // peer-reflexive candidates: what this asserts is that they are kept and used.)
    p.sig_filter = Box::new(|_, v| {
        strip_sdp_candidates(v);
        true
    });
    p.signaling_up();
    p.peer_list(0);
    let offers: Vec<Sig> = p
        .sig
        .iter()
        .filter(|(_, t)| t.contains("\"offer\""))
        .cloned()
        .collect();
    p.sig.retain(|(_, t)| !t.contains("\"offer\""));
    assert_eq!(offers.len(), 1);
    assert!(!p.sig.is_empty(), "A trickled its candidates");
    p.deliver(); // the candidates, to a B with no peer yet
    assert_eq!(p.s[1].e.peer_count(), 0);
    assert_eq!(p.s[1].e.early.get(A).map(Vec::len), Some(1));
    p.sig.extend(offers);
    p.connect();
    assert!(p.s[1].e.early.is_empty());
}

#[test]
fn unanswered_offer_times_out() {
    let mut p = Pair::new();
    p.sig_filter = Box::new(|_, v| v["type"] != "offer");
    p.signaling_up();
    p.peer_list(0);
    assert_eq!(p.s[0].e.peer_count(), 1);
    assert!(
        !p.run_until(PEER_CONNECT_TIMEOUT - Duration::from_secs(1), |p| p.s[0]
            .e
            .peer_count()
            == 0)
    );
    assert!(p.run_until(Duration::from_secs(2), |p| p.s[0].e.peer_count() == 0));
    // Never announced, so nothing to retract.
    assert_eq!(p.s[0].events("peer_disconnected"), 0);
}

#[test]
fn dropped_peer_is_noticed_and_redialed() {
    let mut p = Pair::new();
    p.signaling_up();
    p.peer_list(0);
    p.connect();
    let registers = p.s[0].registers;
    // B vanishes from the network: A notices by silence, tells the agent, and
    // re-registers after the redial delay.
    p.link_up = false;
    assert!(
        p.run_until(PEER_SILENCE_TIMEOUT + Duration::from_secs(2), |p| p.s[0]
            .events("peer_disconnected")
            == 1)
    );
    assert!(
        p.run_until(REDIAL_DELAY + Duration::from_secs(1), |p| p.s[0].registers
            > registers)
    );
    // B comes back as a fresh process; the server answers A's register with a
    // peer_list naming it, and A dials again.
    let now = p.now;
    p.s[1] = Side::new(now, B, "10.0.0.2:2001", false, 3);
    p.link_up = true;
    let id = p.s[1].id.clone();
    p.input(1, Input::Identity(id));
    p.input(1, Input::SignalingOpen);
    p.peer_list(0);
    p.connect();
    assert_eq!(p.s[0].events("peer_connected"), 2);
    p.send(0, "again");
    p.run_until(Duration::from_secs(2), |p| !p.received(1).is_empty());
    assert_eq!(p.received(1), vec!["again".to_string()]);
}

#[test]
fn signaling_replaced_tells_the_agent() {
    let mut p = Pair::new();
    p.signaling_up();
    p.peer_list(0);
    p.connect();
    p.input(
        0,
        Input::SignalingClosed {
            code: Some(CLOSE_REPLACED),
        },
    );
    let errors: Vec<&Value> = p.s[0]
        .agent
        .iter()
        .filter(|v| v["type"] == "error")
        .collect();
    assert_eq!(errors.len(), 1);
    let reason = errors[0]["payload"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("duplicate identity") && reason.contains(A),
        "{reason}"
    );
    assert_eq!(p.s[0].events("peer_disconnected"), 1);
    // Any other close: no error event.
    p.input(1, Input::SignalingClosed { code: Some(1001) });
    assert_eq!(p.s[1].events("error"), 0);
}

#[test]
fn datagrams_for_no_peer_are_dropped_without_asking_every_rtc() {
    let mut p = Pair::new();
    p.signaling_up();
    p.peer_list(0);
    p.connect();
    let stray = stun::binding_request([9; 12]);
    let before = p.s[0].e.stats.unmatched_datagrams;
    p.input(
        0,
        Input::Datagram {
            sock: 0,
            source: "10.9.9.9:9".parse().unwrap(),
            data: &stray,
        },
    );
    assert_eq!(p.s[0].e.stats.unmatched_datagrams, before + 1);
    assert_eq!(
        p.s[0].e.handle_input(p.now, Input::Timeout),
        Ok(()),
        "engine still fine"
    );
    assert!(matches!(
        p.s[0].e.handle_input(
            p.now,
            Input::Datagram {
                sock: 7,
                source: "10.9.9.9:9".parse().unwrap(),
                data: &stray
            }
        ),
        Err(EngineError::UnknownSocket(7))
    ));
}

// ---- TURN -----------------------------------------------------------------------------

/// A minimal TURN server: Allocate (401 then long-term credentials), CreatePermission,
/// Refresh, Send indications out, Data indications in. One client.
struct Relay {
    server: SocketAddr,
    relayed: SocketAddr,
    client: Option<SocketAddr>,
    key: [u8; 16],
    permissions: Vec<IpAddr>,
    allocations: u32,
    relayed_in: u32,
    relayed_out: u32,
    tid: u8,
    /// TURN REST: the key comes from the request's USERNAME under this secret.
    secret: Option<Vec<u8>>,
    /// The USERNAME of the last authenticated Allocate.
    username: Option<String>,
}

const REALM: &str = "chatixia";

impl Relay {
    fn new(user: &str, password: &str) -> Relay {
        Relay {
            server: "10.0.0.9:3478".parse().unwrap(),
            relayed: "10.0.0.9:50000".parse().unwrap(),
            client: None,
            key: stun::long_term_key(user, REALM, password),
            permissions: Vec::new(),
            allocations: 0,
            relayed_in: 0,
            relayed_out: 0,
            tid: 0,
            secret: None,
            username: None,
        }
    }

    fn with_secret(secret: &str) -> Relay {
        Relay {
            secret: Some(secret.as_bytes().to_vec()),
            ..Relay::new("", "")
        }
    }

    fn on_client(&mut self, src: SocketAddr, b: &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let Some(m) = Message::decode(b) else {
            return Vec::new();
        };
        if let (Some(secret), Some(user)) = (&self.secret, m.get(attr::USERNAME)) {
            let user = String::from_utf8_lossy(user).into_owned();
            let password = turn::auth::rest_password(secret, &user);
            self.key = stun::long_term_key(&user, REALM, &password);
            self.username = Some(user);
        }
        let reply = |class, attrs: Vec<(u16, Vec<u8>)>, key: Option<&[u8]>| {
            let mut r = Message::new(m.method, class, m.tid);
            for (t, v) in attrs {
                r = r.with(t, v);
            }
            vec![(self.server, src, r.encode(key, true))]
        };
        match (m.method, m.class) {
            (method::ALLOCATE, Class::Request) => {
                if m.get(attr::USERNAME).is_none() || !stun::integrity_ok(b, &self.key) {
                    let attrs = vec![
                        (attr::ERROR_CODE, vec![0, 0, 4, 1]),
                        (attr::REALM, REALM.as_bytes().to_vec()),
                        (attr::NONCE, b"n1".to_vec()),
                    ];
                    return reply(Class::Error, attrs, None);
                }
                self.allocations += 1;
                self.client = Some(src);
                let attrs = vec![
                    (
                        attr::XOR_RELAYED_ADDRESS,
                        stun::xor_address(self.relayed, &m.tid),
                    ),
                    (attr::XOR_MAPPED_ADDRESS, stun::xor_address(src, &m.tid)),
                    (attr::LIFETIME, 600u32.to_be_bytes().to_vec()),
                ];
                reply(Class::Success, attrs, Some(&self.key))
            }
            (method::CREATE_PERMISSION, Class::Request) => {
                assert!(stun::integrity_ok(b, &self.key));
                let peer =
                    stun::read_xor_address(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &m.tid).unwrap();
                if !self.permissions.contains(&peer.ip()) {
                    self.permissions.push(peer.ip());
                }
                reply(Class::Success, vec![], Some(&self.key))
            }
            (method::REFRESH, Class::Request) => {
                let attrs = vec![(attr::LIFETIME, 600u32.to_be_bytes().to_vec())];
                reply(Class::Success, attrs, Some(&self.key))
            }
            (method::SEND, Class::Indication) => {
                let peer =
                    stun::read_xor_address(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &m.tid).unwrap();
                if !self.permissions.contains(&peer.ip()) {
                    return Vec::new();
                }
                self.relayed_out += 1;
                vec![(self.relayed, peer, m.get(attr::DATA).unwrap().to_vec())]
            }
            _ => Vec::new(),
        }
    }

    fn on_peer(
        &mut self,
        src: SocketAddr,
        data: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        if !self.permissions.contains(&src.ip()) {
            return None;
        }
        self.relayed_in += 1;
        self.tid = self.tid.wrapping_add(1);
        let tid = [self.tid; 12];
        let ind = Message::new(method::DATA, Class::Indication, tid)
            .with(attr::XOR_PEER_ADDRESS, stun::xor_address(src, &tid))
            .with(attr::DATA, data.to_vec())
            .encode(None, true);
        Some((self.server, self.client?, ind))
    }
}

#[test]
fn relay_only_side_connects_through_turn() {
    let mut p = Pair::new();
    let now = p.now;
    p.s[0] = Side::new(now, A, "10.0.0.1:1000", true, 11);
    let relay = Relay::new("u", "p");
    let server = relay.server;
    p.relay = Some(relay);
    let config = TurnConfig {
        url: format!("turn:{server}"),
        username: "u".into(),
        password: "p".into(),
        secret: None,
    };
    p.input(0, Input::TurnServer { server, config });
    assert!(p.run_until(Duration::from_secs(5), |p| p
        .relay
        .as_ref()
        .is_some_and(|r| r.allocations == 1)));
    p.deliver();
    p.signaling_up();
    p.peer_list(0);
    p.connect();
    let r = p.relay.as_ref().unwrap();
    assert!(
        r.relayed_in > 0 && r.relayed_out > 0,
        "traffic went through the relay"
    );
    assert_eq!(r.permissions, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    p.send(1, "via relay");
    p.run_until(Duration::from_secs(2), |p| !p.received(0).is_empty());
    assert_eq!(p.received(0), vec!["via relay".to_string()]);
}

#[test]
fn turn_server_without_a_usable_socket_is_an_error() {
    let now = Instant::now();
    let mut e = Engine::new(now, vec!["10.0.0.1:1".parse().unwrap()], false, 0);
    let server: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    let config = TurnConfig {
        url: "turn:x".into(),
        username: String::new(),
        password: String::new(),
        secret: None,
    };
    assert_eq!(
        e.handle_input(now, Input::TurnServer { server, config }),
        Err(EngineError::NoSocketForTurn(server))
    );
}

/// TURN over TCP (`?transport=tcp`), with credentials derived from a secret: the
/// allocation waits for our peer id (it is in the user name), every message travels on
/// the stream (cut at arbitrary points), and the DataChannel runs over it.
#[test]
fn relay_only_side_connects_through_turn_over_tcp() {
    let mut p = Pair::new();
    let now = p.now;
    p.s[0] = Side::new(now, A, "10.0.0.1:1000", true, 11);
    let tcp: SocketAddr = "10.0.0.1:5555".parse().unwrap();
    p.s[0].tcp = Some(tcp);
    let relay = Relay::with_secret("s3cret");
    let server = relay.server;
    p.relay = Some(relay);
    let config = TurnConfig {
        url: format!("turn:{server}?transport=tcp"),
        username: String::new(),
        password: String::new(),
        secret: Some("s3cret".into()),
    };
    p.input(
        0,
        Input::TurnStreamOpen {
            server,
            local: tcp,
            config,
        },
    );
    // No identity yet: nothing is sent.
    p.run_until(Duration::from_secs(1), |_| false);
    assert_eq!(p.relay.as_ref().unwrap().allocations, 0);
    p.signaling_up();
    assert!(p.run_until(Duration::from_secs(5), |p| p
        .relay
        .as_ref()
        .is_some_and(|r| r.allocations == 1)));
    let user = p.relay.as_ref().unwrap().username.clone().unwrap();
    assert!(user.ends_with(&format!(":{A}")), "{user}");
    p.deliver();
    p.peer_list(0);
    p.connect();
    let r = p.relay.as_ref().unwrap();
    assert!(
        r.relayed_in > 0 && r.relayed_out > 0,
        "traffic went through the relay"
    );
    p.send(1, "via TCP relay");
    p.run_until(Duration::from_secs(2), |p| !p.received(0).is_empty());
    assert_eq!(p.received(0), vec!["via TCP relay".to_string()]);
    // The connection closes: the relay candidate is gone, and after the retry delay the
    // engine asks for a new connection.
    p.input(0, Input::TurnStreamClosed);
    assert!(p.s[0].e.turn.as_ref().unwrap().client.is_failed());
}

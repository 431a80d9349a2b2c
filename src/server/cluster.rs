//! A shard's side of the cluster (`--cluster`, issue 25): its link to Redis, the task
//! that takes what the link thread hands it (messages for the keys this shard owns, the
//! link going down and up, nodes whose lease ran out), its signaling directory task and
//! its registry mirror task, and on every `Up` its pairing approvals' assertion. The
//! services' parts are theirs (`signaling::remote`, `registry::mirror`,
//! `pairing::cluster`); this names them.
//!
//! Messages between nodes carry their kind in the body's first byte, one set of bytes
//! for every service, dispatched here ([`service_of`]):
//!
//! | Byte | Service | Meaning |
//! |---|---|---|
//! | `r` | signaling | a relay to a peer of this node |
//! | `k` | signaling | the peer connected to another node: close it here (4000) |
//! | `v` | signaling | the peer's last approval was revoked at another node: close it here (4001) |
//! | `m` | registry | the agent moved to another node: drop it here |
//! | `d` | registry | an operator deleted the agent at another node: delete it here |

use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use chatixia_cluster::{Inbound, LinkParts, ShardLink};

use super::ShardCtx;
use crate::pairing::cluster as pairing;
use crate::registry::mirror;
use crate::shard::Shard as _;
use crate::signaling::remote;

/// The node's link thread, as the shards see it (health for `/readyz`, counters for
/// `/metrics`).
#[derive(Clone)]
pub struct NodeHandle {
    pub node: Arc<chatixia_cluster::Node>,
    /// The node's name (`--node-id`).
    pub id: String,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeHandle")
    }
}

/// A shard's doorbell for the link thread. The link starts before the shards do and a
/// bell is made on its shard's thread, so it is set once the shard runs; a ring before
/// that is not lost (the shard takes everything waiting once it has set its bell).
#[derive(Default)]
pub struct LateBell(OnceLock<reactor::Bell>);

impl chatixia_cluster::Doorbell for LateBell {
    fn ring(&self) {
        if let Some(b) = self.0.get() {
            b.ring();
        }
    }
}

/// What a shard is given to join the cluster.
pub struct ShardCluster {
    pub parts: LinkParts,
    pub bell: Arc<LateBell>,
}

/// Builds the shard's link (on its thread) and sets its bell.
pub fn link(
    shard: &reactor::Shard<super::Msg>,
    c: ShardCluster,
) -> std::io::Result<(ShardLink, reactor::BellWaiter)> {
    let (bell, waiter) = shard.bell()?;
    let link = ShardLink::new(c.parts);
    if c.bell.0.set(bell).is_err() {
        return Err(std::io::Error::other("cluster bell set twice"));
    }
    Ok((link, waiter))
}

/// The service a message from another node is for, by its kind (the body's first byte;
/// see the module docs).
#[derive(Debug, PartialEq, Eq)]
enum Service {
    Signaling,
    Registry,
    /// A request another node sends here (`server::forward`), and the answers to ours
    /// (`shard::nodes`).
    Ask,
    Answer,
}

/// The kinds each service reads (every byte once).
const KINDS: [(u8, Service); 7] = [
    (remote::MSG_RELAY, Service::Signaling),
    (remote::MSG_REPLACED, Service::Signaling),
    (remote::MSG_REVOKED, Service::Signaling),
    (mirror::MSG_MOVED, Service::Registry),
    (mirror::MSG_DELETE, Service::Registry),
    (crate::shard::nodes::MSG_ASK, Service::Ask),
    (crate::shard::nodes::MSG_ANSWER, Service::Answer),
];

fn service_of(body: &[u8]) -> Option<&'static Service> {
    let kind = *body.first()?;
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, s)| s)
}

/// Starts the shard's cluster tasks: the doorbell (replies, inbound messages, the link's
/// state), the signaling directory and the registry mirror.
pub fn start(ctx: &Rc<ShardCtx>, mut waiter: reactor::BellWaiter) {
    ctx.state.ws.enable_outbox();
    ctx.state.agents.borrow_mut().enable_mirror();
    // Bindings are cluster-wide (`registry::bindings`), but under
    // `--require-agent-auth`, where an agent acts only with its own token.
    if !ctx.config.auth.require_agent_auth {
        ctx.state.agents.borrow_mut().enable_cluster_bindings();
    }
    let c = ctx.clone();
    monoio::spawn(async move {
        loop {
            // What arrived before the bell was set, then on every ring.
            take(&c);
            if waiter.wait().await.is_err() {
                take(&c);
                break;
            }
        }
    });
    let c = ctx.clone();
    monoio::spawn(async move { remote::run(c).await });
    if let Some(link) = &ctx.cluster {
        start_pipe(ctx, link);
    }
    let c = ctx.clone();
    monoio::spawn(async move { mirror::run(c).await });
    // This node's health counts for the other nodes' dashboards.
    if ctx.id() == 0 {
        let c = ctx.clone();
        let stop = ctx.shard.shutdown_event().clone();
        monoio::spawn(async move {
            loop {
                crate::registry::api::publish_health(&*c).await;
                monoio::select! {
                    _ = monoio::time::sleep(crate::registry::api::HEALTH_PUBLISH_INTERVAL) => {}
                    _ = stop.wait() => break,
                }
            }
        });
    }
    // The hub's tasks in Redis expire as a node alone's do (`hub::cluster::sweep`):
    // every node's first shard sweeps; a task two nodes sweep at once changes once.
    if ctx.id() == 0 {
        let c = ctx.clone();
        let stop = ctx.shard.shutdown_event().clone();
        monoio::spawn(async move {
            loop {
                monoio::select! {
                    _ = monoio::time::sleep(crate::hub::EXPIRE_INTERVAL) => {}
                    _ = stop.wait() => break,
                }
                if let Some(link) = c.cluster().filter(|l| l.is_up()) {
                    let n = crate::hub::cluster::sweep(&*c, link, &c.config.hub.tasks).await;
                    if n > 0 {
                        c.note(crate::shard::Topic::Task, "");
                    }
                }
            }
        });
        // Claims left unconfirmed by a node that died between a claim and its answer
        // are pending again after `CLAIM_CONFIRM_TIMEOUT` (`hub::cluster::confirm`).
        let c = ctx.clone();
        let stop = ctx.shard.shutdown_event().clone();
        monoio::spawn(async move {
            loop {
                monoio::select! {
                    _ = monoio::time::sleep(crate::hub::cluster::CLAIM_SWEEP_INTERVAL) => {}
                    _ = stop.wait() => break,
                }
                if let Some(link) = c.cluster().filter(|l| l.is_up()) {
                    if crate::hub::cluster::sweep_unconfirmed(&*c, link).await > 0 {
                        c.note(crate::shard::Topic::Task, "");
                    }
                }
            }
        });
    }
}

/// A message from another node for a key this shard owns, given to its service.
fn on_message(ctx: &Rc<ShardCtx>, route_key: &[u8], body: &[u8]) {
    let ok = match service_of(body) {
        Some(Service::Signaling) => {
            let here = remote::Here {
                ws: &ctx.state.ws,
                authz: &ctx.state.authz,
                api_keys: &ctx.config.auth.api_keys,
                now: ctx.now(),
            };
            let done = remote::on_message(&here, route_key, body);
            if done == Ok(remote::Done::Revoked) && ctx.config.turn_server.is_some() {
                let c = ctx.clone();
                let peer = String::from_utf8_lossy(route_key).into_owned();
                monoio::spawn(async move { crate::server::turn::revoke(&c, &peer).await });
            }
            done.is_ok()
        }
        Some(Service::Registry) => match mirror::on_message(route_key, body) {
            Ok(mirror::Inbound::Moved(id)) => {
                if ctx.state.agents.borrow_mut().drop_moved(&id) {
                    tracing::debug!(agent = %id, "agent moved to another node");
                    ctx.state
                        .changes
                        .borrow_mut()
                        .push(crate::shard::Topic::Agent, &id);
                }
                true
            }
            Ok(mirror::Inbound::Delete(id)) => {
                let c = ctx.clone();
                monoio::spawn(async move {
                    if let Err(e) = crate::registry::api::delete_here(&*c, id.clone()).await {
                        tracing::warn!(agent = %id, error = ?e, "a delete asked by another node failed");
                    }
                });
                true
            }
            Err(_) => false,
        },
        Some(Service::Ask) => super::forward::on_ask(ctx, &body[1..]),
        Some(Service::Answer) => ctx.state.node_asks.on_answer(&body[1..]),
        None => false,
    };
    if !ok {
        tracing::debug!(
            len = body.len(),
            "malformed message from another node dropped"
        );
        ctx.cluster_malformed.set(ctx.cluster_malformed.get() + 1);
    }
}

/// The shard's own connections to Redis (`chatixia_cluster::pipe`): relays to peers of
/// other nodes go out through its publisher, and those to this shard's peers arrive
/// through its subscription, neither crossing the link thread. Both end with the shard.
fn start_pipe(ctx: &Rc<ShardCtx>, link: &chatixia_cluster::ShardLink) {
    use chatixia_cluster::pipe;
    let channel = remote::shard_channel(link.prefix(), link.node_id(), ctx.id());
    let p = pipe::Pipe::new(channel, remote::RELAY.source);
    ctx.state.ws.set_pipe(p.clone());
    let interval = chatixia_cluster::DEFAULT_PROBE_INTERVAL;
    let stop = ctx.shard.shutdown_event().clone();
    let (l, q) = (link.clone(), p.clone());
    monoio::spawn(async move {
        monoio::select! {
            _ = pipe::run_publisher(l, q, interval) => {}
            _ = stop.wait() => {}
        }
    });
    let stop = ctx.shard.shutdown_event().clone();
    let c = ctx.clone();
    let l = link.clone();
    monoio::spawn(async move {
        let deliver = |key: &[u8], body: &[u8]| {
            // Only relays to this shard's peers are published to its channel; one for
            // another shard (a node restarted with another shard count, noted late)
            // would reach no one here.
            if c.shard.shard_of(key) == c.id() {
                on_message(&c, key, body);
            } else {
                c.cluster_malformed.set(c.cluster_malformed.get() + 1);
            }
        };
        monoio::select! {
            _ = pipe::run_subscriber(l, p, interval, deliver) => {}
            _ = stop.wait() => {}
        }
    });
}

/// Takes what the link thread published for this shard.
fn take(ctx: &Rc<ShardCtx>) {
    let Some(link) = &ctx.cluster else { return };
    link.on_doorbell(|ev| match ev {
        Inbound::Message { route_key, body } => on_message(ctx, &route_key, &body),
        Inbound::Up { generation } => {
            tracing::info!(
                shard = ctx.shard.id(),
                generation,
                "cluster link up: asserting this shard's peers and agents"
            );
            remote::on_up(&ctx.state.ws);
            mirror::on_up(&ctx.state.agents);
            // Where this shard's pairing entries are (`pairing::directory`): Redis may have
            // lost it, or this node may run under a new `--node-id`.
            let ids: Vec<_> = ctx
                .state
                .pairing
                .borrow()
                .entries
                .list_all()
                .iter()
                .map(|e| e.id)
                .collect();
            let now = ctx.now();
            let codes: Vec<_> = ctx
                .state
                .pairing
                .borrow()
                .codes
                .live(now)
                .into_iter()
                .map(|(code, until)| (code, until.0.saturating_sub(now.0) / 1_000_000))
                .collect();
            // This shard's pairing approvals (and revocations) into the cluster's records:
            // after the entries are noted as this node's (a node back under another
            // `--node-id` takes them over first, so that a revocation made away under the
            // old name cannot slip in after its approvals went out).
            let a = pairing::assertions(&ctx.state.pairing.borrow().entries);
            let c = ctx.clone();
            monoio::spawn(async move {
                if !ids.is_empty() || !codes.is_empty() {
                    crate::pairing::directory::note_entries(&*c, &ids).await;
                    crate::pairing::directory::note_codes(&*c, &codes).await;
                }
                if !a.approved.is_empty() || !a.revoked.is_empty() {
                    if let Some(away) = pairing::assert_all(&*c, a).await {
                        // Approved here, revoked at another node while this one was away
                        // (`pairing::cluster::REVOKE_AWAY`): revoked here too, as an
                        // operator's revocation here would (its store, its token, its
                        // peer's connections here; the cluster's records are gone).
                        for id in away {
                            let raw = id.to_string();
                            let cfg = &c.config.pairing;
                            match crate::pairing::api::revoke(&*c, cfg, &raw).await {
                                Ok(_) => tracing::warn!(
                                    entry = %raw,
                                    "a pairing entry revoked at another node while this one was away is revoked here"
                                ),
                                // Revoked meanwhile (an earlier connect's turn), or its
                                // store or a mailbox refused: the note stays in Redis, so
                                // the next connect refuses the approval again.
                                Err(e) => tracing::warn!(
                                    entry = %raw,
                                    error = ?e,
                                    "a pairing entry revoked at another node was not revoked here now; tried again at the next connect while it is approved here"
                                ),
                            }
                        }
                        // An entry revoked while the approvals went out (its removal may
                        // have reached Redis before the batch that wrote it again): the
                        // revocations once more, from the entries as they are now.
                        let mut again = pairing::assertions(&c.state.pairing.borrow().entries);
                        again.approved.clear();
                        if !again.revoked.is_empty() {
                            pairing::assert_all(&*c, again).await;
                        }
                    }
                }
            });
            // Peers connected here on another node's approval: still approved?
            let c = ctx.clone();
            monoio::spawn(async move {
                let keys = &c.config.auth.api_keys;
                for peer in remote::recheck_approvals(&*c, keys).await {
                    if c.config.turn_server.is_some() {
                        crate::server::turn::revoke(&c, &peer).await;
                    }
                }
            });
        }
        Inbound::Down { reason } => {
            tracing::debug!(shard = ctx.shard.id(), %reason, "cluster link down");
            remote::on_down(&ctx.state.ws);
            mirror::on_down(&ctx.state.agents);
        }
        Inbound::Members { live, gone } => {
            tracing::debug!(shard = ctx.shard.id(), ?live, ?gone, "cluster members");
            // One shard of each node removes what gone nodes held.
            if ctx.shard.id() == 0 && !gone.is_empty() {
                mirror::forget_nodes(link, &gone);
                remote::forget_nodes(link, &gone);
            }
        }
    });
}

/// The cluster link's counters (`--cluster`) in the Prometheus text format, labelled
/// with the node; `malformed`: messages from other nodes the shards dropped;
/// `binding_conflicts`: bindings asserted on connect that lost to another node's;
/// `pipes`: each shard's own connections (`chatixia_cluster::pipe`), labelled by shard.
pub fn render_metrics(
    node: &str,
    s: &chatixia_cluster::Stats,
    malformed: u64,
    binding_conflicts: u64,
    pipes: &[chatixia_cluster::pipe::PipeStats],
) -> String {
    use std::fmt::Write;
    let node = node.replace('\\', "\\\\").replace('"', "\\\"");
    let series: [(&str, &str, &str, u64); 15] = [
        (
            "chatixia_cluster_unreplicated_total",
            "counter",
            "Durable writes (agent bindings, pairing approvals and revocations) no replica acknowledged in time (WAIT; answered 503, a revocation 202).",
            s.unreplicated,
        ),
        (
            "chatixia_cluster_up",
            "gauge",
            "1 while the link to the cluster's Redis is up (see /readyz).",
            u64::from(s.up),
        ),
        (
            "chatixia_cluster_replicas_short",
            "gauge",
            "1 while the last WAIT (a durable write's, or the probe after each lease renewal) had fewer replicas than --cluster-wait-replicas: durable writes are likely refused (each waits for its own WAIT) and /readyz is 503.",
            u64::from(s.replicas_short),
        ),
        (
            "chatixia_cluster_commands_total",
            "counter",
            "Redis commands sent (scripts and publishes included).",
            s.commands,
        ),
        (
            "chatixia_cluster_publishes_total",
            "counter",
            "Messages published to other nodes' channels (relays through the RELAY script included, by the link or the shards' own connections).",
            s.publishes + pipes.iter().map(|p| p.commands).sum::<u64>(),
        ),
        (
            "chatixia_cluster_deliveries_total",
            "counter",
            "Messages from this node's channel handed to its shards.",
            s.deliveries,
        ),
        (
            "chatixia_cluster_inbound_dropped_total",
            "counter",
            "Messages from this node's channel dropped: the shard's inbound ring was full.",
            s.inbound_dropped,
        ),
        (
            "chatixia_cluster_malformed_total",
            "counter",
            "Messages from this node's channel the shards could not read (dropped).",
            malformed,
        ),
        (
            "chatixia_cluster_binding_conflicts_total",
            "counter",
            "Agent bindings this node asserted on connect that another node had bound first (theirs won).",
            binding_conflicts,
        ),
        (
            "chatixia_cluster_refused_total",
            "counter",
            "Commands refused before sending: link down or too many in flight.",
            s.refused,
        ),
        (
            "chatixia_cluster_lease_renewals_total",
            "counter",
            "Renewals of this node's lease.",
            s.lease_renewals,
        ),
        (
            "chatixia_cluster_reconnects_total",
            "counter",
            "Times the link reconnected to Redis.",
            s.reconnects,
        ),
        (
            "chatixia_cluster_probes_missed_total",
            "counter",
            "Subscription probes not received in time (the subscription was reconnected).",
            s.probes_missed,
        ),
        (
            "chatixia_cluster_replies_discarded_total",
            "counter",
            "Redis replies over REPLY_BYTES_MAX (64 MiB) read past and dropped (their command failed; the link stayed up).",
            s.replies_discarded,
        ),
        (
            "chatixia_cluster_round_trips_total",
            "counter",
            "Command round trips measured (submission to reply).",
            s.round_trips,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in series {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {v}\n"
        );
    }
    let name = "chatixia_cluster_round_trip_seconds";
    let _ = write!(
        out,
        "# HELP {name} Redis command round trips (submission to reply).\n# TYPE {name} histogram\n"
    );
    let mut cumulative = 0;
    for (i, le) in chatixia_cluster::ROUND_TRIP_BUCKETS_US.iter().enumerate() {
        cumulative += s.round_trip_buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{node=\"{node}\",le=\"{}\"}} {cumulative}",
            *le as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{node=\"{node}\",le=\"+Inf\"}} {}",
        s.round_trips
    );
    let _ = writeln!(
        out,
        "{name}_sum{{node=\"{node}\"}} {}",
        s.round_trip_us_sum as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{{node=\"{node}\"}} {}", s.round_trips);
    type Field = fn(&chatixia_cluster::pipe::PipeStats) -> u64;
    let per_shard: [(&str, &str, Field); 6] = [
        (
            "chatixia_cluster_pipe_commands_total",
            "Relays to other nodes sent on the shard's own Redis connection (not through the link thread).",
            |p| p.commands,
        ),
        (
            "chatixia_cluster_pipe_writes_total",
            "Writes on the shard's own Redis connection (chatixia_cluster_pipe_commands_total / this: relays per write).",
            |p| p.writes,
        ),
        (
            "chatixia_cluster_pipe_deliveries_total",
            "Messages the shard's own subscription (its channel) delivered.",
            |p| p.deliveries,
        ),
        (
            "chatixia_cluster_pipe_connects_total",
            "Connections the shard opened to Redis (its publisher and its subscription), the first ones included.",
            |p| p.connects,
        ),
        (
            "chatixia_cluster_pipe_probes_missed_total",
            "Times the shard's subscription heard nothing, not even its probes, for 3 probe intervals (opened again).",
            |p| p.probes_missed,
        ),
        (
            "chatixia_cluster_pipe_refused_total",
            "Relays the shard's own connection could not take (not connected): sent through the link.",
            |p| p.refused,
        ),
    ];
    for (name, help, field) in per_shard {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
        for (i, p) in pipes.iter().enumerate() {
            let _ = writeln!(out, "{name}{{node=\"{node}\",shard=\"{i}\"}} {}", field(p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_kind_belongs_to_one_service() {
        for (i, (k, _)) in KINDS.iter().enumerate() {
            assert!(
                KINDS[i + 1..].iter().all(|(o, _)| o != k),
                "kind {:?} used twice",
                *k as char
            );
        }
        assert_eq!(service_of(b"r\x00"), Some(&Service::Signaling));
        assert_eq!(service_of(b"m"), Some(&Service::Registry));
        assert_eq!(service_of(b"?"), None);
        assert_eq!(service_of(b""), None);
    }
}

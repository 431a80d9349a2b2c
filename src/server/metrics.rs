//! Per-shard counters and their Prometheus text rendering (sans-IO): the server's own
//! counters (connections, requests), and a snapshot of each service's, which every
//! service keeps in its own state (`signaling::WsMetrics`, auth's failure budget, the
//! task and agent stores' budgets, TLS, TURN); only the server names them all.

use std::cell::Cell;
use std::fmt::Write;

use reactor::{IoDriver, MailboxStats};

use crate::auth::budget::{FAILURE_KINDS, SECRET_ROUTES};
use crate::auth::failures::{Failure, SecretRoute};
use crate::signaling::WsMetrics;

/// Counters a shard keeps about itself (shard-local cells, never shared).
#[derive(Default)]
pub struct ShardCounters {
    pub connections_accepted: Cell<u64>,
    pub connections_open: Cell<u64>,
    pub requests_served: Cell<u64>,
    /// Keep-alive HTTP connections handed to the shard their requests named
    /// (`server::steer`).
    pub http_moved: Cell<u64>,
}

/// The stores whose budget refusals are counted (`store` label).
pub const BUDGET_STORES: [&str; 2] = ["tasks", "agents"];
/// Why a budget refused (`reason` label; `limits::Refusal::reason`).
pub const BUDGET_REASONS: [&str; 3] = ["client_quota", "anonymous_share", "store_full"];
const BUDGET_CELLS: usize = BUDGET_STORES.len() * BUDGET_REASONS.len();

impl ShardCounters {
    pub fn inc(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
    pub fn dec(c: &Cell<u64>) {
        c.set(c.get().saturating_sub(1));
    }
}

/// A snapshot of one shard, sent to the shard that renders `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMetrics {
    pub shard: usize,
    pub driver: IoDriver,
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub requests_served: u64,
    pub http_moved: u64,
    pub mailbox: MailboxStats,
    pub ws: WsMetrics,
    /// The embedded TURN server's numbers (`crate::server::turn`; zero without it).
    pub turn: TurnMetrics,
    pub auth: AuthMetrics,
    pub budgets: BudgetMetrics,
    /// TLS handshakes (issue 23); all zero without TLS.
    pub tls: crate::tls::metrics::TlsMetrics,
    /// The shard layer's back-pressure counters (`crate::shard::LayerStats`).
    pub layer: LayerMetrics,
    /// Messages from other nodes this shard could not read (`--cluster`).
    pub cluster_malformed: u64,
    /// Bindings this shard asserted on connect that another node had bound first.
    pub cluster_binding_conflicts: u64,
    /// Asks of a heartbeat to a skill shard skipped on that shard's "none left"
    /// (`hub::hints`).
    pub skill_asks_skipped: u64,
    /// Revocations made at this shard whose cluster records wait for Redis, and those
    /// not kept for a retry (`pairing::cluster::Unsynced`).
    pub pairing_unsynced: u64,
    pub pairing_unkept: u64,
    /// Re-runs of a connect's revocation removals Redis did not all take.
    pub pairing_reasserts: u64,
    /// Task writes that may have run in Redis waiting to be taken back, those settled
    /// by a later try, and those not kept (`hub::cluster::TakeBacks`).
    pub hub_take_backs: u64,
    pub hub_take_backs_settled: u64,
    pub hub_take_backs_unkept: u64,
    /// The shard's own connections to the cluster's Redis (`--cluster`).
    pub cluster_pipe: chatixia_cluster::pipe::PipeStats,
}

/// The shard layer's counters on one shard: asks that found a full mailbox and waited,
/// asks given up on after `shard::ASK_PATIENCE` (answered 503), and workflows refused
/// because no room for their follow-ups could be reserved (503).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerMetrics {
    pub asks_waited: u64,
    pub asks_refused: u64,
    pub reservations_refused: u64,
}

impl LayerMetrics {
    /// The counts now.
    pub fn of(s: &crate::shard::LayerStats) -> LayerMetrics {
        LayerMetrics {
            asks_waited: s.asks_waited.get(),
            asks_refused: s.asks_refused.get(),
            reservations_refused: s.reservations_refused.get(),
        }
    }
}

/// What one shard's stores hold against their budgets (issue 20), and the refusals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetMetrics {
    /// Tasks held, and how many of them anonymous clients created.
    pub tasks: u64,
    pub tasks_anonymous: u64,
    /// Bytes charged for them (`hub::task_bytes`), all and anonymous.
    pub task_bytes: u64,
    pub task_anonymous_bytes: u64,
    /// Agents held, and how many anonymous clients created.
    pub agents: u64,
    pub agents_anonymous: u64,
    /// Bytes charged for them (`registry::agent_bytes`), all and anonymous.
    pub agent_bytes: u64,
    pub agent_anonymous_bytes: u64,
    /// Refusals, [`BUDGET_STORES`] × [`BUDGET_REASONS`].
    pub refused: [u64; BUDGET_CELLS],
}

/// Failure-budget counters of one shard (issue 20): auth keeps them in its state
/// (`auth::budget::Counters`), the shard reads them into its snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthMetrics {
    /// Wrong secrets, by `Failure::index`.
    pub failures: [u64; FAILURE_KINDS],
    /// Refusals (429), by `SecretRoute::index`.
    pub refused: [u64; SECRET_ROUTES],
    /// Addresses with recent failures in this shard's ledger.
    pub addresses: u64,
    /// Bearer token verifications answered from the shard's cache (`auth::verified`),
    /// and those verified in full.
    pub tokens_cached: u64,
    pub tokens_verified: u64,
}

impl ShardMetrics {
    pub fn snapshot(
        shard: usize,
        driver: IoDriver,
        c: &ShardCounters,
        mailbox: MailboxStats,
        ws: WsMetrics,
        budgets: BudgetMetrics,
    ) -> Self {
        ShardMetrics {
            shard,
            driver,
            connections_accepted: c.connections_accepted.get(),
            connections_open: c.connections_open.get(),
            requests_served: c.requests_served.get(),
            http_moved: c.http_moved.get(),
            mailbox,
            ws,
            auth: AuthMetrics::default(),
            budgets,
            turn: Default::default(),
            tls: Default::default(),
            layer: Default::default(),
            cluster_malformed: 0,
            cluster_binding_conflicts: 0,
            skill_asks_skipped: 0,
            pairing_unsynced: 0,
            pairing_unkept: 0,
            pairing_reasserts: 0,
            hub_take_backs: 0,
            hub_take_backs_settled: 0,
            hub_take_backs_unkept: 0,
            cluster_pipe: Default::default(),
        }
    }
}

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(shards: &[ShardMetrics]) -> String {
    let mut out = String::with_capacity(256 + shards.len() * 512);
    type Get = fn(&ShardMetrics) -> u64;
    let series: [(&str, &str, &str, Get); 30] = [
        (
            "chatixia_ws_connections_open",
            "gauge",
            "Signaling WebSocket connections open now.",
            |m| m.ws.open,
        ),
        (
            "chatixia_ws_relayed_total",
            "counter",
            "Signaling messages delivered to a peer of this shard.",
            |m| m.ws.relayed,
        ),
        (
            "chatixia_ws_refused_total",
            "counter",
            "Signaling upgrades or relays refused by a limit or a full mailbox.",
            |m| m.ws.refused,
        ),
        (
            "chatixia_ws_closed_slow_total",
            "counter",
            "Signaling connections closed because their outbound queue filled (1008).",
            |m| m.ws.closed_slow,
        ),
        (
            "chatixia_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            |m| m.connections_accepted,
        ),
        (
            "chatixia_connections_open",
            "gauge",
            "TCP connections open now.",
            |m| m.connections_open,
        ),
        (
            "chatixia_http_requests_total",
            "counter",
            "HTTP requests served.",
            |m| m.requests_served,
        ),
        (
            "chatixia_http_connections_moved_total",
            "counter",
            "Keep-alive HTTP connections this shard handed to the shard their requests named.",
            |m| m.http_moved,
        ),
        (
            "chatixia_mailbox_sent_total",
            "counter",
            "Messages this shard sent to other shards.",
            |m| m.mailbox.sent,
        ),
        (
            "chatixia_mailbox_received_total",
            "counter",
            "Messages this shard received from other shards.",
            |m| m.mailbox.received,
        ),
        (
            "chatixia_mailbox_refused_total",
            "counter",
            "Messages refused because the destination mailbox was full.",
            |m| m.mailbox.refused_full,
        ),
        (
            "chatixia_mailbox_wakeups_total",
            "counter",
            "Wakeups written to this shard's doorbell while its mailbox slept.",
            |m| m.mailbox.wakeups,
        ),
        (
            "chatixia_shard_asks_waited_total",
            "counter",
            "Asks to another shard that found its mailbox full and waited.",
            |m| m.layer.asks_waited,
        ),
        (
            "chatixia_hub_cluster_take_backs",
            "gauge",
            "Task writes that may have run in Redis (the connection failed after they were sent, or no replica confirmed them) waiting to be taken back (retried every second while the link is up).",
            |m| m.hub_take_backs,
        ),
        (
            "chatixia_hub_cluster_take_backs_settled_total",
            "counter",
            "Waiting task take-backs that Redis answered on a later try (taken back, or changed by another node since).",
            |m| m.hub_take_backs_settled,
        ),
        (
            "chatixia_hub_cluster_take_backs_unkept_total",
            "counter",
            "Task writes that may have run in Redis not kept to be taken back (too many waiting).",
            |m| m.hub_take_backs_unkept,
        ),
        (
            "chatixia_pairing_cluster_revocations_unsynced",
            "gauge",
            "Pairing revocations made here whose records the cluster has not removed yet (retried every second).",
            |m| m.pairing_unsynced,
        ),
        (
            "chatixia_pairing_cluster_revocations_unkept_total",
            "counter",
            "Pairing revocations whose cluster records were not kept for a retry (too many waiting; they go at the next connect).",
            |m| m.pairing_unkept,
        ),
        (
            "chatixia_pairing_cluster_reasserts_total",
            "counter",
            "Re-runs of a connect's removal of revoked pairing entries from the cluster, after Redis did not take them all.",
            |m| m.pairing_reasserts,
        ),
        (
            "chatixia_hub_skill_asks_skipped_total",
            "counter",
            "Heartbeat asks to a skill shard skipped because it said none of the skills had a pending task.",
            |m| m.skill_asks_skipped,
        ),
        (
            "chatixia_shard_asks_refused_total",
            "counter",
            "Asks to another shard given up after the ask patience (answered 503).",
            |m| m.layer.asks_refused,
        ),
        (
            "chatixia_shard_reservations_refused_total",
            "counter",
            "Workflows refused because no room for their follow-ups could be reserved (503).",
            |m| m.layer.reservations_refused,
        ),
        (
            "chatixia_task_store_tasks",
            "gauge",
            "Tasks this shard holds, finished ones included.",
            |m| m.budgets.tasks,
        ),
        (
            "chatixia_task_store_anonymous_tasks",
            "gauge",
            "Tasks this shard holds that clients without credentials created.",
            |m| m.budgets.tasks_anonymous,
        ),
        (
            "chatixia_task_store_bytes",
            "gauge",
            "Bytes charged for this shard's tasks (--task-store-bytes-max).",
            |m| m.budgets.task_bytes,
        ),
        (
            "chatixia_task_store_anonymous_bytes",
            "gauge",
            "Bytes charged for the tasks of clients without credentials (--anonymous-share-percent).",
            |m| m.budgets.task_anonymous_bytes,
        ),
        (
            "chatixia_agent_store_agents",
            "gauge",
            "Agents this shard holds.",
            |m| m.budgets.agents,
        ),
        (
            "chatixia_agent_store_anonymous_agents",
            "gauge",
            "Agents this shard holds that clients without credentials created.",
            |m| m.budgets.agents_anonymous,
        ),
        (
            "chatixia_agent_store_bytes",
            "gauge",
            "Bytes charged for this shard's agents (--agent-store-bytes-max).",
            |m| m.budgets.agent_bytes,
        ),
        (
            "chatixia_agent_store_anonymous_bytes",
            "gauge",
            "Bytes charged for the agents of clients without credentials.",
            |m| m.budgets.agent_anonymous_bytes,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for m in shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", m.shard, get(m));
        }
    }
    let _ = writeln!(
        out,
        "# HELP chatixia_budget_refused_total Requests refused by a store budget, by store \
         and reason (the client's quota: 429; the anonymous share, the whole store: 503)."
    );
    let _ = writeln!(out, "# TYPE chatixia_budget_refused_total counter");
    for m in shards {
        for (i, store) in BUDGET_STORES.iter().enumerate() {
            for (j, reason) in BUDGET_REASONS.iter().enumerate() {
                let v = m.budgets.refused[i * BUDGET_REASONS.len() + j];
                let _ = writeln!(
                    out,
                    "chatixia_budget_refused_total{{shard=\"{}\",store=\"{store}\",reason=\"{reason}\"}} {v}",
                    m.shard
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP chatixia_io_driver The event-loop driver each shard runs (value 1)."
    );
    let _ = writeln!(out, "# TYPE chatixia_io_driver gauge");
    for m in shards {
        let _ = writeln!(
            out,
            "chatixia_io_driver{{shard=\"{}\",driver=\"{}\"}} 1",
            m.shard, m.driver
        );
    }
    render_auth(&mut out, shards);
    if shards.iter().any(|m| m.tls.generation > 0) {
        let tls: Vec<_> = shards.iter().map(|m| (m.shard, m.tls)).collect();
        crate::tls::metrics::render(&mut out, &tls);
    }
    let _ = writeln!(out, "# HELP chatixia_shards Number of shards.");
    let _ = writeln!(out, "# TYPE chatixia_shards gauge");
    let _ = writeln!(out, "chatixia_shards {}", shards.len());
    render_turn(shards, &mut out);
    out
}

/// The failure budget's series (issue 20): wrong secrets by route and kind, refusals by
/// route, addresses remembered.
fn render_auth(out: &mut String, shards: &[ShardMetrics]) {
    let _ = writeln!(
        out,
        "# HELP chatixia_auth_failures_total Wrong secrets presented (unknown API key or device \
         token, wrong claim secret, a JWT not signed with our key), by route and kind."
    );
    let _ = writeln!(out, "# TYPE chatixia_auth_failures_total counter");
    for m in shards {
        for f in Failure::ALL {
            let _ = writeln!(
                out,
                "chatixia_auth_failures_total{{shard=\"{}\",route=\"{}\",kind=\"{}\"}} {}",
                m.shard,
                f.route().label(),
                f.kind(),
                m.auth.failures[f.index()]
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP chatixia_auth_refused_total Attempts refused with 429 by the failure budget \
         before their secret was looked at, by route."
    );
    let _ = writeln!(out, "# TYPE chatixia_auth_refused_total counter");
    for m in shards {
        for r in SecretRoute::ALL {
            let _ = writeln!(
                out,
                "chatixia_auth_refused_total{{shard=\"{}\",route=\"{}\"}} {}",
                m.shard,
                r.label(),
                m.auth.refused[r.index()]
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP chatixia_auth_failure_addresses Client addresses with recent wrong secrets \
         that this shard's ledger holds."
    );
    let _ = writeln!(out, "# TYPE chatixia_auth_failure_addresses gauge");
    for m in shards {
        let _ = writeln!(
            out,
            "chatixia_auth_failure_addresses{{shard=\"{}\"}} {}",
            m.shard, m.auth.addresses
        );
    }
    let _ = writeln!(
        out,
        "# HELP chatixia_auth_token_verifications_total Bearer tokens checked on agent and \
         task routes, by how: `cached` (the token was verified before on this shard: only \
         its times checked again) or `full` (base64, HMAC-SHA256, claims)."
    );
    let _ = writeln!(
        out,
        "# TYPE chatixia_auth_token_verifications_total counter"
    );
    for m in shards {
        for (how, n) in [
            ("cached", m.auth.tokens_cached),
            ("full", m.auth.tokens_verified),
        ] {
            let _ = writeln!(
                out,
                "chatixia_auth_token_verifications_total{{shard=\"{}\",how=\"{how}\"}} {n}",
                m.shard
            );
        }
    }
}

/// The embedded TURN server's numbers of one shard (`crate::server::turn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnMetrics {
    /// The shard runs TURN (`--turn-listen`); without it no TURN series is rendered.
    pub enabled: bool,
    pub allocations: u64,
    pub tcp_connections: u64,
    /// Of `tcp_connections`, those over TLS (`--turn-tls-listen`, ALPN `stun.turn`).
    pub tls_connections: u64,
    /// The sans-IO server's counters.
    pub stats: turn::server::Stats,
    pub send_failed: u64,
    pub tcp_dropped: u64,
    pub tcp_refused: u64,
    /// Datagrams received in coalesced runs (UDP GRO).
    pub coalesced: u64,
}

/// The TURN series (docs/PROTOCOL.md §9.2, §12.6); nothing when no shard runs TURN.
fn render_turn(shards: &[ShardMetrics], out: &mut String) {
    use turn::server::{Dropped, Refusal};
    if !shards.iter().any(|m| m.turn.enabled) {
        return;
    }
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    type Get = fn(&TurnMetrics) -> u64;
    let plain: [(&str, &str, &str, Get); 8] = [
        (
            "chatixia_turn_allocations",
            "gauge",
            "TURN allocations held now.",
            |t| t.allocations,
        ),
        (
            "chatixia_turn_allocations_created_total",
            "counter",
            "TURN allocations created.",
            |t| t.stats.allocations_created,
        ),
        (
            "chatixia_turn_allocations_revoked_total",
            "counter",
            "TURN allocations ended by a pairing revocation.",
            |t| t.stats.allocations_revoked,
        ),
        (
            "chatixia_turn_tcp_connections",
            "gauge",
            "TURN TCP and TLS connections open now (TLS handshakes in progress included).",
            |t| t.tcp_connections,
        ),
        (
            "chatixia_turn_tls_connections",
            "gauge",
            "Of chatixia_turn_tcp_connections, those over TLS (TLS handshakes in progress included).",
            |t| t.tls_connections,
        ),
        (
            "chatixia_turn_tcp_refused_total",
            "counter",
            "TURN TCP and TLS connections closed by --turn-tcp-connections-max.",
            |t| t.tcp_refused,
        ),
        (
            "chatixia_turn_send_failed_total",
            "counter",
            "Datagrams the kernel did not take (a full socket buffer, an ICMP error).",
            |t| t.send_failed,
        ),
        (
            "chatixia_turn_coalesced_datagrams_total",
            "counter",
            "Datagrams that arrived in coalesced runs (UDP GRO: a sender's GSO run, or a NIC's GRO).",
            |t| t.coalesced,
        ),
    ];
    for (name, kind, help, get) in plain {
        head(out, name, kind, help);
        for m in shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", m.shard, get(&m.turn));
        }
    }
    let directions: [(&str, Get, Get); 2] = [
        (
            "to_peer",
            |t| t.stats.to_peer_packets,
            |t| t.stats.to_peer_bytes,
        ),
        (
            "to_client",
            |t| t.stats.to_client_packets,
            |t| t.stats.to_client_bytes,
        ),
    ];
    head(
        out,
        "chatixia_turn_relayed_packets_total",
        "counter",
        "Datagrams relayed, by direction.",
    );
    for (d, packets, _) in directions {
        for m in shards {
            let _ = writeln!(
                out,
                "chatixia_turn_relayed_packets_total{{direction=\"{d}\",shard=\"{}\"}} {}",
                m.shard,
                packets(&m.turn)
            );
        }
    }
    head(
        out,
        "chatixia_turn_relayed_bytes_total",
        "counter",
        "Payload bytes relayed, by direction.",
    );
    for (d, _, bytes) in directions {
        for m in shards {
            let _ = writeln!(
                out,
                "chatixia_turn_relayed_bytes_total{{direction=\"{d}\",shard=\"{}\"}} {}",
                m.shard,
                bytes(&m.turn)
            );
        }
    }
    head(
        out,
        "chatixia_turn_refused_total",
        "counter",
        "TURN requests refused, by reason: unauthorized 401, stale_nonce 438, allocation_mismatch 437, wrong_credentials 441, user_quota and ip_quota 486, shard_capacity, relay_ports, permissions and channels 508, peer_forbidden 403, bad_request 400, unknown_attribute 420, transport 442, address_family 440/443.",
    );
    for r in Refusal::ALL {
        for m in shards {
            let _ = writeln!(
                out,
                "chatixia_turn_refused_total{{reason=\"{}\",shard=\"{}\"}} {}",
                r.name(),
                m.shard,
                m.turn.stats.refused(r)
            );
        }
    }
    head(
        out,
        "chatixia_turn_dropped_total",
        "counter",
        "TURN messages dropped without an answer, by reason (malformed: not STUN or ChannelData, or a bad one; rate: over --turn-allocation-bytes-per-sec-max; tcp_queue: bytes for a TCP client that does not read).",
    );
    for d in Dropped::ALL {
        for m in shards {
            let _ = writeln!(
                out,
                "chatixia_turn_dropped_total{{reason=\"{}\",shard=\"{}\"}} {}",
                d.name(),
                m.shard,
                m.turn.stats.dropped(d)
            );
        }
    }
    for m in shards {
        let _ = writeln!(
            out,
            "chatixia_turn_dropped_total{{reason=\"tcp_queue\",shard=\"{}\"}} {}",
            m.shard, m.turn.tcp_dropped
        );
    }
}

/// The durable store's counters (issues 10, 20, 22) in the Prometheus text format:
/// commits are fsyncs (one per group commit); `available` is what `/readyz` reports.
pub fn render_store(stats: &chatixia_store::StoreStats, available: bool) -> String {
    let series: [(&str, &str, &str, u64); 18] = [
        (
            "chatixia_store_available",
            "gauge",
            "1 while the state store takes writes, 0 while the disk refuses them (see /readyz).",
            u64::from(available),
        ),
        (
            "chatixia_store_unavailable_total",
            "counter",
            "Times the state store became unavailable (a commit the disk refused).",
            stats.unavailable_episodes,
        ),
        (
            "chatixia_store_recoveries_total",
            "counter",
            "Times the state store became available again (reopened, a commit succeeded).",
            stats.recoveries,
        ),
        (
            "chatixia_store_unavailable_refused_total",
            "counter",
            "Writes refused (503) because the state store was unavailable.",
            stats.refused_unavailable,
        ),
        (
            "chatixia_store_retained_writes",
            "gauge",
            "Revocations in effect but not yet saved, waiting for the store to recover.",
            stats.retained,
        ),
        (
            "chatixia_store_retained_refused_total",
            "counter",
            "Revocations not kept for saving: --store-retained-writes-max were waiting.",
            stats.retained_refused,
        ),
        (
            "chatixia_store_backups_total",
            "counter",
            "Backups streamed completely (GET /api/admin/backup).",
            stats.backups,
        ),
        (
            "chatixia_store_backups_failed_total",
            "counter",
            "Backups that failed or whose client went away.",
            stats.backups_failed,
        ),
        (
            "chatixia_store_commits_total",
            "counter",
            "Group commits of the state store, each one fsync.",
            stats.commits,
        ),
        (
            "chatixia_store_commits_failed_total",
            "counter",
            "Group commits that failed (their writes were answered 503).",
            stats.commits_failed,
        ),
        (
            "chatixia_store_writes_total",
            "counter",
            "Writes (acknowledged changes) committed or failed.",
            stats.writes,
        ),
        (
            "chatixia_store_batch_writes_largest",
            "gauge",
            "Most writes that shared one commit.",
            stats.batch_writes_largest,
        ),
        (
            "chatixia_store_queue_full_total",
            "counter",
            "Writes refused because the store's queue was full (503).",
            stats.queue_full,
        ),
        (
            "chatixia_store_data_bytes",
            "gauge",
            "Bytes of the stored records, keys and values (--data-bytes-max).",
            stats.data_bytes,
        ),
        (
            "chatixia_store_data_bytes_max",
            "gauge",
            "The bound on the stored records (--data-bytes-max).",
            stats.data_bytes_max,
        ),
        (
            "chatixia_store_file_bytes",
            "gauge",
            "Size of the database file after the last commit.",
            stats.file_bytes,
        ),
        (
            "chatixia_store_refused_full_total",
            "counter",
            "Writes refused because they would grow the records past --data-bytes-max (503).",
            stats.refused_full,
        ),
        (
            "chatixia_store_refused_anonymous_total",
            "counter",
            "Writes for clients without credentials refused at their share of --data-bytes-max (503).",
            stats.refused_anonymous,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in series {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_per_shard() {
        let m = |s, d| ShardMetrics {
            shard: s,
            driver: d,
            connections_accepted: 10 + s as u64,
            connections_open: 2,
            requests_served: 7,
            http_moved: 1,
            mailbox: MailboxStats {
                sent: 3,
                received: 4,
                refused_full: 1,
                wakeups: 5,
            },
            ws: WsMetrics {
                open: 1,
                relayed: 2,
                refused: 0,
                closed_slow: 0,
            },
            auth: AuthMetrics {
                failures: [1, 2, 3, 4, 5, 6, 7, 8],
                refused: [9, 0, 0, 0, 0, 0],
                addresses: 3,
                tokens_cached: 11,
                tokens_verified: 2,
            },
            budgets: BudgetMetrics {
                task_bytes: 700,
                refused: [0, 3, 0, 0, 0, 1],
                ..BudgetMetrics::default()
            },
            turn: Default::default(),
            tls: Default::default(),
            layer: LayerMetrics {
                asks_waited: 4,
                asks_refused: 1,
                reservations_refused: 2,
            },
            cluster_malformed: 0,
            cluster_binding_conflicts: 0,
            skill_asks_skipped: 0,
            pairing_unsynced: 0,
            pairing_unkept: 0,
            pairing_reasserts: 0,
            hub_take_backs: 2,
            hub_take_backs_settled: 0,
            hub_take_backs_unkept: 0,
            cluster_pipe: Default::default(),
        };
        let text = render(&[m(0, IoDriver::Uring), m(1, IoDriver::Epoll)]);
        assert!(text.contains("chatixia_connections_accepted_total{shard=\"0\"} 10\n"));
        assert!(text.contains("chatixia_connections_accepted_total{shard=\"1\"} 11\n"));
        assert!(text.contains("chatixia_mailbox_refused_total{shard=\"1\"} 1\n"));
        assert!(text.contains("chatixia_io_driver{shard=\"0\",driver=\"io_uring\"} 1\n"));
        assert!(text.contains("chatixia_io_driver{shard=\"1\",driver=\"epoll\"} 1\n"));
        assert!(text.contains("# TYPE chatixia_connections_open gauge\n"));
        assert!(text.ends_with("chatixia_shards 2\n"));
        assert!(text.contains("chatixia_ws_connections_open{shard=\"1\"} 1\n"));
        assert!(text.contains("chatixia_ws_relayed_total{shard=\"0\"} 2\n"));
        assert!(text.contains("chatixia_shard_asks_waited_total{shard=\"1\"} 4\n"));
        assert!(text.contains("chatixia_shard_asks_refused_total{shard=\"0\"} 1\n"));
        assert!(text.contains("chatixia_shard_reservations_refused_total{shard=\"1\"} 2\n"));
        assert!(text.contains(
            "chatixia_auth_failures_total{shard=\"1\",route=\"token\",kind=\"device_token\"} 2\n"
        ));
        assert!(text
            .contains("chatixia_auth_failures_total{shard=\"0\",route=\"ws\",kind=\"jwt\"} 6\n"));
        assert!(text.contains(
            "chatixia_auth_failures_total{shard=\"0\",route=\"agent\",kind=\"api_key\"} 8\n"
        ));
        assert!(text.contains("chatixia_auth_refused_total{shard=\"0\",route=\"token\"} 9\n"));
        assert!(text.contains("chatixia_auth_failure_addresses{shard=\"1\"} 3\n"));
        assert!(text
            .contains("chatixia_auth_token_verifications_total{shard=\"1\",how=\"cached\"} 11\n"));
        assert!(
            text.contains("chatixia_auth_token_verifications_total{shard=\"1\",how=\"full\"} 2\n")
        );
        assert!(text.contains("chatixia_task_store_bytes{shard=\"1\"} 700\n"));
        assert!(text.contains(
            "chatixia_budget_refused_total{shard=\"0\",store=\"tasks\",reason=\"anonymous_share\"} 3\n"
        ));
        assert!(text.contains(
            "chatixia_budget_refused_total{shard=\"1\",store=\"agents\",reason=\"store_full\"} 1\n"
        ));
        assert!(
            !text.contains("chatixia_turn"),
            "no TURN series without TURN"
        );
        // With TURN on a shard, its series (every shard, every reason).
        let mut t = m(0, IoDriver::Uring);
        t.turn.enabled = true;
        t.turn.allocations = 3;
        t.turn.stats.to_peer_packets = 9;
        t.turn.stats.refused[turn::server::Refusal::UserQuota as usize] = 2;
        let text = render(&[t, m(1, IoDriver::Epoll)]);
        assert!(text.contains("chatixia_turn_allocations{shard=\"0\"} 3\n"));
        assert!(text.contains("chatixia_turn_allocations{shard=\"1\"} 0\n"));
        assert!(text.contains(
            "chatixia_turn_relayed_packets_total{direction=\"to_peer\",shard=\"0\"} 9\n"
        ));
        assert!(text.contains("chatixia_turn_refused_total{reason=\"user_quota\",shard=\"0\"} 2\n"));
        assert!(text.contains("chatixia_turn_dropped_total{reason=\"tcp_queue\",shard=\"1\"} 0\n"));
        assert_eq!(
            text.matches("# TYPE chatixia_turn_refused_total counter")
                .count(),
            1
        );
        // Every sample line is "name{labels} value" or "name value".
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }
}

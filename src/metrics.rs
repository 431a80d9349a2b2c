//! Per-shard counters and their Prometheus text rendering (sans-IO).

use std::cell::Cell;
use std::fmt::Write;

use reactor::{IoDriver, MailboxStats};

/// Counters a shard keeps about itself (shard-local cells, never shared).
#[derive(Default)]
pub struct ShardCounters {
    pub connections_accepted: Cell<u64>,
    pub connections_open: Cell<u64>,
    pub requests_served: Cell<u64>,
}

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
    pub mailbox: MailboxStats,
    pub ws: WsMetrics,
    /// The embedded TURN server's numbers (`crate::turn`; zero without it).
    pub turn: TurnMetrics,
}

/// Signaling counters of one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WsMetrics {
    pub open: u64,
    pub relayed: u64,
    pub refused: u64,
    pub closed_slow: u64,
}

impl ShardMetrics {
    pub fn snapshot(
        shard: usize,
        driver: IoDriver,
        c: &ShardCounters,
        mailbox: MailboxStats,
        ws: WsMetrics,
    ) -> Self {
        ShardMetrics {
            shard,
            driver,
            connections_accepted: c.connections_accepted.get(),
            connections_open: c.connections_open.get(),
            requests_served: c.requests_served.get(),
            mailbox,
            ws,
            turn: Default::default(),
        }
    }
}

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(shards: &[ShardMetrics]) -> String {
    let mut out = String::with_capacity(256 + shards.len() * 512);
    type Get = fn(&ShardMetrics) -> u64;
    let series: [(&str, &str, &str, Get); 11] = [
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
    let _ = writeln!(out, "# HELP chatixia_shards Number of shards.");
    let _ = writeln!(out, "# TYPE chatixia_shards gauge");
    let _ = writeln!(out, "chatixia_shards {}", shards.len());
    render_turn(shards, &mut out);
    out
}

/// The embedded TURN server's numbers of one shard (`crate::turn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnMetrics {
    /// The shard runs TURN (`--turn-listen`); without it no TURN series is rendered.
    pub enabled: bool,
    pub allocations: u64,
    pub tcp_connections: u64,
    /// The sans-IO server's counters.
    pub stats: turn::server::Stats,
    pub send_failed: u64,
    pub tcp_dropped: u64,
    pub tcp_refused: u64,
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
    let plain: [(&str, &str, &str, Get); 6] = [
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
            "TURN TCP connections open now.",
            |t| t.tcp_connections,
        ),
        (
            "chatixia_turn_tcp_refused_total",
            "counter",
            "TURN TCP connections closed by --turn-tcp-connections-max.",
            |t| t.tcp_refused,
        ),
        (
            "chatixia_turn_send_failed_total",
            "counter",
            "Datagrams the kernel did not take (a full socket buffer, an ICMP error).",
            |t| t.send_failed,
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

/// The durable store's counters (issue 10) in the Prometheus text format: commits are
/// fsyncs (one per group commit).
pub fn render_store(stats: &chatixia_store::StoreStats) -> String {
    let series: [(&str, &str, &str, u64); 5] = [
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
            turn: Default::default(),
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

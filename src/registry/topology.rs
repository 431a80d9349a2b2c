//! `GET /api/hub/network/topology`: the mesh as the dashboard draws it, derived from the
//! agent records alone (so it lives with them).
//!
//! Shards hand in one [`TopologyNode`] per agent ([`TopologyNode::from_record`]); the
//! server concatenates them and calls [`topology`], which derives `mesh_peers` and
//! `mesh_edges` from the whole list (they depend on every agent, so they cannot be
//! computed per shard).

use serde::{Deserialize, Serialize};

use super::{AgentRecord, Health};

/// One agent in the topology. Fields in the reference's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopologyNode {
    /// The agent.
    pub agent_id: String,
    /// From its record.
    pub ip: String,
    /// From its record.
    pub port: u16,
    /// From its record.
    pub hostname: String,
    /// `""` when the agent has no sidecar.
    pub sidecar_peer_id: String,
    /// The agent's top-level `mode`.
    pub mode: String,
    /// Number of entries in `capabilities.skills`.
    pub skills_count: usize,
    /// As of the last health tick.
    pub health: Health,
    /// Sidecar ids of every other `active` agent that has one (filled by [`topology`]).
    pub mesh_peers: Vec<String>,
}

impl TopologyNode {
    /// The node for one agent, with `mesh_peers` still empty.
    pub fn from_record(r: &AgentRecord) -> Self {
        TopologyNode {
            agent_id: r.info.agent_id.clone(),
            ip: r.info.ip.clone(),
            port: r.info.port,
            hostname: r.info.hostname.clone(),
            sidecar_peer_id: r.info.sidecar_peer_id.clone(),
            mode: r.info.mode.clone(),
            skills_count: r.info.capabilities.skills.len(),
            health: r.health,
            mesh_peers: Vec::new(),
        }
    }

    /// The node for an agent record as the list shows it (§3.3's JSON: another node's
    /// agent, from the cluster's mirror), with `mesh_peers` still empty; `None` when it is
    /// not such a record.
    pub fn from_json(json: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Caps {
            #[serde(default)]
            skills: Vec<serde::de::IgnoredAny>,
        }
        #[derive(Deserialize)]
        struct Listed {
            agent_id: String,
            ip: String,
            port: u16,
            hostname: String,
            sidecar_peer_id: String,
            mode: String,
            capabilities: Caps,
            health: String,
        }
        let r: Listed = serde_json::from_slice(json).ok()?;
        let health = match r.health.as_str() {
            "active" => Health::Active,
            "stale" => Health::Stale,
            "offline" => Health::Offline,
            _ => return None,
        };
        Some(TopologyNode {
            agent_id: r.agent_id,
            ip: r.ip,
            port: r.port,
            hostname: r.hostname,
            sidecar_peer_id: r.sidecar_peer_id,
            mode: r.mode,
            skills_count: r.capabilities.skills.len(),
            health,
            mesh_peers: Vec::new(),
        })
    }

    fn is_mesh_member(&self) -> bool {
        self.health == Health::Active && !self.sidecar_peer_id.is_empty()
    }
}

/// A (potential) data channel between two sidecars.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeshEdge {
    /// Sidecar id of the agent earlier in node order.
    pub from_peer: String,
    /// Sidecar id of the later one.
    pub to_peer: String,
}

/// The response body: `{"nodes":[…],"mesh_edges":[…]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Every agent, ordered by `agent_id`.
    pub nodes: Vec<TopologyNode>,
    /// One edge per pair of mesh members.
    pub mesh_edges: Vec<MeshEdge>,
}

/// Builds the topology from the nodes of all shards (any order; any `mesh_peers` they
/// carry are replaced).
///
/// As in the reference: a *mesh member* is an `active` agent with a non-empty
/// `sidecar_peer_id`; each node's `mesh_peers` lists the sidecar ids of the mesh members
/// with a different `agent_id`, and `mesh_edges` joins every pair of mesh members once,
/// `from_peer` being the earlier of the two in node order. The reference's node order is
/// a `DashMap` iteration (arbitrary); here nodes are sorted by `agent_id`, which makes the
/// whole response deterministic.
///
/// The output is inherently quadratic (k mesh members give k·(k−1)/2 edges and up to
/// n·k peer entries); that is the wire contract. Its size is bounded by the agent limits.
pub fn topology(mut nodes: Vec<TopologyNode>) -> Topology {
    nodes.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let members: Vec<(String, String)> = nodes
        .iter()
        .filter(|n| n.is_mesh_member())
        .map(|n| (n.agent_id.clone(), n.sidecar_peer_id.clone()))
        .collect();
    for node in &mut nodes {
        node.mesh_peers = members
            .iter()
            .filter(|(agent_id, _)| *agent_id != node.agent_id)
            .map(|(_, peer)| peer.clone())
            .collect();
    }
    let mut mesh_edges = Vec::with_capacity(
        members
            .len()
            .saturating_mul(members.len().saturating_sub(1))
            / 2,
    );
    for (i, (_, from)) in members.iter().enumerate() {
        for (_, to) in &members[i + 1..] {
            mesh_edges.push(MeshEdge {
                from_peer: from.clone(),
                to_peer: to.clone(),
            });
        }
    }
    Topology { nodes, mesh_edges }
}

/// `GET /api/hub/network/topology`.
pub fn topology_body(topology: &Topology) -> Vec<u8> {
    wire::json::json_vec(topology)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AgentCapabilities, AgentInfo};
    use crate::time::UnixTime;

    fn node(id: &str, sidecar: &str, health: Health) -> TopologyNode {
        TopologyNode {
            agent_id: id.into(),
            ip: "10.0.0.1".into(),
            port: 8000,
            hostname: "h".into(),
            sidecar_peer_id: sidecar.into(),
            mode: "auto".into(),
            skills_count: 0,
            health,
            mesh_peers: vec!["junk".into()],
        }
    }

    fn peers(t: &Topology, id: &str) -> Vec<String> {
        t.nodes
            .iter()
            .find(|n| n.agent_id == id)
            .map(|n| n.mesh_peers.clone())
            .unwrap_or_default()
    }

    fn edges(t: &Topology) -> Vec<(&str, &str)> {
        t.mesh_edges
            .iter()
            .map(|e| (e.from_peer.as_str(), e.to_peer.as_str()))
            .collect()
    }

    #[test]
    fn empty() {
        let t = topology(vec![]);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"nodes":[],"mesh_edges":[]}"#
        );
    }

    #[test]
    fn mesh_peers_and_edges() {
        let t = topology(vec![
            node("d", "sc-d", Health::Active),
            node("b", "sc-b", Health::Active),
            node("stale", "sc-s", Health::Stale),
            node("off", "sc-o", Health::Offline),
            node("nosc", "", Health::Active),
            node("a", "sc-a", Health::Active),
        ]);
        let order: Vec<&str> = t.nodes.iter().map(|n| n.agent_id.as_str()).collect();
        assert_eq!(order, ["a", "b", "d", "nosc", "off", "stale"]);
        assert_eq!(peers(&t, "a"), ["sc-b", "sc-d"]);
        assert_eq!(peers(&t, "b"), ["sc-a", "sc-d"]);
        assert_eq!(peers(&t, "d"), ["sc-a", "sc-b"]);
        // Non-members still see every member.
        assert_eq!(peers(&t, "nosc"), ["sc-a", "sc-b", "sc-d"]);
        assert_eq!(peers(&t, "stale"), ["sc-a", "sc-b", "sc-d"]);
        assert_eq!(peers(&t, "off"), ["sc-a", "sc-b", "sc-d"]);
        assert_eq!(
            edges(&t),
            [("sc-a", "sc-b"), ("sc-a", "sc-d"), ("sc-b", "sc-d")]
        );
    }

    #[test]
    fn single_member_has_no_edges() {
        let t = topology(vec![
            node("a", "sc-a", Health::Active),
            node("b", "", Health::Active),
        ]);
        assert!(t.mesh_edges.is_empty());
        assert!(peers(&t, "a").is_empty());
        assert_eq!(peers(&t, "b"), ["sc-a"]);
    }

    #[test]
    fn edge_count_is_pairs() {
        let nodes: Vec<TopologyNode> = (0..10)
            .map(|i| node(&format!("a{i}"), &format!("sc{i}"), Health::Active))
            .collect();
        let t = topology(nodes);
        assert_eq!(t.mesh_edges.len(), 45);
        assert!(t.nodes.iter().all(|n| n.mesh_peers.len() == 9));
    }

    #[test]
    fn from_record_and_json_shape() {
        let rec = AgentRecord {
            info: AgentInfo {
                agent_id: "a1".into(),
                hostname: "host1".into(),
                ip: "10.0.0.1".into(),
                port: 8001,
                sidecar_peer_id: "sc-1".into(),
                capabilities: AgentCapabilities {
                    skills: vec!["x".into(), "y".into(), "z".into()],
                    mcp_servers: vec![],
                    goals_count: 0,
                    mode: "cap".into(),
                },
                status: "s".into(),
                mode: "auto".into(),
            },
            health: Health::Active,
            registered_at: UnixTime::EPOCH,
            last_heartbeat: UnixTime::EPOCH,
            bound: None,
        };
        let mut other = node("a2", "sc-2", Health::Active);
        other.skills_count = 5;
        other.mode = "interactive".into();
        let t = topology(vec![other, TopologyNode::from_record(&rec)]);
        let want = concat!(
            r#"{"nodes":["#,
            r#"{"agent_id":"a1","ip":"10.0.0.1","port":8001,"hostname":"host1","sidecar_peer_id":"sc-1","#,
            r#""mode":"auto","skills_count":3,"health":"active","mesh_peers":["sc-2"]},"#,
            r#"{"agent_id":"a2","ip":"10.0.0.1","port":8000,"hostname":"h","sidecar_peer_id":"sc-2","#,
            r#""mode":"interactive","skills_count":5,"health":"active","mesh_peers":["sc-1"]}"#,
            r#"],"mesh_edges":[{"from_peer":"sc-1","to_peer":"sc-2"}]}"#
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), want);
    }

    #[test]
    fn a_mirrored_record_gives_the_node_its_record_gives() {
        let mut rec = AgentRecord {
            info: AgentInfo {
                agent_id: "a1".into(),
                hostname: "host1".into(),
                ip: "10.0.0.1".into(),
                port: 8001,
                sidecar_peer_id: "sc-1".into(),
                capabilities: AgentCapabilities {
                    skills: vec!["x".into(), "y".into()],
                    mcp_servers: vec!["fs".into()],
                    goals_count: 2,
                    mode: "cap".into(),
                },
                status: "s".into(),
                mode: "auto".into(),
            },
            health: Health::Active,
            registered_at: UnixTime::EPOCH,
            last_heartbeat: UnixTime::EPOCH,
            bound: None,
        };
        for h in [Health::Active, Health::Stale, Health::Offline] {
            rec.health = h;
            // The JSON the list shows, which the mirror holds.
            let json = wire::json::json_vec(&rec);
            assert_eq!(
                TopologyNode::from_json(&json),
                Some(TopologyNode::from_record(&rec))
            );
        }
        assert_eq!(TopologyNode::from_json(b"{}"), None);
        // A health the wire does not have: not a record.
        let bad = String::from_utf8(wire::json::json_vec(&rec))
            .unwrap()
            .replace(r#""health":"offline""#, r#""health":"asleep""#);
        assert_eq!(TopologyNode::from_json(bad.as_bytes()), None);
    }

    #[test]
    fn topology_body_shape() {
        assert_eq!(
            topology_body(&topology(vec![])),
            br#"{"nodes":[],"mesh_edges":[]}"#
        );
    }
}

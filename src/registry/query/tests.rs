use super::*;
use crate::registry::{AgentCapabilities, AgentInfo, AgentStore, AgentStoreConfig};
use crate::time::UnixTime;

const T0: UnixTime = UnixTime(1_800_000_000_000_000_000);

fn agent(id: &str, host: &str, skills: &[&str]) -> AgentInfo {
    AgentInfo {
        agent_id: id.into(),
        hostname: host.into(),
        ip: "10.0.0.1".into(),
        port: 8000,
        sidecar_peer_id: String::new(),
        capabilities: AgentCapabilities {
            skills: skills.iter().map(|s| s.to_string()).collect(),
            ..AgentCapabilities::default()
        },
        status: "ok".into(),
        mode: "auto".into(),
    }
}

/// Agents spread over `n` stores the way shards hold them (by a hash here: any split).
fn shards(n: usize, ids: &[&str]) -> Vec<AgentStore> {
    let mut stores: Vec<AgentStore> = (0..n)
        .map(|_| AgentStore::new(AgentStoreConfig::default()))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let skills: &[&str] = if i % 2 == 0 { &["search"] } else { &["ocr"] };
        stores[(id.len() * 7 + i) % n]
            .upsert(agent(id, &format!("host-{id}"), skills), T0)
            .unwrap();
    }
    stores
}

fn page(stores: &[AgentStore], q: &AgentQuery) -> Page<AgentRow> {
    let parts = stores.iter().map(|s| agents_part(s.list(), q)).collect();
    merge_agents(parts, q)
}

/// Every page of `q` from the start, the agent ids in order.
fn walk(stores: &[AgentStore], mut q: AgentQuery) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let p = page(stores, &q);
        assert!(p.items.len() <= q.limit);
        seen.extend(ids(&p).into_iter().map(String::from));
        match p.next_cursor {
            Some(c) => q.cursor = AgentQuery::parse_cursor(q.sort, Some(&c)).unwrap(),
            None => return seen,
        }
    }
}

fn ids(p: &Page<AgentRow>) -> Vec<&str> {
    p.items.iter().map(|r| r.agent_id.as_str()).collect()
}

#[test]
fn agents_page_through_every_shard_in_id_order() {
    let names: Vec<String> = (0..23).map(|i| format!("agent-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let stores = shards(3, &refs);
    let mut q = AgentQuery {
        limit: 10,
        ..AgentQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let p = page(&stores, &q);
        assert_eq!(p.total, 23);
        assert!(p.items.len() <= 10);
        seen.extend(ids(&p).into_iter().map(String::from));
        match p.next_cursor {
            Some(c) => q.cursor = AgentQuery::parse_cursor(q.sort, Some(&c)).unwrap(),
            None => break,
        }
    }
    assert_eq!(seen, names, "every agent once, in id order");
}

#[test]
fn agent_filters() {
    let stores = shards(2, &["alpha", "beta", "gamma", "delta"]);
    let q = |s: &str| AgentQuery {
        limit: 50,
        q: Some(s.into()),
        ..AgentQuery::default()
    };
    assert_eq!(ids(&page(&stores, &q("ALP"))), ["alpha"]);
    assert_eq!(ids(&page(&stores, &q("host-g"))), ["gamma"]);
    // Skills: even indexes have `search`.
    assert_eq!(ids(&page(&stores, &q("search"))), ["alpha", "gamma"]);
    let p = page(&stores, &q("nothing"));
    assert!(p.items.is_empty());
    assert_eq!(p.total, 0);
    assert_eq!(p.next_cursor, None);
    let stale = AgentQuery {
        limit: 50,
        health: Some(Health::Stale),
        ..AgentQuery::default()
    };
    assert!(page(&stores, &stale).items.is_empty());
    let active = AgentQuery {
        health: Some(Health::Active),
        ..stale
    };
    assert_eq!(page(&stores, &active).total, 4);
}
#[test]
fn query_parameters() {
    assert_eq!(
        AgentQuery::parse_health(Some("stale")),
        Ok(Some(Health::Stale))
    );
    assert!(AgentQuery::parse_health(Some("dead")).is_err());
    assert_eq!(AgentQuery::parse_health(Some("")), Ok(None));
    assert_eq!(AgentSort::parse(Some("host")), Ok(AgentSort::Host));
}

#[test]
fn agents_sorted_by_other_keys_page_through_every_shard() {
    let names: Vec<String> = (0..31).map(|i| format!("agent-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut stores = shards(3, &refs);
    // Heartbeat times and hosts that differ from the id order (with ties).
    for (i, id) in refs.iter().enumerate() {
        let store = stores.iter_mut().find(|s| s.get(id).is_some()).unwrap();
        let at = UnixTime(T0.0 + ((i * 7) % 5) as u64 * 1_000_000_000);
        store
            .upsert(agent(id, &format!("host-{}", (i * 3) % 4), &["x"]), at)
            .unwrap();
    }
    let all: Vec<&AgentRecord> = stores.iter().flat_map(|s| s.list()).collect();
    for sort in [
        AgentSort::Host,
        AgentSort::Heartbeat,
        AgentSort::Health,
        AgentSort::Id,
    ] {
        for desc in [false, true] {
            let q = AgentQuery {
                limit: 4,
                sort,
                desc,
                ..AgentQuery::default()
            };
            let mut want: Vec<&AgentRecord> = all.clone();
            want.sort_by(|a, b| {
                let ka = (sort.value(a), a.info.agent_id.as_str());
                let kb = (sort.value(b), b.info.agent_id.as_str());
                if desc {
                    kb.cmp(&ka)
                } else {
                    ka.cmp(&kb)
                }
            });
            let want: Vec<String> = want.iter().map(|r| r.info.agent_id.clone()).collect();
            assert_eq!(walk(&stores, q), want, "{sort:?} desc={desc}");
        }
    }
    assert!(AgentSort::parse(Some("nope")).is_err());
    assert!(AgentQuery::parse_cursor(AgentSort::Host, Some("not json")).is_err());
    // Nesting: the cursor's 512 bytes could nest 250 levels; past the bound it is
    // refused before serde (whose untagged enum buffers recursively).
    let limit = wire::json::JSON_DEPTH_MAX;
    let nested = |n: usize| "[".repeat(n) + "5,\"a\"" + &"]".repeat(n);
    assert_eq!(
        AgentQuery::parse_cursor(AgentSort::Heartbeat, Some(&nested(limit))),
        Err("malformed cursor".into())
    );
    for depth in [limit + 1, 250] {
        assert_eq!(
            AgentQuery::parse_cursor(AgentSort::Heartbeat, Some(&nested(depth))),
            Err(format!(
                "malformed cursor: JSON nesting is {depth} levels deep; the limit is {limit}"
            ))
        );
    }
    assert_eq!(
        AgentQuery::parse_cursor(AgentSort::Heartbeat, Some("[5,\"a\"]")),
        Ok(Some((SortVal::N(5), "a".into())))
    );
}

/// Found by schemathesis (tests/it/openapi_schemathesis.rs): an empty agent id at the end of
/// a page gave the cursor `""`, which means "first page" (paging started over, and the
/// page's Next button was disabled). Found beside it: a cursor by host for a 256-byte
/// host and id was longer than the 512 bytes accepted (400 on the next page).
#[test]
fn cursors_of_empty_bracketed_and_longest_fields_page_on() {
    let long_host = "h\u{1}".repeat(128);
    let long_id = "\u{1}".repeat(256);
    let mut store = AgentStore::new(AgentStoreConfig::default());
    for (id, host) in [
        ("", "b"),
        ("[x", "a"),
        ("[0,\"a\"]", "c"),
        ("a", long_host.as_str()),
        (long_id.as_str(), long_host.as_str()),
        ("z", "d"),
    ] {
        store.upsert(agent(id, host, &[]), T0).unwrap();
    }
    let stores = [store];
    for sort in [AgentSort::Id, AgentSort::Host, AgentSort::Heartbeat] {
        for desc in [false, true] {
            let mut q = AgentQuery {
                limit: 1,
                sort,
                desc,
                ..AgentQuery::default()
            };
            let mut seen = Vec::new();
            loop {
                let p = page(&stores, &q);
                seen.extend(ids(&p).into_iter().map(String::from));
                assert!(
                    seen.len() <= 6,
                    "{sort:?} desc={desc}: paging started over: {seen:?}"
                );
                match p.next_cursor {
                    Some(c) => {
                        assert!(
                            !c.is_empty(),
                            "{sort:?}: an empty cursor means the first page"
                        );
                        q.cursor = AgentQuery::parse_cursor(sort, Some(&c))
                            .unwrap_or_else(|e| panic!("{sort:?} desc={desc}: {e}"));
                    }
                    None => break,
                }
            }
            seen.sort();
            let mut want: Vec<String> = ["", "[x", "[0,\"a\"]", "a", &long_id, "z"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            want.sort();
            assert_eq!(seen, want, "{sort:?} desc={desc}: every agent once");
        }
    }
}

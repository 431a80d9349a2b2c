//! Requests about a pairing entry or an invite code another node holds, sent to that
//! node (`--cluster`, issue 25; docs/PROTOCOL.md §5.10): the entry stays where its
//! `pair` was taken, the code where it was issued (`pairing::directory` says where),
//! and the request runs there, through that node's own workflow, as if it had been
//! sent there (`shard::nodes` carries it). The router checked the caller here (an admin
//! token for approve, reject, revoke and the lists); the other node trusts its peers in
//! the cluster (they share its Redis).
//!
//! Each tag is one workflow; its request bytes are the workflow's inputs. A request
//! that arrives here from another node runs here and is never sent on (so two nodes
//! whose notes disagree cannot bounce a request between them).

use std::net::IpAddr;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::ShardCtx;
use crate::pairing::{self, EntryId};
use crate::shard::nodes::{self, ask_node, Asked};
use crate::shard::paging::{page_req, PageReq};
use crate::shard::{Error, Outcome};

const TAG_APPROVE: u8 = 1;
const TAG_REJECT: u8 = 2;
const TAG_REVOKE: u8 = 3;
const TAG_STATUS: u8 = 4;
const TAG_PAIR: u8 = 5;
const TAG_LIST: u8 = 6;
const TAG_TOKEN_USED: u8 = 7;

/// The route key of pairing requests sent to a node without an entry id (a list): any
/// shard of that node can answer.
const LIST_ROUTE_KEY: &[u8] = b"pairing-list";

/// An operator's action on an entry (approve, reject, revoke).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Approve,
    Reject,
    Revoke,
}

fn live(ctx: &ShardCtx, node: &str) -> Result<(), Error> {
    let live = ctx
        .cluster
        .as_ref()
        .is_some_and(|l| l.live_nodes().iter().any(|n| n == node));
    if live {
        Ok(())
    } else {
        Err(not_live(node))
    }
}

fn not_live(node: &str) -> Error {
    Error::unavailable(format!(
        "cluster unavailable: node `{node}`, which holds this pairing entry or code, is not \
         live; retry once it is back"
    ))
}

async fn ask(
    ctx: &ShardCtx,
    node: &str,
    key: &[u8],
    tag: u8,
    req: &[u8],
) -> Result<Outcome, Error> {
    live(ctx, node)?;
    ask_node(ctx, &ctx.state.node_asks, node, key, tag, req).await
}

/// The node that holds entry `raw_id`, when it is another (a lookup Redis cannot answer
/// is answered here: each node answers for the entries it holds).
async fn entry_node(ctx: &ShardCtx, raw_id: &str) -> Option<String> {
    let id = EntryId::parse(raw_id)?;
    pairing::directory::entry_elsewhere(ctx, id)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(error = ?e, "pairing entry lookup: answering here");
            None
        })
}

/// `POST /api/pairing/{id}/approve|reject|revoke` (the router checked the admin token).
/// A revocation of an entry whose node is not live is made here, in the cluster's
/// records ([`revoke_away`]): a device must be revocable while its entry's node is down.
pub async fn action(ctx: &ShardCtx, action: Action, raw_id: &str) -> Result<Outcome, Error> {
    if let Some(node) = entry_node(ctx, raw_id).await {
        if action == Action::Revoke && live(ctx, &node).is_err() {
            return revoke_away(ctx, raw_id, &node).await;
        }
        let tag = match action {
            Action::Approve => TAG_APPROVE,
            Action::Reject => TAG_REJECT,
            Action::Revoke => TAG_REVOKE,
        };
        return ask(ctx, &node, raw_id.as_bytes(), tag, raw_id.as_bytes()).await;
    }
    run_action(ctx, action, raw_id).await
}

/// Revokes entry `raw_id`, held by `node`, which is not live: its approval leaves the
/// cluster's records (its token is refused at every node from now on), the peer's
/// connections close at every live node (4001) when it holds no other approval, and
/// `node` revokes the entry in its own store when it connects again
/// (`pairing::cluster::REVOKE_AWAY`). 200 once that is durable in Redis (again for a
/// retry: the same answer); 503 naming the node when the cluster holds no approval of
/// the entry (one pending there, or approved before the cluster noted approvals: only
/// its node can tell); sent to `node` after all when Redis says its lease runs (it came
/// back since this node last heard).
async fn revoke_away(ctx: &ShardCtx, raw_id: &str, node: &str) -> Result<Outcome, Error> {
    use pairing::cluster::RevokedAway;
    let id = EntryId::parse(raw_id).ok_or_else(|| Error::not_found("no such pairing entry"))?;
    let close = |peer: &str, last: bool| {
        if let (true, Some(link)) = (last, &ctx.cluster) {
            // Every live node, this one included: its connections of the peer are
            // held by the peer's owner shard, which hears it through the link.
            crate::signaling::remote::broadcast_revocation_everywhere(link, peer);
        }
    };
    match pairing::cluster::revoke_away(ctx, id, node).await? {
        RevokedAway::Revoked { peer, last } => {
            close(&peer, last);
            tracing::warn!(entry = %id, %node, %peer, "pairing entry revoked while its node is away");
            Ok(Outcome::json(&serde_json::json!({
                "ok": true,
                "detail": format!(
                    "revoked in the cluster while node `{node}`, which holds this entry, is \
                     away; it revokes the entry in its own store when it reconnects"
                ),
            })))
        }
        RevokedAway::Unconfirmed { peer, last, why } => {
            close(&peer, last);
            Err(Error::unavailable(format!(
                "cluster unavailable: the revocation ran on Redis's primary but was not \
                 confirmed ({why}); the token is refused and, unless another approval of \
                 the device remains, its connections are closed, but a failover could \
                 bring the approval back: retry"
            )))
        }
        RevokedAway::Live => {
            ask_node(
                ctx,
                &ctx.state.node_asks,
                node,
                raw_id.as_bytes(),
                TAG_REVOKE,
                raw_id.as_bytes(),
            )
            .await
        }
        // Pending there (or approved before approvals were noted), or moved meanwhile:
        // only a node that holds it can say; retried, a moved entry is asked there.
        RevokedAway::NotApproved | RevokedAway::Moved => Err(not_live(node)),
    }
}

async fn run_action(ctx: &ShardCtx, action: Action, raw_id: &str) -> Result<Outcome, Error> {
    let cfg = &ctx.config.pairing;
    match action {
        Action::Approve => pairing::api::approve(ctx, cfg, raw_id).await,
        Action::Reject => pairing::api::reject(ctx, cfg, raw_id).await,
        Action::Revoke => pairing::api::revoke(ctx, cfg, raw_id).await,
    }
}

#[derive(Serialize, Deserialize)]
struct StatusReq {
    id: String,
    authorization: Option<String>,
    client: IpAddr,
}

/// `GET /api/pairing/{id}/status` (the claim path): at the entry's node.
pub async fn status(
    ctx: &ShardCtx,
    authorization: Option<&str>,
    raw_id: &str,
    client: IpAddr,
) -> Result<Outcome, Error> {
    if let Some(node) = entry_node(ctx, raw_id).await {
        let req = StatusReq {
            id: raw_id.to_owned(),
            authorization: authorization.map(str::to_owned),
            client,
        };
        let body = serde_json::to_vec(&req).map_err(|e| Error::internal(e.to_string()))?;
        return ask(ctx, &node, raw_id.as_bytes(), TAG_STATUS, &body).await;
    }
    pairing::api::status(ctx, &ctx.config.pairing, authorization, raw_id, client).await
}

#[derive(Serialize, Deserialize)]
struct PairReq {
    code: String,
    agent_name: String,
    client: IpAddr,
}

/// `POST /api/pairing/pair`: here, or at the node that issued the code.
pub async fn pair(
    ctx: &ShardCtx,
    body: pairing::PairRequest,
    client: IpAddr,
) -> Result<Outcome, Error> {
    let keep = PairReq {
        code: body.code.clone(),
        agent_name: body.agent_name.clone(),
        client,
    };
    let look = ctx.cluster.is_some();
    match pairing::api::pair_here_or(ctx, &ctx.config.pairing, body, client, look).await {
        pairing::api::Paired::Here(r) => r,
        pairing::api::Paired::Elsewhere(node) => {
            let req = serde_json::to_vec(&keep).map_err(|e| Error::internal(e.to_string()))?;
            ask(ctx, &node, keep.code.as_bytes(), TAG_PAIR, &req).await
        }
    }
}

/// A device token of entry `id` was used here: the entry's node closes its claim path.
pub async fn token_used(ctx: &ShardCtx, id: EntryId) {
    let raw = id.to_string();
    match entry_node(ctx, &raw).await {
        Some(node) => {
            if let Err(e) = ask(ctx, &node, raw.as_bytes(), TAG_TOKEN_USED, raw.as_bytes()).await {
                tracing::warn!(entry = %raw, error = ?e, "the entry's node was not told its token was used");
            }
        }
        None => pairing::api::token_used(ctx, &ctx.config.pairing, id).await,
    }
}

#[derive(Serialize, Deserialize)]
struct ListReq {
    pending_only: bool,
    after: Option<String>,
    limit: usize,
}

/// `GET /api/pairing/pending|all`: this node's entries and, in a cluster, those of the
/// other live nodes (each asked for its part after the cursor, at most `limit + 1`); a
/// node that does not answer is left out of the page (logged).
pub async fn list(
    ctx: &ShardCtx,
    pending_only: bool,
    limit: Option<&str>,
    cursor: Option<&str>,
) -> Result<Outcome, Error> {
    let cfg = &ctx.config.pairing;
    let Some(link) = &ctx.cluster else {
        return pairing::paged::list_page(ctx, cfg, pending_only, limit, cursor).await;
    };
    let page = page_req(limit, cursor, &cfg.pages)?;
    let mut parts = vec![pairing::paged::part(ctx, pending_only, &page).await?];
    let req = serde_json::to_vec(&ListReq {
        pending_only,
        after: page.after.clone(),
        limit: page.limit,
    })
    .map_err(|e| Error::internal(e.to_string()))?;
    // Every other live node at once: a node that does not answer costs one timeout, not
    // one each.
    let others: Vec<String> = link
        .live_nodes()
        .into_iter()
        .filter(|n| n != link.node_id())
        .collect();
    let answers = futures_util::future::join_all(
        others
            .iter()
            .map(|node| ask(ctx, node, LIST_ROUTE_KEY, TAG_LIST, &req)),
    )
    .await;
    for (node, answer) in others.iter().zip(answers) {
        match answer {
            Ok(Outcome::Json(body)) => {
                match serde_json::from_slice::<Vec<(String, Box<serde_json::value::RawValue>)>>(
                    &body,
                ) {
                    Ok(items) => parts.push(
                        items
                            .into_iter()
                            .take(page.limit.saturating_add(1))
                            .map(|(k, v)| (k, v.get().as_bytes().to_vec()))
                            .collect(),
                    ),
                    Err(e) => tracing::warn!(%node, error = %e, "malformed pairing list part"),
                }
            }
            Ok(_) => tracing::warn!(%node, "unexpected pairing list part"),
            Err(e) => tracing::warn!(%node, error = ?e, "pairing list: a node left out"),
        }
    }
    Ok(pairing::paged::page_from(cfg, &page, parts))
}

/// Runs a request another node sent here and sends the answer back.
pub fn on_ask(ctx: &Rc<ShardCtx>, body: &[u8]) -> bool {
    let Some(asked) = nodes::parse_ask(body) else {
        return false;
    };
    if !(TAG_APPROVE..=TAG_TOKEN_USED).contains(&asked.tag) {
        return false;
    }
    let body = body.to_vec();
    let c = ctx.clone();
    monoio::spawn(async move {
        let Some(asked) = nodes::parse_ask(&body) else {
            return;
        };
        let result = run(&c, &asked).await;
        if let Some(link) = &c.cluster {
            nodes::answer(link, &asked, &result);
        }
    });
    true
}

fn text(b: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(b).map_err(|_| Error::bad_request("malformed request from another node"))
}

fn json<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(b).map_err(|_| Error::bad_request("malformed request from another node"))
}

async fn run(ctx: &Rc<ShardCtx>, asked: &Asked<'_>) -> Result<Outcome, Error> {
    let cfg = &ctx.config.pairing;
    let ctx: &ShardCtx = ctx;
    match asked.tag {
        TAG_APPROVE => run_action(ctx, Action::Approve, text(asked.request)?).await,
        TAG_REJECT => run_action(ctx, Action::Reject, text(asked.request)?).await,
        TAG_REVOKE => run_action(ctx, Action::Revoke, text(asked.request)?).await,
        TAG_STATUS => {
            let r: StatusReq = json(asked.request)?;
            pairing::api::status(ctx, cfg, r.authorization.as_deref(), &r.id, r.client).await
        }
        TAG_PAIR => {
            let r: PairReq = json(asked.request)?;
            let body = pairing::PairRequest {
                code: r.code,
                agent_name: r.agent_name,
            };
            pairing::api::pair(ctx, cfg, body, r.client).await
        }
        TAG_TOKEN_USED => {
            let id = EntryId::parse(text(asked.request)?)
                .ok_or_else(|| Error::bad_request("malformed entry id"))?;
            pairing::api::token_used(ctx, cfg, id).await;
            Ok(Outcome::Static(b"{}"))
        }
        TAG_LIST => {
            let r: ListReq = json(asked.request)?;
            let page = PageReq {
                limit: r.limit.min(cfg.pages.items_max),
                after: r.after,
            };
            let part = pairing::paged::part(ctx, r.pending_only, &page).await?;
            let items: Vec<(String, Box<serde_json::value::RawValue>)> = part
                .into_iter()
                .filter_map(|(k, j)| {
                    let v = serde_json::value::RawValue::from_string(String::from_utf8(j).ok()?);
                    Some((k, v.ok()?))
                })
                .collect();
            Ok(Outcome::json(&items))
        }
        _ => Err(Error::bad_request("unknown request from another node")),
    }
}

//! `GET /api/pairing/pending|all[?limit=N&cursor=C]`: one page of every shard's entries,
//! by `created_at` then id (see `server::paging`). The shards answer their whole lists
//! (each bounded by the entry store's cap) and the page is cut here.

use crate::http::{Request, Response};
use crate::pairing::ops::{Op, Reply};
use crate::pairing::Entry;
use crate::server::common::{ask_all, unexpected, Answer};
use crate::server::paging::{item_json, page_req, page_response, time_key};
use crate::server::ShardCtx;

fn key(e: &Entry) -> String {
    time_key(e.created_at, &e.id.to_string())
}

/// The paged list of entries (pending only, or all).
pub async fn list_page(ctx: &ShardCtx, req: &Request, pending_only: bool) -> Answer<Response> {
    let page = page_req(req, &ctx.config.limits)?;
    let mut all: Vec<(String, Entry)> = Vec::new();
    for r in ask_all(ctx, |_| Op::EntryList(pending_only)).await? {
        match r {
            Reply::Entries(v) => all.extend(
                v.into_iter()
                    .map(|e| (key(&e), e))
                    .filter(|(k, _)| page.admits(k)),
            ),
            _ => return Ok(unexpected()),
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(page_response(
        &all,
        &page,
        &ctx.config.limits,
        |(k, _)| k.clone(),
        |(_, e)| item_json(e),
    ))
}

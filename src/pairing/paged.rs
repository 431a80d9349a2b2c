//! `GET /api/pairing/pending|all[?limit=N&cursor=C]`: one page of every shard's entries,
//! by `created_at` then id (see `shard::paging`). The shards answer their whole lists
//! (each bounded by the entry store's cap) and the page is cut here.

use super::ops::{Op, Reply};
use super::{Config, Entry};
use crate::shard::paging::{item_json, page_of, page_req, time_key, PageReq};
use crate::shard::{ask_all, Error, Outcome, Request, Shard};

fn key(e: &Entry) -> String {
    time_key(e.created_at, &e.id.to_string())
}

/// The paged list of entries (pending only, or all; an operator's route), with the
/// request's `limit` and `cursor` query values.
pub async fn list_page<S: Shard>(
    sh: &S,
    cfg: &Config,
    pending_only: bool,
    limit: Option<&str>,
    cursor: Option<&str>,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let page = page_req(limit, cursor, &cfg.pages)?;
    let mut all: Vec<(String, Entry)> = Vec::new();
    for r in ask_all(sh, |_| Op::EntryList(pending_only)).await? {
        match r {
            Reply::Entries(v) => all.extend(
                v.into_iter()
                    .map(|e| (key(&e), e))
                    .filter(|(k, _)| page.admits(k)),
            ),
            _ => {
                tracing::error!("unexpected reply from a pairing owner");
                return Err(Error::internal("internal error"));
            }
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(page_of(
        &all,
        &page,
        &cfg.pages,
        |(k, _)| k.clone(),
        |(_, e)| item_json(e),
    ))
}

/// One node's part of a page across a cluster: its entries after `page.after`, in
/// order, at most `page.limit + 1` of them, each with its sort key and its JSON.
pub async fn part<S: Shard>(
    sh: &S,
    pending_only: bool,
    page: &PageReq,
) -> Result<Vec<(String, Vec<u8>)>, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let mut all: Vec<(String, Entry)> = Vec::new();
    for r in ask_all(sh, |_| Op::EntryList(pending_only)).await? {
        match r {
            Reply::Entries(v) => all.extend(
                v.into_iter()
                    .map(|e| (key(&e), e))
                    .filter(|(k, _)| page.admits(k)),
            ),
            _ => {
                tracing::error!("unexpected reply from a pairing owner");
                return Err(Error::internal("internal error"));
            }
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.truncate(page.limit.saturating_add(1));
    Ok(all.into_iter().map(|(k, e)| (k, item_json(&e))).collect())
}

/// A page from the nodes' [`part`]s (each in order, each at most `limit + 1`).
pub fn page_from(cfg: &Config, page: &PageReq, parts: Vec<Vec<(String, Vec<u8>)>>) -> Outcome {
    let mut all: Vec<(String, Vec<u8>)> = parts.into_iter().flatten().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.dedup_by(|a, b| a.0 == b.0);
    page_of(
        &all,
        page,
        &cfg.pages,
        |(k, _)| k.clone(),
        |(_, j)| j.clone(),
    )
}

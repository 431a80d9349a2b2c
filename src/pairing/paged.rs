//! `GET /api/pairing/pending|all[?limit=N&cursor=C]`: one page of every shard's entries,
//! by `created_at` then id (see `shard::paging`). The shards answer their whole lists
//! (each bounded by the entry store's cap) and the page is cut here.

use super::ops::{Op, Reply};
use super::{Config, Entry};
use crate::shard::paging::{item_json, page_of, page_req, time_key};
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

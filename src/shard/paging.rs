//! Paged list routes: `?limit=N&cursor=C`, a stable order by a sort key, and a bounded
//! response. Sans-IO helpers shared by `GET /api/registry/agents`,
//! `/api/hub/tasks/all` and `/api/pairing/pending|all`; and filtered pages merged from
//! every shard's [`Part`] (the dashboard's lists).
//!
//! Each list has a sort key (a string whose byte order is the list's order: `agent_id`;
//! zero-padded `created_at` nanoseconds then the id). A cursor is the last returned
//! item's key, hex-encoded (opaque to clients, URL-safe); the next page starts strictly
//! after it, so items added or removed in between neither repeat nor shift a page.
//!
//! Without `limit` (the reference's unpaged call) a list answers the reference's shape,
//! a bare JSON array, as long as it fits one page (`--list-page-items-max` items and
//! `--list-response-bytes-max` bytes); beyond that it answers the first page and says
//! so with a next cursor (`x-next-cursor` on HTTP). A page ends early (with the header) rather than
//! queue more than `--list-response-bytes-max` bytes for one HTTP response.

use serde::Serialize;

use super::outcome::{Error, Outcome};
use crate::time::UnixTime;

/// How big one page may be (`--list-page-items-max`, `--list-response-bytes-max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimits {
    /// Most items one page returns (`limit` is clamped to it), and the most an unpaged
    /// call returns before it answers the first page with a next cursor.
    pub items_max: usize,
    /// Bytes of one page's JSON; a page stops early (with a next cursor) rather than
    /// queue more for one response.
    pub bytes_max: usize,
}

impl Default for PageLimits {
    fn default() -> Self {
        PageLimits {
            items_max: 1000,
            bytes_max: 4 * 1024 * 1024,
        }
    }
}

/// A page request: at most `limit` items whose key is above `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageReq {
    pub limit: usize,
    pub after: Option<String>,
}

impl PageReq {
    /// Whether `key` comes after the cursor.
    pub fn admits(&self, key: &str) -> bool {
        self.after.as_deref().is_none_or(|a| key > a)
    }
}

/// Parses `limit` (1 to `--list-page-items-max`; larger values are clamped) and
/// `cursor` (query parameters, already decoded); 400 for a malformed one.
pub fn page_req(
    limit: Option<&str>,
    cursor: Option<&str>,
    limits: &PageLimits,
) -> Result<PageReq, Error> {
    let max = limits.items_max.max(1);
    let limit = match limit {
        None => max,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(max),
            _ => {
                return Err(Error::bad_request(format!(
                    "invalid `limit` {s:?}: expected an integer from 1 to {max}"
                )))
            }
        },
    };
    let after = match cursor {
        None => None,
        Some("") => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| Error::bad_request("invalid cursor"))?),
    };
    Ok(PageReq { limit, after })
}

/// The sort key of an item listed by `created_at` then a tie-breaking id.
pub fn time_key(t: UnixTime, id: &str) -> String {
    format!("{:020}.{id}", t.0)
}

/// The cursor of the empty key (an agent may have the id `""`): hex would be the empty
/// string, which a client sends back as "no cursor", restarting at the first page.
const EMPTY_KEY_CURSOR: &str = "-";

/// The cursor of the item with sort key `key` (the next page starts after it).
pub fn encode_cursor(key: &str) -> String {
    if key.is_empty() {
        return EMPTY_KEY_CURSOR.to_owned();
    }
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(c: &str) -> Option<String> {
    if c == EMPTY_KEY_CURSOR {
        return Some(String::new());
    }
    if c.len() % 2 != 0 || c.len() > 4096 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// One page from `items`: sorted by `key`, already filtered to those after the cursor,
/// possibly more than a page (a shard gives up to `limit + 1`). Each item is serialized
/// with `ser`; the JSON array is cut at `limit` items or before passing
/// `limits.bytes_max` bytes (at least one item is always sent), with the next cursor
/// when anything was left.
pub fn page_of<T>(
    items: &[T],
    page: &PageReq,
    limits: &PageLimits,
    key: impl Fn(&T) -> String,
    ser: impl Fn(&T) -> Vec<u8>,
) -> Outcome {
    let mut body = Vec::from(&b"["[..]);
    let mut sent = 0;
    for item in items.iter().take(page.limit) {
        let one = ser(item);
        if sent > 0 && body.len() + one.len() + 2 > limits.bytes_max {
            break;
        }
        if sent > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&one);
        sent += 1;
    }
    body.push(b']');
    let next = match items.get(sent) {
        Some(_) if sent > 0 => Some(encode_cursor(&key(&items[sent - 1]))),
        _ => None,
    };
    Outcome::Page { json: body, next }
}

/// Serializes one list item (compact JSON, as in an array).
pub fn item_json<T: Serialize>(item: &T) -> Vec<u8> {
    wire::json::json_vec(item)
}

/// One shard's part of a filtered, sorted page (the dashboard's lists: agents by a sort
/// key, tasks newest first): the owner filters and sorts what it holds and sends at most
/// `limit` rows; the asking shard merges the parts ([`merge_parts`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Part<R> {
    /// Matching records on this shard (whatever the cursor).
    pub total: usize,
    /// Matching records after the cursor.
    pub after: usize,
    /// The first `limit` of them, in page order.
    pub rows: Vec<R>,
}

impl<R> Default for Part<R> {
    fn default() -> Self {
        Part {
            total: 0,
            after: 0,
            rows: Vec::new(),
        }
    }
}

/// A page merged from every shard's [`Part`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Page<R> {
    pub items: Vec<R>,
    /// Matching records on all shards.
    pub total: usize,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Merges the shards' parts into one page of at most `limit` rows in `order`; the next
/// cursor (`cursor_of` the last row) when more matched after the cursor than the page
/// holds.
pub fn merge_parts<R>(
    parts: Vec<Part<R>>,
    limit: usize,
    order: impl Fn(&R, &R) -> std::cmp::Ordering,
    cursor_of: impl Fn(&R) -> String,
) -> Page<R> {
    let total = parts.iter().map(|p| p.total).sum();
    let after: usize = parts.iter().map(|p| p.after).sum();
    let mut items: Vec<R> = parts.into_iter().flat_map(|p| p.rows).collect();
    items.sort_by(&order);
    items.truncate(limit);
    let next_cursor = (after > items.len())
        .then(|| items.last().map(&cursor_of))
        .flatten();
    Page {
        items,
        total,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order() {
        let k = time_key(UnixTime(5), "ab-1");
        assert_eq!(
            decode_cursor(&encode_cursor(&k)).as_deref(),
            Some(k.as_str())
        );
        assert!(time_key(UnixTime(9), "z") < time_key(UnixTime(10), "a"));
        assert_eq!(decode_cursor("zz"), None);
        // The empty key (agent id `""`) has a cursor of its own, never the empty string
        // (which means "first page"), and a page starts after it.
        assert_eq!(encode_cursor(""), "-");
        assert_eq!(decode_cursor(&encode_cursor("")).as_deref(), Some(""));
        let after_empty = PageReq {
            limit: 1,
            after: decode_cursor("-"),
        };
        assert!(!after_empty.admits("") && after_empty.admits("\0"));
        assert_eq!(decode_cursor("abc"), None);
        let p = PageReq {
            limit: 2,
            after: Some("b".into()),
        };
        assert!(p.admits("c") && !p.admits("b"));
    }

    fn body(r: &Outcome) -> &[u8] {
        match r {
            Outcome::Page { json, .. } => json,
            other => panic!("{other:?}"),
        }
    }

    fn next(r: &Outcome) -> Option<String> {
        match r {
            Outcome::Page { next, .. } => next.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pages_by_count_and_bytes() {
        let limits = PageLimits {
            bytes_max: 12,
            ..PageLimits::default()
        };
        let items: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let page = PageReq {
            limit: 2,
            after: None,
        };
        let r = page_of(
            &items,
            &page,
            &PageLimits::default(),
            |s| s.clone(),
            item_json,
        );
        assert_eq!(body(&r), br#"["a","b"]"#);
        assert_eq!(decode_cursor(&next(&r).unwrap()).as_deref(), Some("b"));
        let r = page_of(
            &items[..2],
            &page,
            &PageLimits::default(),
            |s| s.clone(),
            item_json,
        );
        assert!(next(&r).is_none());
        // 12 bytes hold `["a","b"]` (9) but not a third item; the first always goes.
        let page = PageReq {
            limit: 10,
            after: None,
        };
        let r = page_of(&items, &page, &limits, |s| s.clone(), item_json);
        assert_eq!(body(&r), br#"["a","b"]"#);
        let one = PageLimits {
            bytes_max: 1,
            ..PageLimits::default()
        };
        let r = page_of(&items, &page, &one, |s| s.clone(), item_json);
        assert_eq!(body(&r), br#"["a"]"#);
        // A page that ends at the empty key says so with a cursor a client can send back.
        let items: Vec<String> = vec![String::new(), "a".into()];
        let page = PageReq {
            limit: 1,
            after: None,
        };
        let r = page_of(&items, &page, &limits, |s| s.clone(), item_json);
        assert_eq!(next(&r).as_deref(), Some("-"));
    }
}

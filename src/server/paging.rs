//! TRANSITIONAL (issue 21): HTTP adapters over `shard::paging` for the services not yet
//! converted to typed outcomes; removed with them.
#![allow(dead_code)]

use crate::http::{Request, Response};
use crate::limits::StoreLimits;
use crate::server::common::Answer;
pub use crate::shard::paging::{item_json, time_key, PageLimits, PageReq};

pub use crate::server::respond::NEXT_CURSOR_HEADER;

fn limits(l: &StoreLimits) -> PageLimits {
    PageLimits {
        items_max: l.list_page_items_max,
        bytes_max: l.list_response_bytes_max,
    }
}

/// `limit` and `cursor` of `req`; 400 for a malformed one.
pub fn page_req(req: &Request, l: &StoreLimits) -> Answer<PageReq> {
    let limit = req.query_param("limit");
    let cursor = req.query_param("cursor");
    crate::shard::paging::page_req(limit.as_deref(), cursor.as_deref(), &limits(l))
        .map_err(Response::from)
}

/// One page as a response (see `shard::paging::page_of`).
pub fn page_response<T>(
    items: &[T],
    page: &PageReq,
    l: &StoreLimits,
    key: impl Fn(&T) -> String,
    ser: impl Fn(&T) -> Vec<u8>,
) -> Response {
    crate::shard::paging::page_of(items, page, &limits(l), key, ser).into()
}

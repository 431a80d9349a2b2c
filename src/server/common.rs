//! Helpers shared by the services' HTTP handlers: JSON bodies, asking owners (typed:
//! each request gets its service's reply), randomness, path parameters.

use reactor::{AskError, ShardId};

use crate::http::{Request, Response};
use crate::server::msg::ShardRequest;
use crate::server::{Msg, ShardCtx};
use wire::json::{parse_body, JsonBody};

/// A handler's early exit: the response to send.
pub type Answer<T> = Result<T, Response>;

/// The JSON body of `req` as `T`: 415 without `Content-Type: application/json`, 400 for
/// malformed JSON, 422 for a missing field or a wrong type.
pub fn json_body<T: JsonBody>(req: &Request) -> Answer<T> {
    if !req.content_type_is_json() {
        return Err(Response::error(
            415,
            "expected request with `Content-Type: application/json`",
        ));
    }
    parse_body::<T>(&req.body).map_err(|e| Response::error(e.status(), e.response_text()))
}

fn ask_error(to: ShardId, e: AskError<Msg>) -> Response {
    match e {
        AskError::Full(_) => {
            Response::error(503, format!("shard {to} is overloaded (mailbox full)"))
        }
        AskError::NoReply => Response::error(500, format!("shard {to} gave no reply")),
    }
}

/// Asks the owner shard `to`; a full mailbox is 503.
pub async fn ask<R: ShardRequest<Msg>>(ctx: &ShardCtx, to: ShardId, req: R) -> Answer<R::Reply> {
    let msg = ctx
        .shard
        .ask(to, req.into_msg())
        .await
        .map_err(|e| ask_error(to, e))?;
    R::reply(msg).ok_or_else(unexpected)
}

/// Asks the owner of `key`.
pub async fn ask_owner<R: ShardRequest<Msg>>(
    ctx: &ShardCtx,
    key: &str,
    req: R,
) -> Answer<R::Reply> {
    ask(ctx, ctx.shard.shard_of(key), req).await
}

/// Asks every shard (`make(shard)`), replies in shard order; any failure is the answer.
pub async fn ask_all<R: ShardRequest<Msg>>(
    ctx: &ShardCtx,
    make: impl Fn(ShardId) -> R,
) -> Answer<Vec<R::Reply>> {
    let replies = ctx.shard.ask_all(|s| make(s).into_msg()).await;
    let mut out = Vec::with_capacity(replies.len());
    for (i, r) in replies.into_iter().enumerate() {
        let msg = r.map_err(|e| ask_error(i, e))?;
        out.push(R::reply(msg).ok_or_else(unexpected)?);
    }
    Ok(out)
}

/// The answer to an owner's reply of an unexpected kind (a bug, never input-driven).
pub fn unexpected() -> Response {
    tracing::error!("unexpected reply from an owner shard");
    Response::error(500, "internal error")
}

/// `N` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Answer<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|e| {
        tracing::error!(error = %e, "getrandom failed");
        Response::error(500, "no randomness available")
    })?;
    Ok(buf)
}

/// Fills `buf` from the OS (for the modules' `Rng` closures); on failure the buffer is
/// left as is and the error is reported by the caller through [`random_bytes`] first.
pub fn fill_random(buf: &mut [u8]) {
    if getrandom::getrandom(buf).is_err() {
        tracing::error!("getrandom failed");
    }
}

/// A path segment, percent-decoded (as axum's `Path` does). Invalid escapes or UTF-8 → 400.
pub fn path_param(raw: &str) -> Answer<String> {
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    // The crate keeps a `%` without two hex digits as it is; this API refuses it.
    let bytes = raw.as_bytes();
    let escapes_valid = bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'%')
        .all(|(i, _)| {
            bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
    if !escapes_valid {
        return Err(Response::error(400, "invalid percent-encoding in path"));
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Response::error(400, "path is not valid UTF-8"))
}

/// A pre-serialized JSON body with status 200.
pub fn ok_json(body: Vec<u8>) -> Response {
    Response::json_bytes(200, body)
}

/// `{"status":"ok"}`.
pub fn ok_status() -> Response {
    Response::json_static(200, crate::registry::OK_BODY.as_bytes())
}

/// `{"error":"not found"}` with status 200 (registry and task routes).
pub fn not_found_200() -> Response {
    Response::json_bytes(200, crate::registry::NOT_FOUND_BODY.as_bytes().to_vec())
}

/// The credentials `req` presents (`Authorization`, `X-API-Key`), for auth's workflows.
pub fn presented(req: &Request) -> crate::auth::Presented<'_> {
    crate::auth::Presented {
        authorization: req.header("authorization"),
        api_key: req.header("x-api-key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_are_percent_decoded() {
        assert_eq!(path_param("abc").unwrap(), "abc");
        assert_eq!(path_param("a%20b%2Fc").unwrap(), "a b/c");
        assert_eq!(path_param("%C3%A9").unwrap(), "é");
        for bad in ["%", "%4", "%zz", "a%2", "%%41"] {
            assert_eq!(path_param(bad).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(path_param("%FF").unwrap_err().status, 400);
    }
}

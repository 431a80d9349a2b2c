//! Helpers shared by the HTTP handlers: JSON bodies, asking owners, randomness.

use reactor::{AskError, ShardId};

use crate::http::{Request, Response};
use wire::json::{parse_body, JsonBody};
use crate::server::{Msg, ShardCtx};

/// A handler's early exit: the response to send.
pub type Reply<T> = Result<T, Response>;

/// The JSON body of `req` as `T`: 415 without `Content-Type: application/json`, 400 for
/// malformed JSON, 422 for a missing field or a wrong type.
pub fn json_body<T: JsonBody>(req: &Request) -> Reply<T> {
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
pub async fn ask(ctx: &ShardCtx, to: ShardId, msg: Msg) -> Reply<Msg> {
    ctx.shard.ask(to, msg).await.map_err(|e| ask_error(to, e))
}

/// Asks the owner of `key`.
pub async fn ask_owner(ctx: &ShardCtx, key: &str, msg: Msg) -> Reply<Msg> {
    ask(ctx, ctx.shard.shard_of(key), msg).await
}

/// Asks every shard (`make(shard)`), replies in shard order; any failure is the answer.
pub async fn ask_all(ctx: &ShardCtx, make: impl Fn(ShardId) -> Msg) -> Reply<Vec<Msg>> {
    let replies = ctx.shard.ask_all(make).await;
    let mut out = Vec::with_capacity(replies.len());
    for (i, r) in replies.into_iter().enumerate() {
        out.push(r.map_err(|e| ask_error(i, e))?);
    }
    Ok(out)
}

/// The answer to an owner's reply of an unexpected kind (a bug, never input-driven).
pub fn unexpected() -> Response {
    tracing::error!("unexpected reply from an owner shard");
    Response::error(500, "internal error")
}

/// `N` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Reply<[u8; N]> {
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
pub fn path_param(raw: &str) -> Reply<String> {
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => return Err(Response::error(400, "invalid percent-encoding in path")),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Response::error(400, "path is not valid UTF-8"))
}

/// A pre-serialized JSON body with status 200.
pub fn ok_json(body: Vec<u8>) -> Response {
    Response::json_bytes(200, body)
}

/// `{"status":"ok"}`.
pub fn ok_status() -> Response {
    Response::json_bytes(200, crate::registry::OK_BODY.as_bytes().to_vec())
}

/// `{"error":"not found"}` with status 200 (registry and task routes).
pub fn not_found_200() -> Response {
    Response::json_bytes(200, crate::registry::NOT_FOUND_BODY.as_bytes().to_vec())
}

/// Tries to reach a shard before giving up on a full mailbox: for the follow-up steps of
/// an operation already applied elsewhere (revoking a token after its entry), which
/// should not be left half done because of a burst.
pub async fn ask_owner_retry(ctx: &ShardCtx, key: &str, make: impl Fn() -> Msg) -> Reply<Msg> {
    const TRIES: usize = 200;
    const BACKOFF: std::time::Duration = std::time::Duration::from_millis(5);
    let to = ctx.shard.shard_of(key);
    for _ in 0..TRIES {
        match ctx.shard.ask(to, make()).await {
            Ok(m) => return Ok(m),
            Err(AskError::Full(_)) => monoio::time::sleep(BACKOFF).await,
            Err(e) => return Err(ask_error(to, e)),
        }
    }
    Err(ask_error(to, AskError::Full(make())))
}

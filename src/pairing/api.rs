//! `/api/pairing/*`: codes on `shard_of(code)`, entries on `shard_of(entry id)`, device
//! tokens on `shard_of(token)`, approved peers on `shard_of(peer_id)`, rate-limit buckets
//! on `shard_of(client ip)`. Random keys are drawn here, before routing.

use std::net::IpAddr;

use crate::auth::header_value_str;
use crate::auth::ops::{Op as TokenOp, Reply as TokenReply};
use crate::http::{Request, Response};
use crate::pairing::ops::{Op, Reply};
use crate::pairing::{
    new_peer_id, ActionError, Code, CodeStore, Entry, EntryId, GenerateCodeResponse, Issuer,
    OkBody, PairError, PairRequest, PairingStore,
};
use crate::server::common::{
    ask_all, ask_owner, ask_owner_retry, fill_random, json_body, random_bytes, unexpected, Answer,
};
use crate::server::ShardCtx;
use crate::signaling::ops::{Op as AuthzOp, Reply as AuthzReply};

fn pair_error(e: PairError) -> Response {
    Response::json(e.status(), &e.body())
}

fn action_error(e: ActionError) -> Response {
    Response::json(e.status(), &e.body())
}

/// `POST /api/pairing/generate-code`: needs the `X-API-Key` of a known key.
pub async fn generate_code(ctx: &ShardCtx, req: &Request) -> Answer<Response> {
    let entry = req
        .header("x-api-key")
        .and_then(|v| header_value_str(v.as_bytes()))
        .and_then(|k| ctx.config.api_keys.lookup(k));
    let Some(entry) = entry else {
        return Ok(Response::new(401));
    };
    let issuer = Issuer {
        peer_id: entry.peer_id.clone(),
        mesh: entry.mesh.clone(),
    };
    for _ in 0..CodeStore::GENERATE_TRIES_MAX {
        random_bytes::<1>()?;
        let code = Code::random(&mut fill_random);
        let key = code.to_string();
        match ask_owner(ctx, &key, Op::CodeInsert(Box::new((code, issuer.clone())))).await? {
            Reply::Done => return Ok(Response::json(200, &GenerateCodeResponse::new(code))),
            Reply::InUse => continue,
            Reply::Full => return Ok(Response::error(503, "too many live invite codes")),
            Reply::Quota(n) => {
                return Ok(Response::error(
                    429,
                    format!(
                        "this API key holds {n} live invite codes on this shard, its quota \
                         (--pair-codes-per-key-max); wait for some to be used or expire"
                    ),
                ))
            }
            _ => return Ok(unexpected()),
        }
    }
    Ok(Response::error(503, "too many live invite codes"))
}

/// `POST /api/pairing/pair`, in the reference's order: body, rate limit, code format,
/// agent name, redeem, create.
pub async fn pair(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Response> {
    let body: PairRequest = json_body(req)?;
    let ip_key = client.to_string();
    match ask_owner(ctx, &ip_key, Op::RateCheck(Box::new(client))).await? {
        Reply::Allowed(true) => {}
        Reply::Allowed(false) => return Ok(pair_error(PairError::RateLimited)),
        _ => return Ok(unexpected()),
    }
    let valid = match body.validate() {
        Ok(v) => v,
        Err(e) => return Ok(pair_error(e)),
    };
    let code_key = valid.code.to_string();
    let issuer = match ask_owner(ctx, &code_key, Op::CodeRedeem(valid.code)).await? {
        Reply::Issuer(Some(i)) => *i,
        Reply::Issuer(None) => return Ok(pair_error(PairError::InvalidCode)),
        Reply::Throttled(secs) => {
            return Ok(Response::error(
                429,
                format!(
                    "too many wrong pairing codes were tried on this server recently; \
                     try again in {secs} s"
                ),
            )
            .with_header("retry-after", secs.to_string()))
        }
        _ => return Ok(unexpected()),
    };
    for _ in 0..PairingStore::CREATE_TRIES_MAX {
        random_bytes::<1>()?;
        let id = EntryId::random(&mut fill_random);
        let peer_id = new_peer_id(&mut fill_random);
        let op = Op::EntryCreate(Box::new((
            id,
            peer_id,
            valid.agent_name.to_owned(),
            issuer.clone(),
        )));
        match ask_owner(ctx, &id.to_string(), op).await? {
            Reply::Entry(e) => return Ok(Response::json(200, &e.pair_response())),
            Reply::InUse => continue,
            Reply::Full => return Ok(pair_error(PairError::StoreFull)),
            _ => return Ok(unexpected()),
        }
    }
    Ok(pair_error(PairError::StoreFull))
}

/// `GET /api/pairing/pending` and `/all`: every shard's entries, oldest first.
pub async fn list(ctx: &ShardCtx, pending_only: bool) -> Answer<Response> {
    let mut all: Vec<Entry> = Vec::new();
    for r in ask_all(ctx, |_| Op::EntryList(pending_only)).await? {
        match r {
            Reply::Entries(v) => all.extend(*v),
            _ => return Ok(unexpected()),
        }
    }
    all.sort_by_key(|e| (e.created_at, e.id));
    Ok(Response::json(200, &all))
}

/// The entry id of the path, or the action's 404.
fn entry_id(raw: &str, err: ActionError) -> Answer<EntryId> {
    EntryId::parse(raw).ok_or_else(|| action_error(err))
}

/// `POST /api/pairing/{id}/approve`: approve on the entry's shard (with a device token
/// drawn here), index the token on `shard_of(token)`, authorize the peer on
/// `shard_of(peer_id)`.
pub async fn approve(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let not_pending = ActionError::NotFoundOrNotPending;
    let id = entry_id(raw_id, not_pending)?;
    let bytes = random_bytes::<16>()?;
    let entry = match ask_owner(
        ctx,
        &id.to_string(),
        Op::EntryApprove(Box::new((id, bytes))),
    )
    .await?
    {
        Reply::Entry(e) => e,
        Reply::NotFound => return Ok(action_error(not_pending)),
        _ => return Ok(unexpected()),
    };
    let Some(grant) = entry.device_grant() else {
        return Ok(unexpected());
    };
    let token = entry.device_token.clone();
    let indexed = ask_owner(
        ctx,
        &token,
        TokenOp::Insert(Box::new((token.clone(), grant))),
    )
    .await;
    let authorized = match &indexed {
        Ok(TokenReply::Done) => {
            ask_owner(
                ctx,
                &entry.peer_id,
                AuthzOp::PeerAuthorize(Box::new((entry.peer_id.clone(), entry.mesh.clone()))),
            )
            .await
        }
        Ok(_) => Ok(AuthzReply::Full),
        Err(_) => Ok(AuthzReply::Full),
    };
    if !matches!(authorized, Ok(AuthzReply::Done)) {
        // The token does not work (128 random bits already indexed, an index at its
        // limit, or a full mailbox): withdraw the approval so no entry claims a token
        // that grants nothing: the entry goes back to pending, so the admin can retry.
        if matches!(indexed, Ok(TokenReply::Done)) {
            let _ = ask_owner_retry(ctx, &token, || TokenOp::Remove(Box::new(token.clone()))).await;
        }
        let _ = ask_owner_retry(ctx, &id.to_string(), || Op::EntryWithdraw(id)).await;
        return Ok(Response::error(
            503,
            "could not activate the device token; try again later",
        ));
    }
    Ok(Response::json(200, &entry.approve_response()))
}

/// `POST /api/pairing/{id}/reject`.
pub async fn reject(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let err = ActionError::NotFoundOrNotPending;
    let id = entry_id(raw_id, err)?;
    match ask_owner(ctx, &id.to_string(), Op::EntryReject(id)).await? {
        Reply::Entry(_) => Ok(Response::json(200, &OkBody::OK)),
        Reply::NotFound => Ok(action_error(err)),
        _ => Ok(unexpected()),
    }
}

/// `POST /api/pairing/{id}/revoke`: the entry, then its token and its peer's
/// authorization.
pub async fn revoke(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let err = ActionError::NotFoundOrNotApproved;
    let id = entry_id(raw_id, err)?;
    let entry = match ask_owner(ctx, &id.to_string(), Op::EntryRevoke(id)).await? {
        Reply::Entry(e) => e,
        Reply::NotFound => return Ok(action_error(err)),
        _ => return Ok(unexpected()),
    };
    // Both follow-ups are attempted whatever the other's outcome (the entry is already
    // revoked, so an admin's retry would find nothing to do): the peer's authorization
    // first, since that closes its live signaling connections.
    let peer = entry.peer_id.as_str();
    let deauthorized = ask_owner_retry(ctx, peer, || {
        AuthzOp::PeerDeauthorize(Box::new(peer.to_owned()))
    })
    .await;
    let token = entry.device_token.as_str();
    let removed = ask_owner_retry(ctx, token, || TokenOp::Remove(Box::new(token.to_owned()))).await;
    if let Err(resp) = deauthorized.map(drop).and(removed.map(drop)) {
        tracing::error!(entry = %id, "revocation applied to the entry but not fully propagated (mailboxes full)");
        return Err(resp);
    }
    Ok(Response::json(200, &OkBody::OK))
}

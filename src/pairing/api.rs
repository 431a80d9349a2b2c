//! `/api/pairing/*`: codes on `shard_of(code)`, entries on `shard_of(entry id)`, device
//! tokens on `shard_of(token)`, approved peers on `shard_of(peer_id)`, rate-limit buckets
//! and daily wrong-code budgets on `shard_of(client key)` (`limits::client_key`: the
//! IPv4 address, or the IPv6 /64). Random keys are drawn here, before routing.
//!
//! Durable (issue 10): each change is applied on its owner (the entry flagged `saving`),
//! committed to the store from here, and answered 2xx only once acknowledged; otherwise
//! it is undone on its owner and answered 503.

use std::net::IpAddr;

use crate::auth::budget::failed;
use crate::auth::failures::Failure;
use crate::auth::header_value_str;
use crate::auth::ops::{Op as TokenOp, Reply as TokenReply};
use crate::durable::{entry_record, invite_record, token_key, token_record};
use crate::http::{Request, Response};
use crate::pairing::ops::{Op, Reply};
use crate::pairing::{
    hex_lower, new_peer_id, ActionError, Code, CodeStore, Entry, EntryId, GenerateCodeResponse,
    Issuer, OkBody, PairError, PairRequest, PairingStore, Status,
};
use crate::server::common::{
    ask_all, ask_owner, ask_owner_retry, fill_random, json_body, random_bytes, unexpected, Answer,
};
use crate::server::{Saved, ShardCtx};
use crate::signaling::ops::{Op as AuthzOp, Reply as AuthzReply};
use chatixia_store::{HashKind, Mutation, RevocationRecord};

fn pair_error(e: PairError) -> Response {
    Response::json(e.status(), &e.body())
}

fn action_error(e: ActionError) -> Response {
    Response::json(e.status(), &e.body())
}

fn busy() -> Response {
    Response::error(409, "a change to this entry is being saved; retry")
}

/// Asks the entry's owner until the message is delivered: a follow-up of a change that
/// is already decided (saved or refused by the store) must not be dropped because of a
/// burst, or the entry would stay flagged `saving` (or hold an unsaved state). Waiting
/// on a full mailbox is the backpressure.
async fn tell_entry_owner(ctx: &ShardCtx, id: EntryId, make: impl Fn() -> Op) {
    const BACKOFF: std::time::Duration = std::time::Duration::from_millis(5);
    let to = ctx.shard.shard_of(id.to_string());
    loop {
        match ctx.shard.ask(to, crate::server::Msg::Pairing(make())).await {
            Ok(_) => return,
            Err(reactor::AskError::Full(_)) => monoio::time::sleep(BACKOFF).await,
            Err(reactor::AskError::NoReply) => {
                tracing::error!(entry = %id, "entry owner gave no reply to a follow-up");
                return;
            }
        }
    }
}

/// Clears the entry's `saving` flag after its change was acknowledged.
async fn saved(ctx: &ShardCtx, id: EntryId) {
    tell_entry_owner(ctx, id, || Op::EntrySaved(id)).await
}

/// Puts the entry back as it was after a change the store did not acknowledge.
async fn restore(ctx: &ShardCtx, id: EntryId, before: Option<Entry>) {
    tell_entry_owner(ctx, id, || Op::EntryRestore(Box::new((id, before.clone())))).await
}

/// `POST /api/pairing/generate-code`: needs the `X-API-Key` of a known key (an unknown
/// one counts against `client`'s failure budget).
pub async fn generate_code(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Response> {
    let key = req
        .header("x-api-key")
        .and_then(|v| header_value_str(v.as_bytes()));
    let Some(entry) = key.and_then(|k| ctx.config.api_keys.lookup(k)) else {
        // Any key sent that is no known key (also one that is not text) is a wrong one.
        if req.header("x-api-key").is_some() {
            failed(ctx, client, Failure::GenerateCode);
        }
        return Ok(Response::new(401));
    };
    let issuer = Issuer {
        peer_id: entry.peer_id.clone(),
        mesh: entry.mesh.clone(),
    };
    issue_code(ctx, issuer).await
}

/// Draws a new invite code for `issuer`, stores it on its owner shard and makes it
/// durable before answering (`generate-code` and the dashboard's invite share it).
pub async fn issue_code(ctx: &ShardCtx, issuer: Issuer) -> Answer<Response> {
    for _ in 0..CodeStore::GENERATE_TRIES_MAX {
        random_bytes::<1>()?;
        let code = Code::random(&mut fill_random, ctx.config.limits.pair_guard.code_format);
        let key = code.to_string();
        match ask_owner(ctx, &key, Op::CodeInsert(Box::new((code, issuer.clone())))).await? {
            Reply::CodeStored(expires_at) => {
                let put = Mutation::PutInvite(invite_record(code, &issuer, expires_at));
                if let Err(resp) = ctx.commit(vec![put]).await {
                    let _ = ask_owner_retry(ctx, &key, || Op::CodeRemove(code)).await;
                    return Err(resp);
                }
                return Ok(Response::json(200, &GenerateCodeResponse::new(code)));
            }
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
/// agent name, then (issue 20) the client key's daily budget of wrong codes, redeem,
/// create. The answer adds `claim_secret` (issue 10), the device's bearer secret for
/// `GET /api/pairing/{id}/status`.
pub async fn pair(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Response> {
    // `["123456","name"]` would otherwise be read as the object, field by field.
    crate::limits::require_object(&req.body)?;
    let body: PairRequest = json_body(req)?;
    // Validated before the rate check (pure), answered after it (the reference's order):
    // only a well-formed request reserves one wrong code of the daily budget, in the
    // same message.
    let validated = body.validate();
    let client_key = crate::limits::client_key(client);
    let check = Op::RateCheck(Box::new((client, validated.is_ok())));
    match ask_owner(ctx, &client_key, check).await? {
        Reply::Allowed(true) => {}
        Reply::Allowed(false) => return Ok(pair_error(PairError::RateLimited)),
        Reply::Spent(secs) => {
            let max = ctx.config.limits.pair_guard.wrong_per_address_max;
            return Ok(Response::error(
                429,
                format!(
                    "this address tried {max} wrong pairing codes within 24 h, its limit \
                     (--pair-wrong-guesses-per-address-max); try again in {secs} s"
                ),
            )
            .with_header("retry-after", secs.to_string()));
        }
        _ => return Ok(unexpected()),
    }
    let valid = match validated {
        Ok(v) => v,
        Err(e) => return Ok(pair_error(e)),
    };
    crate::limits::check_printable("agent_name", valid.agent_name)?;
    let code = valid.code;
    let code_key = code.to_string();
    let (issuer, expires_at) = match ask_owner(ctx, &code_key, Op::CodeRedeem(code)).await? {
        Reply::Redeemed(Some(b)) => {
            // A right code is not a wrong guess: give the reservation back (best
            // effort: a full mailbox only leaves one count in the budget).
            let _ = ask_owner(ctx, &client_key, Op::GuessRefund(Box::new(client))).await;
            *b
        }
        Reply::Redeemed(None) => return Ok(pair_error(PairError::InvalidCode)),
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
    let put_code_back = || async {
        let _ = ask_owner_retry(ctx, &code_key, || {
            Op::CodeRestore(Box::new((code, issuer.clone(), expires_at)))
        })
        .await;
    };
    let claim_secret = format!("cs_{}", hex_lower(&random_bytes::<16>()?));
    let claim_hash = ctx
        .config
        .secrets
        .token_hash(HashKind::ClaimSecret, &claim_secret);
    for _ in 0..PairingStore::CREATE_TRIES_MAX {
        random_bytes::<1>()?;
        let id = EntryId::random(&mut fill_random);
        let peer_id = new_peer_id(&mut fill_random);
        let op = Op::EntryCreate(Box::new((
            id,
            peer_id,
            valid.agent_name.to_owned(),
            issuer.clone(),
            claim_hash,
        )));
        match ask_owner(ctx, &id.to_string(), op).await? {
            Reply::Entry(e) => {
                let write = vec![
                    Mutation::DeleteInvite(code.store_key()),
                    Mutation::PutPairing(entry_record(&e, &ctx.config.secrets)),
                ];
                if let Err(resp) = ctx.commit(write).await {
                    restore(ctx, id, None).await;
                    put_code_back().await;
                    return Err(resp);
                }
                saved(ctx, id).await;
                let mut body = serde_json::to_value(e.pair_response()).unwrap_or_default();
                body["claim_secret"] = serde_json::Value::String(claim_secret);
                return Ok(Response::json(200, &body));
            }
            Reply::InUse => continue,
            Reply::Full => {
                put_code_back().await;
                return Ok(pair_error(PairError::StoreFull));
            }
            _ => return Ok(unexpected()),
        }
    }
    put_code_back().await;
    Ok(pair_error(PairError::StoreFull))
}

/// `GET /api/pairing/pending` and `/all`: every shard's entries, oldest first (never
/// with device tokens).
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

/// `(before, after)` of a transition on the entry's owner, or the answer.
async fn transition(
    ctx: &ShardCtx,
    id: EntryId,
    op: Op,
    err: ActionError,
) -> Answer<(Entry, Entry)> {
    match ask_owner(ctx, &id.to_string(), op).await? {
        Reply::Changed(b) => Ok(*b),
        Reply::NotFound => Err(action_error(err)),
        Reply::Busy => Err(busy()),
        _ => Err(unexpected()),
    }
}

/// `POST /api/pairing/{id}/approve`: approve on the entry's shard (with a device token
/// drawn here), index the token (by its keyed hash) on `shard_of(hash)`, authorize the
/// peer on `shard_of(peer_id)`, commit the entry and the token grant; 200 once durable.
pub async fn approve(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let not_pending = ActionError::NotFoundOrNotPending;
    let id = entry_id(raw_id, not_pending)?;
    let token = format!("dt_{}", hex_lower(&random_bytes::<16>()?));
    let hash = ctx.config.secrets.token_hash(HashKind::DeviceToken, &token);
    let key = token_key(&hash);
    let op = Op::EntryApprove(Box::new((id, token, hash)));
    let (before, entry) = transition(ctx, id, op, not_pending).await?;
    let Some(grant) = entry.device_grant() else {
        restore(ctx, id, Some(before)).await;
        return Ok(unexpected());
    };
    let indexed = ask_owner(
        ctx,
        &key,
        TokenOp::Insert(Box::new((key.clone(), grant.clone()))),
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
        Ok(_) | Err(_) => Ok(AuthzReply::Full),
    };
    let activated = matches!(authorized, Ok(AuthzReply::Done));
    let committed = if activated {
        let write = vec![
            Mutation::PutPairing(entry_record(&entry, &ctx.config.secrets)),
            Mutation::PutDeviceToken(token_record(hash, &grant)),
        ];
        ctx.commit(write).await
    } else {
        Err(Response::error(
            503,
            "could not activate the device token; try again later",
        ))
    };
    if let Err(resp) = committed {
        // Not acknowledged: the token must not work and the entry goes back to pending,
        // so the admin can retry.
        if activated {
            let peer = entry.peer_id.as_str();
            let _ = ask_owner_retry(ctx, peer, || {
                AuthzOp::PeerDeauthorize(Box::new(peer.to_owned()))
            })
            .await;
        }
        if matches!(indexed, Ok(TokenReply::Done)) {
            let _ = ask_owner_retry(ctx, &key, || TokenOp::Remove(Box::new(key.clone()))).await;
        }
        restore(ctx, id, Some(before)).await;
        return Err(resp);
    }
    saved(ctx, id).await;
    Ok(Response::json(200, &entry.approve_response()))
}

/// `POST /api/pairing/{id}/reject`.
pub async fn reject(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let err = ActionError::NotFoundOrNotPending;
    let id = entry_id(raw_id, err)?;
    let (before, after) = transition(ctx, id, Op::EntryReject(id), err).await?;
    let write = vec![Mutation::PutPairing(entry_record(
        &after,
        &ctx.config.secrets,
    ))];
    if let Err(resp) = ctx.commit(write).await {
        restore(ctx, id, Some(before)).await;
        return Err(resp);
    }
    saved(ctx, id).await;
    Ok(Response::json(200, &OkBody::OK))
}

/// `POST /api/pairing/{id}/revoke`: the entry, its token grant and the peer's
/// revocation are committed; then the token stops working and the peer's live
/// connections are closed (4001).
///
/// Fails closed (issue 22): the token stops working and the connections close whatever
/// the store answers. Saved → 200. The store is unavailable (disk full, read-only) → the
/// revocation is kept and written once it recovers → 202 `{"ok":true,"saved":false,…}`
/// (a restart before then loses it). Not kept either (the store's queue is full, or
/// `--store-retained-writes-max` revocations already wait) → the entry goes back to
/// `approved` so the revocation can be repeated, its token still refused until a restart,
/// and 503 saying so.
pub async fn revoke(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let err = ActionError::NotFoundOrNotApproved;
    let id = entry_id(raw_id, err)?;
    let (before, entry) = transition(ctx, id, Op::EntryRevoke(id), err).await?;
    let mut write = vec![
        Mutation::PutPairing(entry_record(&entry, &ctx.config.secrets)),
        Mutation::PutRevocation(RevocationRecord {
            peer_id: entry.peer_id.clone(),
            not_before_secs: ctx.now().as_secs(),
            entry_id: Some(id.value()),
        }),
    ];
    if let Some(hash) = entry.token_hash {
        write.push(Mutation::DeleteDeviceToken(hash));
    }
    let committed = ctx.commit_retained(write).await;
    match &committed {
        Ok(_) => saved(ctx, id).await,
        // Not kept for the store: the entry stays approved there, so it does here too
        // (and the revocation can be repeated); the token is refused below all the same.
        Err(_) => restore(ctx, id, Some(before)).await,
    }
    // Both follow-ups are attempted whatever the other's outcome: the peer's
    // authorization first, since that closes its live signaling connections.
    let peer = entry.peer_id.as_str();
    let deauthorized = ask_owner_retry(ctx, peer, || {
        AuthzOp::PeerDeauthorize(Box::new(peer.to_owned()))
    })
    .await;
    let removed = match entry.token_hash {
        Some(hash) => {
            let key = token_key(&hash);
            ask_owner_retry(ctx, &key, || TokenOp::Remove(Box::new(key.clone())))
                .await
                .map(drop)
        }
        None => Ok(()),
    };
    // Its TURN allocations, wherever they are (every shard; crate::turn::revoke).
    crate::turn::revoke(ctx, peer).await;
    if let Err(resp) = deauthorized.map(drop).and(removed) {
        tracing::error!(entry = %id, "revocation not fully applied in memory (mailboxes full)");
        return Err(resp);
    }
    match committed {
        Ok(Saved::Durable) => Ok(Response::json(200, &OkBody::OK)),
        Ok(Saved::Deferred(reason)) => Ok(Response::json(
            202,
            &serde_json::json!({
                "ok": true,
                "saved": false,
                "detail": format!(
                    "revoked: the token no longer works; {reason} (a restart before then \
                     undoes it)"
                ),
            }),
        )),
        Err(resp) => {
            tracing::error!(entry = %id, "revocation in effect but not saved");
            let detail = serde_json::from_slice::<serde_json::Value>(&resp.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Err(Response::error(
                503,
                format!(
                    "the token no longer works, but the revocation could not be saved \
                     ({detail}): the entry stays approved and its token works again after a \
                     restart; repeat the revocation"
                ),
            ))
        }
    }
}

/// `{"id","peer_id","status"}` and, while it may still be claimed, `device_token`.
#[derive(serde::Serialize)]
struct StatusBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    device_token: Option<&'a str>,
    id: EntryId,
    peer_id: &'a str,
    status: Status,
}

/// `GET /api/pairing/{id}/status` with `Authorization: Bearer <claim_secret>` (issue
/// 10): the device's own view of its entry and, once approved, its device token (until
/// the token is first used or the entry is revoked). Unknown id or wrong secret → 401,
/// the same answer, so ids cannot be probed; either counts against `client`'s failure
/// budget (a missing secret does not).
pub async fn status(
    ctx: &ShardCtx,
    req: &Request,
    raw_id: &str,
    client: IpAddr,
) -> Answer<Response> {
    let refused = || Response::error(401, "unknown entry or wrong claim secret");
    let secret = req
        .header("authorization")
        .and_then(|v| crate::auth::admin::bearer_token(v.as_bytes()))
        .ok_or_else(refused)?;
    let wrong = || {
        failed(ctx, client, Failure::PairingStatus);
        refused()
    };
    let id = EntryId::parse(raw_id).ok_or_else(wrong)?;
    let entry = match ask_owner(ctx, &id.to_string(), Op::EntryGet(id)).await? {
        Reply::Entry(e) => e,
        Reply::NotFound => return Err(wrong()),
        _ => return Ok(unexpected()),
    };
    let ok = entry
        .claim_hash
        .is_some_and(|h| ctx.config.secrets.verify(HashKind::ClaimSecret, secret, &h));
    if !ok {
        return Err(wrong());
    }
    // Not while the approval is still being saved: a token is handed out only once durable.
    let token = (entry.status == Status::Approved
        && !entry.saving
        && !entry.token_claimed
        && !entry.device_token.is_empty())
    .then_some(entry.device_token.as_str());
    Ok(Response::json(
        200,
        &StatusBody {
            device_token: token,
            id: entry.id,
            peer_id: &entry.peer_id,
            status: entry.status,
        },
    ))
}

/// The device used its token (`POST /api/token`): stop serving it on the claim path and
/// drop its sealed copy from the store. Best effort: the token works either way.
pub async fn token_used(ctx: &ShardCtx, id: EntryId) {
    let Ok(Reply::Changed(b)) = ask_owner(ctx, &id.to_string(), Op::EntryTokenUsed(id)).await
    else {
        return;
    };
    let (_, after) = *b;
    let write = vec![Mutation::PutPairing(entry_record(
        &after,
        &ctx.config.secrets,
    ))];
    if ctx.commit(write).await.is_err() {
        tracing::warn!(entry = %id, "could not save that the device token was used");
    }
    saved(ctx, id).await;
}

/// The `chatixia_pair_*` series of `/metrics`: every shard's pairing counters.
pub async fn metrics(ctx: &ShardCtx) -> Answer<String> {
    use std::fmt::Write;
    let mut shards = Vec::new();
    for r in ask_all(ctx, |_| Op::Counters).await? {
        match r {
            Reply::Counters(c) => shards.push(*c),
            _ => return Err(unexpected()),
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP chatixia_pair_refused_total Pairing attempts refused with 429: by the \
         per-IP rate limit (rate), the address's daily budget of wrong codes (address), \
         or the six-digit guessing guard (guard).\n# TYPE chatixia_pair_refused_total counter"
    );
    for (i, c) in shards.iter().enumerate() {
        for (reason, n) in [
            ("rate", c.refused_rate),
            ("address", c.refused_address),
            ("guard", c.refused_guard),
        ] {
            let _ = writeln!(
                out,
                "chatixia_pair_refused_total{{shard=\"{i}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    type Get = fn(&crate::pairing::ops::Counters) -> u64;
    let series: [(&str, &str, &str, Get); 5] = [
        (
            "chatixia_pair_wrong_codes_total",
            "counter",
            "Pairing codes looked up that were not live (401).",
            |c| c.wrong_codes,
        ),
        (
            "chatixia_pair_codes_burnt_total",
            "counter",
            "Six-digit codes burnt by the guessing guard.",
            |c| c.codes_burnt,
        ),
        (
            "chatixia_pair_rate_addresses",
            "gauge",
            "Addresses in the pair rate-limit table (at most 65536 per shard).",
            |c| c.rate_addresses,
        ),
        (
            "chatixia_pair_budget_keys",
            "gauge",
            "Client keys in the daily wrong-code budget table (at most 65536 per shard).",
            |c| c.budget_keys,
        ),
        (
            "chatixia_pair_codes",
            "gauge",
            "Invite codes held (at most 1000 per shard).",
            |c| c.codes,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, c) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(c));
        }
    }
    Ok(out)
}

//! Pairing's workflows, on any shard: codes live on `shard_of(code)`, entries on
//! `shard_of(entry id)`, rate-limit buckets and daily wrong-code budgets on
//! `shard_of(client key)` (`limits::client_key`: the IPv4 address, or the IPv6 /64);
//! the device-token index is auth's (on `shard_of(token key)`) and the peers' signaling
//! authorization signaling's (on `shard_of(peer_id)`), each asked through its typed
//! operations. Random keys are drawn here, before routing. Typed inputs (a parsed body,
//! ids, header values) in, an [`Outcome`] or an [`Error`] out.
//!
//! Durable (issue 10): each change is applied on its owner first (an entry is flagged
//! `saving`, so its next change waits), committed from here, and answered 2xx only once
//! acknowledged; otherwise it is undone on its owner and answered 503.
//!
//! Follow-ups (issue 21): marking an entry saved, and every undo (putting a code back,
//! restoring an entry, dropping an indexed token, deauthorizing a peer), must never be
//! refused by a burst, or state would be left half done (an entry stuck `saving`, a
//! token that works for a pending entry). So before each change the workflow reserves
//! room for its follow-up on the shard the follow-up goes to (`shard::reserve`; none
//! left: 503 before that change, after undoing the earlier ones through their own
//! rooms). A follow-up is then asked as usual, so the answer is given once it is
//! applied; if the owner's mailbox stays full past `shard::ASK_PATIENCE` it goes into
//! the reserved room instead (`shard::settle`, which cannot be refused) and is applied as
//! soon as the owner drains its mailbox ([`follow_up`]).

use std::net::IpAddr;

use chatixia_store::{HashKind, Mutation, RevocationRecord, WriteClass};

use super::ops::{Counters, Op, Reply};
use super::records::{entry_record, invite_record};
use super::{
    hex_lower, new_peer_id, ActionError, Code, CodeStore, Config, Entry, EntryId,
    GenerateCodeResponse, Issuer, OkBody, PairError, PairRequest, PairingStore, Status,
};
use crate::auth::budget::{failed, Budgeted};
use crate::auth::failures::Failure;
use crate::auth::ops::{Op as TokenOp, Reply as TokenReply};
use crate::auth::tokens::{token_key, token_record};
use crate::shard::{
    self, ask_all, ask_owner, reserve, settle, Durability, Error, FollowUp, Kind, Outcome, Request,
    Saved, Shard,
};
use crate::signaling::ops::{Op as AuthzOp, Reply as AuthzReply};

fn unexpected() -> Error {
    tracing::error!("unexpected reply from a pairing owner");
    Error::internal("internal error")
}

fn busy() -> Error {
    Error::conflict("a change to this entry is being saved; retry")
}

/// The owner shard of `key`.
fn owner<S: Shard>(sh: &S, key: &str) -> shard::ShardId {
    sh.shard_of(key.as_bytes())
}

/// Commits `mutations` and waits until they are durable (held to the store's size bound:
/// pairing's records are not a claim). `Err`: nothing of them is saved (503).
async fn commit<S: Shard>(sh: &S, mutations: Vec<Mutation>) -> Result<(), Error> {
    match sh
        .commit(mutations, Durability::Now(WriteClass::Bounded))
        .await?
    {
        Saved::Durable => Ok(()),
        // Only retained writes are deferred.
        Saved::Deferred(reason) => Err(Error::unavailable(reason)),
    }
}

/// Applies the follow-up `make()` on `room`'s shard (see the [module docs](self)):
/// asked, so it is applied when this returns `true`; if the ask is refused (the owner's
/// mailbox stayed full past the ask patience, so it was never delivered) it goes into the
/// reserved room and is applied as soon as the owner drains its mailbox (`false`). It is
/// never lost.
pub(crate) async fn follow_up<S: Shard, O: Request<S::Msg>>(
    sh: &S,
    room: S::Room,
    make: impl Fn() -> O,
) -> bool {
    match shard::ask(sh, room.to(), make()).await {
        Ok(_) => true,
        Err(e) if e.kind == Kind::Unavailable => {
            tracing::warn!(
                shard = room.to(),
                "a follow-up waits in reserved room (mailbox full)"
            );
            settle(room, make());
            false
        }
        Err(e) => {
            // Delivered (a missing or wrong reply is a bug, logged by the layer).
            tracing::error!(error = %e, "a follow-up was answered wrongly");
            true
        }
    }
}

/// A code, drawn from the OS.
fn draw_code(cfg: &Config) -> Result<Code, Error> {
    shard::random(&mut [0u8; 1])?;
    Ok(Code::random(&mut shard::fill_random, cfg.guard.code_format))
}

/// An entry id and a peer id, drawn from the OS.
fn draw_entry() -> Result<(EntryId, String), Error> {
    let mut buf = [0u8; 7];
    shard::random(&mut buf)?;
    let mut bytes = buf.into_iter();
    let mut rng = |out: &mut [u8]| out.iter_mut().for_each(|b| *b = bytes.next().unwrap_or(0));
    let id = EntryId::random(&mut rng);
    Ok((id, new_peer_id(&mut rng)))
}

/// A secret of `prefix` + 32 hex digits (16 bytes from the OS).
fn draw_secret(prefix: &str) -> Result<String, Error> {
    let mut buf = [0u8; 16];
    shard::random(&mut buf)?;
    Ok(format!("{prefix}{}", hex_lower(&buf)))
}

/// Draws a new invite code for `issuer`, stores it on its owner shard and makes it
/// durable before answering: `POST /api/pairing/generate-code` (the issuer is the API
/// key auth checked) and the dashboard's invite (the admin) share it.
pub async fn issue_code<S: Shard>(sh: &S, cfg: &Config, issuer: Issuer) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    for _ in 0..CodeStore::GENERATE_TRIES_MAX {
        let code = draw_code(cfg)?;
        let key = code.to_string();
        // Room to take the code back should the store refuse it.
        let room = reserve(sh, owner(sh, &key))?;
        match ask_owner(sh, &key, Op::CodeInsert(Box::new((code, issuer.clone())))).await? {
            Reply::CodeStored(expires_at) => {
                // In a cluster, where the code is (`directory`) before anyone is told it.
                let ttl = expires_at.0.saturating_sub(sh.now().0) / 1_000_000;
                match super::directory::note_code(sh, &code, ttl).await {
                    Ok(true) => {}
                    // Another node's live code: draw another.
                    Ok(false) => {
                        follow_up(sh, room, || Op::CodeRemove(code)).await;
                        continue;
                    }
                    Err(e) => {
                        follow_up(sh, room, || Op::CodeRemove(code)).await;
                        return Err(e);
                    }
                }
                let put = Mutation::PutInvite(invite_record(code, &issuer, expires_at));
                if let Err(e) = commit(sh, vec![put]).await {
                    follow_up(sh, room, || Op::CodeRemove(code)).await;
                    return Err(e);
                }
                return Ok(Outcome::json(&GenerateCodeResponse::new(code)));
            }
            Reply::InUse => continue,
            Reply::Full => return Err(Error::unavailable("too many live invite codes")),
            Reply::Quota(n) => {
                return Err(Error::too_many(format!(
                    "this API key holds {n} live invite codes on this shard, its quota \
                     (--pair-codes-per-key-max); wait for some to be used or expire"
                )))
            }
            _ => return Err(unexpected()),
        }
    }
    Err(Error::unavailable("too many live invite codes"))
}

/// `POST /api/pairing/pair` from `client`, with its parsed body, in the reference's
/// order: rate limit, code format, agent name, then (issue 20) the client key's daily
/// budget of wrong codes, redeem, create. The answer adds `claim_secret` (issue 10), the
/// device's bearer secret for `GET /api/pairing/{id}/status`. A code is consumed only
/// once its entry is saved: any failure after the redemption puts it back.
pub async fn pair<S: Shard>(
    sh: &S,
    cfg: &Config,
    body: PairRequest,
    client: IpAddr,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    match pair_here_or(sh, cfg, body, client, false).await {
        Paired::Here(r) => r,
        Paired::Elsewhere(_) => Err(PairError::InvalidCode.into()),
    }
}

/// Where a `pair` was answered.
pub enum Paired {
    /// Here (its code was this node's, or nobody's).
    Here(Result<Outcome, Error>),
    /// Not here: the code was issued by this other node of the cluster, which should be
    /// asked instead (`server::forward`). This node's rate limit counted the attempt;
    /// its wrong-code reservation was given back (the code is right, elsewhere).
    Elsewhere(String),
}

/// [`pair`], except that with `look_elsewhere` (in a cluster, a request from a client
/// rather than one another node sent here) a code unknown here that another node issued
/// is [`Paired::Elsewhere`] (`directory::code_elsewhere`).
pub async fn pair_here_or<S: Shard>(
    sh: &S,
    cfg: &Config,
    body: PairRequest,
    client: IpAddr,
    look_elsewhere: bool,
) -> Paired
where
    Op: Request<S::Msg, Reply = Reply>,
{
    match pair_inner(sh, cfg, body, client, look_elsewhere).await {
        Ok(Ok(o)) => Paired::Here(Ok(o)),
        Ok(Err(node)) => Paired::Elsewhere(node),
        Err(e) => Paired::Here(Err(e)),
    }
}

async fn pair_inner<S: Shard>(
    sh: &S,
    cfg: &Config,
    body: PairRequest,
    client: IpAddr,
    look_elsewhere: bool,
) -> Result<Result<Outcome, String>, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    // Validated before the rate check (pure), answered after it (the reference's order):
    // only a well-formed request reserves one wrong code of the daily budget, in the
    // same message.
    let validated = body.validate();
    let client_key = crate::limits::client_key(client);
    let check = Op::RateCheck(Box::new((client, validated.is_ok())));
    match ask_owner(sh, &client_key, check).await? {
        Reply::Allowed(true) => {}
        Reply::Allowed(false) => return Err(PairError::RateLimited.into()),
        Reply::Spent(secs) => {
            let max = cfg.guard.wrong_per_address_max;
            return Err(Error::too_many(format!(
                "this address tried {max} wrong pairing codes within 24 h, its limit \
                 (--pair-wrong-guesses-per-address-max); try again in {secs} s"
            ))
            .retry_after(secs));
        }
        _ => return Err(unexpected()),
    }
    let valid = validated.map_err(Error::from)?;
    crate::limits::check_printable("agent_name", valid.agent_name)?;
    let code = valid.code;
    let code_key = code.to_string();
    // Drawn before the code is redeemed, so no failure to draw can leave it used.
    let claim_secret = draw_secret("cs_")?;
    let claim_hash = cfg.secrets.token_hash(HashKind::ClaimSecret, &claim_secret);
    // Room to put the code back, and to refund the reservation of a right code.
    let code_room = reserve(sh, owner(sh, &code_key))?;
    let refund_room = reserve(sh, owner(sh, &client_key))?;
    // In a cluster, the address's wrong codes at every node count against its budget.
    let max = cfg.guard.wrong_per_address_max;
    if let Some(secs) = super::directory::address_spent(sh, &client_key, max).await {
        // Not a guess: the reservation this node made goes back.
        settle(refund_room, Op::GuessRefund(Box::new(client)));
        return Err(Error::too_many(format!(
            "this address tried {max} wrong pairing codes within 24 h across the cluster, \
             its limit (--pair-wrong-guesses-per-address-max); try again in {secs} s"
        ))
        .retry_after(secs));
    }
    let (issuer, expires_at) = match ask_owner(sh, &code_key, Op::CodeRedeem(code)).await? {
        Reply::Redeemed(Some(b)) => {
            // In a cluster, wrong guesses near it at other nodes may have burnt it: gone,
            // as a code a node alone burnt (its reservation kept, as a wrong code's).
            if super::directory::burnt(sh, &code, b.1).await {
                super::directory::forget_code(sh, &code);
                super::directory::address_wrong(sh, &client_key);
                return Err(PairError::InvalidCode.into());
            }
            // A right code is not a wrong guess: give the reservation back.
            settle(refund_room, Op::GuessRefund(Box::new(client)));
            *b
        }
        Reply::Redeemed(None) => {
            if look_elsewhere {
                if let Some(node) = super::directory::code_elsewhere(sh, &code).await {
                    settle(refund_room, Op::GuessRefund(Box::new(client)));
                    return Ok(Err(node));
                }
            }
            // Counted across the cluster too (the code may be another node's), and
            // against the address's cluster-wide budget.
            super::directory::wrong_guess(sh, &code, cfg.guard.bucket_wrong_max).await;
            super::directory::address_wrong(sh, &client_key);
            return Err(PairError::InvalidCode.into());
        }
        Reply::Throttled(secs) => {
            return Err(Error::too_many(format!(
                "too many wrong pairing codes were tried on this server recently; \
                 try again in {secs} s"
            ))
            .retry_after(secs))
        }
        _ => return Err(unexpected()),
    };
    let put_back = || Op::CodeRestore(Box::new((code, issuer.clone(), expires_at)));
    let mut outcome = Err(PairError::StoreFull.into());
    for _ in 0..PairingStore::CREATE_TRIES_MAX {
        let step = create_entry(sh, valid.agent_name, &issuer, claim_hash).await;
        match step {
            Created::Entry(entry, room) => {
                let write = vec![
                    Mutation::DeleteInvite(code.store_key()),
                    Mutation::PutPairing(entry_record(&entry, &cfg.secrets)),
                ];
                let id = entry.id;
                // In a cluster, where the entry is (`directory`), then the entry itself.
                let noted = super::directory::note_entry(sh, id).await;
                let saved = match noted {
                    Ok(true) => commit(sh, write).await,
                    Ok(false) => {
                        // Another live node holds an entry with this id: draw another.
                        follow_up(sh, room, || Op::EntryRestore(Box::new((id, None)))).await;
                        continue;
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = saved {
                    follow_up(sh, room, || Op::EntryRestore(Box::new((id, None)))).await;
                    outcome = Err(e);
                    break;
                }
                follow_up(sh, room, || Op::EntrySaved(id)).await;
                drop(code_room);
                super::directory::forget_code(sh, &code);
                let mut body = serde_json::to_value(entry.pair_response()).unwrap_or_default();
                body["claim_secret"] = serde_json::Value::String(claim_secret);
                return Ok(Ok(Outcome::Json(wire::json::json_vec(&body))));
            }
            Created::InUse => continue,
            Created::Refused(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    follow_up(sh, code_room, put_back).await;
    outcome.map(Ok)
}

/// One try at creating a pending entry.
enum Created<R> {
    /// Created, flagged saving; the room for its follow-up (saved, or removed).
    Entry(Box<Entry>, R),
    /// The drawn id is taken: draw another.
    InUse,
    /// Not created (full, overloaded, no randomness).
    Refused(Error),
}

async fn create_entry<S: Shard>(
    sh: &S,
    agent_name: &str,
    issuer: &Issuer,
    claim_hash: chatixia_store::TokenHash,
) -> Created<S::Room>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let (id, peer_id) = match draw_entry() {
        Ok(d) => d,
        Err(e) => return Created::Refused(e),
    };
    let key = id.to_string();
    let room = match reserve(sh, owner(sh, &key)) {
        Ok(r) => r,
        Err(e) => return Created::Refused(e),
    };
    let op = Op::EntryCreate(Box::new((
        id,
        peer_id,
        agent_name.to_owned(),
        issuer.clone(),
        claim_hash,
    )));
    match ask_owner(sh, &key, op).await {
        Ok(Reply::Entry(e)) => Created::Entry(e, room),
        Ok(Reply::InUse) => Created::InUse,
        Ok(Reply::Full) => Created::Refused(PairError::StoreFull.into()),
        Ok(_) => Created::Refused(unexpected()),
        Err(e) => Created::Refused(e),
    }
}

/// `(before, after)` of a transition on the entry's owner, or the answer.
async fn transition<S: Shard>(
    sh: &S,
    id: EntryId,
    op: Op,
    err: ActionError,
) -> Result<(Entry, Entry), Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    match ask_owner(sh, &id.to_string(), op).await? {
        Reply::Changed(b) => Ok(*b),
        Reply::NotFound => Err(err.into()),
        Reply::Busy => Err(busy()),
        _ => Err(unexpected()),
    }
}

/// The answer when a device token could not be put in effect.
fn not_activated() -> Error {
    Error::unavailable("could not activate the device token; try again later")
}

/// `POST /api/pairing/{id}/approve` (an operator's: the router checked the admin
/// token): approve on the entry's shard (with a device token drawn here), index the token
/// (by its keyed hash) with auth on `shard_of(key)`, authorize the peer with signaling
/// on `shard_of(peer_id)`, in a cluster write both into Redis (`pairing::cluster`,
/// durable; 503 while Redis is unreachable), commit the entry and the token grant; 200
/// once durable. Any failure undoes the steps taken, latest first: the cluster's
/// records, the peer, the token, the entry (back to pending, so the admin can retry).
pub async fn approve<S: Shard>(sh: &S, cfg: &Config, raw_id: &str) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
    TokenOp: Request<S::Msg, Reply = TokenReply>,
    AuthzOp: Request<S::Msg, Reply = AuthzReply>,
{
    let not_pending = ActionError::NotFoundOrNotPending;
    let id = EntryId::parse(raw_id).ok_or(not_pending)?;
    // In a cluster the approval holds at every node, so it needs Redis: refused now,
    // before anything changes, while Redis is unreachable (failing closed).
    super::cluster::check_up(sh)?;
    let token = draw_secret("dt_")?;
    let hash = cfg.secrets.token_hash(HashKind::DeviceToken, &token);
    let key = token_key(&hash);
    let entry_room = reserve(sh, owner(sh, &id.to_string()))?;
    let token_room = reserve(sh, owner(sh, &key))?;
    let op = Op::EntryApprove(Box::new((id, token, hash)));
    let (before, entry) = transition(sh, id, op, not_pending).await?;
    let restore = || Op::EntryRestore(Box::new((id, Some(before.clone()))));
    let Some(grant) = entry.device_grant() else {
        follow_up(sh, entry_room, restore).await;
        return Err(unexpected());
    };
    let peer = entry.peer_id.as_str();
    let peer_room = match reserve(sh, owner(sh, peer)) {
        Ok(r) => r,
        Err(e) => {
            follow_up(sh, entry_room, restore).await;
            return Err(e);
        }
    };
    let insert = TokenOp::Insert(Box::new((key.clone(), grant.clone())));
    if !matches!(ask_owner(sh, &key, insert).await, Ok(TokenReply::Done)) {
        follow_up(sh, entry_room, restore).await;
        return Err(not_activated());
    }
    let unindex = || TokenOp::Remove(Box::new(key.clone()));
    let authorize = AuthzOp::PeerAuthorize(Box::new((peer.to_owned(), entry.mesh.clone())));
    if !matches!(ask_owner(sh, peer, authorize).await, Ok(AuthzReply::Done)) {
        follow_up(sh, token_room, unindex).await;
        follow_up(sh, entry_room, restore).await;
        return Err(not_activated());
    }
    let deauthorize = || AuthzOp::PeerDeauthorize(Box::new(peer.to_owned()));
    // In a cluster: the token and the peer's approval at every node, durable in Redis
    // before the commit (and so before the 2xx).
    if let Err(e) = super::cluster::approve(sh, &key, &grant).await {
        follow_up(sh, peer_room, deauthorize).await;
        follow_up(sh, token_room, unindex).await;
        follow_up(sh, entry_room, restore).await;
        return Err(e);
    }
    let write = vec![
        Mutation::PutPairing(entry_record(&entry, &cfg.secrets)),
        Mutation::PutDeviceToken(token_record(hash, &grant)),
    ];
    if let Err(e) = commit(sh, write).await {
        // Not acknowledged: the token must not work (here or at another node) and the
        // entry goes back to pending.
        super::cluster::undo(sh, &key, &grant);
        follow_up(sh, peer_room, deauthorize).await;
        follow_up(sh, token_room, unindex).await;
        follow_up(sh, entry_room, restore).await;
        return Err(e);
    }
    follow_up(sh, entry_room, || Op::EntrySaved(id)).await;
    Ok(Outcome::json(&entry.approve_response()))
}

/// `POST /api/pairing/{id}/reject` (an operator's).
pub async fn reject<S: Shard>(sh: &S, cfg: &Config, raw_id: &str) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let err = ActionError::NotFoundOrNotPending;
    let id = EntryId::parse(raw_id).ok_or(err)?;
    let room = reserve(sh, owner(sh, &id.to_string()))?;
    let (before, after) = transition(sh, id, Op::EntryReject(id), err).await?;
    let write = vec![Mutation::PutPairing(entry_record(&after, &cfg.secrets))];
    if let Err(e) = commit(sh, write).await {
        follow_up(sh, room, || {
            Op::EntryRestore(Box::new((id, Some(before.clone()))))
        })
        .await;
        return Err(e);
    }
    follow_up(sh, room, || Op::EntrySaved(id)).await;
    Ok(Outcome::json(&OkBody::OK))
}

/// `POST /api/pairing/{id}/revoke` (an operator's): the entry, its token grant and the
/// peer's revocation are committed; then the token stops working (auth drops it) and
/// the peer is deauthorized, which closes its live connections (4001, signaling).
///
/// Fails closed (issue 22): the token stops working and the connections close whatever
/// the store answers. Saved → 200. The store is unavailable (disk full, read-only) → the
/// revocation is kept and written once it recovers (`Durability::Retained`) → 202
/// `{"ok":true,"saved":false,…}` (a restart before then loses it). In a cluster the
/// token and the approval also go from Redis (`pairing::cluster::revoke`); while Redis
/// cannot be written (or refuses it) that is sent again while the link is up (backed
/// off) and at this node's next connect (`cluster::retry_unsynced`), answered 202 with
/// `"cluster":false` and why; this node refuses the token meanwhile. Not kept either (the
/// store's queue is full, or `--store-retained-writes-max` revocations already wait) →
/// the entry goes back to `approved` so the revocation can be repeated, its token still
/// refused until a restart, and 503 saying so.
pub async fn revoke<S>(sh: &S, cfg: &Config, raw_id: &str) -> Result<Outcome, Error>
where
    S: Shard + crate::shard::Owns<std::cell::RefCell<super::cluster::Unsynced>>,
    Op: Request<S::Msg, Reply = Reply>,
    TokenOp: Request<S::Msg, Reply = TokenReply>,
    AuthzOp: Request<S::Msg, Reply = AuthzReply>,
{
    let err = ActionError::NotFoundOrNotApproved;
    let id = EntryId::parse(raw_id).ok_or(err)?;
    let entry_room = reserve(sh, owner(sh, &id.to_string()))?;
    let (before, entry) = transition(sh, id, Op::EntryRevoke(id), err).await?;
    let restore = || Op::EntryRestore(Box::new((id, Some(before.clone()))));
    // The revocation's own follow-ups: room on the peer's owner and the token's.
    let peer = entry.peer_id.as_str();
    let key = entry.token_hash.as_ref().map(token_key);
    let rooms = reserve(sh, owner(sh, peer)).and_then(|p| match &key {
        Some(k) => reserve(sh, owner(sh, k)).map(|t| (p, Some(t))),
        None => Ok((p, None)),
    });
    let (peer_room, token_room) = match rooms {
        Ok(r) => r,
        Err(e) => {
            follow_up(sh, entry_room, restore).await;
            return Err(e);
        }
    };
    let mut write = vec![
        Mutation::PutPairing(entry_record(&entry, &cfg.secrets)),
        Mutation::PutRevocation(RevocationRecord {
            peer_id: entry.peer_id.clone(),
            not_before_secs: sh.now().as_secs(),
            entry_id: Some(id.value()),
        }),
    ];
    if let Some(hash) = entry.token_hash {
        write.push(Mutation::DeleteDeviceToken(hash));
    }
    let committed = sh.commit(write, Durability::Retained).await;
    match &committed {
        Ok(_) => follow_up(sh, entry_room, || Op::EntrySaved(id)).await,
        // Not kept for the store: the entry stays approved there, so it does here too
        // (and the revocation can be repeated); the token is refused below all the same.
        Err(_) => follow_up(sh, entry_room, restore).await,
    };
    // Both take effect whatever the store answered: the peer's authorization first,
    // since that closes its live signaling connections.
    let mut applied = follow_up(sh, peer_room, || {
        AuthzOp::PeerDeauthorize(Box::new(peer.to_owned()))
    })
    .await;
    if let (Some(room), Some(key)) = (token_room, &key) {
        // In a cluster the token is also remembered as revoked: until Redis has taken
        // the revocation its token hash still holds it, and this node must not answer
        // from there.
        let clustered = sh.cluster().is_some();
        applied &= follow_up(sh, room, || {
            if clustered {
                TokenOp::Revoke(Box::new(key.clone()))
            } else {
                TokenOp::Remove(Box::new(key.clone()))
            }
        })
        .await;
    }
    // In a cluster: the token and the approval go from Redis too, and the other nodes
    // close the peer's connections unless the cluster holds another approval of it
    // (`cluster::revoke`). Whatever the store answered, as the steps above.
    let cluster = super::cluster::revoke(sh, key.as_deref(), peer, id).await;
    if let Err(e) = &cluster {
        tracing::warn!(entry = %id, error = %e.why, "revocation not in the cluster yet");
    }
    let elsewhere = |e: &super::cluster::Unremoved| {
        let when = if e.retried {
            "this node sends it again while connected (after a second, then backing off to \
             every 8 s) and at its next connect"
        } else {
            "this node sends it at its next connect"
        };
        format!(
            "other nodes of the cluster may still accept the token until Redis takes the \
             revocation ({}): {when}",
            e.why
        )
    };
    if !applied {
        tracing::error!(entry = %id, "revocation waits in reserved room (mailboxes full)");
        return Err(Error::unavailable(
            "the revocation is decided, but a shard is overloaded: the token stops working \
             and the peer's connections close as soon as it drains its mailbox",
        ));
    }
    match committed {
        Ok(Saved::Durable) => match cluster {
            Ok(()) => Ok(Outcome::json(&OkBody::OK)),
            Err(why) => Ok(Outcome::Accepted(wire::json::json_vec(
                &serde_json::json!({
                    "ok": true,
                    "saved": true,
                    "cluster": false,
                    "detail": format!(
                        "revoked: the token no longer works at this node; {}",
                        elsewhere(&why)
                    ),
                }),
            ))),
        },
        Ok(Saved::Deferred(reason)) => {
            let mut body = serde_json::json!({
                "ok": true,
                "saved": false,
                "detail": format!(
                    "revoked: the token no longer works; {reason} (a restart before then \
                     undoes it)"
                ),
            });
            if let Err(why) = cluster {
                body["cluster"] = false.into();
                body["detail"] = format!(
                    "{}; {}",
                    body["detail"].as_str().unwrap_or_default(),
                    elsewhere(&why)
                )
                .into();
            }
            Ok(Outcome::Accepted(wire::json::json_vec(&body)))
        }
        Err(e) => {
            tracing::error!(entry = %id, "revocation in effect but not saved");
            let detail = e.message.unwrap_or_default();
            Err(Error::unavailable(format!(
                "the token no longer works, but the revocation could not be saved \
                 ({detail}): the entry stays approved and its token works again after a \
                 restart; repeat the revocation"
            )))
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

/// `GET /api/pairing/{id}/status` from `client` with its `Authorization` header
/// (`Bearer <claim_secret>`, issue 10): the device's own view of its entry and, once
/// approved, its device token (until the token is first used or the entry is revoked).
/// Unknown id or wrong secret → 401, the same answer, so ids cannot be probed; either
/// counts against `client`'s failure budget (a missing secret does not).
pub async fn status<S: Budgeted>(
    sh: &S,
    cfg: &Config,
    authorization: Option<&str>,
    raw_id: &str,
    client: IpAddr,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
    TokenOp: Request<S::Msg, Reply = TokenReply>,
{
    let refused = || Error::unauthorized("unknown entry or wrong claim secret");
    let Some(secret) = authorization.and_then(|v| crate::auth::admin::bearer_token(v.as_bytes()))
    else {
        return Err(refused());
    };
    let entry = match EntryId::parse(raw_id) {
        None => None,
        Some(id) => match ask_owner(sh, &id.to_string(), Op::EntryGet(id)).await? {
            Reply::Entry(e) => Some(e),
            Reply::NotFound => None,
            _ => return Err(unexpected()),
        },
    };
    let ok = entry.as_ref().is_some_and(|e| {
        e.claim_hash
            .is_some_and(|h| cfg.secrets.verify(HashKind::ClaimSecret, secret, &h))
    });
    let Some(entry) = entry.filter(|_| ok) else {
        failed(sh, client, Failure::PairingStatus).await;
        return Err(refused());
    };
    // Not while the approval is still being saved: a token is handed out only once durable.
    let token = (entry.status == Status::Approved
        && !entry.saving
        && !entry.token_claimed
        && !entry.device_token.is_empty())
    .then_some(entry.device_token.as_str());
    Ok(Outcome::json(&StatusBody {
        device_token: token,
        id: entry.id,
        peer_id: &entry.peer_id,
        status: entry.status,
    }))
}

/// The device used its token (`POST /api/token` answered with the entry's id: the router
/// calls this): stop serving it on the claim path and drop its sealed copy from the
/// store. Best effort: the token works either way; if the store does not take the
/// change the entry keeps it in memory (the claim path stays closed) and the sealed copy
/// stays on disk until the token's next use.
pub async fn token_used<S: Shard>(sh: &S, cfg: &Config, id: EntryId)
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let Ok(room) = reserve(sh, owner(sh, &id.to_string())) else {
        tracing::warn!(entry = %id, "device token used; its owner is overloaded (claim path kept)");
        return;
    };
    let Ok(Reply::Changed(b)) = ask_owner(sh, &id.to_string(), Op::EntryTokenUsed(id)).await else {
        return;
    };
    let (_, after) = *b;
    let write = vec![Mutation::PutPairing(entry_record(&after, &cfg.secrets))];
    if commit(sh, write).await.is_err() {
        tracing::warn!(entry = %id, "could not save that the device token was used");
    }
    follow_up(sh, room, || Op::EntrySaved(id)).await;
}

/// Every shard's pairing counters, in shard order (`/metrics`).
pub async fn counters<S: Shard>(sh: &S) -> Result<Vec<Counters>, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let mut shards = Vec::new();
    for r in ask_all(sh, |_| Op::Counters).await? {
        match r {
            Reply::Counters(c) => shards.push(*c),
            _ => return Err(unexpected()),
        }
    }
    Ok(shards)
}

/// The `chatixia_pair_*` series of `/metrics` from every shard's counters.
pub fn render_metrics(shards: &[Counters]) -> String {
    use std::fmt::Write;
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
    type Get = fn(&Counters) -> u64;
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
    out
}

//! Auth's workflows on any shard: `POST /api/token`, and the API-key check of the routes
//! that take one (`generate-code`). Typed inputs (the header values, the caller's
//! address) in, a typed outcome or an [`Error`] out; the router parses the request and
//! answers.

use std::net::IpAddr;

use super::budget::{failed, Budgeted};
use super::failures::Failure;
use super::ops::{Op, Reply};
use super::{
    exchange_token, header_value_str, ApiKeyEntry, Config, TokenExchange, TokenResponse,
    DEVICE_TOKEN_ROLE,
};
use crate::shard::{ask_owner, Error, Kind, Outcome, Request, Shard};

/// A token issued by `POST /api/token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The response body.
    pub body: TokenResponse,
    /// For a device token: the pairing entry it came from (`auth::DeviceGrant::entry_id`).
    /// The caller tells pairing that the token was used (pairing's `token_used`), which
    /// stops serving it on the claim path; auth knows nothing of pairing.
    pub device_entry: Option<u32>,
}

impl Issued {
    /// The 200 answer.
    pub fn outcome(&self) -> Outcome {
        Outcome::json(&self.body)
    }
}

fn unexpected() -> Error {
    tracing::error!("unexpected reply from a device-token index");
    Error::internal("internal error")
}

/// `POST /api/token` from `client`, with its `X-API-Key` and `X-Device-Token` header
/// values (`None`: absent; a value that is not visible ASCII counts as absent, as the
/// reference reads it): an API key is checked against this shard's copy of the keys; a
/// device token is looked up on `shard_of(its key)`, and in a cluster, when not held
/// there, in the cluster's token hash ([`cluster_grant`]: 503 while Redis cannot be
/// asked). Unknown or missing → 401 with no
/// body. An unknown key or token counts against `client`'s failure budget (a missing one
/// does not), which the router checked before. An `X-API-Key` that is no known key
/// counts even when the request also carries a device token that then succeeds:
/// otherwise a device's holder could guess API keys outside the budget (the answer's
/// `peer_id` and `role` say whether the guess was a key).
pub async fn token<S: Budgeted>(
    sh: &S,
    cfg: &Config,
    api_key: Option<&str>,
    device_token: Option<&str>,
    client: IpAddr,
) -> Result<Issued, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let now = sh.now();
    let sent_key = api_key.is_some();
    let api_key = api_key.and_then(|v| header_value_str(v.as_bytes()));
    let device_token = device_token.and_then(|v| header_value_str(v.as_bytes()));
    if sent_key && api_key.and_then(|k| cfg.api_keys.lookup(k)).is_none() {
        failed(sh, client, Failure::TokenApiKey).await;
    }
    match exchange_token(&cfg.api_keys, &cfg.jwt_secret, api_key, device_token, now) {
        TokenExchange::Issued(body) => Ok(Issued {
            body,
            device_entry: None,
        }),
        // An unknown key was counted above.
        TokenExchange::Unauthorized => Err(Error::bare(Kind::Unauthorized)),
        TokenExchange::LookupDeviceToken(token) => {
            // The index is keyed by the token's keyed hash (what the store keeps).
            let key = super::tokens::token_key_of(&cfg.secrets, token);
            let grant = match ask_owner(sh, &key, Op::Lookup(Box::new(key.clone()))).await? {
                Reply::Grant(Some(grant)) => Some(*grant),
                // In a cluster the token may be another node's approval.
                Reply::Grant(None) => cluster_grant(sh, &key).await?,
                // Revoked here: refused even while the cluster's hash still holds it.
                Reply::Revoked => None,
                _ => return Err(unexpected()),
            };
            match grant {
                Some(grant) => Ok(Issued {
                    body: TokenResponse::issue(
                        &cfg.jwt_secret,
                        &grant.peer_id,
                        DEVICE_TOKEN_ROLE,
                        now,
                    ),
                    device_entry: Some(grant.entry_id),
                }),
                None => {
                    failed(sh, client, Failure::TokenDeviceToken).await;
                    Err(Error::bare(Kind::Unauthorized))
                }
            }
        }
    }
}

/// In a cluster, the grant of a device token this node's index does not hold, from the
/// cluster's token hash (`tokens::cluster_tokens_key`; one `HGET` of its key, never the
/// token): `Ok(None)` on a node alone and when no node approved it (a wrong token,
/// counted as here). While Redis cannot be asked, 503 (failing closed, and not counted:
/// the token may be right).
async fn cluster_grant<S: Shard>(
    sh: &S,
    key: &str,
) -> Result<Option<super::tokens::DeviceGrant>, Error> {
    use chatixia_cluster::{Refused, Value};
    let Some(link) = sh.cluster() else {
        return Ok(None);
    };
    let unavailable = |why: &str| {
        Error::unavailable(format!(
            "cluster unavailable: this device token is not known at this node and cannot \
             be checked across the cluster ({why}); retry"
        ))
    };
    let reply = match link.command(vec![
        b"HGET".to_vec(),
        super::tokens::cluster_tokens_key(link.prefix()),
        key.as_bytes().to_vec(),
    ]) {
        Ok(r) => r.await,
        Err(Refused::Down(why)) => return Err(unavailable(&why)),
        Err(Refused::Busy) => return Err(unavailable("too many commands in flight")),
        Err(Refused::Closed) => return Err(unavailable("the link has stopped")),
    };
    match reply {
        Ok(Value::Bulk(v)) => match super::tokens::grant_of_value(&v) {
            Some(g) => Ok(Some(g)),
            None => {
                tracing::error!("unreadable device-token grant in the cluster");
                Err(unavailable("unreadable grant"))
            }
        },
        Ok(Value::Nil) => Ok(None),
        Ok(other) => {
            tracing::error!(reply = ?other, "unexpected reply to the device-token lookup");
            Err(unavailable("unexpected reply"))
        }
        Err(e) => Err(unavailable(&format!("{e:?}"))),
    }
}

/// The known API key of a route that needs one (`POST /api/pairing/generate-code`),
/// from its `X-API-Key` header value: 401 with no body without a known key; an unknown
/// key (not a missing one) counts against `client`'s failure budget as `failure`.
pub async fn known_key<'c, S: Budgeted>(
    sh: &S,
    cfg: &'c Config,
    api_key: Option<&str>,
    client: IpAddr,
    failure: Failure,
) -> Result<&'c ApiKeyEntry, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let key = api_key.and_then(|v| header_value_str(v.as_bytes()));
    match key.and_then(|k| cfg.api_keys.lookup(k)) {
        Some(entry) => Ok(entry),
        None => {
            // Any key sent that is no known key (also one that is not text) is a wrong one.
            if api_key.is_some() {
                failed(sh, client, failure).await;
            }
            Err(Error::bare(Kind::Unauthorized))
        }
    }
}

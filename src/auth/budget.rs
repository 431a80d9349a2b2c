//! The failure budget at the edge (issue 20): [`admit`] before a route looks at a
//! secret, [`failed`] when the secret was wrong. The ledger and the hints are
//! `auth::failures` (sans-IO); this module reads the shard's clock, its own part of the
//! state ([`Budgeted`]: the ledger of the addresses it owns, its hints of others', its
//! counters) and asks the owner shard through the shard layer.
//!
//! The router calls [`admit`] for every route that checks a secret (it knows which:
//! `server::router::secret_route_of`); `/ws`, the dashboard's event stream and a backup,
//! which leave the HTTP loop, call it themselves. A refused attempt is answered 429 with
//! `retry-after` before its secret is compared, so the answer says nothing about the
//! secret. A route whose check awaits (`POST /api/token` with a device token, the
//! pairing claim path) holds its attempt in flight with [`admit_held`] until the check
//! is decided.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::time::Duration;

use super::failures::{
    client_addr, Attempt, Budget, Failure, FailureHints, FailureLedger, InFlight, Look,
    SecretRoute, Verdict,
};
use super::ops::{Op, Reply};
use crate::shard::{self, Error, Owns, Request, Shard};

/// Kinds of wrong secret counted ([`Failure::ALL`]).
pub const FAILURE_KINDS: usize = Failure::ALL.len();
/// Route families with a failure budget ([`SecretRoute::ALL`]).
pub const SECRET_ROUTES: usize = SecretRoute::ALL.len();

/// The failure budget's counters on one shard (`/metrics`: `chatixia_auth_failures_total`
/// and `chatixia_auth_refused_total`), counted on the shard that took the request.
#[derive(Debug, Default)]
pub struct Counters {
    /// Wrong secrets presented here, by [`Failure::index`].
    pub failures: [Cell<u64>; FAILURE_KINDS],
    /// Attempts refused (429) here, by [`SecretRoute::index`].
    pub refused: [Cell<u64>; SECRET_ROUTES],
}

impl Counters {
    fn inc(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }

    /// The counts now: `(failures, refused)`.
    pub fn snapshot(&self) -> ([u64; FAILURE_KINDS], [u64; SECRET_ROUTES]) {
        (
            std::array::from_fn(|i| self.failures[i].get()),
            std::array::from_fn(|i| self.refused[i].get()),
        )
    }
}

/// A shard that keeps the failure budget's state: the ledger of the addresses it owns
/// (`shard_of(address octets)`), its hints of the others' recent failures, and its
/// counters; and the tokens it verified lately (`auth::verified`, read by the same
/// requests). Implemented for every shard that owns the three (the server's and the
/// simulator's).
pub trait Budgeted:
    Shard
    + Owns<RefCell<FailureLedger>>
    + Owns<RefCell<FailureHints>>
    + Owns<RefCell<super::verified::VerifiedTokens>>
    + Owns<RefCell<InFlight>>
    + Owns<Counters>
{
}

impl<S> Budgeted for S where
    S: Shard
        + Owns<RefCell<FailureLedger>>
        + Owns<RefCell<FailureHints>>
        + Owns<RefCell<super::verified::VerifiedTokens>>
        + Owns<RefCell<InFlight>>
        + Owns<Counters>
{
}

fn ledger<S: Budgeted>(sh: &S) -> &RefCell<FailureLedger> {
    Owns::<RefCell<FailureLedger>>::owned(sh)
}

fn hints<S: Budgeted>(sh: &S) -> &RefCell<FailureHints> {
    Owns::<RefCell<FailureHints>>::owned(sh)
}

fn in_flight<S: Budgeted>(sh: &S) -> &RefCell<InFlight> {
    Owns::<RefCell<InFlight>>::owned(sh)
}

fn counters<S: Budgeted>(sh: &S) -> &Counters {
    Owns::<Counters>::owned(sh)
}

/// The shard that keeps `addr`'s failures.
fn owner_of<S: Shard>(sh: &S, addr: IpAddr) -> usize {
    match addr {
        IpAddr::V4(a) => sh.shard_of(&a.octets()),
        IpAddr::V6(a) => sh.shard_of(&a.octets()),
    }
}

fn unexpected() -> Error {
    tracing::error!("unexpected reply from a failure ledger");
    Error::internal("internal error")
}

/// The 429 of a refused attempt, naming the budget and its flags.
pub fn too_many(by: Budget, retry_after_secs: u64) -> Error {
    let reason = match by {
        Budget::Address => format!(
            "too many wrong secrets from this address; try again in {retry_after_secs} s \
             (--auth-failures-per-ip-max per --auth-failure-window, then a back-off that \
             doubles up to --auth-backoff-max)"
        ),
        Budget::Total => format!(
            "too many wrong secrets on this server recently; addresses that sent one may \
             try again in {retry_after_secs} s (--auth-failures-total-max)"
        ),
    };
    Error::too_many(reason).retry_after(retry_after_secs)
}

/// How often an attempt that waits for another check of its address on this shard
/// ([`InFlight`](super::failures::InFlight)) looks again. Such a check is one message to another shard and back
/// (sub-millisecond): a millisecond keeps the wait short without spinning.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(1);

/// The longest an attempt waits for another check of its address on this shard; then
/// 503. Far above any check's time (one message to another shard and back); reached
/// only if a shard stops answering.
const IN_FLIGHT_WAIT_MAX: Duration = Duration::from_secs(10);

/// Whether `ip` may try a secret on `route` now: `Err` is the answer (429, or 503 when
/// the owner cannot be asked). Costs a message only for an address this shard knows to
/// have failed recently (and it is not its owner). For a check that does not await (an
/// API key, a JWT): the caller checks the secret before it next awaits, so the outcome
/// is counted before any other attempt of the address is admitted here.
pub async fn admit<S: Budgeted>(sh: &S, ip: IpAddr, route: SecretRoute) -> Result<(), Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    admit_inner(sh, ip, route, false).await.map(drop)
}

/// [`admit`] for a check that awaits (a device token or a claim secret looked up on
/// another shard): the [`Attempt`] counts the check as in flight until it is dropped,
/// which the caller does once the secret was found right or counted wrong; meanwhile
/// other attempts of the address on this shard wait ([`InFlight`]).
pub async fn admit_held<S: Budgeted>(
    sh: &S,
    ip: IpAddr,
    route: SecretRoute,
) -> Result<Attempt<'_>, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    admit_inner(sh, ip, route, true)
        .await
        .map(|a| a.unwrap_or_else(|| Attempt::enter(in_flight(sh), client_addr(ip))))
}

/// Waits until no check of `addr` is in flight on this shard (at most
/// [`IN_FLIGHT_WAIT_MAX`]; then 503).
async fn wait_turn<S: Budgeted>(sh: &S, addr: IpAddr) -> Result<(), Error> {
    let mut waited = Duration::ZERO;
    while in_flight(sh).borrow().count(addr) > 0 {
        if waited >= IN_FLIGHT_WAIT_MAX {
            return Err(Error::unavailable(
                "another secret check from this address is still running on this shard; \
                 retry",
            ));
        }
        sh.sleep(IN_FLIGHT_POLL).await;
        waited += IN_FLIGHT_POLL;
    }
    Ok(())
}

async fn admit_inner<S: Budgeted>(
    sh: &S,
    ip: IpAddr,
    route: SecretRoute,
    hold: bool,
) -> Result<Option<Attempt<'_>>, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let addr = client_addr(ip);
    // One check of an address in flight per shard: the next waits for its outcome.
    wait_turn(sh, addr).await?;
    let now = sh.now();
    let owner = owner_of(sh, addr);
    let mut attempt = None;
    let verdict = if owner == sh.id() {
        ledger(sh).borrow_mut().check(addr, now)
    } else {
        let look = hints(sh).borrow().look(addr, now);
        match look {
            Look::Unknown => Verdict::Allowed {
                recent_until: crate::time::UnixTime::EPOCH,
            },
            Look::Refused { until, by } => Verdict::Refused {
                until,
                recent_until: until,
                by,
            },
            Look::Ask => {
                // In flight while the owner is asked: the address's other attempts here
                // wait, so the owner answers each with the failures before it counted.
                attempt = Some(Attempt::enter(in_flight(sh), addr));
                let v = match shard::ask(sh, owner, Op::FailureCheck(Box::new(addr))).await? {
                    Reply::Failures(v) => *v,
                    _ => return Err(unexpected()),
                };
                hints(sh).borrow_mut().note(addr, v, sh.now());
                v
            }
        }
    };
    match (verdict, verdict.retry_after_secs(now)) {
        (Verdict::Refused { by, .. }, Some(secs)) => {
            Counters::inc(&counters(sh).refused[route.index()]);
            Err(too_many(by, secs))
        }
        // A check that does not await is decided before this shard runs anything else:
        // its attempt need not stay in flight.
        _ => Ok(attempt.filter(|_| hold)),
    }
}

/// `ip` presented a wrong secret: counted here and on the address's owner (told, under
/// the shard layer's one policy). If the owner's mailbox stays full past
/// `shard::ASK_PATIENCE` the failure is not recorded there, but this shard hints the
/// address and so asks the owner before its next attempt (and answers 503 if it still
/// cannot).
pub async fn failed<S: Budgeted>(sh: &S, ip: IpAddr, failure: Failure)
where
    Op: Request<S::Msg, Reply = Reply>,
{
    Counters::inc(&counters(sh).failures[failure.index()]);
    let addr = client_addr(ip);
    let now = sh.now();
    let owner = owner_of(sh, addr);
    if owner == sh.id() {
        ledger(sh).borrow_mut().fail(addr, now);
        return;
    }
    hints(sh).borrow_mut().failed(addr, now);
    if shard::tell(sh, owner, Op::FailureRecord(Box::new(addr)))
        .await
        .is_err()
    {
        tracing::debug!(
            owner,
            "failure not recorded: the owner's mailbox stayed full"
        );
    }
}

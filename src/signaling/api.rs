//! Signaling's workflows on the shard layer: a connection's life outside its loop. The
//! client IP's slot on its owner (`shard_of(ip string)`, [`acquire_ip`] before the
//! connection is handed over, [`release_ip`] when it ends or is refused), admission on
//! the peer's owner ([`admit`]: revocation, the shard's connection limit, the slot in
//! the connection table), and the peer list `register` answers ([`peers`]).
//!
//! No HTTP and no socket here: the server parses the upgrade, checks the token, moves
//! the socket to the peer's owner and writes what these return ([`Error`]s, mapped to
//! HTTP in one place); the connection loop is `session`.

use std::cell::RefCell;
use std::net::IpAddr;

use crate::auth::ApiKeys;
use crate::shard::{self, Error, Owns, Request, Shard};
use crate::signaling::ops::{Op, Reply};
use crate::signaling::store::inc;
use crate::signaling::{ConnTable, PeerAuthz};

/// The shard's connection table.
#[inline]
pub(super) fn table<S: Owns<ConnTable>>(sh: &S) -> &ConnTable {
    sh.owned()
}

/// The shard that counts `ip`'s connections (the key is the address's text form).
fn ip_owner<S: Shard>(sh: &S, ip: IpAddr) -> shard::ShardId {
    sh.shard_of(ip.to_string().as_bytes())
}

/// Takes one of `ip`'s signaling connections (`connections_per_ip_max`, all shards) on
/// its owner: here when this shard owns it, else one ask. 503 when the address holds
/// the most already (counted as refused) or the owner cannot be asked.
pub async fn acquire_ip<S>(sh: &S, ip: IpAddr) -> Result<(), Error>
where
    S: Shard + Owns<ConnTable>,
    Op: Request<S::Msg, Reply = Reply>,
{
    let owner = ip_owner(sh, ip);
    let allowed = if owner == sh.id() {
        table(sh).ip_acquire(ip)
    } else {
        match shard::ask(sh, owner, Op::IpAcquire(Box::new(ip))).await? {
            Reply::Allowed(a) => a,
            _ => return Err(unexpected()),
        }
    };
    if allowed {
        return Ok(());
    }
    inc(&table(sh).refused);
    Err(Error::unavailable(
        "too many signaling connections from this address",
    ))
}

/// Gives a connection's slot back to its client IP's count: here when this shard owns
/// the IP, else a tell under the shard layer's one back-pressure policy (it waits up to
/// `shard::ASK_PATIENCE` for room, as when thousands of connections close at once).
/// Given up after that, the slot stays taken until restart: logged.
pub async fn release_ip<S>(sh: &S, ip: IpAddr)
where
    S: Shard + Owns<ConnTable>,
    Op: Request<S::Msg, Reply = Reply>,
{
    let owner = ip_owner(sh, ip);
    if owner == sh.id() {
        table(sh).ip_release(ip);
        return;
    }
    if let Err(e) = shard::tell(sh, owner, Op::IpRelease(Box::new(ip))).await {
        tracing::warn!(%ip, error = %e, "per-IP connection count not released");
    }
}

/// Whether a peer's admission must ask the cluster for its approval ([`cluster_approval`]):
/// in a cluster, for a peer that neither an API key nor an approval held at this node
/// authorizes (API-key peers and peers approved here never wait for Redis).
pub fn needs_cluster_approval<S>(sh: &S, keys: &ApiKeys, peer_id: &str, echo: bool) -> bool
where
    S: Shard + Owns<RefCell<PeerAuthz>>,
{
    !echo
        && sh.cluster().is_some()
        && keys.mesh_of(peer_id).is_none()
        && !Owns::<RefCell<PeerAuthz>>::owned(sh)
            .borrow()
            .contains(peer_id)
}

/// The mesh of `peer`'s approval at another node of the cluster (`Ok(Some(None))`: the
/// default mesh; `Ok(None)`: no node approved it): one `HGET` of the cluster's approvals
/// (`authz::cluster_authz_key`). While Redis cannot be asked, 503 (failing closed: the
/// peer may be one whose approval is revoked, or one approved elsewhere that would
/// otherwise connect unauthorized and see no peers).
pub async fn cluster_approval<S: Shard>(
    sh: &S,
    peer: &str,
) -> Result<Option<Option<Box<str>>>, Error> {
    use chatixia_cluster::{Refused, Value};
    let Some(link) = sh.cluster() else {
        return Ok(None);
    };
    let unavailable = |why: &str| {
        Error::unavailable(format!(
            "cluster unavailable: peer `{peer}` is not approved at this node and its \
             approval cannot be checked across the cluster ({why}); retry"
        ))
    };
    let reply = match link.command(vec![
        b"HGET".to_vec(),
        super::authz::cluster_authz_key(link.prefix()),
        peer.as_bytes().to_vec(),
    ]) {
        Ok(r) => r.await,
        Err(Refused::Down(why)) => return Err(unavailable(&why)),
        Err(Refused::Busy) => return Err(unavailable("too many commands in flight")),
        Err(Refused::Closed) => return Err(unavailable("the link has stopped")),
    };
    match reply {
        Ok(Value::Bulk(v)) => {
            Ok(super::authz::cluster_mesh(&v).map(|m| m.map(String::into_boxed_str)))
        }
        Ok(Value::Nil) => Ok(None),
        Ok(other) => {
            tracing::error!(%peer, reply = ?other, "unexpected reply to the approval lookup");
            Err(unavailable("unexpected reply"))
        }
        Err(e) => Err(unavailable(&format!("{e:?}"))),
    }
}

/// Admits a connection of `peer_id` on its owner (this shard): refused while the shard
/// shuts down (503), for a peer whose pairing was revoked and that has no API key (401),
/// and past `connections_per_shard_max` (503, counted as refused). Admitted, it is
/// registered at once, with its mesh and whether it may signal (an API key's peer, or an
/// approved pairing's): the authorization just read and the slot are one step, so a
/// revocation or an approval that arrives while the 101 is written finds the
/// connection. Returns its key in the table. `echo`: the `/ws-echo` test endpoint (never
/// authorized to signal). `cluster`: the peer's approval at another node, read before
/// ([`cluster_approval`]); a revocation this node learnt of (its own, or one another
/// node broadcast) wins over it, so a revocation whose record in Redis is not removed
/// yet still refuses the peer here. The caller releases the IP's slot when this refuses.
pub fn admit<S>(
    sh: &S,
    keys: &ApiKeys,
    peer_id: String,
    echo: bool,
    cluster: Option<Option<Box<str>>>,
) -> Result<usize, Error>
where
    S: Shard + Owns<ConnTable> + Owns<RefCell<PeerAuthz>>,
{
    let conns = table(sh);
    if conns.is_shutting_down() {
        return Err(Error::unavailable("server shutting down"));
    }
    let (authorized, mesh, revoked) = if echo {
        (false, None, false)
    } else {
        let authz = Owns::<RefCell<PeerAuthz>>::owned(sh).borrow();
        let (authorized, mesh) = match (keys.mesh_of(&peer_id), authz.mesh(&peer_id)) {
            (Some(m), _) | (None, Some(m)) => (true, m.map(Box::<str>::from)),
            (None, None) => match cluster {
                Some(m) if !authz.is_revoked(&peer_id) => (true, m),
                _ => (false, None),
            },
        };
        (authorized, mesh, !authorized && authz.is_revoked(&peer_id))
    };
    if revoked {
        return Err(Error::unauthorized("pairing revoked"));
    }
    if !conns.has_room() {
        inc(&conns.refused);
        return Err(Error::unavailable(
            "too many signaling connections on this shard",
        ));
    }
    Ok(conns.register(peer_id.into(), mesh, authorized, sh.now().as_secs()))
}

/// The authorized, connected peers of `mesh` on every shard, but `exclude` (what
/// `register` answers): one ask per shard; in a cluster, then those of the other nodes
/// (`remote::peers_elsewhere`).
pub async fn peers<S>(
    sh: &S,
    mesh: Option<Box<str>>,
    exclude: Box<str>,
) -> Result<Vec<Box<str>>, Error>
where
    S: Shard,
    Op: Request<S::Msg, Reply = Reply>,
{
    let replies = shard::ask_all(sh, |_| {
        Op::PeerList(Box::new((mesh.clone(), exclude.clone())))
    })
    .await?;
    let mut all = Vec::new();
    for r in replies {
        match r {
            Reply::Peers(p) => all.extend(*p),
            _ => return Err(unexpected()),
        }
    }
    if sh.cluster().is_some() {
        let elsewhere = super::remote::peers_elsewhere(sh, mesh.as_deref(), &exclude).await;
        // A peer listed both here and at another node (it moved, and the older entry is
        // not gone yet) is listed once.
        let here: std::collections::HashSet<&str> = all.iter().map(|p| &**p).collect();
        let elsewhere: Vec<Box<str>> = elsewhere
            .into_iter()
            .filter(|p| !here.contains(&**p))
            .collect();
        all.extend(elsewhere);
    }
    Ok(all)
}

fn unexpected() -> Error {
    tracing::error!("unexpected reply from a signaling owner");
    Error::internal("internal error")
}

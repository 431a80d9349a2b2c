//! Pairing's durable records (issue 10): entries and invite codes ↔ the store's records.
//! Sans-IO conversions; the start-up split (`server::boot::split`) places the loaded ones on
//! their owner shards.

use chatixia_store::{InviteRecord, PairingRecord, PairingStatus, Secrets};

use super::{Code, Entry, EntryId, Issuer, Status};
use crate::time::UnixTime;

fn status_record(s: Status) -> PairingStatus {
    match s {
        Status::PendingApproval => PairingStatus::PendingApproval,
        Status::Approved => PairingStatus::Approved,
        Status::Rejected => PairingStatus::Rejected,
        Status::Revoked => PairingStatus::Revoked,
    }
}

fn status_of(s: PairingStatus) -> Status {
    match s {
        PairingStatus::PendingApproval => Status::PendingApproval,
        PairingStatus::Approved => Status::Approved,
        PairingStatus::Rejected => Status::Rejected,
        PairingStatus::Revoked => Status::Revoked,
    }
}

/// The record of an entry: token and claim secret as keyed hashes; the device token
/// sealed only while approved and not yet used by its device.
pub fn entry_record(e: &Entry, secrets: &Secrets) -> PairingRecord {
    let sealed = (e.status == Status::Approved && !e.token_claimed && !e.device_token.is_empty())
        .then(|| secrets.seal(e.id.value(), &e.device_token));
    PairingRecord {
        id: e.id.value(),
        agent_name: e.agent_name.clone(),
        peer_id: e.peer_id.clone(),
        status: status_record(e.status),
        created_at_ns: e.created_at.as_nanos(),
        updated_at_ns: e.updated_at.as_nanos(),
        mesh: e.mesh.clone(),
        invited_by: e.invited_by.clone(),
        claim_hash: e.claim_hash,
        token_hash: e.token_hash,
        sealed_token: sealed,
    }
}

/// The entry of a loaded record (a sealed token is opened for the claim path; one that
/// does not open is treated as claimed).
pub fn entry_of(r: PairingRecord, secrets: &Secrets) -> Entry {
    let token = r
        .sealed_token
        .as_ref()
        .and_then(|s| secrets.unseal(r.id, s).ok());
    Entry {
        id: EntryId::from_u32(r.id),
        agent_name: r.agent_name,
        peer_id: r.peer_id,
        token_claimed: token.is_none(),
        device_token: token.unwrap_or_default(),
        status: status_of(r.status),
        created_at: UnixTime(r.created_at_ns),
        updated_at: UnixTime(r.updated_at_ns),
        mesh: r.mesh,
        invited_by: r.invited_by,
        token_hash: r.token_hash,
        claim_hash: r.claim_hash,
        saving: false,
    }
}

/// The record of an invite code.
pub fn invite_record(code: Code, issuer: &Issuer, expires_at: UnixTime) -> InviteRecord {
    InviteRecord {
        code: code.store_key(),
        issuer_peer_id: issuer.peer_id.clone(),
        mesh: issuer.mesh.clone(),
        expires_at_ns: expires_at.as_nanos(),
    }
}

/// The code, issuer and expiry of a loaded invite record; `None` for a record that
/// holds no valid code (six-digit codes stored by an older server load as six-digit
/// codes).
pub fn invite_of(r: InviteRecord) -> Option<(Code, Issuer, UnixTime)> {
    let code = Code::from_store_key(r.code)?;
    let issuer = Issuer {
        peer_id: r.issuer_peer_id,
        mesh: r.mesh,
    };
    Some((code, issuer, UnixTime(r.expires_at_ns)))
}

/// An entry for tests: id `id`, peer `agent-<id as 6 hex digits>`, mesh `blue`, invited by
/// `admin-1`, no token yet (also the start-up split's tests, `server::boot`).
#[cfg(test)]
pub(crate) fn test_entry(id: u32, status: Status) -> Entry {
    Entry {
        id: EntryId::from_u32(id),
        agent_name: "bot".into(),
        peer_id: format!("agent-{id:06x}"),
        device_token: String::new(),
        status,
        created_at: UnixTime(1),
        updated_at: UnixTime(2),
        mesh: Some("blue".into()),
        invited_by: "admin-1".into(),
        token_hash: None,
        claim_hash: None,
        token_claimed: false,
        saving: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatixia_store::HashKind;

    use super::test_entry as entry;

    #[test]
    fn entries_round_trip_and_seal_only_unclaimed_tokens() {
        let secrets = Secrets::derive(b"s");
        let mut e = entry(7, Status::Approved);
        e.device_token = "dt_0123".into();
        e.token_hash = Some(secrets.token_hash(HashKind::DeviceToken, "dt_0123"));
        let r = entry_record(&e, &secrets);
        assert!(r.sealed_token.is_some());
        assert!(!serde_json::to_string(&r).unwrap().contains("dt_0123"));
        assert_eq!(entry_of(r, &secrets), e);
        e.token_claimed = true;
        e.device_token.clear();
        let r = entry_record(&e, &secrets);
        assert!(r.sealed_token.is_none());
        assert_eq!(entry_of(r, &secrets), e);
        // Another secret cannot open the sealed token: it counts as claimed.
        let mut e2 = entry(8, Status::Approved);
        e2.device_token = "dt_x".into();
        let loaded = entry_of(entry_record(&e2, &secrets), &Secrets::derive(b"other"));
        assert!(loaded.token_claimed && loaded.device_token.is_empty());
    }

    #[test]
    fn invites_round_trip_in_both_formats() {
        let issuer = Issuer {
            peer_id: "admin-1".into(),
            mesh: Some("blue".into()),
        };
        for code in [Code::from_u32(42), Code::parse("K7QM-3XPA-9T2D").unwrap()] {
            let r = invite_record(code, &issuer, UnixTime(9));
            assert_eq!(invite_of(r), Some((code, issuer.clone(), UnixTime(9))));
        }
        let mut bad = invite_record(Code::from_u32(42), &issuer, UnixTime(9));
        bad.code = 7_000_000;
        assert_eq!(invite_of(bad), None);
    }
}

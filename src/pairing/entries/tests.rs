use super::*;

const T0: UnixTime = UnixTime(1_795_239_689_123_456_789);

fn counter_rng() -> impl FnMut(&mut [u8]) {
    let mut n = 0u8;
    move |buf: &mut [u8]| {
        for b in buf {
            n = n.wrapping_add(1);
            *b = n;
        }
    }
}

fn issuer(mesh: Option<&str>) -> Issuer {
    Issuer {
        peer_id: "agent-001".into(),
        mesh: mesh.map(str::to_owned),
    }
}

fn later(s: u64) -> UnixTime {
    T0.saturating_add_secs(s)
}

/// A store with one pending entry; returns its id string.
fn one_pending(store: &mut PairingStore, rng: &mut impl Rng) -> String {
    store
        .create_random(rng, "my-agent", issuer(Some("blue")), T0)
        .unwrap()
        .id
        .to_string()
}

#[test]
fn ids_and_tokens_format() {
    let mut r = counter_rng();
    let id = EntryId::random(&mut r);
    assert_eq!(id.to_string(), "01020304");
    assert_eq!(new_peer_id(&mut r), "agent-050607");
    let t = new_device_token(&mut r);
    assert_eq!(t, "dt_08090a0b0c0d0e0f1011121314151617");
    assert_eq!(t.len(), 35);
    assert_eq!(EntryId::parse("01020304"), Some(id));
    assert_eq!(
        EntryId::parse("deadbeef").map(EntryId::value),
        Some(0xdead_beef)
    );
    assert_eq!(EntryId::from_u32(0xab).to_string(), "000000ab");
    for bad in [
        "",
        "0102030",
        "010203040",
        "DEADBEEF",
        "0102030g",
        "-1020304",
        "0x020304",
    ] {
        assert_eq!(EntryId::parse(bad), None, "{bad}");
    }
}

#[test]
fn create_pending() {
    let mut s = PairingStore::new();
    let mut r = counter_rng();
    let e = s
        .create_random(&mut r, "my-agent", issuer(Some("blue")), T0)
        .unwrap();
    assert_eq!(e.status, Status::PendingApproval);
    assert!(e.device_token.is_empty());
    assert_eq!(e.mesh.as_deref(), Some("blue"));
    assert_eq!(e.invited_by, "agent-001");
    assert_eq!(e.created_at, T0);
    assert_eq!(e.updated_at, T0);
    assert!(e.device_grant().is_none());
    assert_eq!(
        serde_json::to_string(&e.pair_response()).unwrap(),
        r#"{"id":"01020304","peer_id":"agent-050607","status":"pending_approval"}"#
    );
    assert_eq!(s.len(), 1);
}

#[test]
fn entry_json_matches_reference_shape() {
    let mut s = PairingStore::new();
    let mut r = counter_rng();
    let id = one_pending(&mut s, &mut r);
    assert_eq!(
        serde_json::to_string(s.get(&id).unwrap()).unwrap(),
        r#"{"id":"01020304","agent_name":"my-agent","peer_id":"agent-050607","status":"pending_approval","created_at":1795239689.1234567,"updated_at":1795239689.1234567}"#
    );
    s.approve(&id, &mut r, UnixTime(1_795_239_700_500_000_000))
        .unwrap();
    assert_eq!(
        serde_json::to_string(s.get(&id).unwrap()).unwrap(),
        r#"{"id":"01020304","agent_name":"my-agent","peer_id":"agent-050607","status":"approved","created_at":1795239689.1234567,"updated_at":1795239700.5}"#
    );
}

#[test]
fn approve_then_revoke() {
    let mut s = PairingStore::new();
    let mut r = counter_rng();
    let id = one_pending(&mut s, &mut r);
    let e = s.approve(&id, &mut r, later(5)).unwrap();
    assert_eq!(e.status, Status::Approved);
    assert!(e.device_token.starts_with("dt_"));
    assert_eq!(e.updated_at, later(5));
    assert_eq!(e.created_at, T0);
    let resp = e.approve_response();
    assert_eq!(resp.status, Status::Approved);
    assert_eq!(resp.device_token, e.device_token);
    let grant = e.device_grant().unwrap();
    assert_eq!(grant.role, "agent");
    assert_eq!(grant.peer_id, e.peer_id);
    assert_eq!(grant.mesh.as_deref(), Some("blue"));
    assert_eq!(EntryId::from_u32(grant.entry_id).to_string(), id);
    let peer = e.peer_id.clone();
    assert_eq!(s.approved_peer_ids().collect::<Vec<_>>(), [peer.as_str()]);

    // Approve / reject again are refused.
    assert_eq!(
        s.approve(&id, &mut r, later(6)).unwrap_err(),
        ActionError::NotFoundOrNotPending
    );
    assert_eq!(
        s.reject(&id, later(6)).unwrap_err(),
        ActionError::NotFoundOrNotPending
    );

    let e = s.revoke(&id, later(7)).unwrap();
    assert_eq!(e.status, Status::Revoked);
    assert_eq!(e.updated_at, later(7));
    // The token stays on the entry (as in the reference) but grants nothing.
    assert!(!e.device_token.is_empty());
    assert!(e.device_grant().is_none());
    assert_eq!(s.approved_peer_ids().count(), 0);

    // Revoked is final.
    assert_eq!(
        s.revoke(&id, later(8)).unwrap_err(),
        ActionError::NotFoundOrNotApproved
    );
    assert_eq!(
        s.approve(&id, &mut r, later(8)).unwrap_err(),
        ActionError::NotFoundOrNotPending
    );
    assert_eq!(
        s.reject(&id, later(8)).unwrap_err(),
        ActionError::NotFoundOrNotPending
    );
}

#[test]
fn reject_is_final() {
    let mut s = PairingStore::new();
    let mut r = counter_rng();
    let id = one_pending(&mut s, &mut r);
    // Revoke of a pending entry is refused.
    assert_eq!(
        s.revoke(&id, later(1)).unwrap_err(),
        ActionError::NotFoundOrNotApproved
    );
    let e = s.reject(&id, later(2)).unwrap();
    assert_eq!(e.status, Status::Rejected);
    assert_eq!(e.updated_at, later(2));
    assert!(e.device_token.is_empty());
    assert_eq!(
        s.approve(&id, &mut r, later(3)).unwrap_err(),
        ActionError::NotFoundOrNotPending
    );
    assert_eq!(
        s.reject(&id, later(3)).unwrap_err(),
        ActionError::NotFoundOrNotPending
    );
    assert_eq!(
        s.revoke(&id, later(3)).unwrap_err(),
        ActionError::NotFoundOrNotApproved
    );
    // State unchanged by the refusals.
    assert_eq!(s.get(&id).unwrap().updated_at, later(2));
}

#[test]
fn unknown_and_malformed_ids() {
    let mut s = PairingStore::new();
    let mut r = counter_rng();
    let id = s
        .create(
            EntryId::from_u32(0xdead_beef),
            "p".into(),
            "a",
            issuer(None),
            T0,
        )
        .unwrap()
        .id
        .to_string();
    assert_eq!(id, "deadbeef");
    for bad in ["", "ffffffff", "01020304/../x", &id.to_uppercase(), "😀😀"] {
        assert!(s.get(bad).is_none());
        assert_eq!(
            s.approve(bad, &mut r, T0).unwrap_err(),
            ActionError::NotFoundOrNotPending
        );
        assert_eq!(
            s.reject(bad, T0).unwrap_err(),
            ActionError::NotFoundOrNotPending
        );
        assert_eq!(
            s.revoke(bad, T0).unwrap_err(),
            ActionError::NotFoundOrNotApproved
        );
    }
    assert_eq!(s.get(&id).unwrap().status, Status::PendingApproval);
}

#[test]
fn lists() {
    let mut s = PairingStore::new();
    let mut r = counter_rng();
    let a = s
        .create(
            EntryId::from_u32(3),
            "agent-aaaaaa".into(),
            "a",
            issuer(None),
            later(2),
        )
        .unwrap()
        .id;
    let b = s
        .create(
            EntryId::from_u32(2),
            "agent-bbbbbb".into(),
            "b",
            issuer(None),
            later(1),
        )
        .unwrap()
        .id;
    let c = s
        .create(
            EntryId::from_u32(1),
            "agent-cccccc".into(),
            "c",
            issuer(None),
            later(2),
        )
        .unwrap()
        .id;
    s.approve(&b.to_string(), &mut r, later(3)).unwrap();
    let ids = |v: Vec<&Entry>| v.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_all()), [b, c, a]);
    assert_eq!(ids(s.list_pending()), [c, a]);
    s.reject(&a.to_string(), later(4)).unwrap();
    assert_eq!(ids(s.list_pending()), [c]);
    assert_eq!(
        serde_json::to_string(&s.list_pending()).unwrap(),
        format!(
            r#"[{{"id":"00000001","agent_name":"c","peer_id":"agent-cccccc","status":"pending_approval","created_at":{0},"updated_at":{0}}}]"#,
            later(2).as_secs_f64()
        )
    );
    assert_eq!(
        serde_json::to_string(&PairingStore::new().list_all()).unwrap(),
        "[]"
    );
}

#[test]
fn id_collision_and_limit() {
    let mut s = PairingStore::with_limit(2);
    assert_eq!(s.entries_max(), 2);
    let id = EntryId::from_u32(7);
    s.create(id, "agent-000001".into(), "a", issuer(None), T0)
        .unwrap();
    assert_eq!(
        s.create(id, "agent-000002".into(), "b", issuer(None), T0)
            .unwrap_err(),
        CreateError::IdInUse
    );
    // The original is untouched.
    assert_eq!(s.get("00000007").unwrap().agent_name, "a");
    // create_random redraws past a taken id.
    let mut draws = [7u32, 7, 9].into_iter();
    let mut r = move |b: &mut [u8]| {
        if b.len() == 4 {
            b.copy_from_slice(&draws.next().unwrap_or(0).to_be_bytes());
        } else {
            b.fill(0xab);
        }
    };
    let e = s.create_random(&mut r, "c", issuer(None), T0).unwrap();
    assert_eq!(e.id, EntryId::from_u32(9));
    assert_eq!(e.peer_id, "agent-ababab");
    assert_eq!(
        s.create(EntryId::from_u32(10), "p".into(), "d", issuer(None), T0)
            .unwrap_err(),
        CreateError::Full
    );
    // A generator stuck on a taken id gives up.
    let mut stuck = |b: &mut [u8]| b.copy_from_slice(&[0, 0, 0, 7][..b.len().min(4)]);
    let mut big = PairingStore::new();
    big.create(id, "p".into(), "a", issuer(None), T0).unwrap();
    assert_eq!(
        big.create_random(&mut stuck, "x", issuer(None), T0)
            .unwrap_err(),
        CreateError::IdInUse
    );
}

#[test]
fn withdrawn_approval_goes_back_to_pending() {
    let mut store = PairingStore::new();
    let mut rng = |b: &mut [u8]| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8 + 7);
    let issuer = Issuer {
        peer_id: "admin".into(),
        mesh: None,
    };
    let id = store
        .create_random(&mut rng, "laptop", issuer, UnixTime::from_secs(1))
        .unwrap()
        .id
        .to_string();
    assert!(
        store
            .withdraw_approval(&id, UnixTime::from_secs(2))
            .is_err(),
        "pending: nothing to withdraw"
    );
    store
        .approve(&id, &mut rng, UnixTime::from_secs(3))
        .unwrap();
    let e = store
        .withdraw_approval(&id, UnixTime::from_secs(4))
        .unwrap();
    assert_eq!(e.status, Status::PendingApproval);
    assert!(e.device_token.is_empty());
    assert!(
        store.approve(&id, &mut rng, UnixTime::from_secs(5)).is_ok(),
        "approvable again"
    );
}

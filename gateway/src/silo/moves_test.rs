//! The checks of a move's pieces: the order a silo pulls, and the handover the silo a client
//! goes to takes; each forgery refused with its reason.

use super::*;
use crate::silo::certify_silo_key;

struct World {
    root: AgentKeys,
    silo_a: AgentKeys,
    _dirs: Vec<tempfile::TempDir>,
}

fn world() -> World {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let root = AgentKeys::load_or_create(dirs[0].path()).unwrap();
    let silo_a = AgentKeys::load_or_create(dirs[1].path()).unwrap();
    World { root, silo_a, _dirs: dirs }
}

const CERT: &[u8] = b"the new certificate's DER";

fn signed_order(keys: &AgentKeys, order: &MoveOrder) -> Signed {
    let mut payload = BytesMut::new();
    order.encode(&mut payload);
    let signature = keys.sign(SignDomain::Move, &payload);
    Signed { payload: payload.freeze(), signature }
}

fn order(machine: Uuid) -> MoveOrder {
    MoveOrder {
        id: Uuid::new_v4(),
        machine,
        from: "silo-a".into(),
        to: "silo-b".into(),
        location: "silo-b.example.net:4433".into(),
        cert_sha256: sha256(CERT),
        issued_at: 1,
    }
}

fn silo_key(world: &World, silo: &str) -> Signed {
    let (payload, signature) = certify_silo_key(&world.root, silo, world.silo_a.signing_public(), 30);
    Signed {
        payload: Bytes::from(hex::decode(payload).unwrap()),
        signature: hex::decode(signature).unwrap().try_into().unwrap(),
    }
}

fn export_of(order: &MoveOrder, keys: &AgentKeys) -> Signed {
    let export = Export {
        machine: order.machine,
        from: order.from.clone(),
        move_id: order.id,
        exported_at: 2,
        history: ClientHistory::default(),
    };
    let payload = serde_json::to_vec(&export).unwrap();
    let signature = keys.sign(SignDomain::SiloExport, &payload);
    Signed { payload: Bytes::from(payload), signature }
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn a_handover_signed_along_the_chain_checks_out_and_each_forgery_is_refused() {
    let world = world();
    let uuid = Uuid::new_v4();
    let order = order(uuid);
    let good = Handover {
        order: signed_order(&world.root, &order),
        silo_key: silo_key(&world, "silo-a"),
        export: export_of(&order, &world.silo_a),
    };
    let root = world.root.signing_public();
    let check = |h: &Handover, me: &str, cert: &[u8]| {
        let order = check_order(&root, me, uuid, &sha256(cert), h)?;
        let export = check_history(&root, &order, h, now())?;
        Ok::<_, String>((order, export))
    };
    let (checked, export) = check(&good, "silo-b", CERT).expect("the chain checks out");
    assert_eq!((checked.id, export.move_id), (order.id, order.id));

    let refused = |h: &Handover, me: &str, cert: &[u8]| check(h, me, cert).unwrap_err();
    assert!(refused(&good, "silo-c", CERT).contains("to silo silo-b"));
    assert!(refused(&good, "silo-b", b"another certificate").contains("another certificate"));
    // The leaving silo signs the order itself: not the root's.
    let rogue_order = Handover { order: signed_order(&world.silo_a, &order), ..good.clone() };
    assert!(refused(&rogue_order, "silo-b", CERT).contains("not signed by the root"));
    // A key the root certified for another silo.
    let other_key = Handover { silo_key: silo_key(&world, "silo-x"), ..good.clone() };
    assert!(refused(&other_key, "silo-b", CERT).contains("certified for silo silo-x"));
    // The history altered after the leaving silo signed it.
    let mut tampered = good.clone();
    let mut payload = tampered.export.payload.to_vec();
    let at = payload.len() - 2;
    payload[at] ^= 1;
    tampered.export.payload = Bytes::from(payload);
    assert!(refused(&tampered, "silo-b", CERT).contains("not signed by silo silo-a"));
    // A history of another move, signed all the same.
    let other = export_of(&self::order(uuid), &world.silo_a);
    assert!(refused(&Handover { export: other, ..good.clone() }, "silo-b", CERT).contains("another move"));
    // Exported after the root's certification of the key ended (30 days): refused.
    let late = Export { exported_at: now() + 31 * 86_400, ..export };
    let payload = serde_json::to_vec(&late).unwrap();
    let signature = world.silo_a.sign(SignDomain::SiloExport, &payload);
    let late = Handover { export: Signed { payload: Bytes::from(payload), signature }, ..good };
    assert!(refused(&late, "silo-b", CERT).contains("did not hold"));
}

#[test]
fn a_silo_holds_only_the_root_signed_moves_out_of_it_for_their_own_certificate() {
    let world = world();
    let uuid = Uuid::new_v4();
    let order = order(uuid);
    let signed = signed_order(&world.root, &order);
    let served = ServedMove {
        id: order.id.to_string(),
        uuid,
        certificate: b64().encode(CERT),
        order: b64().encode(&signed.payload),
        signature: hex::encode(signed.signature),
        confirmed: false,
    };
    let root = world.root.signing_public();
    let held = check_served(&root, "silo-a", &served).unwrap();
    assert_eq!((held.id, &held.cert_der[..]), (order.id, CERT));
    assert!(check_served(&root, "silo-b", &served).is_err(), "a move out of another silo");
    let swapped = ServedMove { certificate: b64().encode(b"another"), ..served.clone() };
    assert!(check_served(&root, "silo-a", &swapped).is_err(), "another certificate");
    let forged = ServedMove { signature: hex::encode([0u8; 64]), ..served };
    let err = check_served(&root, "silo-a", &forged).unwrap_err().to_string();
    assert!(err.contains("not signed by the root"), "{err}");
}

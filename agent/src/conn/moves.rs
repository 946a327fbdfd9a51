//! Moving to another maintenance silo (`docs/silos.md`, "Moving a client"): the agent is the
//! hub between the two silos. The silo it leaves sends `Move` (a new certificate, the root's
//! order, its history signed by that silo); the agent checks the order against the root key it
//! pinned at enrollment, keeps the certificate and the handover, dials the silo the order names,
//! and sends it `Transfer` until that silo's receipt.
//!
//! What it does not do: judge the history (the silo it goes to checks that signature chain).

use anyhow::{Context, Result};
use bytes::BytesMut;
use protocols::tap::{Handover, Message, MoveOrder, SignDomain};
use tracing::{info, warn};
use uuid::Uuid;

use super::{own_entitlement, pem_block, Agent};
use crate::link::Control;
use crate::state::write_durable;

/// The handover kept until the new silo's receipt: a `Transfer` frame, as sent.
pub(super) const HANDOVER_FILE: &str = "handover.bin";

/// This machine as a move must fit it: its UUID, its key (SubjectPublicKeyInfo), the
/// certificate it holds now, the root's key it pinned at enrollment.
pub(super) struct Mine<'a> {
    pub uuid: Uuid,
    pub spki: &'a [u8],
    pub cert_der: &'a [u8],
    pub root_key: &'a [u8],
}

/// Whether `cert_der` and `handover` are the root's move of this machine, now: the order is
/// signed by the root's key and names this machine, the silo its certificate names now, and this
/// certificate, which is for this machine's key, names the silo the order sends it to, has not
/// expired, and is newer than the one it holds (an old order, replayed, is refused). The order.
pub(super) fn check_move(mine: &Mine<'_>, cert_der: &[u8], handover: &Handover, now: i64) -> Result<MoveOrder, String> {
    let (root_key, uuid, own_spki) = (mine.root_key, mine.uuid, mine.spki);
    use x509_parser::prelude::{FromDer, X509Certificate};
    if !crate::signature::verifies(root_key, SignDomain::Move, &handover.order) {
        return Err("the move is not signed by the root's key pinned at enrollment".into());
    }
    let order = MoveOrder::decode(&handover.order.payload).map_err(|e| format!("the move does not decode: {e}"))?;
    if order.machine != uuid {
        return Err(format!("the move is for machine {}, not this one", order.machine));
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
    if digest.as_ref() != order.cert_sha256 {
        return Err("the certificate is not the one the root's order names".into());
    }
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| format!("the certificate does not parse: {e}"))?;
    if cert.tbs_certificate.subject_pki.raw != own_spki {
        return Err("the certificate is not for this machine's key".into());
    }
    if cert.validity().not_after.timestamp() <= now {
        return Err("the new certificate has expired".into());
    }
    let (_, held) = X509Certificate::from_der(mine.cert_der)
        .map_err(|e| format!("this machine's certificate does not parse: {e}"))?;
    if order.issued_at <= held.validity().not_before.timestamp() {
        return Err("the move is older than this machine's certificate (replayed?)".into());
    }
    match own_entitlement(mine.cert_der) {
        Some(e) if e.silo == order.from => {}
        _ => return Err(format!("the move is out of silo {}, which does not serve this machine", order.from)),
    }
    match own_entitlement(cert_der) {
        Some(e) if e.silo == order.to && e.location == order.location => Ok(order),
        _ => Err(format!("the certificate does not name silo {} at {}", order.to, order.location)),
    }
}

impl Agent {
    /// A `Move` from the silo this session is with: when the root ordered it, the new
    /// certificate and the silo's location replace the old ones, and the handover is kept for
    /// the new silo. Whether the agent moved (the session then ends, and the agent dials there).
    pub(super) fn on_move(&self, cert_der: &[u8], handover: &Handover) -> Result<bool> {
        let key_pem = std::fs::read_to_string(self.state.path("key.pem")).context("reading key.pem")?;
        let key = rcgen::KeyPair::from_pem(&key_pem).context("key.pem holds no key")?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let held = self.held_cert()?;
        let mine = Mine { uuid: self.enrollment.uuid, spki: &spki, cert_der: &held, root_key: &self.signing_key };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let order = match check_move(&mine, cert_der, handover, now) {
            Ok(order) => order,
            Err(why) => {
                warn!("refusing a move to another silo: {why}; staying");
                return Ok(false);
            }
        };
        let mut frame = BytesMut::new();
        Message::Transfer(handover.clone()).encode(&mut frame);
        write_durable(&self.state.path(HANDOVER_FILE), &frame, 0o600)?;
        write_durable(&self.state.path("cert.pem"), pem_block("CERTIFICATE", cert_der).as_bytes(), 0o644)?;
        let mut enrollment = self.state.require_enrollment()?;
        enrollment.gateways = vec![order.location.clone()];
        self.state.save_enrollment(&enrollment)?;
        // The silo left configured its own gateways; the new one sends its own.
        let _ = std::fs::remove_file(self.state.path("config.json"));
        info!(from = %order.from, to = %order.to, location = %order.location, "moved by the root to another silo");
        Ok(true)
    }

    /// The certificate this machine holds now (DER).
    pub(super) fn held_cert(&self) -> Result<Vec<u8>> {
        held_cert(&self.state)
    }

    /// At a new connection: the handover still waiting for its receipt, if any.
    pub(super) async fn send_handover(&self, control: &mut Control) -> Result<()> {
        if let Ok(frame) = std::fs::read(self.state.path(HANDOVER_FILE)) {
            control.write_raw(&frame).await?;
        }
        Ok(())
    }

    /// A receipt for the handover's order: the new silo has the history.
    pub(super) fn handover_received(&self, id: Uuid) {
        let path = self.state.path(HANDOVER_FILE);
        let Ok(frame) = std::fs::read(&path) else { return };
        let ours = match protocols::tap::decode(&frame, &protocols::tap::Limits::default()) {
            Ok(Some((Message::Transfer(handover), _))) => MoveOrder::decode(&handover.order.payload).ok().map(|o| o.id),
            _ => None,
        };
        if ours.is_none() || ours == Some(id) {
            let _ = std::fs::remove_file(&path);
            info!("the new silo has this machine's history");
        }
    }
}

/// The certificate this machine holds (DER).
pub(super) fn held_cert(state: &crate::state::StateDir) -> Result<Vec<u8>> {
    let pem = std::fs::read(state.path("cert.pem")).context("reading cert.pem")?;
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next().context("cert.pem holds no certificate")??;
    Ok(der.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::testing;
    use bytes::Bytes;
    use protocols::tap::Signed;

    fn handover(order: Signed) -> Handover {
        let empty = Signed { payload: Bytes::new(), signature: [0; 64] };
        Handover { order, silo_key: empty.clone(), export: empty }
    }

    #[test]
    fn a_move_counts_only_when_the_root_signed_it_for_this_machine_its_key_and_this_certificate() {
        // A certificate for this machine's key naming silo-b, issued by some CA.
        let machine = rcgen::KeyPair::generate().unwrap();
        let entitlement = protocols::entitlement::Entitlement {
            service: "support".into(),
            tier: "standard".into(),
            silo: "silo-b".into(),
            location: "silo-b:4433".into(),
            subscriber: Uuid::new_v4().to_string(),
            not_after: 4_000_000_000,
        };
        let cert_since = |entitlement: &protocols::entitlement::Entitlement, serial: u8, not_before: i64| {
            let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
            params.subject_alt_names = vec![rcgen::SanType::URI(entitlement.to_urn().unwrap().try_into().unwrap())];
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial; 8]));
            params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
            params.self_signed(&machine).unwrap().der().to_vec()
        };
        let cert_for =
            |entitlement: &protocols::entitlement::Entitlement, serial: u8| cert_since(entitlement, serial, 1_000);
        let cert = cert_for(&entitlement, 1);
        let held = cert_for(&protocols::entitlement::Entitlement { silo: "silo-a".into(), ..entitlement.clone() }, 2);
        let spki = rcgen::PublicKeyData::subject_public_key_info(&machine);
        let uuid = Uuid::new_v4();
        let order = |to: &str, cert: &[u8]| {
            let body = MoveOrder {
                id: Uuid::new_v4(),
                machine: uuid,
                from: "silo-a".into(),
                to: to.into(),
                location: "silo-b:4433".into(),
                cert_sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert).as_ref().try_into().unwrap(),
                issued_at: 2_000,
            };
            let mut out = BytesMut::new();
            body.encode(&mut out);
            out.to_vec()
        };
        let root = testing::key();
        let pinned = testing::public(&root);
        let signed = |payload: Vec<u8>| handover(testing::sign(&root, SignDomain::Move, payload));

        let mine = Mine { uuid, spki: &spki, cert_der: &held, root_key: &pinned };
        let now = 3_000;
        let good = signed(order("silo-b", &cert));
        assert_eq!(check_move(&mine, &cert, &good, now).unwrap().to, "silo-b");
        // Signed by the silo that sends it, not the root.
        let rogue = handover(testing::sign(&testing::key(), SignDomain::Move, order("silo-b", &cert)));
        assert!(check_move(&mine, &cert, &rogue, now).unwrap_err().contains("not signed by the root"));
        let someone = Mine { uuid: Uuid::new_v4(), ..mine };
        assert!(check_move(&someone, &cert, &good, now).unwrap_err().contains("for machine"));
        let other_cert = cert_for(&entitlement, 3);
        let err = check_move(&mine, &other_cert, &good, now).unwrap_err();
        assert!(err.contains("not the one the root's order names"), "{err}");
        let other_key = rcgen::PublicKeyData::subject_public_key_info(&rcgen::KeyPair::generate().unwrap());
        let stranger = Mine { spki: &other_key, ..mine };
        assert!(check_move(&stranger, &cert, &good, now).unwrap_err().contains("this machine's key"));
        let elsewhere = signed(order("silo-c", &cert));
        assert!(check_move(&mine, &cert, &elsewhere, now).unwrap_err().contains("does not name silo"));
        // Once moved, the same order again (replayed by any silo) is out of a silo that no longer
        // serves this machine; an order older than the certificate held is refused as such.
        let moved = Mine { cert_der: &cert, ..mine };
        assert!(check_move(&moved, &cert, &good, now).unwrap_err().contains("does not serve"));
        let newer =
            cert_since(&protocols::entitlement::Entitlement { silo: "silo-a".into(), ..entitlement.clone() }, 5, 2_500);
        let reissued = Mine { cert_der: &newer, ..mine };
        assert!(check_move(&reissued, &cert, &good, now).unwrap_err().contains("older than"));
        // An order out of a silo that does not serve this machine.
        let at_b = cert_for(&entitlement, 4);
        let elsewhere_now = Mine { cert_der: &at_b, ..mine };
        let err = check_move(&elsewhere_now, &cert, &good, now).unwrap_err();
        assert!(err.contains("does not serve"), "{err}");
    }
}

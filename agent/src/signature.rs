//! Checking what the gateway signs (configuration, messages, support actions): Ed25519 over
//! `tap::signed_message(domain, payload)`, with the gateway's key pinned at enrollment.
//!
//! What it does not do: decode the payload (do that only once this says yes).

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use protocols::tap::{self, SignDomain, Signed};

/// Whether `signed` carries a valid signature of kind `domain` by `key` (32 bytes, Ed25519).
pub fn verifies(key: &[u8], domain: SignDomain, signed: &Signed) -> bool {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&tap::signed_message(domain, &signed.payload), &signed.signature)
        .is_ok()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Signing as the gateway does, for tests.

    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use bytes::Bytes;
    use protocols::tap::{self, SignDomain, Signed, SIGNATURE_LEN};

    /// A fresh gateway key pair.
    pub fn key() -> Ed25519KeyPair {
        Ed25519KeyPair::generate().expect("an Ed25519 key")
    }

    pub fn public(key: &Ed25519KeyPair) -> Vec<u8> {
        key.public_key().as_ref().to_vec()
    }

    pub fn sign(key: &Ed25519KeyPair, domain: SignDomain, payload: Vec<u8>) -> Signed {
        let signature: [u8; SIGNATURE_LEN] =
            key.sign(&tap::signed_message(domain, &payload)).as_ref().try_into().expect("64 bytes");
        Signed { payload: Bytes::from(payload), signature }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_in_its_own_domain_only() {
        let key = testing::key();
        let signed = testing::sign(&key, SignDomain::Action, b"payload".to_vec());
        assert!(verifies(&testing::public(&key), SignDomain::Action, &signed));
        assert!(!verifies(&testing::public(&key), SignDomain::Message, &signed));
        assert!(!verifies(&testing::public(&testing::key()), SignDomain::Action, &signed));
        let mut tampered = signed.clone();
        tampered.payload = bytes::Bytes::from_static(b"payloae");
        assert!(!verifies(&testing::public(&key), SignDomain::Action, &tampered));
    }
}

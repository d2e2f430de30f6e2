//! `scheme = "razorpay"`: `X-Razorpay-Signature: <hex(HMAC-SHA256(webhook_secret, body))>`,
//! no prefix, no timestamp. The event id is the `x-razorpay-event-id` header, so a
//! redelivery is answered `200 duplicate` with the default `dedupe.key = "auto"`.

use std::time::SystemTime;

use http::request::Parts;

use super::kit::BodyMac;
use super::{header, only_keys, secrets, Algorithm, Encoding, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::Problems;

const SCHEME: &str = "razorpay";

#[derive(Debug)]
pub struct RazorpayVerifier {
    mac: BodyMac,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<RazorpayVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    if secrets.is_empty() {
        return None;
    }
    Some(RazorpayVerifier {
        mac: BodyMac {
            header: "x-razorpay-signature",
            prefix: "",
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            secrets,
        },
    })
}

/// Razorpay's event id; not signed.
fn event_id(req: &Parts) -> Option<String> {
    header(req, "x-razorpay-event-id")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl super::Verifier for RazorpayVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, req: &Parts, _body: &[u8]) -> Option<String> {
        event_id(req)
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let i = self.mac.check(req, body)?;
        Ok(super::preset::verified_unsigned_id(
            SCHEME,
            event_id(req),
            Some(i),
            &[body],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kit::testutil::{parts, raw};
    use crate::verify::Verifier;

    /// razorpay-python `tests/mocks/fake_payment_authorized_webhook.json` (971 bytes, sha256
    /// 9cc02364…1862bef), byte for byte.
    const BODY: &[u8] = include_bytes!("testdata/razorpay_payment_authorized.json");
    /// PROVIDERS.md §3 #10: razorpay-python `tests/test_client_utility.py`, secret `key_secret`.
    const SIG: &str = "d60e67fd884556c045e9be7dad57903e33efc7172c17c6e3ef77db42d2b366e9";

    fn v(secrets: &[&str]) -> RazorpayVerifier {
        build(&raw("razorpay", secrets), "v", &mut Problems::default()).unwrap()
    }

    #[test]
    fn published_vector() {
        assert_eq!(BODY.len(), 971);
        let r = parts(
            "POST",
            "/",
            &[
                ("x-razorpay-signature", SIG),
                ("x-razorpay-event-id", "Ev1"),
            ],
        );
        let ok = v(&["key_secret"])
            .verify(&r, BODY, SystemTime::now())
            .unwrap();
        assert_eq!(ok.secret_index, Some(0));
        assert_eq!(ok.event_id.as_deref(), Some("Ev1"));
        // Rotation: the second configured secret matches.
        let ok = v(&["new_secret", "key_secret"])
            .verify(&r, BODY, SystemTime::now())
            .unwrap();
        assert_eq!(ok.secret_index, Some(1));
    }

    #[test]
    fn negatives() {
        let now = SystemTime::now();
        let r = parts("POST", "/", &[("x-razorpay-signature", SIG)]);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            v(&["key_secret"]).verify(&r, &tampered, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v(&["other"]).verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let none = parts("POST", "/", &[]);
        assert_eq!(
            v(&["key_secret"]).verify(&none, BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
        let upper = parts(
            "POST",
            "/",
            &[("x-razorpay-signature", &SIG.to_uppercase())],
        );
        assert!(
            v(&["key_secret"]).verify(&upper, BODY, now).is_ok(),
            "hex is case-insensitive"
        );
        let several = format!("{},{SIG}", "00".repeat(32));
        let r = parts("POST", "/", &[("x-razorpay-signature", &several)]);
        assert!(v(&["key_secret"]).verify(&r, BODY, now).is_ok());
        let ok = v(&["key_secret"])
            .verify(
                &parts("POST", "/", &[("x-razorpay-signature", SIG)]),
                BODY,
                now,
            )
            .unwrap();
        assert_eq!(ok.event_id, None, "no event id header: dedupe falls back");
    }
}

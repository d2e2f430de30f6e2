//! `scheme = "stripe"`: `Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>…][,v0=…]`, where each
//! `v1` is hex HMAC-SHA256 over `"{t}.{body}"` keyed with the endpoint secret string
//! (`whsec_…` used verbatim, not decoded). During a secret roll Stripe sends one `v1` per active
//! secret; `v0` and unknown keys are ignored. Tolerance 300 s (stripe SDKs' default), checked in
//! both directions here (the SDKs accept future timestamps; a gateway has no reason to).
//! Event id: the body's `id` (`evt_…`), read only after the signature verified.

use std::time::{Duration, SystemTime};

use http::request::Parts;

use super::preset::{self, check_fresh, find_secret, parse_ts};
use super::{crypto, only_keys, secrets, Algorithm, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "stripe";
const HEADER: &str = "stripe-signature";

#[derive(Debug)]
pub struct StripeVerifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<StripeVerifier> {
    only_keys(raw, &["secrets", "tolerance"], SCHEME, at, p);
    let tolerance = preset::tolerance(raw, Duration::from_secs(300), at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty()).then_some(StripeVerifier { secrets, tolerance })
}

fn expected(secret: &[u8], ts: &str, body: &[u8]) -> Vec<u8> {
    crypto::mac(Algorithm::Sha256, secret, &[ts.as_bytes(), b".", body])
}

impl super::Verifier for StripeVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn retries_resigned(&self) -> bool {
        true
    }

    fn claimed_id(&self, _req: &Parts, body: &[u8]) -> Option<String> {
        preset::claimed_json_field(body, "id")
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        preset::signed_at(
            preset::header_nonempty(req, HEADER)
                .and_then(|h| preset::timestamp_and_hex_signatures(h, ',', "t", "v1").0),
        )
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, HEADER).ok_or(VerifyError::MissingSignature)?;
        let (ts, sigs) = preset::timestamp_and_hex_signatures(h, ',', "t", "v1");
        let ts = ts.ok_or(VerifyError::StaleTimestamp)?;
        check_fresh(parse_ts(ts)?, Duration::from_secs(1), now, self.tolerance)?;
        let i = find_secret(&self.secrets, |s| {
            let m = expected(s, ts, body);
            sigs.iter().any(|c| crypto::ct_eq(c, &m))
        })
        .ok_or(VerifyError::InvalidSignature)?;
        Ok(preset::verified(
            SCHEME,
            preset::json_field(body, "id"),
            Some(i),
        ))
    }

    fn sign(
        &self,
        _method: &http::Method,
        body: &[u8],
        now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let ts = preset::unix_secs(now).to_string();
        let m = expected(self.secrets.first()?.expose(), &ts, body);
        Some(vec![(
            "Stripe-Signature".into(),
            format!("t={ts},v1={}", hex::encode(m)),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;

    const BODY: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;
    // Derived with stripe-python 16.1.0 `WebhookSignature.generate_signature_header` (PROVIDERS §3).
    const HEADER_VALUE: &str =
        "t=1700000000,v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";

    fn v() -> std::sync::Arc<dyn crate::verify::Verifier> {
        verifier("scheme = \"stripe\"\nsecrets = [\"whsec_old\", \"whsec_test_secret\"]")
    }

    #[test]
    fn sdk_vector() {
        let ok = v()
            .verify(
                &req(&[("Stripe-Signature", HEADER_VALUE)]),
                BODY,
                at(1_700_000_000),
            )
            .unwrap();
        assert_eq!(ok.scheme, "stripe");
        assert_eq!(ok.event_id.as_deref(), Some("evt_test_webhook"));
        assert_eq!(
            ok.secret_index,
            Some(1),
            "rotated secret found at its index"
        );
    }

    #[test]
    fn negatives() {
        let v = v();
        let r = req(&[("Stripe-Signature", HEADER_VALUE)]);
        let now = at(1_700_000_000);
        let tampered = br#"{"id":"evt_test_webhooK","object":"event"}"#;
        assert_eq!(
            v.verify(&r, tampered, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&req(&[]), BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(&r, BODY, at(1_700_000_301)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&r, BODY, at(1_699_999_699)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert!(v.verify(&r, BODY, at(1_700_000_300)).is_ok());
        let wrong = verifier("scheme = \"stripe\"\nsecrets = [\"whsec_other\"]");
        assert_eq!(
            wrong.verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let no_t = req(&[(
            "Stripe-Signature",
            "v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990",
        )]);
        assert_eq!(
            v.verify(&no_t, BODY, now).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        let moved = req(&[(
            "Stripe-Signature",
            &HEADER_VALUE.replace("1700000000", "1700000001"),
        )]);
        assert_eq!(
            v.verify(&moved, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // A v0 signature alone is never accepted.
        let v0 = req(&[("Stripe-Signature", &HEADER_VALUE.replace("v1=", "v0="))]);
        assert_eq!(
            v.verify(&v0, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn several_signatures_during_a_roll() {
        let h = format!("{HEADER_VALUE},v1=00ff,v0=abcd").replace(",v1=d95c", ",v1=00ff,v1=d95c");
        let ok = v().verify(&req(&[("Stripe-Signature", &h)]), BODY, at(1_700_000_000));
        assert_eq!(ok.unwrap().secret_index, Some(1));
    }

    #[test]
    fn sign_round_trips_and_body_is_not_json() {
        let v = v();
        let h = v
            .sign(&http::Method::POST, b"not json", at(1_700_000_000), "")
            .unwrap();
        let ok = v
            .verify(&signed_req(&h), b"not json", at(1_700_000_000))
            .unwrap();
        assert_eq!((ok.secret_index, ok.event_id), (Some(0), None));
    }

    #[test]
    fn config() {
        let e = try_build(
            "scheme = \"stripe\"\nsecrets = [\"x\"]\npublic_key = \"y\"",
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("route[0].verify.public_key: not used by scheme \"stripe\""),
            "{e}"
        );
        let e = try_build("scheme = \"stripe\"", None).unwrap_err();
        assert!(
            e.contains("route[0].verify.secrets: at least one secret is required"),
            "{e}"
        );
    }
}

//! `scheme = "linear"`: `Linear-Signature: <hex HMAC-SHA256(signing_secret, body)>`. The
//! timestamp is inside the signed body, `webhookTimestamp` in **milliseconds**; once the
//! signature verified, it must be within 60 s of now in either direction (`@linear/sdk`
//! `LinearWebhookClient.verify`), else `stale_timestamp`. Event id: the `Linear-Delivery` header.

use std::time::{Duration, SystemTime};

use http::request::Parts;

use super::preset::{self, check_fresh, find_secret};
use super::{crypto, only_keys, secrets, Algorithm, Encoding, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "linear";

#[derive(Debug)]
pub struct LinearVerifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<LinearVerifier> {
    only_keys(raw, &["secrets", "tolerance"], SCHEME, at, p);
    let tolerance = preset::tolerance(raw, Duration::from_secs(60), at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty()).then_some(LinearVerifier { secrets, tolerance })
}

/// `webhookTimestamp` of a verified body, in ms.
fn body_timestamp(body: &[u8]) -> Option<i64> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    doc.get("webhookTimestamp")?.as_i64()
}

/// Linear's delivery id; not signed.
fn delivery(req: &Parts) -> Option<String> {
    preset::header_nonempty(req, "linear-delivery").map(str::to_string)
}

impl super::Verifier for LinearVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, req: &Parts, _body: &[u8]) -> Option<String> {
        delivery(req)
    }

    /// Asked only of a request refused as stale, which Linear's is only once its signature
    /// checked out (the timestamp is in the signed body): never a parse of a forged body.
    fn signed_at(&self, _req: &Parts, body: &[u8]) -> Option<i64> {
        body_timestamp(body).map(|ms| ms.div_euclid(1000))
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, "linear-signature")
            .ok_or(VerifyError::MissingSignature)?;
        let sig = Encoding::Hex
            .decode(h)
            .ok_or(VerifyError::InvalidSignature)?;
        let i = find_secret(&self.secrets, |s| {
            crypto::ct_eq(&sig, &crypto::mac(Algorithm::Sha256, s, &[body]))
        })
        .ok_or(VerifyError::InvalidSignature)?;
        let ts = body_timestamp(body).ok_or(VerifyError::StaleTimestamp)?;
        check_fresh(ts, Duration::from_millis(1), now, self.tolerance)?;
        Ok(preset::verified_unsigned_id(
            SCHEME,
            delivery(req),
            Some(i),
            &[body],
        ))
    }

    /// The body must carry a current `webhookTimestamp` (ms) for the request to pass.
    fn sign(
        &self,
        _method: &http::Method,
        body: &[u8],
        _now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let m = crypto::mac(Algorithm::Sha256, self.secrets.first()?.expose(), &[body]);
        Some(vec![
            ("Linear-Signature".into(), hex::encode(m)),
            ("Linear-Delivery".into(), uuid::Uuid::now_v7().to_string()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;
    use crate::verify::Verifier;

    // Linear publishes no vector. Fixture computed with Python 3.11
    // `hmac.new(b"lin_wh_secret", BODY, "sha256").hexdigest()`, the algorithm of @linear/sdk
    // `LinearWebhookClient.verify` (hex HMAC-SHA256 of the raw body).
    const BODY: &[u8] = br#"{"action":"create","type":"Issue","webhookTimestamp":1700000000000}"#;
    const SIG: &str = "91e919dc0fd99df1cae12efef1ca08b082cfa523f101b572ec14ed98863fdf35";

    fn v() -> std::sync::Arc<dyn Verifier> {
        verifier("scheme = \"linear\"\nsecrets = [\"old\", \"lin_wh_secret\"]")
    }

    #[test]
    fn fixture_with_millisecond_timestamp() {
        let r = req(&[
            ("Linear-Signature", SIG),
            ("Linear-Delivery", "234d1a4e-b617-4388-90fe-adc3633d6b72"),
        ]);
        let ok = v().verify(&r, BODY, at(1_700_000_000)).unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id.as_deref()),
            (
                "linear",
                Some(1),
                Some("234d1a4e-b617-4388-90fe-adc3633d6b72")
            )
        );
        assert!(v().verify(&r, BODY, at(1_700_000_060)).is_ok());
    }

    #[test]
    fn negatives() {
        let v = v();
        let r = req(&[("Linear-Signature", SIG)]);
        let now = at(1_700_000_000);
        let tampered = br#"{"action":"remove","type":"Issue","webhookTimestamp":1700000000000}"#;
        assert_eq!(
            v.verify(&r, tampered, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&req(&[]), BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(&r, BODY, at(1_700_000_061)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&r, BODY, at(1_699_999_939)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        let two = req(&[("Linear-Signature", &format!("{SIG},{SIG}"))]);
        assert_eq!(
            v.verify(&two, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let wrong = verifier("scheme = \"linear\"\nsecrets = [\"lin_wh_secreT\"]");
        assert_eq!(
            wrong.verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // Signed, but without webhookTimestamp (or in seconds): stale.
        for body in [
            &b"{\"action\":\"create\"}"[..],
            b"{\"webhookTimestamp\":1700000000}",
            b"not json",
        ] {
            let h = v.sign(&http::Method::POST, body, now, "").unwrap();
            assert_eq!(
                v.verify(&signed_req(&h), body, now).unwrap_err(),
                VerifyError::StaleTimestamp
            );
        }
        let h = v.sign(&http::Method::POST, BODY, now, "").unwrap();
        assert!(v.verify(&signed_req(&h), BODY, now).is_ok());
    }
}

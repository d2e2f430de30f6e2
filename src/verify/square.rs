//! `scheme = "square"`: `x-square-hmacsha256-signature: base64(HMAC-SHA256(signature_key,
//! notification_url + body))`, where the notification URL is the public URL Square called
//! (`server.public_url` + path + query; it must match the subscription's URL byte for byte). The
//! legacy SHA-1 `x-square-signature` is not accepted. No timestamp: replays are caught by dedupe
//! on the body's `event_id`, read after verification.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::request::Parts;

use super::preset::{self, find_secret};
use super::{crypto, only_keys, secrets, Algorithm, BuildCtx, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "square";

#[derive(Debug)]
pub struct SquareVerifier {
    secrets: Vec<Secret>,
    public_url: String,
}

pub fn build(
    raw: &RawVerify,
    ctx: &BuildCtx,
    at: &str,
    p: &mut Problems,
) -> Option<SquareVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let public_url = preset::public_url(ctx, SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty() && !public_url.is_empty()).then_some(SquareVerifier {
        secrets,
        public_url,
    })
}

impl super::Verifier for SquareVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, _req: &Parts, body: &[u8]) -> Option<String> {
        preset::claimed_json_field(body, "event_id")
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, "x-square-hmacsha256-signature")
            .ok_or(VerifyError::MissingSignature)?;
        let sig = STANDARD
            .decode(h)
            .map_err(|_| VerifyError::InvalidSignature)?;
        let url = preset::request_url(&self.public_url, req);
        let i = find_secret(&self.secrets, |s| {
            crypto::ct_eq(
                &sig,
                &crypto::mac(Algorithm::Sha256, s, &[url.as_bytes(), body]),
            )
        })
        .ok_or(VerifyError::InvalidSignature)?;
        Ok(preset::verified(
            SCHEME,
            preset::json_field(body, "event_id"),
            Some(i),
        ))
    }

    fn sign(
        &self,
        _method: &http::Method,
        body: &[u8],
        _now: SystemTime,
        url: &str,
    ) -> Option<Vec<(String, String)>> {
        let m = crypto::mac(
            Algorithm::Sha256,
            self.secrets.first()?.expose(),
            &[url.as_bytes(), body],
        );
        Some(vec![(
            "x-square-hmacsha256-signature".into(),
            STANDARD.encode(m),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;
    use crate::verify::Verifier;

    // PROVIDERS §3 #7 and #7a: Square SDK tests (python `verify_signature`, same in every SDK).
    const BODY: &[u8] = br#"{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}"#;
    const SIG: &str = "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4=";
    const PATH: &str = "/679a4f3a-dcfa-49ee-bac5-9d0edad886b9";

    fn v(secrets: &str) -> std::sync::Arc<dyn Verifier> {
        try_build(
            &format!("scheme = \"square\"\nsecrets = [{secrets}]"),
            Some("https://webhook.site"),
        )
        .unwrap()
    }

    #[test]
    fn published_vectors() {
        let r = req_to("POST", PATH, &[("x-square-hmacsha256-signature", SIG)]);
        let ok = v("\"old\", \"Ibxx_5AKakO-3qeNVR61Dw\"")
            .verify(&r, BODY, at(0))
            .unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id.as_deref()),
            (
                "square",
                Some(1),
                Some("ac3ac95b-f97d-458c-a6e6-18981597e05f")
            )
        );
        let r = req_to(
            "POST",
            "/webhooks",
            &[(
                "x-square-hmacsha256-signature",
                "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U=",
            )],
        );
        assert!(v("\"signature-key\"")
            .verify(&r, br#"{"data":{"type":"webhooks","id":">id<"}}"#, at(0))
            .is_ok());
    }

    #[test]
    fn negatives() {
        let v = v("\"Ibxx_5AKakO-3qeNVR61Dw\"");
        let r = req_to("POST", PATH, &[("x-square-hmacsha256-signature", SIG)]);
        let mut tampered = BODY.to_vec();
        tampered[5] = b'X';
        assert_eq!(
            v.verify(&r, &tampered, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&req_to("POST", PATH, &[]), BODY, at(0))
                .unwrap_err(),
            VerifyError::MissingSignature
        );
        let other_path = req_to(
            "POST",
            "/elsewhere",
            &[("x-square-hmacsha256-signature", SIG)],
        );
        assert_eq!(
            v.verify(&other_path, BODY, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let two = req_to(
            "POST",
            PATH,
            &[("x-square-hmacsha256-signature", &format!("{SIG} {SIG}"))],
        );
        assert_eq!(
            v.verify(&two, BODY, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let wrong = try_build(
            "scheme = \"square\"\nsecrets = [\"Ibxx_5AKakO-3qeNVR61Dx\"]",
            Some("https://webhook.site"),
        )
        .unwrap();
        assert_eq!(
            wrong.verify(&r, BODY, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let h = v
            .sign(&http::Method::POST, b"{}", at(0), "https://webhook.site/x")
            .unwrap();
        let signed = req_to("POST", "/x", &[(h[0].0.as_str(), h[0].1.as_str())]);
        assert!(v.verify(&signed, b"{}", at(0)).is_ok());
        let e = try_build("scheme = \"square\"\nsecrets = [\"x\"]", None).unwrap_err();
        assert!(
            e.starts_with("server.public_url: is required by route[0].verify.scheme = \"square\""),
            "{e}"
        );
    }
}

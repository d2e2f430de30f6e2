//! `scheme = "github"`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`, the secret
//! used as UTF-8 bytes. The legacy SHA-1 `X-Hub-Signature` is not accepted (GitHub always sends
//! both), so a request cannot be downgraded. No timestamp: replays are caught by dedupe on
//! `X-GitHub-Delivery`, which GitHub keeps on redelivery. `ping` is signed like any event.

use std::time::SystemTime;

use http::request::Parts;

use super::preset::{self, find_secret};
use super::{crypto, only_keys, secrets, Algorithm, Encoding, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "github";

#[derive(Debug)]
pub struct GithubVerifier {
    secrets: Vec<Secret>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<GithubVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty()).then_some(GithubVerifier { secrets })
}

/// GitHub's delivery id, the same on a redelivery; not signed.
fn delivery(req: &Parts) -> Option<String> {
    preset::header_nonempty(req, "x-github-delivery").map(str::to_string)
}

impl super::Verifier for GithubVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, req: &Parts, _body: &[u8]) -> Option<String> {
        delivery(req)
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, "x-hub-signature-256")
            .ok_or(VerifyError::MissingSignature)?;
        let sig = h
            .strip_prefix("sha256=")
            .and_then(|s| Encoding::Hex.decode(s))
            .ok_or(VerifyError::InvalidSignature)?;
        let i = find_secret(&self.secrets, |s| {
            crypto::ct_eq(&sig, &crypto::mac(Algorithm::Sha256, s, &[body]))
        })
        .ok_or(VerifyError::InvalidSignature)?;
        Ok(preset::verified_unsigned_id(
            SCHEME,
            delivery(req),
            Some(i),
            &[body],
        ))
    }

    fn sign(
        &self,
        _method: &http::Method,
        body: &[u8],
        _now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let m = crypto::mac(Algorithm::Sha256, self.secrets.first()?.expose(), &[body]);
        Some(vec![
            (
                "X-Hub-Signature-256".into(),
                format!("sha256={}", hex::encode(m)),
            ),
            ("X-GitHub-Event".into(), "ping".into()),
            ("X-GitHub-Delivery".into(), uuid::Uuid::now_v7().to_string()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;

    #[test]
    fn published_vectors() {
        // docs.github.com "Validating webhook deliveries".
        let v = verifier("scheme = \"github\"\nsecrets = [\"It's a Secret to Everybody\"]");
        let r = req(&[
            (
                "X-Hub-Signature-256",
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            ),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ]);
        let ok = v.verify(&r, b"Hello, World!", at(0)).unwrap();
        assert_eq!(
            ok.event_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(ok.scheme, "github");
        // @octokit/webhooks-methods test/sign.test.ts, second of two rotated secrets.
        let v = verifier("scheme = \"github\"\nsecrets = [\"old\", \"mysecret\"]");
        let r = req(&[(
            "X-Hub-Signature-256",
            "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3",
        )]);
        let ok = v.verify(&r, br#"{"foo":"bar"}"#, at(0)).unwrap();
        assert_eq!((ok.secret_index, ok.event_id), (Some(1), None));
    }

    #[test]
    fn negatives() {
        let v = verifier("scheme = \"github\"\nsecrets = [\"mysecret\"]");
        let sig = "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3";
        let body: &[u8] = br#"{"foo":"bar"}"#;
        assert_eq!(
            v.verify(
                &req(&[("X-Hub-Signature-256", sig)]),
                br#"{"foo":"baz"}"#,
                at(0)
            )
            .unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&req(&[]), body, at(0)).unwrap_err(),
            VerifyError::MissingSignature
        );
        // Only the legacy SHA-1 header: refused as missing, never downgraded.
        let sha1 = hex::encode(crypto::mac(Algorithm::Sha1, b"mysecret", &[body]));
        let legacy = req(&[("X-Hub-Signature", &format!("sha1={sha1}"))]);
        assert_eq!(
            v.verify(&legacy, body, at(0)).unwrap_err(),
            VerifyError::MissingSignature
        );
        // Without the prefix, or two signatures in one header: GitHub sends exactly one.
        let bare = req(&[("X-Hub-Signature-256", &sig[7..])]);
        assert_eq!(
            v.verify(&bare, body, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let two = req(&[("X-Hub-Signature-256", &format!("sha256=00,{sig}"))]);
        assert_eq!(
            v.verify(&two, body, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let wrong = verifier("scheme = \"github\"\nsecrets = [\"notmysecret\"]");
        assert_eq!(
            wrong
                .verify(&req(&[("X-Hub-Signature-256", sig)]), body, at(0))
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn sign_round_trips() {
        let v = verifier("scheme = \"github\"\nsecrets = [\"a\", \"b\"]");
        let h = v.sign(&http::Method::POST, b"x", at(0), "").unwrap();
        let ok = v.verify(&signed_req(&h), b"x", at(0)).unwrap();
        assert_eq!(ok.secret_index, Some(0));
        assert!(ok.event_id.is_some());
        assert!(try_build(
            "scheme = \"github\"\nsecrets = [\"a\"]\ntolerance = \"5m\"",
            None
        )
        .is_err());
    }
}

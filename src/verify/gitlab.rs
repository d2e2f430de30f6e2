//! `scheme = "gitlab"`: `X-Gitlab-Token` must equal one of `secrets` (compared in constant time,
//! lengths hidden). The token is static, so it is replayable: dedupe on `Idempotency-Key` (GitLab
//! 17.4+, the same on every retry), else `X-Gitlab-Event-UUID`, is what stops replays.
//!
//! GitLab's newer signing token (behind the `webhook_signing_token` flag) uses the Standard
//! Webhooks format: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256("{id}.{ts}.{body}")>`. When those headers are present they are verified instead
//! of the token (and then they must pass). GitLab does not document the signing key's encoding
//! (PROVIDERS §2.12), so each secret is tried as its raw bytes and, when written `whsec_…`,
//! as the base64-decoded key; the 5-minute tolerance of Standard Webhooks applies.

use std::time::{Duration, SystemTime};

use http::request::Parts;

use super::preset::{self, find_secret};
use super::standard_webhooks::{decode_secret, StandardWebhooksVerifier};
use super::{only_keys, secrets, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

pub(crate) const SCHEME: &str = "gitlab";
/// The header that carries the token itself (shown masked by the admin API).
pub(crate) const TOKEN_HEADER: &str = "x-gitlab-token";

#[derive(Debug)]
pub struct GitlabVerifier {
    secrets: Vec<Secret>,
    /// The signing-token form, over keys derived from `secrets`.
    signed: StandardWebhooksVerifier,
    /// For each key of `signed`, the index of the secret it came from.
    key_secret: Vec<usize>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<GitlabVerifier> {
    only_keys(raw, &["secrets", "tolerance"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    let tolerance = preset::tolerance(raw, Duration::from_secs(300), at, p);
    let mut keys = Vec::new();
    let mut key_secret = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        keys.push(s.clone());
        key_secret.push(i);
        if let Some(decoded) = s
            .expose_str()
            .filter(|t| t.starts_with("whsec_"))
            .and_then(decode_secret)
        {
            keys.push(Secret::new(decoded));
            key_secret.push(i);
        }
    }
    let signed = StandardWebhooksVerifier::with_keys(SCHEME, keys, tolerance);
    (!secrets.is_empty()).then_some(GitlabVerifier {
        secrets,
        signed,
        key_secret,
    })
}

/// The id of a token-mode GitLab event: its `Idempotency-Key` (the same on every retry), else
/// its event UUID; neither is signed.
fn event_uuid(req: &Parts) -> Option<String> {
    preset::header_nonempty(req, "idempotency-key")
        .or_else(|| preset::header_nonempty(req, "x-gitlab-event-uuid"))
        .map(str::to_string)
}

impl super::Verifier for GitlabVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, req: &Parts, body: &[u8]) -> Option<String> {
        if req.headers.contains_key("webhook-signature") {
            return self.signed.claimed_id(req, body);
        }
        event_uuid(req)
    }

    fn signed_at(&self, req: &Parts, body: &[u8]) -> Option<i64> {
        self.signed.signed_at(req, body)
    }

    fn credential_header(&self) -> Option<&str> {
        Some(TOKEN_HEADER)
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        if req.headers.contains_key("webhook-signature") {
            let mut v = self.signed.verify(req, body, now)?;
            v.secret_index = v.secret_index.and_then(|k| self.key_secret.get(k).copied());
            // GitLab's webhook-id is its Idempotency-Key: the same on every retry.
            return Ok(v);
        }
        let token =
            preset::header_nonempty(req, TOKEN_HEADER).ok_or(VerifyError::MissingSignature)?;
        let i = find_secret(&self.secrets, |s| preset::token_eq(token.as_bytes(), s))
            .ok_or(VerifyError::InvalidSignature)?;
        let id = event_uuid(req);
        // The token signs nothing: a key over the body would stop no forgery, only merge two
        // real events with equal bodies ("Test hook" pressed twice).
        Ok(preset::verified(SCHEME, id, Some(i)))
    }

    fn sign(
        &self,
        _method: &http::Method,
        _body: &[u8],
        _now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let token = self.secrets.first()?.expose_str()?.to_string();
        Some(vec![
            ("X-Gitlab-Token".into(), token),
            ("X-Gitlab-Event".into(), "System Hook".into()),
            ("Idempotency-Key".into(), uuid::Uuid::now_v7().to_string()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;

    #[test]
    fn token_rotation_and_event_id() {
        // GitLab publishes no vector: the token is sent as configured.
        let v = verifier("scheme = \"gitlab\"\nsecrets = [\"old-token\", \"new-token\"]");
        let r = req(&[
            ("X-Gitlab-Token", "new-token"),
            ("Idempotency-Key", "f3b5a2c1"),
            ("X-Gitlab-Event-UUID", "e1"),
        ]);
        let ok = v.verify(&r, b"{}", at(0)).unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id.as_deref()),
            ("gitlab", Some(1), Some("f3b5a2c1"))
        );
        let r = req(&[
            ("X-Gitlab-Token", "old-token"),
            ("X-Gitlab-Event-UUID", "e1"),
        ]);
        let ok = v.verify(&r, b"{}", at(0)).unwrap();
        assert_eq!(
            (ok.secret_index, ok.event_id.as_deref()),
            (Some(0), Some("e1"))
        );
    }

    #[test]
    fn negatives() {
        let v = verifier("scheme = \"gitlab\"\nsecrets = [\"new-token\"]");
        assert_eq!(
            v.verify(&req(&[]), b"{}", at(0)).unwrap_err(),
            VerifyError::MissingSignature
        );
        for bad in ["new-toke", "new-token2", "NEW-TOKEN", "new-token,new-token"] {
            assert_eq!(
                v.verify(&req(&[("X-Gitlab-Token", bad)]), b"{}", at(0))
                    .unwrap_err(),
                VerifyError::InvalidSignature,
                "{bad}"
            );
        }
        let h = v.sign(&http::Method::POST, b"", at(0), "").unwrap();
        assert!(v.verify(&signed_req(&h), b"anything", at(0)).is_ok());
        assert!(try_build(
            "scheme = \"gitlab\"\nsecrets = [\"t\"]\nsignature_header = \"X\"",
            None
        )
        .is_err());
    }

    #[test]
    fn signing_token_in_standard_webhooks_format() {
        use base64::Engine;
        let v = verifier("scheme = \"gitlab\"\nsecrets = [\"old-token\", \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]");
        let sign = |key: &[u8], id: &str, ts: &str, body: &[u8]| {
            let m = crate::verify::mac(
                crate::verify::Algorithm::Sha256,
                key,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
            );
            format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(m))
        };
        // Standard Webhooks' published vector, as a GitLab signing-token request.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&decoded, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let r = req(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &sig),
        ]);
        let ok = v.verify(&r, body, at(1614265330)).unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id.as_deref()),
            ("gitlab", Some(1), Some("msg_p5jXN8AQM9LWM0D4loKWxJek"))
        );
        // A raw (not whsec_) secret is used as its bytes.
        let raw_sig = sign(b"old-token", "id-1", "1614265330", body);
        let r = req(&[
            ("webhook-id", "id-1"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &raw_sig),
        ]);
        assert_eq!(
            v.verify(&r, body, at(1614265330)).unwrap().secret_index,
            Some(0)
        );
        // Once signing headers are sent they must pass: no falling back to the token.
        let r = req(&[
            ("webhook-id", "id-1"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &raw_sig),
            ("X-Gitlab-Token", "old-token"),
        ]);
        assert_eq!(
            v.verify(&r, b"tampered", at(1614265330)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&r, body, at(1614265330 + 301)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
    }
}

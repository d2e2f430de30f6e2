//! `scheme = "gitlab"`: `X-Gitlab-Token` must equal one of `secrets` (compared in constant time,
//! lengths hidden). The token is static, so it is replayable: dedupe on `Idempotency-Key` (GitLab
//! 17.4+, the same on every retry), else `X-Gitlab-Event-UUID`, is what stops replays.
//! GitLab's newer signing token (Standard Webhooks headers, behind a feature flag) is not
//! implemented: its secret encoding is not documented yet (PROVIDERS §2.12).

use std::time::SystemTime;

use http::request::Parts;

use super::preset::{self, find_secret};
use super::{only_keys, secrets, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "gitlab";

#[derive(Debug)]
pub struct GitlabVerifier {
    secrets: Vec<Secret>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<GitlabVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty()).then_some(GitlabVerifier { secrets })
}

impl super::Verifier for GitlabVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn verify(&self, req: &Parts, _body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let token =
            preset::header_nonempty(req, "x-gitlab-token").ok_or(VerifyError::MissingSignature)?;
        let i = find_secret(&self.secrets, |s| preset::token_eq(token.as_bytes(), s))
            .ok_or(VerifyError::InvalidSignature)?;
        let id = preset::header_nonempty(req, "idempotency-key")
            .or_else(|| preset::header_nonempty(req, "x-gitlab-event-uuid"))
            .map(str::to_string);
        Ok(preset::verified(SCHEME, id, Some(i)))
    }

    fn sign(&self, _body: &[u8], _now: SystemTime, _url: &str) -> Option<Vec<(String, String)>> {
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
        let h = v.sign(b"", at(0), "").unwrap();
        assert!(v.verify(&signed_req(&h), b"anything", at(0)).is_ok());
        assert!(try_build(
            "scheme = \"gitlab\"\nsecrets = [\"t\"]\nsignature_header = \"X\"",
            None
        )
        .is_err());
    }
}

//! `scheme = "bearer"`: `Authorization: Bearer <token>` must equal one of `secrets` (constant
//! time, lengths hidden). A static token is replayable; pair it with TLS and dedupe.

use std::time::SystemTime;

use http::request::Parts;

use super::basic::credentials;
use super::preset::{self, find_secret};
use super::{only_keys, secrets, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "bearer";

#[derive(Debug)]
pub struct BearerVerifier {
    secrets: Vec<Secret>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<BearerVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty()).then_some(BearerVerifier { secrets })
}

impl super::Verifier for BearerVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn verify(&self, req: &Parts, _body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let token = credentials(req, "bearer")
            .filter(|c| !c.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let i = find_secret(&self.secrets, |s| preset::token_eq(token.as_bytes(), s))
            .ok_or(VerifyError::InvalidSignature)?;
        Ok(preset::verified(SCHEME, None, Some(i)))
    }

    fn sign(
        &self,
        _method: &http::Method,
        _body: &[u8],
        _now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let token = self.secrets.first()?.expose_str()?;
        Some(vec![("Authorization".into(), format!("Bearer {token}"))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;

    #[test]
    fn token_and_rotation() {
        let v = verifier("scheme = \"bearer\"\nsecrets = [\"tok-old\", \"tok-new\"]");
        let ok = v
            .verify(&req(&[("Authorization", "Bearer tok-new")]), b"", at(0))
            .unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id),
            ("bearer", Some(1), None)
        );
        assert_eq!(
            v.verify(&req(&[("Authorization", "bearer tok-old")]), b"", at(0))
                .unwrap()
                .secret_index,
            Some(0)
        );
    }

    #[test]
    fn negatives() {
        let v = verifier("scheme = \"bearer\"\nsecrets = [\"tok-new\"]");
        assert_eq!(
            v.verify(&req(&[]), b"", at(0)).unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(&req(&[("Authorization", "Basic tok-new")]), b"", at(0))
                .unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(&req(&[("Authorization", "Bearer ")]), b"", at(0))
                .unwrap_err(),
            VerifyError::MissingSignature
        );
        for bad in ["tok-ne", "tok-new2", "tok-new tok-new"] {
            let r = req(&[("Authorization", &format!("Bearer {bad}"))]);
            assert_eq!(
                v.verify(&r, b"", at(0)).unwrap_err(),
                VerifyError::InvalidSignature,
                "{bad}"
            );
        }
        let h = v.sign(&http::Method::POST, b"", at(0), "").unwrap();
        assert!(v.verify(&signed_req(&h), b"", at(0)).is_ok());
    }
}

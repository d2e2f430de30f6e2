//! `scheme = "none"`: an explicitly unverified route. It must be spelled out in the config so
//! an unverified route is never an accident; it takes no other keys.

use std::time::SystemTime;

use http::request::Parts;

use super::{only_keys, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::Problems;

#[derive(Debug)]
pub struct NoneVerifier;

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<NoneVerifier> {
    only_keys(raw, &[], "none", at, p);
    Some(NoneVerifier)
}

impl super::Verifier for NoneVerifier {
    fn scheme(&self) -> &'static str {
        "none"
    }

    fn verify(
        &self,
        _req: &Parts,
        _body: &[u8],
        _now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        Ok(Verified {
            scheme: "none",
            event_id: None,
            secret_index: None,
            replay_key: None,
        })
    }
}

//! `scheme = "msgraph"` (Microsoft Graph change notifications).
//!
//! Graph does not sign notifications: each item of the body's `value[]` carries the
//! `clientState` set on the subscription, and `secrets` holds that value (several during a
//! change). The body is parsed to read it — the one scheme whose proof lives inside the body;
//! nothing else in it is trusted until every item's `clientState` has matched a secret
//! (constant time). Rich notifications' `validationTokens` (JWTs) are not checked: that needs
//! Microsoft's signing keys fetched at run time.
//!
//! Handshake: on subscription create/renew Graph POSTs to `…?validationToken=<token>`; the
//! gateway answers `200 text/plain` with the decoded token within Graph's 10 s and records
//! nothing. Graph documents no event id: dedupe falls back to the body's SHA-256.

use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;

use super::kit::{match_token, query_param};
use super::{only_keys, secrets, Handshake, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "msgraph";

#[derive(Debug)]
pub struct MsgraphVerifier {
    client_states: Vec<Secret>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<MsgraphVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let client_states = secrets(raw, at, p);
    if client_states.is_empty() {
        return None;
    }
    Some(MsgraphVerifier { client_states })
}

impl MsgraphVerifier {
    /// The index of the secret equal to `sent`; every secret is compared.
    fn matching(&self, sent: &str) -> Option<usize> {
        match_token(&self.client_states, sent.as_bytes())
    }
}

impl super::Verifier for MsgraphVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn verify(&self, _req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| VerifyError::MissingSignature)?;
        let items = doc
            .get("value")
            .and_then(|v| v.as_array())
            .filter(|a| !a.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let mut first = None;
        for item in items {
            let sent = item
                .get("clientState")
                .and_then(|c| c.as_str())
                .ok_or(VerifyError::MissingSignature)?;
            let i = self.matching(sent).ok_or(VerifyError::InvalidSignature)?;
            first.get_or_insert(i);
        }
        Ok(Verified {
            scheme: SCHEME,
            event_id: None,
            secret_index: first,
            replay_key: None,
        })
    }

    fn handshake(
        &self,
        req: &Parts,
        _body: &[u8],
        _now: SystemTime,
    ) -> Option<Result<Handshake, VerifyError>> {
        let token = query_param(req, "validationToken")?;
        Some(Ok(if token.is_empty() {
            Handshake {
                status: StatusCode::BAD_REQUEST,
                content_type: "application/json",
                body: Bytes::from_static(br#"{"error":"empty_validation_token"}"#),
            }
        } else {
            Handshake {
                status: StatusCode::OK,
                content_type: "text/plain; charset=utf-8",
                body: Bytes::from(token),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kit::testutil::{parts, raw};
    use crate::verify::Verifier;

    // Shaped like Microsoft's documented change notification (no SDK signs these: the
    // "signature" is the clientState the subscriber chose).
    fn body(states: &[&str]) -> Vec<u8> {
        let items: Vec<serde_json::Value> = states
            .iter()
            .map(|s| {
                serde_json::json!({
                    "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
                    "subscriptionExpirationDateTime": "2026-11-25T18:23:45.9356913Z",
                    "changeType": "created",
                    "resource": "Users/4b4f8a62/Messages/AAMkAGUwNjQ4ZjIx",
                    "clientState": s,
                    "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95"
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "value": items })).unwrap()
    }

    fn v() -> MsgraphVerifier {
        build(
            &raw("msgraph", &["old-state", "secretClientValue"]),
            "v",
            &mut Problems::default(),
        )
        .unwrap()
    }

    #[test]
    fn client_state_matches_and_rotation() {
        let now = SystemTime::now();
        let r = parts("POST", "/graph", &[]);
        let ok = v().verify(&r, &body(&["secretClientValue"]), now).unwrap();
        assert_eq!(ok.secret_index, Some(1));
        assert_eq!(ok.event_id, None);
        // During a change both states can arrive in one batch.
        let ok = v()
            .verify(&r, &body(&["old-state", "secretClientValue"]), now)
            .unwrap();
        assert_eq!(ok.secret_index, Some(0));
        assert!(v().handshake(&r, &body(&["old-state"]), now).is_none());
    }

    #[test]
    fn negatives() {
        let now = SystemTime::now();
        let r = parts("POST", "/graph", &[]);
        let e = |b: &[u8]| v().verify(&r, b, now).unwrap_err();
        assert_eq!(e(&body(&["wrong"])), VerifyError::InvalidSignature);
        assert_eq!(
            e(&body(&["secretClientValue", "wrong"])),
            VerifyError::InvalidSignature,
            "every item must match"
        );
        assert_eq!(
            e(&body(&["secretClientValu"])),
            VerifyError::InvalidSignature
        );
        assert_eq!(e(&body(&[""])), VerifyError::InvalidSignature);
        assert_eq!(
            e(br#"{"value":[{"changeType":"created"}]}"#),
            VerifyError::MissingSignature
        );
        assert_eq!(
            e(br#"{"value":[{"clientState":42}]}"#),
            VerifyError::MissingSignature
        );
        assert_eq!(e(br#"{"value":[]}"#), VerifyError::MissingSignature);
        assert_eq!(
            e(br#"{"clientState":"secretClientValue"}"#),
            VerifyError::MissingSignature
        );
        assert_eq!(e(b"not json"), VerifyError::MissingSignature);
        assert_eq!(e(b""), VerifyError::MissingSignature);
    }

    #[test]
    fn validation_handshake_echoes_decoded_token() {
        let now = SystemTime::now();
        let r = parts("POST", "/graph?validationToken=Validation%3A%20Testing%20client%20application%20reachability%20for%20subscription%20Request-Id%3A%2025fc6d5e", &[("content-type", "text/plain; charset=utf-8")]);
        let hs = v().handshake(&r, b"", now).unwrap().unwrap();
        assert_eq!(hs.status, StatusCode::OK);
        assert_eq!(hs.content_type, "text/plain; charset=utf-8");
        assert_eq!(
            &hs.body[..],
            b"Validation: Testing client application reachability for subscription Request-Id: 25fc6d5e"
        );
        let empty = parts("POST", "/graph?validationToken=", &[]);
        assert_eq!(
            v().handshake(&empty, b"", now).unwrap().unwrap().status,
            StatusCode::BAD_REQUEST
        );
    }
}

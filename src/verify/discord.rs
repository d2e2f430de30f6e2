//! `scheme = "discord"` (interactions endpoint): `X-Signature-Ed25519` (hex) over
//! `"{X-Signature-Timestamp}{body}"`, verified with the application's public key (`public_key`,
//! 64 hex characters). Discord sends deliberately invalid signatures and expects 401. Discord
//! documents no tolerance for the timestamp; a signed timestamp older or newer than 5 min
//! (`tolerance`) is refused so a captured interaction cannot be replayed. PING (`"type": 1`) is
//! answered `{"type":1}` by the gateway after verification. Event id: the interaction `id`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;

use super::preset::{self, check_fresh, parse_ts};
use super::{only_keys, Encoding, Handshake, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::Problems;

const SCHEME: &str = "discord";

#[derive(Debug)]
pub struct DiscordVerifier {
    key: ed25519_dalek::VerifyingKey,
    tolerance: Duration,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<DiscordVerifier> {
    only_keys(raw, &["public_key", "tolerance"], SCHEME, at, p);
    let tolerance = preset::tolerance(raw, Duration::from_secs(300), at, p);
    if raw.public_key.is_none() {
        p.error(
            format!("{at}.public_key"),
            "is required (the application's public key, 64 hex characters)",
        );
        return None;
    }
    let text = preset::public_key_text(raw, at, p)?;
    let key = preset::ed25519_key(hex::decode(text).ok(), "64 hex characters", at, p)?;
    Some(DiscordVerifier { key, tolerance })
}

/// Whether `"type"` is followed by `: 1` somewhere: a byte pre-filter so an ordinary
/// interaction is verified once, by `verify`; the decision is made on verified, parsed JSON.
fn ping_like(body: &[u8]) -> bool {
    let key = b"\"type\"";
    body.windows(key.len()).enumerate().any(|(i, w)| {
        if w != key {
            return false;
        }
        let mut rest = body[i + key.len()..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        if rest.next() != Some(&b':') {
            return false;
        }
        let mut rest = rest.skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b'1') && !rest.next().is_some_and(|b| b.is_ascii_digit())
    })
}

impl super::Verifier for DiscordVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, _req: &Parts, body: &[u8]) -> Option<String> {
        preset::claimed_json_field(body, "id")
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        preset::signed_at(preset::header_nonempty(req, "x-signature-timestamp"))
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, "x-signature-ed25519")
            .ok_or(VerifyError::MissingSignature)?;
        let ts = preset::header_nonempty(req, "x-signature-timestamp")
            .ok_or(VerifyError::StaleTimestamp)?;
        check_fresh(parse_ts(ts)?, Duration::from_secs(1), now, self.tolerance)?;
        let sig = Encoding::Hex
            .decode(h)
            .ok_or(VerifyError::InvalidSignature)?;
        if !preset::ed25519_ok(&self.key, &sig, &[ts.as_bytes(), body]) {
            return Err(VerifyError::InvalidSignature);
        }
        Ok(preset::verified(
            SCHEME,
            preset::json_field(body, "id"),
            None,
        ))
    }

    fn handshake(
        &self,
        req: &Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Option<Result<Handshake, VerifyError>> {
        if !ping_like(body) {
            return None;
        }
        if let Err(e) = self.verify(req, body, now) {
            return Some(Err(e));
        }
        let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        (doc.get("type")?.as_u64()? == 1).then(|| {
            Ok(Handshake {
                status: StatusCode::OK,
                content_type: "application/json",
                body: Bytes::from_static(br#"{"type":1}"#),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;
    use crate::verify::Verifier;
    use ed25519_dalek::Signer;

    // Discord publishes no vector. RFC 8032 §7.1 TEST 1 key pair; the signatures below are what
    // PyNaCl 1.6.2 `SigningKey(seed).sign(ts + body)` produces (Ed25519 is deterministic), and
    // what discord-interactions 0.4.0 `verify_key` accepts.
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn sk() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&hex::decode(SEED).unwrap().try_into().unwrap())
    }

    fn signed(ts: &str, body: &[u8]) -> Parts {
        let sig = sk().sign(&[ts.as_bytes(), body].concat());
        req(&[
            ("X-Signature-Ed25519", &hex::encode(sig.to_bytes())),
            ("X-Signature-Timestamp", ts),
        ])
    }

    fn v() -> std::sync::Arc<dyn Verifier> {
        verifier(&format!("scheme = \"discord\"\npublic_key = \"{PK}\""))
    }

    #[test]
    fn rfc8032_key_and_event_id() {
        assert_eq!(hex::encode(sk().verifying_key().as_bytes()), PK);
        let body = br#"{"id":"786008729715212338","type":2}"#;
        let ok = v()
            .verify(&signed("1700000000", body), body, at(1_700_000_000))
            .unwrap();
        assert_eq!(
            (ok.scheme, ok.event_id.as_deref(), ok.secret_index),
            ("discord", Some("786008729715212338"), None)
        );
    }

    #[test]
    fn negatives() {
        let v = v();
        let now = at(1_700_000_000);
        let r = signed("1700000000", b"{\"type\":2}");
        assert_eq!(
            v.verify(&r, b"{\"type\":3}", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&req(&[("X-Signature-Timestamp", "1700000000")]), b"{}", now)
                .unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(&r, b"{\"type\":2}", at(1_700_000_301))
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&r, b"{\"type\":2}", at(1_699_999_699))
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
        let other_key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let wrong = verifier(&format!(
            "scheme = \"discord\"\npublic_key = \"{}\"",
            hex::encode(other_key.verifying_key().as_bytes())
        ));
        assert_eq!(
            wrong.verify(&r, b"{\"type\":2}", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // The timestamp is signed: moving the signature to another timestamp fails.
        let sig = r.headers["x-signature-ed25519"]
            .to_str()
            .unwrap()
            .to_string();
        let moved = req(&[
            ("X-Signature-Ed25519", &sig),
            ("X-Signature-Timestamp", "1700000001"),
        ]);
        assert_eq!(
            v.verify(&moved, b"{\"type\":2}", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let garbage = req(&[
            ("X-Signature-Ed25519", "zz"),
            ("X-Signature-Timestamp", "1700000000"),
        ]);
        assert_eq!(
            v.verify(&garbage, b"{}", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert!(
            v.sign(&http::Method::POST, b"{}", now, "").is_none(),
            "signing needs the private key"
        );
    }

    #[test]
    fn ping_is_answered_after_verification() {
        let v = v();
        let now = at(1_700_000_000);
        let ping = br#"{"type":1,"id":"1"}"#;
        let hs = v
            .handshake(&signed("1700000000", ping), ping, now)
            .unwrap()
            .unwrap();
        assert_eq!(
            (&hs.body[..], hs.content_type),
            (&br#"{"type":1}"#[..], "application/json")
        );
        let forged = req(&[
            ("X-Signature-Ed25519", &"00".repeat(64)),
            ("X-Signature-Timestamp", "1700000000"),
        ]);
        assert_eq!(
            v.handshake(&forged, ping, now).unwrap().unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert!(
            ping_like(b"{\"type\" : 1}")
                && !ping_like(b"{\"type\":10}")
                && !ping_like(b"{\"version\":1}")
        );
        let cmd = br#"{"type":2}"#;
        assert!(v.handshake(&signed("1700000000", cmd), cmd, now).is_none());
    }

    #[test]
    fn config() {
        let e = try_build("scheme = \"discord\"\npublic_key = \"abcd\"", None).unwrap_err();
        assert_eq!(e, "route[0].verify.public_key: is not a valid Ed25519 public key (expected 64 hex characters)");
        let e = try_build("scheme = \"discord\"\nsecrets = [\"x\"]", None).unwrap_err();
        assert!(
            e.contains("route[0].verify.secrets: not used by scheme \"discord\""),
            "{e}"
        );
        assert!(e.contains("route[0].verify.public_key: is required"), "{e}");
    }
}

//! `scheme = "hubspot"`: HubSpot's v3 request signature.
//!
//! `X-HubSpot-Signature-v3: base64(HMAC-SHA256(client_secret, method + uri + body +
//! timestamp))` with `X-HubSpot-Request-Timestamp` in **milliseconds**, refused when more
//! than 5 minutes from now (either direction; `tolerance` overrides). `uri` is the public URL
//! HubSpot called: `server.public_url` + path + query, with the escapes HubSpot decodes
//! (`%3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B`) decoded.
//!
//! The older v1/v2 signatures (`X-HubSpot-Signature`) sign no timestamp, and v1 not even the
//! URL, so a captured request could be replayed forever; they are not accepted.
//!
//! The body is a JSON array of events; the event id is, per event, `portalId:subscriptionId:
//! eventId:occurredAt` (see `kit::batch_id`). HubSpot says `eventId` alone is not guaranteed
//! unique, and a false duplicate would drop a real event; these fields stay the same when a
//! batch is retried (only `attemptNumber` grows), so a retry is still a duplicate.

use std::time::{Duration, SystemTime};

use http::request::Parts;

use super::kit::{batch_id, fresh_millis, match_secret, tolerance};
use super::{header, only_keys, secrets, Algorithm, BuildCtx, Encoding, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "hubspot";

#[derive(Debug)]
pub struct HubspotVerifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
    public_url: String,
}

pub fn build(
    raw: &RawVerify,
    ctx: &BuildCtx,
    at: &str,
    p: &mut Problems,
) -> Option<HubspotVerifier> {
    only_keys(raw, &["secrets", "tolerance"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    let tolerance = tolerance(raw, Duration::from_secs(300), at, p);
    let Some(public_url) = ctx.public_url else {
        p.error(
            "server.public_url",
            format!("is required: {at}.scheme \"hubspot\" signs the URL HubSpot called"),
        );
        return None;
    };
    if secrets.is_empty() {
        return None;
    }
    Some(HubspotVerifier {
        secrets,
        tolerance,
        public_url: public_url.trim_end_matches('/').to_string(),
    })
}

/// Decodes exactly the percent-escapes HubSpot lists (either hex case); all else is kept.
fn decode_listed(uri: &str) -> String {
    const DECODED: &[u8] = b":/?@!$'()*,;";
    let b = uri.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let byte = hex::decode(&b[i + 1..i + 3])
                .ok()
                .and_then(|v| v.first().copied())
                .filter(|c| DECODED.contains(c));
            if let Some(c) = byte {
                out.push(c);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl super::Verifier for HubspotVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        let ms = super::preset::signed_at(header(req, "x-hubspot-request-timestamp"))?;
        Some(ms.div_euclid(1000))
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = header(req, "x-hubspot-signature-v3")
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let ts = header(req, "x-hubspot-request-timestamp");
        fresh_millis(ts, now, self.tolerance)?;
        let ts = ts.unwrap_or_default();
        let pq = req
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let uri = decode_listed(&format!("{}{}", self.public_url, pq));
        let candidates: Vec<Vec<u8>> = Encoding::Base64.decode(sig).into_iter().collect();
        let chunks: [&[u8]; 4] = [
            req.method.as_str().as_bytes(),
            uri.as_bytes(),
            body,
            ts.as_bytes(),
        ];
        let i = match_secret(Algorithm::Sha256, &self.secrets, &chunks, &candidates)
            .ok_or(VerifyError::InvalidSignature)?;
        Ok(Verified {
            scheme: SCHEME,
            event_id: batch_id(
                body,
                &["portalId", "subscriptionId", "eventId", "occurredAt"],
            ),
            secret_index: Some(i),
            replay_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kit::testutil::{at_ms, parts, raw};
    use crate::verify::Verifier;

    const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    /// The body of PROVIDERS.md §3 #11 (HubSpot's v1 docs example).
    const BODY: &[u8] = br#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
    const TS: u64 = 1_564_113_600_000;
    // HubSpot publishes no v3 vector. Generated with the official SDK, hubspot-api-client
    // 12.0.0: Signature.get_signature(SECRET, BODY, "v3",
    //   "https://hooks.example.com/webhooks/hubspot?portal=62515&t=a:b@c", "POST", "1564113600000")
    const V3: &str = "5MiC4Ilv09NNqdg3rH2CPH9tfVd4H5Dz3+qEVdqlu64=";
    /// The request as it arrives: `:` and `@` still escaped.
    const PATH: &str = "/webhooks/hubspot?portal=62515&t=a%3Ab%40c";

    fn v(secrets: &[&str]) -> HubspotVerifier {
        let ctx = BuildCtx {
            public_url: Some("https://hooks.example.com"),
        };
        build(
            &raw("hubspot", secrets),
            &ctx,
            "v",
            &mut Problems::default(),
        )
        .unwrap()
    }

    fn req(method: &str, path: &str, sig: &str, ts: &str) -> Parts {
        parts(
            method,
            path,
            &[
                ("x-hubspot-signature-v3", sig),
                ("x-hubspot-request-timestamp", ts),
            ],
        )
    }

    #[test]
    fn sdk_fixture_with_decoded_uri_and_rotation() {
        let r = req("POST", PATH, V3, "1564113600000");
        let ok = v(&["other", SECRET])
            .verify(&r, BODY, at_ms(TS + 1000))
            .unwrap();
        assert_eq!(ok.secret_index, Some(1));
        assert_eq!(ok.event_id.as_deref(), Some("62515:12345:1:1564113600000"));
        // In milliseconds on the wire; a refusal's log line takes seconds.
        assert_eq!(v(&[SECRET]).signed_at(&r, BODY), Some(1_564_113_600));
    }

    #[test]
    fn negatives() {
        let good = v(&[SECRET]);
        let now = at_ms(TS);
        let r = req("POST", PATH, V3, "1564113600000");
        assert_eq!(
            good.verify(&r, &BODY[1..], now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v(&["wrong"]).verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // Method, URL and timestamp are all signed.
        let put = req("PUT", PATH, V3, "1564113600000");
        assert_eq!(
            good.verify(&put, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let other_path = req(
            "POST",
            "/webhooks/hubspot?portal=62516&t=a%3Ab%40c",
            V3,
            "1564113600000",
        );
        assert_eq!(
            good.verify(&other_path, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let moved = req("POST", PATH, V3, "1564113600001");
        assert_eq!(
            good.verify(&moved, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // 5 minutes, both directions, in milliseconds.
        assert!(good.verify(&r, BODY, at_ms(TS + 300_000)).is_ok());
        assert_eq!(
            good.verify(&r, BODY, at_ms(TS + 301_000)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            good.verify(&r, BODY, at_ms(TS - 301_000)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        let seconds = req("POST", PATH, V3, "1564113600");
        assert_eq!(
            good.verify(&seconds, BODY, now).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        let no_ts = parts("POST", PATH, &[("x-hubspot-signature-v3", V3)]);
        assert_eq!(
            good.verify(&no_ts, BODY, now).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        let none = parts(
            "POST",
            PATH,
            &[("x-hubspot-request-timestamp", "1564113600000")],
        );
        assert_eq!(
            good.verify(&none, BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
        // A v1 signature (PROVIDERS.md §3 #11, correct for this body) is not accepted.
        let v1 = parts(
            "POST",
            PATH,
            &[
                (
                    "x-hubspot-signature",
                    "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de",
                ),
                ("x-hubspot-signature-version", "v1"),
            ],
        );
        assert_eq!(
            good.verify(&v1, BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
    }

    #[test]
    fn decodes_only_the_listed_escapes() {
        assert_eq!(
            decode_listed("https://h/p%3a%2F%3F%40%21%24%27%28%29%2A%2C%3B?q=%20%25%3D%3A%"),
            "https://h/p:/?@!$'()*,;?q=%20%25%3D:%"
        );
        assert_eq!(decode_listed("%3"), "%3");
        assert_eq!(decode_listed("%%3A"), "%:");
    }

    #[test]
    fn requires_public_url() {
        let mut p = Problems::default();
        assert!(build(
            &raw("hubspot", &["s"]),
            &BuildCtx { public_url: None },
            "route[1].verify",
            &mut p
        )
        .is_none());
        assert_eq!(
            p.errors,
            ["server.public_url: is required: route[1].verify.scheme \"hubspot\" signs the URL HubSpot called"]
        );
    }
}

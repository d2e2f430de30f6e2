//! `scheme = "hmac"`: the generic, fully configurable HMAC of SPEC §3–4.
//!
//! The signed bytes come from the `signed_payload` template, compiled once at config load.
//! The timestamp is checked (both directions) only when the template signs it, so a
//! signature cannot be lifted onto a fresh timestamp. The signature header may carry several
//! signatures (separated by `,` or spaces); any that matches any secret passes.

use std::time::{Duration, SystemTime};

use http::request::Parts;

use super::{
    crypto, fresh, header, only_keys, secrets, Algorithm, BuildCtx, Encoding, Verified, VerifyError,
};
use crate::config::raw::RawVerify;
use crate::config::units::parse_duration;
use crate::config::{Problems, Secret};

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(Vec<u8>),
    Timestamp,
    Body,
    Id,
    Url,
    Method,
}

impl Part {
    /// The placeholder's name, for messages.
    fn name(&self) -> &'static str {
        match self {
            Part::Lit(_) => "literal",
            Part::Timestamp => "timestamp",
            Part::Body => "body",
            Part::Id => "id",
            Part::Url => "url",
            Part::Method => "method",
        }
    }
}

#[derive(Debug)]
pub struct HmacVerifier {
    secrets: Vec<Secret>,
    signature_header: String,
    timestamp_header: String,
    id_header: Option<String>,
    template: Vec<Part>,
    algorithm: Algorithm,
    encoding: Encoding,
    prefix: String,
    tolerance: Duration,
    public_url: Option<String>,
}

const KEYS: &[&str] = &[
    "secrets",
    "signature_header",
    "timestamp_header",
    "signed_payload",
    "id_header",
    "algorithm",
    "encoding",
    "signature_prefix",
    "tolerance",
];

fn compile(t: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Lit(rest.as_bytes()[..open].to_vec()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in {t:?}"))?
            + open;
        parts.push(match &rest[open + 1..close] {
            "timestamp" => Part::Timestamp,
            "body" => Part::Body,
            "id" => Part::Id,
            "url" => Part::Url,
            "method" => Part::Method,
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}} (expected {{timestamp}} {{body}} {{id}} {{url}} {{method}})"
                ))
            }
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.as_bytes().to_vec()));
    }
    Ok(parts)
}

pub fn build(raw: &RawVerify, ctx: &BuildCtx, at: &str, p: &mut Problems) -> Option<HmacVerifier> {
    only_keys(raw, KEYS, "hmac", at, p);
    let secrets = secrets(raw, at, p);
    let template = match compile(
        raw.signed_payload
            .as_deref()
            .unwrap_or("{timestamp}.{body}"),
    ) {
        Ok(t) => t,
        Err(e) => {
            p.error(format!("{at}.signed_payload"), e);
            return None;
        }
    };
    if !template.contains(&Part::Body) {
        p.error(format!("{at}.signed_payload"), "must include {body}");
    }
    if template.contains(&Part::Id) && raw.id_header.is_none() {
        p.error(
            format!("{at}.id_header"),
            "is required when signed_payload uses {id}",
        );
    }
    if !template.contains(&Part::Timestamp) {
        // Set, but never read: without {timestamp} in the signed bytes nothing checks freshness,
        // and a captured request verifies forever (dedupe is the only replay guard left).
        for (key, set) in [
            ("timestamp_header", raw.timestamp_header.is_some()),
            ("tolerance", raw.tolerance.is_some()),
        ] {
            if set {
                p.warn(
                    format!("{at}.{key}"),
                    "has no effect: signed_payload does not sign {timestamp}, so no timestamp is \
                     checked and a captured request stays valid",
                );
            }
        }
    }
    for pair in template.windows(2) {
        if let [a, b] = pair {
            if !matches!(a, Part::Lit(_)) && !matches!(b, Part::Lit(_)) {
                p.warn(
                    format!("{at}.signed_payload"),
                    format!(
                        "{{{}}} and {{{}}} are adjacent: bytes can move from one to the other \
                         under the same signature; put a separator (such as \".\") between them",
                        a.name(),
                        b.name()
                    ),
                );
            }
        }
    }
    if template.contains(&Part::Url) && ctx.public_url.is_none() {
        p.error(
            "server.public_url",
            format!("is required: {at}.signed_payload uses {{url}}"),
        );
    }
    let algorithm = match raw.algorithm.as_deref().unwrap_or("sha256") {
        "sha1" => Algorithm::Sha1,
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        other => {
            p.error(
                format!("{at}.algorithm"),
                format!("unknown algorithm {other:?} (expected sha1, sha256 or sha512)"),
            );
            Algorithm::Sha256
        }
    };
    let encoding = match raw.encoding.as_deref().unwrap_or("hex") {
        "hex" => Encoding::Hex,
        "base64" => Encoding::Base64,
        other => {
            p.error(
                format!("{at}.encoding"),
                format!("unknown encoding {other:?} (expected hex or base64)"),
            );
            Encoding::Hex
        }
    };
    let tolerance = match raw
        .tolerance
        .as_deref()
        .map(parse_duration)
        .unwrap_or(Ok(Duration::from_secs(300)))
    {
        Ok(d) => d,
        Err(e) => {
            p.error(format!("{at}.tolerance"), e);
            Duration::from_secs(300)
        }
    };
    for (key, v) in [
        ("signature_header", &raw.signature_header),
        ("timestamp_header", &raw.timestamp_header),
        ("id_header", &raw.id_header),
    ] {
        if let Some(h) = v {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                p.error(format!("{at}.{key}"), format!("invalid header name {h:?}"));
            }
        }
    }
    if secrets.is_empty() {
        return None;
    }
    Some(HmacVerifier {
        secrets,
        signature_header: raw
            .signature_header
            .clone()
            .unwrap_or_else(|| "X-Signature".into())
            .to_ascii_lowercase(),
        timestamp_header: raw
            .timestamp_header
            .clone()
            .unwrap_or_else(|| "X-Timestamp".into())
            .to_ascii_lowercase(),
        id_header: raw.id_header.as_ref().map(|h| h.to_ascii_lowercase()),
        template,
        algorithm,
        encoding,
        prefix: raw.signature_prefix.clone().unwrap_or_default(),
        tolerance,
        public_url: ctx.public_url.map(str::to_string),
    })
}

impl HmacVerifier {
    fn signs(&self, part: &Part) -> bool {
        self.template.contains(part)
    }

    /// The signed-payload chunks for this request (borrowed; the body is never copied).
    fn chunks<'a>(
        &'a self,
        req: &'a Parts,
        body: &'a [u8],
        ts: &'a str,
        id: &'a str,
        url: &'a str,
    ) -> Vec<&'a [u8]> {
        self.template
            .iter()
            .map(|p| match p {
                Part::Lit(b) => b.as_slice(),
                Part::Timestamp => ts.as_bytes(),
                Part::Body => body,
                Part::Id => id.as_bytes(),
                Part::Url => url.as_bytes(),
                Part::Method => req.method.as_str().as_bytes(),
            })
            .collect()
    }
}

impl super::Verifier for HmacVerifier {
    fn scheme(&self) -> &'static str {
        "hmac"
    }

    fn claimed_id(&self, req: &Parts, _body: &[u8]) -> Option<String> {
        self.id_header
            .as_ref()
            .and_then(|h| header(req, h))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        self.signs(&Part::Timestamp)
            .then(|| header(req, &self.timestamp_header)?.parse().ok())
            .flatten()
    }

    /// Unknown: a sender of the generic scheme may retry with the same bytes (its HTTP
    /// client's own retry), so an identical copy is no sign of a replayed capture.
    fn retries_resigned(&self) -> bool {
        false
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let sig_header = header(req, &self.signature_header)
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let ts = if self.signs(&Part::Timestamp) {
            let ts = header(req, &self.timestamp_header).ok_or(VerifyError::StaleTimestamp)?;
            let secs: i64 = ts.parse().map_err(|_| VerifyError::StaleTimestamp)?;
            if !fresh(secs, now, self.tolerance) {
                return Err(VerifyError::StaleTimestamp);
            }
            ts
        } else {
            ""
        };
        let id = match &self.id_header {
            Some(h) => header(req, h).unwrap_or(""),
            None => "",
        };
        let url = if self.signs(&Part::Url) {
            let pq = req
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            format!("{}{}", self.public_url.as_deref().unwrap_or(""), pq)
        } else {
            String::new()
        };
        let candidates: Vec<Vec<u8>> = sig_header
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.strip_prefix(self.prefix.as_str()))
            .filter_map(|s| self.encoding.decode(s))
            .collect();
        let chunks = self.chunks(req, body, ts, id, &url);
        for (i, secret) in self.secrets.iter().enumerate() {
            let expected = crypto::mac(self.algorithm, secret.expose(), &chunks);
            if candidates.iter().any(|c| crypto::ct_eq(c, &expected)) {
                let event_id = self
                    .id_header
                    .as_ref()
                    .and(Some(id))
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                // An id the template does not sign is taken as the sender's word, as SPEC §3
                // has `Idempotency-Key` on this scheme: the operator runs both ends, and two
                // events may share a body (README, "Captured requests sent again").
                return Ok(Verified {
                    scheme: "hmac",
                    event_id,
                    secret_index: Some(i),
                    replay_key: None,
                });
            }
        }
        Err(VerifyError::InvalidSignature)
    }

    fn sign(
        &self,
        method: &http::Method,
        body: &[u8],
        now: SystemTime,
        url: &str,
    ) -> Option<Vec<(String, String)>> {
        let secret = self.secrets.first()?;
        let ts = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        let id = uuid::Uuid::now_v7().to_string();
        let method = method.as_str().as_bytes();
        let chunks: Vec<&[u8]> = self
            .template
            .iter()
            .map(|p| match p {
                Part::Lit(b) => b.as_slice(),
                Part::Timestamp => ts.as_bytes(),
                Part::Body => body,
                Part::Id => id.as_bytes(),
                Part::Url => url.as_bytes(),
                Part::Method => method,
            })
            .collect();
        let m = crypto::mac(self.algorithm, secret.expose(), &chunks);
        let mut out = vec![(
            self.signature_header.clone(),
            format!("{}{}", self.prefix, self.encoding.encode(&m)),
        )];
        if self.signs(&Part::Timestamp) {
            out.push((self.timestamp_header.clone(), ts));
        }
        if let Some(h) = &self.id_header {
            out.push((h.clone(), id));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Verifier;

    fn verifier(extra: &str) -> HmacVerifier {
        let text = format!("scheme = \"hmac\"\nsecrets = [\"old\", \"new\"]\n{extra}");
        let raw: RawVerify = toml::from_str(&text).unwrap();
        let mut p = Problems::default();
        let v = build(
            &raw,
            &BuildCtx {
                public_url: Some("https://hooks.example.com"),
            },
            "v",
            &mut p,
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        v.unwrap()
    }

    /// The warnings `build` gives for these keys, leaving out the literal-secret ones.
    fn warnings(extra: &str) -> Vec<String> {
        let text = format!("scheme = \"hmac\"\nsecrets = [\"s\"]\n{extra}");
        let raw: RawVerify = toml::from_str(&text).unwrap();
        let mut p = Problems::default();
        build(&raw, &BuildCtx { public_url: None }, "v", &mut p).unwrap();
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        p.warnings.retain(|w| !w.contains("literal"));
        p.warnings
    }

    #[test]
    fn settings_that_do_nothing_or_weaken_the_signature_are_warned_about() {
        assert_eq!(warnings(""), Vec::<String>::new());
        assert_eq!(
            warnings("timestamp_header = \"X-Ts\"\ntolerance = \"1m\""),
            Vec::<String>::new()
        );
        let w = warnings(
            "signed_payload = \"{body}\"\ntimestamp_header = \"X-Ts\"\ntolerance = \"1m\"",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("v.timestamp_header: has no effect"),
            "{w:?}"
        );
        assert!(w[1].starts_with("v.tolerance: has no effect"), "{w:?}");
        let w = warnings("signed_payload = \"{id}{timestamp}.{body}\"\nid_header = \"X-Id\"");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("v.signed_payload: {id} and {timestamp} are adjacent"),
            "{w:?}"
        );
    }

    fn req(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method("POST").uri("/hook?a=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn sign(secret: &str, payload: &[u8]) -> String {
        hex::encode(crypto::mac(
            Algorithm::Sha256,
            secret.as_bytes(),
            &[payload],
        ))
    }

    #[test]
    fn default_template_and_rotation() {
        let v = verifier("");
        let body = b"{\"a\":1}";
        for secret in ["old", "new"] {
            let sig = sign(secret, b"1700000000.{\"a\":1}");
            let r = req(&[("x-signature", &sig), ("x-timestamp", "1700000000")]);
            let ok = v.verify(&r, body, at(1_700_000_100)).unwrap();
            assert_eq!(ok.secret_index, Some(if secret == "old" { 0 } else { 1 }));
        }
    }

    #[test]
    fn negatives() {
        let v = verifier("");
        let sig = sign("new", b"1700000000.body");
        let good = req(&[("x-signature", &sig), ("x-timestamp", "1700000000")]);
        let now = at(1_700_000_000);
        assert!(v.verify(&good, b"body", now).is_ok());
        assert_eq!(
            v.verify(&good, b"bodY", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&good, b"body", at(1_700_000_301)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&good, b"body", at(1_699_999_699)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert!(v.verify(&good, b"body", at(1_699_999_700)).is_ok());
        let wrong = req(&[
            ("x-signature", &sign("nope", b"1700000000.body")),
            ("x-timestamp", "1700000000"),
        ]);
        assert_eq!(
            v.verify(&wrong, b"body", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let missing = req(&[("x-timestamp", "1700000000")]);
        assert_eq!(
            v.verify(&missing, b"body", now).unwrap_err(),
            VerifyError::MissingSignature
        );
        let no_ts = req(&[("x-signature", &sig)]);
        assert_eq!(
            v.verify(&no_ts, b"body", now).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        let bad_ts = req(&[("x-signature", &sig), ("x-timestamp", "17e8")]);
        assert_eq!(
            v.verify(&bad_ts, b"body", now).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        // A valid signature moved onto another timestamp fails.
        let moved = req(&[("x-signature", &sig), ("x-timestamp", "1700000001")]);
        assert_eq!(
            v.verify(&moved, b"body", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn several_signatures_prefix_base64_sha512() {
        let v = verifier(
            "signature_prefix = \"sha512=\"\nalgorithm = \"sha512\"\nencoding = \"base64\"\nsigned_payload = \"{method} {url} {body}\"",
        );
        let m = crypto::mac(
            Algorithm::Sha512,
            b"new",
            &[b"POST https://hooks.example.com/hook?a=1 hi"],
        );
        let header = format!("sha512=AAAA, sha512={}", Encoding::Base64.encode(&m));
        let r = req(&[("x-signature", &header)]);
        assert!(
            v.verify(&r, b"hi", at(0)).is_ok(),
            "timestamp is not checked when not signed"
        );
        let unprefixed = req(&[("x-signature", &Encoding::Base64.encode(&m))]);
        assert_eq!(
            v.verify(&unprefixed, b"hi", at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn sign_round_trips() {
        let v = verifier("signed_payload = \"{id}.{timestamp}.{method}.{url}.{body}\"\nid_header = \"Webhook-Id\"");
        let h = v
            .sign(
                &http::Method::POST,
                b"hi",
                at(1_700_000_000),
                "https://hooks.example.com/hook?a=1",
            )
            .unwrap();
        let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let ok = v.verify(&req(&pairs), b"hi", at(1_700_000_000)).unwrap();
        assert_eq!(ok.secret_index, Some(0));
        assert!(v.verify(&req(&pairs), b"ho", at(1_700_000_000)).is_err());
    }

    #[test]
    fn config_errors_name_the_key() {
        let raw: RawVerify = toml::from_str(
            "scheme=\"hmac\"\nsecrets=[\"env:HOOKGATE_NOPE_UNSET\"]\nsigned_payload=\"{ts}.{body}\"\nalgorithm=\"md5\"\npublic_key=\"x\"",
        )
        .unwrap();
        let mut p = Problems::default();
        assert!(build(
            &raw,
            &BuildCtx { public_url: None },
            "route[0].verify",
            &mut p
        )
        .is_none());
        let all = p.errors.join("\n");
        assert!(
            all.contains("route[0].verify.public_key: not used by scheme \"hmac\""),
            "{all}"
        );
        assert!(
            all.contains(
                "route[0].verify.secrets[0]: environment variable HOOKGATE_NOPE_UNSET is not set"
            ),
            "{all}"
        );
        assert!(
            all.contains("route[0].verify.signed_payload: unknown placeholder {ts}"),
            "{all}"
        );
    }
}

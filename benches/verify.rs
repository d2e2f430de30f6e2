//! ns per verification for each provider preset at 1 KiB and 64 KiB bodies, next to a raw
//! HMAC-SHA256 of the same bytes (the floor). Verifiers are built from config exactly as the
//! gateway builds them; each request is signed once, up front, by the scheme's own `sign` (or by
//! an Ed25519 key for the public-key schemes).
//!
//! cargo bench --bench verify -- --warm-up-time 1 --measurement-time 2

// Bench setup: a failed step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::Signer;
use hookgate::verify::{mac, Algorithm, Verifier};

const PUBLIC_URL: &str = "https://hooks.example.com";
const SEED: [u8; 32] = [7; 32];

fn schemes() -> Vec<(&'static str, String)> {
    let sk = ed25519_dalek::SigningKey::from_bytes(&SEED);
    let pk = sk.verifying_key();
    let whpk = format!(
        "whpk_{}",
        base64::engine::general_purpose::STANDARD.encode(pk.as_bytes())
    );
    let s =
        |v: &str| format!("{{ scheme = \"{v}\", secrets = [\"old-secret\", \"bench-secret\"] }}");
    vec![
        ("hmac", s("hmac")),
        ("stripe", s("stripe")),
        ("github", s("github")),
        ("standard-webhooks", "{ scheme = \"standard-webhooks\", secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"] }".into()),
        ("standard-webhooks-v1a", format!("{{ scheme = \"standard-webhooks\", public_key = \"{whpk}\" }}")),
        ("svix", "{ scheme = \"svix\", secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"] }".into()),
        ("slack", s("slack")),
        ("shopify", s("shopify")),
        ("twilio", s("twilio")),
        ("discord", format!("{{ scheme = \"discord\", public_key = \"{}\" }}", hex::encode(pk.as_bytes()))),
        ("paddle", s("paddle")),
        ("square", s("square")),
        ("zoom", s("zoom")),
        ("linear", s("linear")),
        ("gitlab", s("gitlab")),
        ("basic", "{ scheme = \"basic\", secrets = [\"user:pass\"] }".into()),
        ("bearer", s("bearer")),
    ]
}

fn verifiers() -> Vec<(&'static str, Arc<dyn Verifier>)> {
    let mut text = format!("[server]\npublic_url = \"{PUBLIC_URL}\"\n");
    for (name, verify) in schemes() {
        text.push_str(&format!(
            "[[route]]\nname = \"{name}\"\npath = \"/{name}\"\nverify = {verify}\nforward = {{ url = \"http://127.0.0.1:9/\" }}\n"
        ));
    }
    let (cfg, _) = match hookgate::config::parse(&text) {
        Ok(c) => c,
        Err(p) => panic!("bench config: {p}"),
    };
    cfg.routes
        .iter()
        .map(|r| {
            let name = schemes()
                .into_iter()
                .find(|(n, _)| *n == r.name)
                .map(|(n, _)| n)
                .unwrap_or("?");
            (name, r.verifier.clone())
        })
        .collect()
}

/// A JSON body of exactly `size` bytes with a current `webhookTimestamp` (for linear).
fn body(size: usize, now: SystemTime) -> Vec<u8> {
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let head =
        format!("{{\"id\":\"evt_1\",\"event_id\":\"e1\",\"webhookTimestamp\":{ms},\"pad\":\"");
    let mut b = head.into_bytes();
    b.resize(size - 2, b'x');
    b.extend_from_slice(b"\"}");
    b
}

/// Signed headers for `name`: by the scheme itself, or by the Ed25519 key.
fn headers(name: &str, v: &dyn Verifier, body: &[u8], now: SystemTime) -> Vec<(String, String)> {
    let sk = ed25519_dalek::SigningKey::from_bytes(&SEED);
    let ts = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    match name {
        "discord" => {
            let sig = sk.sign(&[ts.as_bytes(), body].concat());
            vec![
                ("X-Signature-Ed25519".into(), hex::encode(sig.to_bytes())),
                ("X-Signature-Timestamp".into(), ts),
            ]
        }
        "standard-webhooks-v1a" => {
            let sig = sk.sign(&[b"msg_1.", ts.as_bytes(), b".", body].concat());
            let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
            vec![
                ("webhook-id".into(), "msg_1".into()),
                ("webhook-timestamp".into(), ts),
                ("webhook-signature".into(), format!("v1a,{b64}")),
            ]
        }
        _ => {
            let mut h = v
                .sign(
                    &http::Method::POST,
                    body,
                    now,
                    &format!("{PUBLIC_URL}/{name}"),
                )
                .unwrap_or_default();
            h.push(("Content-Type".into(), "application/json".into()));
            if name == "twilio" {
                h.retain(|(k, _)| k != "Content-Type");
                h.push((
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                ));
            }
            h
        }
    }
}

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    let verifiers = verifiers();
    for size in [1024usize, 64 * 1024] {
        let body = body(size, now);
        let mut g = c.benchmark_group(format!("verify/{}KiB", size / 1024));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function("floor: raw HMAC-SHA256", |b| {
            b.iter(|| {
                mac(
                    Algorithm::Sha256,
                    black_box(b"bench-secret"),
                    &[black_box(&body)],
                )
            })
        });
        for (name, v) in &verifiers {
            let mut req = http::Request::builder()
                .method("POST")
                .uri(format!("/{name}"));
            for (k, val) in headers(name, v.as_ref(), &body, now) {
                req = req.header(k, val);
            }
            let parts = req.body(()).unwrap().into_parts().0;
            assert!(
                v.verify(&parts, &body, now).is_ok(),
                "{name}: bench request must verify"
            );
            g.bench_with_input(BenchmarkId::from_parameter(name), &parts, |b, parts| {
                b.iter(|| v.verify(black_box(parts), black_box(&body), now))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

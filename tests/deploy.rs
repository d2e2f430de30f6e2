//! The deploy files against the real things: promtool checks the alert rules and runs their
//! unit tests (`deploy/prometheus/alerts.test.yaml`), and every series the alerts and the
//! Grafana dashboard select exists in a running gateway's `/metrics`, with the label values
//! they match. A renamed metric or outcome would otherwise leave an alert that never fires.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const SECRET: &str = "deploy-secret";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// promtool from PATH, or fetched from Debian's `prometheus` package by scripts/promtool.sh.
fn promtool() -> String {
    let out = Command::new(root().join("scripts/promtool.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/promtool.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let promtool = promtool();
    for args in [
        ["check", "rules", "deploy/prometheus/alerts.yaml"],
        ["test", "rules", "deploy/prometheus/alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A series name and, per label, the values it is matched against.
type Selector = (String, Vec<(String, Vec<String>)>);

/// `hookgate_…{label="v", other=~"a|b"}` selectors in `text`: the name and, per label, the
/// values it matches. Matchers on a template variable (`$route`) or a pattern other than a
/// list of plain values are skipped.
fn selectors(text: &str) -> Vec<Selector> {
    let text = text.replace("\\\"", "\"");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("hookgate_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        let mut matchers = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}').unwrap();
            for m in inner[..close].split(',') {
                let (label, values) = match m.split_once("=~") {
                    Some((l, v)) => (l, v),
                    None => match m.split_once('=') {
                        Some((l, v)) if !l.ends_with('!') => (l, v),
                        _ => continue,
                    },
                };
                let values = values.trim().trim_matches('"');
                let plain = |v: &str| {
                    !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                let values: Vec<String> = values.split('|').map(str::to_string).collect();
                if values.iter().all(|v| plain(v)) {
                    matchers.push((label.trim().to_string(), values));
                }
            }
        }
        out.push((name, matchers));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_alerts_and_dashboard_select_exists() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let route = format!(
        "[[route]]\nname = \"r\"\npath = \"/r\"\n[route.verify]\nscheme = \"hmac\"\n\
         secrets = [\"{SECRET}\"]\n[route.dedupe]\nkey = \"header:Idempotency-Key\"\n\
         [route.forward]\nurl = \"{}\"\n",
        up.url("/in")
    );
    let gw = Gateway::start(
        dir.path(),
        &config(&Backend::Embedded, dir.path(), "", &route),
    );
    let c = reqwest::Client::new();
    // What an alert or panel watches for: an accepted event delivered, a duplicate, and each
    // kind of signature failure.
    let id = accepted(signed(&c, &gw.url("/r"), SECRET, "x").header("Idempotency-Key", "k")).await;
    let dup = signed(&c, &gw.url("/r"), SECRET, "x").header("Idempotency-Key", "k");
    assert_eq!(dup.send().await.unwrap().status(), 200);
    let now = now_secs();
    let bad = [
        c.post(gw.url("/r"))
            .header("X-Timestamp", now.to_string())
            .header("X-Signature", hmac_sign("wrong", now, b"y")),
        c.post(gw.url("/r"))
            .header("X-Timestamp", (now - 3600).to_string())
            .header("X-Signature", hmac_sign(SECRET, now - 3600, b"y")),
        c.post(gw.url("/r")).header("X-Timestamp", now.to_string()),
    ];
    for req in bad {
        assert_eq!(req.body("y").send().await.unwrap().status(), 401);
    }
    gw.wait_event_state(&id, "delivered", Duration::from_secs(10))
        .await;
    let metrics = gw.metrics().await;
    let series: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#')).collect();

    let mut checked = 0;
    for file in [
        "deploy/prometheus/alerts.yaml",
        "deploy/grafana/hookgate-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        if file.ends_with(".json") {
            let parsed = serde_json::from_str::<serde_json::Value>(&text);
            assert!(parsed.is_ok(), "{file}: {parsed:?}");
        }
        let found = selectors(&text);
        assert!(found.len() >= 8, "{file}: only {found:?}");
        for (name, matchers) in found {
            let of_name: Vec<&str> = series
                .iter()
                .copied()
                .filter(|l| {
                    l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))
                })
                .collect();
            assert!(
                !of_name.is_empty(),
                "{file}: no series {name} in /metrics:\n{metrics}"
            );
            for (label, values) in matchers {
                for v in values {
                    assert!(
                        of_name
                            .iter()
                            .any(|l| l.contains(&format!("{label}=\"{v}\""))),
                        "{file}: no {name} with {label}=\"{v}\" in /metrics:\n{metrics}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 6, "only {checked} label values checked");
}

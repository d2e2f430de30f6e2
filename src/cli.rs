//! The command line of SPEC §2. `main` maps each command's result to an exit code.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "hookgate",
    version,
    about = "A verifying ingress gateway for webhooks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file (TOML).
    #[arg(
        short,
        long,
        global = true,
        env = "HOOKGATE_CONFIG",
        default_value = "hookgate.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate the config and its secrets: exit 0, or 1 with one line per problem.
    Check(ConfigArg),
    /// Print the headers and a curl command of a correctly signed request for a route.
    Sign(SignArgs),
    /// Inspect and replay events through the admin API.
    Events(EventsArgs),
    /// Write a consistent copy of the embedded store, also while the gateway runs.
    Backup(BackupArgs),
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The file to write (it must not exist yet).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Admin API base URL (default: from the config's server.admin_listen).
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// Admin bearer token (default: the config's server.admin_token).
    #[arg(
        long,
        global = true,
        env = "HOOKGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Events, newest first.
    List {
        /// Only this route's events.
        #[arg(long)]
        route: Option<String>,
        /// pending | delivered | dead
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only events with this dedupe key: the value the sender sent (a provider's event id,
        /// an `Idempotency-Key`), or a recorded key such as `sha256:…`.
        #[arg(long)]
        key: Option<String>,
        /// Only events older than this event id (the `next` of the previous page), or
        /// received before this time (RFC 3339, `2026-12-07T03:15:00Z`).
        #[arg(long)]
        before: Option<String>,
    },
    /// One event's metadata, state and every attempt.
    Show { event_id: String },
    /// Deliver an event again (any state).
    Replay { event_id: String },
    /// Delete a dead event and its attempt log (one nobody wants delivered).
    Discard { event_id: String },
    /// Redrive every dead event of a route: `replay-dead ROUTE` (or `--route ROUTE`).
    ReplayDead {
        /// The route's name.
        #[arg(value_name = "ROUTE", required_unless_present = "route_flag")]
        route: Option<String>,
        /// The route's name (as the other commands take it).
        #[arg(long = "route", value_name = "ROUTE", conflicts_with = "route")]
        route_flag: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The route to sign for (its `name`).
    #[arg(long)]
    pub route: String,
    /// The body: a file, or `-` for stdin (default: a small JSON test event).
    #[arg(long)]
    pub body: Option<String>,
}

/// The output of `hookgate sign`: one `Name: value` line per header, a blank line, then a curl
/// command that sends exactly that request to the route on `server.listen` (https with
/// `[server.tls]`), with the route's first allowed method. The route's first secret signs, at
/// `now`. `body_file` (when the body came from a file) is referenced by curl
/// instead of inlining the bytes.
pub fn sign_output(
    cfg: &Config,
    route: &str,
    body: &[u8],
    body_file: Option<&str>,
    now: SystemTime,
) -> Result<String, String> {
    let Some(r) = cfg.routes.iter().find(|r| r.name == route) else {
        let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "no route named {route:?} (routes: {})",
            names.join(", ")
        ));
    };
    let mut local = cfg.server.listen;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url_scheme = if cfg.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let target = format!("{url_scheme}://{local}{}", r.path);
    let signed_url = match &cfg.server.public_url {
        Some(base) => format!("{base}{}", r.path),
        None => target.clone(),
    };
    let scheme = r.verifier.scheme();
    // The route's first method that carries a body (a GET handshake listed first is not
    // what a webhook is sent with), else its first.
    let method = r
        .methods
        .iter()
        .find(|m| !matches!(*m, &http::Method::GET | &http::Method::HEAD))
        .or(r.methods.first())
        .unwrap_or(&http::Method::POST);
    let mut headers = match r.verifier.sign(method, body, now, &signed_url) {
        Some(h) => h,
        None if scheme == "none" => Vec::new(),
        None => {
            return Err(format!(
                "route {route:?} uses scheme {scheme:?}, which verifies with a public key: \
                 signing needs the provider's private key, which hookgate never holds"
            ))
        }
    };
    // What a real sender adds that the signature does not: the dedupe key where a header
    // carries it (a fresh one each time: the printed curl sent twice is a duplicate), and the
    // type of a JSON body.
    let has = |hs: &[(String, String)], n: &str| hs.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let key_header = match &r.dedupe.key {
        crate::config::DedupeKeySpec::Header(h) => Some(h.as_str().to_string()),
        crate::config::DedupeKeySpec::Auto if scheme == "hmac" => {
            Some("Idempotency-Key".to_string())
        }
        _ => None,
    };
    if let Some(h) = key_header.filter(|h| !has(&headers, h)) {
        headers.push((h, format!("test-{}", uuid::Uuid::now_v7())));
    }
    if !has(&headers, "content-type") && serde_json::from_slice::<serde_json::Value>(body).is_ok() {
        headers.push(("Content-Type".into(), "application/json".into()));
    }
    let mut out = String::new();
    for (k, v) in &headers {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out.push('\n');
    let mut curl = format!("curl -sS -X {method} {}", shell_quote(&target));
    for (k, v) in &headers {
        curl.push_str(&format!(" -H {}", shell_quote(&format!("{k}: {v}"))));
    }
    match body_file {
        Some(f) => curl.push_str(&format!(" --data-binary @{}", shell_quote(f))),
        None => curl.push_str(&format!(
            " --data-binary {}",
            shell_quote(&String::from_utf8_lossy(body))
        )),
    }
    out.push_str(&curl);
    out.push('\n');
    Ok(out)
}

/// The default body of `hookgate sign`: a small JSON event, with a current `webhookTimestamp`
/// (ms) so schemes that read a timestamp from the body accept it.
pub fn default_sign_body(now: SystemTime) -> Vec<u8> {
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{{\"type\":\"hookgate.test\",\"webhookTimestamp\":{ms}}}").into_bytes()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_output_for_routes() {
        let (cfg, _) = crate::config::parse(
            r#"
[server]
listen = "0.0.0.0:8080"
[[route]]
name = "gh"
path = "/gh"
verify = { scheme = "github", secrets = ["it's"] }
forward = { url = "http://127.0.0.1:9/" }
[[route]]
name = "discord"
path = "/d"
verify = { scheme = "discord", public_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a" }
forward = { url = "http://127.0.0.1:9/" }
"#,
        )
        .unwrap();
        let now = SystemTime::UNIX_EPOCH;
        let out = sign_output(&cfg, "gh", b"{}", None, now).unwrap();
        assert!(out.starts_with("X-Hub-Signature-256: sha256="), "{out}");
        // A JSON body says so; GitHub's key is its signed-over delivery header, not added.
        assert!(out.contains("\nContent-Type: application/json\n"), "{out}");
        assert!(!out.to_lowercase().contains("idempotency-key"), "{out}");
        assert!(
            out.contains(
                "curl -sS -X POST 'http://127.0.0.1:8080/gh' -H 'X-Hub-Signature-256: sha256="
            ),
            "{out}"
        );
        let out = sign_output(&cfg, "gh", b"it's", Some("/tmp/b c"), now).unwrap();
        assert!(out.ends_with("--data-binary @'/tmp/b c'\n"), "{out}");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let e = sign_output(&cfg, "discord", b"{}", None, now).unwrap_err();
        assert!(
            e.contains("signing needs the provider's private key"),
            "{e}"
        );
        assert!(sign_output(&cfg, "nope", b"", None, now)
            .unwrap_err()
            .contains("routes: gh, discord"));
    }

    /// A route that takes PUT and signs the method: the signature is over `PUT`, as the
    /// printed curl sends it (it was over `POST`, and the request was refused).
    #[test]
    fn sign_signs_the_method_the_curl_sends() {
        use hmac::Mac;
        let (cfg, _) = crate::config::parse(
            r#"
[[route]]
name = "put"
path = "/p"
methods = ["PUT"]
verify = { scheme = "hmac", secrets = ["env:PATH"], signed_payload = "{method}.{body}" }
forward = { url = "http://127.0.0.1:9/" }
"#,
        )
        .unwrap();
        let out = sign_output(&cfg, "put", b"{}", None, SystemTime::UNIX_EPOCH).unwrap();
        // The generic scheme's dedupe key (`auto`: Idempotency-Key), fresh each time.
        let key = |out: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix("Idempotency-Key: test-"))
                .map(str::to_string)
        };
        let again = sign_output(&cfg, "put", b"{}", None, SystemTime::UNIX_EPOCH).unwrap();
        assert!(
            key(&out).is_some() && key(&out) != key(&again),
            "{out}{again}"
        );
        let key = std::env::var("PATH").unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(b"PUT.{}");
        let want = hex::encode(mac.finalize().into_bytes());
        assert!(out.starts_with(&format!("x-signature: {want}\n")), "{out}");
        assert!(out.contains("curl -sS -X PUT "), "{out}");
    }
}

//! `hookgate events list|show|replay|replay-dead`: a client of the admin API for operators.
//! The admin address and token come from the config's `[server]` (only that section is read,
//! so route secrets need not be set in the operator's shell), or from `--admin` / `--token`.

use std::path::Path;

use anyhow::{bail, Context};

use crate::config::secret;

pub struct Target {
    pub base: String,
    pub token: Option<String>,
}

/// Where the admin API listens according to the config (`0.0.0.0` → `127.0.0.1`).
pub fn target(
    config: &Path,
    admin: Option<String>,
    token: Option<String>,
) -> anyhow::Result<Target> {
    let (base, cfg_token) = match admin {
        Some(a) => (a.trim_end_matches('/').to_string(), None),
        None => {
            let text = std::fs::read_to_string(config).with_context(|| {
                format!(
                    "{}: cannot read config (or pass --admin URL)",
                    config.display()
                )
            })?;
            // Through the config's own parser, so an error names the key and never quotes a
            // secret written at it.
            let raw = crate::config::parse_raw(&text).map_err(|p| {
                anyhow::anyhow!(
                    "{}: invalid config: {}",
                    config.display(),
                    p.to_string().trim_end()
                )
            })?;
            let listen = raw
                .server
                .admin_listen
                .unwrap_or_else(|| "127.0.0.1:9090".into());
            let addr: std::net::SocketAddr = listen
                .parse()
                .with_context(|| format!("server.admin_listen: invalid address {listen:?}"))?;
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                addr.ip().to_string()
            };
            let host = if addr.is_ipv6() && !addr.ip().is_unspecified() {
                format!("[{host}]")
            } else {
                host
            };
            // `--token` wins; the config's token is resolved only without it, so an `env:`
            // variable unset in the operator's shell is no obstacle.
            let token = match raw.server.admin_token.filter(|_| token.is_none()) {
                Some(spec) => Some(
                    secret::resolve(&spec)
                        .map_err(|e| anyhow::anyhow!("server.admin_token: {e}"))?
                        .0
                        .expose_str()
                        .context("server.admin_token: not UTF-8")?
                        .to_string(),
                ),
                None => None,
            };
            (format!("http://{host}:{}", addr.port()), token)
        }
    };
    Ok(Target {
        base,
        token: token.or(cfg_token),
    })
}

/// One admin request; prints the JSON answer pretty. Non-2xx answers are errors.
pub async fn call(
    t: &Target,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{}{}", t.base, path));
    if let Some(tok) = &t.token {
        req = req.bearer_auth(tok);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", t.base))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let hint = match body["error"].as_str() {
            Some("unauthorized") if t.token.is_some() => {
                "\n  the token given (--token, HOOKGATE_ADMIN_TOKEN or the config's \
                 server.admin_token) is not the running gateway's server.admin_token"
            }
            Some("route_not_delivered") => {
                "\n  nothing delivers this route's events now (removed, renamed, or in proxy \
                 mode): configure a route of that name with a sink, not in proxy mode, then \
                 replay"
            }
            Some("unauthorized") => "\n  pass --token, or set server.admin_token in the config",
            _ => "",
        };
        bail!("{} {}: {}{hint}", status.as_u16(), path, body);
    }
    Ok(body)
}

/// Percent-encodes a query value.
pub fn q(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

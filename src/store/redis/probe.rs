//! What `hookgate check` and startup say about the configured Redis: reachable at all, and
//! set up so that "acknowledged" means durable (AOF on, nothing evicted).

use std::time::Duration;

use ::redis::aio::ConnectionLike;
use ::redis::Value;

use super::codec::string;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The URL as it may be shown: the password, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<invalid URL>".to_string(),
    }
}

/// One warning line per setting that weakens the guarantees. A Redis that refuses `CONFIG`
/// (managed services often rename it) gets one line saying it could not be checked.
pub async fn persistence_warnings(conn: &mut impl ConnectionLike, shown: &str) -> Vec<String> {
    let mut out = Vec::new();
    match config_get(conn, "appendonly").await {
        Some(v) if v == "no" => out.push(format!(
            "store.url: Redis at {shown} does not persist (appendonly no): a Redis restart loses acknowledged events"
        )),
        Some(_) => {
            if config_get(conn, "appendfsync").await.as_deref() == Some("no") {
                out.push(format!(
                    "store.url: Redis at {shown} has appendfsync no: the OS decides when the AOF reaches the disk, so a host crash loses acknowledged events (use always, or everysec knowingly)"
                ));
            }
        }
        None => out.push(format!(
            "store.url: cannot read the settings of Redis at {shown} (CONFIG GET refused): make sure appendonly is yes and maxmemory-policy is noeviction; hookgate cannot check or guard them"
        )),
    }
    if let Some(p) = config_get(conn, "maxmemory-policy").await {
        if p.starts_with("volatile-") {
            out.push(format!(
                "store.url: Redis at {shown} has maxmemory-policy {p}: under memory pressure it may evict dedupe keys and delivered events' history, so a repeated webhook could be forwarded again (use noeviction)"
            ));
        }
    }
    out
}

/// The eviction policy, when it is one that may drop acknowledged events (`allkeys-*`: any
/// key, pending events included). hookgate refuses to start on it and stops acknowledging
/// while it is set at runtime. `None` also when `CONFIG GET` is refused.
pub async fn evicting_policy(conn: &mut impl ConnectionLike) -> Option<String> {
    read_evicting_policy(conn).await.ok().flatten()
}

/// As [`evicting_policy`], but `Err` when Redis did not answer (a blip, or `CONFIG` refused),
/// so a periodic check keeps what it knew instead of taking silence for "no eviction".
pub async fn read_evicting_policy(
    conn: &mut impl ConnectionLike,
) -> Result<Option<String>, ::redis::RedisError> {
    Ok(config_get_result(conn, "maxmemory-policy")
        .await?
        .filter(|p| evicts_pending(p)))
}

/// Whether a `maxmemory-policy` may evict keys that have no TTL (pending events do not).
pub fn evicts_pending(policy: &str) -> bool {
    policy.starts_with("allkeys-")
}

/// The error for an evicting policy, naming the setting to change.
pub fn evicting_error(shown: &str, policy: &str) -> String {
    format!(
        "store.url: Redis at {shown} has maxmemory-policy {policy}: under memory pressure it evicts any key, acknowledged events included; set maxmemory-policy noeviction (then a full Redis answers 503 instead of losing events)"
    )
}

async fn config_get(conn: &mut impl ConnectionLike, key: &str) -> Option<String> {
    config_get_result(conn, key).await.ok().flatten()
}

async fn config_get_result(
    conn: &mut impl ConnectionLike,
    key: &str,
) -> Result<Option<String>, ::redis::RedisError> {
    let v: Value = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg(key)
        .query_async(conn)
        .await?;
    Ok(match v {
        Value::Array(a) => a.get(1).and_then(string),
        Value::Map(m) => m.first().and_then(|(_, v)| string(v)),
        _ => None,
    })
}

/// For `hookgate check`: (warnings, errors), each line starting with the key's path.
pub fn check(url: &str) -> (Vec<String>, Vec<String>) {
    let shown = redact(url);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return (vec![], vec![format!("store.url: cannot check Redis: {e}")]),
    };
    rt.block_on(async {
        let client = match ::redis::Client::open(url) {
            Ok(c) => c,
            Err(e) => return (vec![], vec![format!("store.url: invalid Redis URL: {e}")]),
        };
        let cfg = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CHECK_TIMEOUT)
            .set_response_timeout(CHECK_TIMEOUT);
        let conn = tokio::time::timeout(
            CHECK_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&cfg),
        )
        .await;
        let mut conn = match conn {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return (vec![], vec![connect_error(&shown, &e)]),
            Err(_) => {
                return (
                    vec![],
                    vec![format!(
                        "store.url: cannot reach Redis at {shown}: no answer within {}s",
                        CHECK_TIMEOUT.as_secs()
                    )],
                )
            }
        };
        let pong: Result<String, _> = ::redis::cmd("PING").query_async(&mut conn).await;
        if let Err(e) = pong {
            return (
                vec![],
                vec![format!("store.url: Redis at {shown} refuses commands: {e}")],
            );
        }
        let errors = match evicting_policy(&mut conn).await {
            Some(p) => vec![evicting_error(&shown, &p)],
            None => vec![],
        };
        (persistence_warnings(&mut conn, &shown).await, errors)
    })
}

/// Why a connection to Redis could not be made: unreachable, or reached and refused (a wrong
/// password, a database number past Redis's `databases`).
pub fn connect_error(shown: &str, e: &::redis::RedisError) -> String {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() {
        format!("store.url: cannot reach Redis at {shown}: {e}")
    } else {
        format!("store.url: Redis at {shown} refused the connection: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_shown() {
        assert_eq!(
            redact("rediss://user:hunter2@redis.example:6380/1"),
            "rediss://user:***@redis.example:6380/1"
        );
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert!(!redact("redis://:hunter2@h/0").contains("hunter2"));
    }
}

//! The retry schedule, pure: time and randomness are inputs, so it is tested exactly.
//!
//! The delay before attempt n+1 is `min(backoff_max, backoff_initial · 2^(n-1))` with full
//! jitter (uniform in [0, that]). An upstream's `Retry-After` is a floor under it: the next
//! attempt waits at least that long (capped at `backoff_max`), and never less than the
//! backoff would have: an upstream answering `503` with `Retry-After: 0`, `1` or a date its
//! clock already passed during a blip must not spend `max_attempts` in seconds and send the
//! event to the dead letters. After `max_attempts` attempts in the current cycle, or once the
//! cycle is older than `max_age`, the event is dead.

use std::time::Duration;

use super::DeliveryError;
use crate::config::ForwardConfig;
use crate::store::Next;

/// The uncapped-by-jitter ceiling for the delay after the `n`th failed attempt (1-based).
pub fn ceiling(n: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(31));
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

/// Full jitter: `jitter` is uniform in [0, 1).
pub fn delay(n: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    ceiling(n, initial, max).mul_f64(jitter.clamp(0.0, 1.0))
}

/// What a failed attempt leads to. `cycle_attempt` counts attempts since the last replay
/// including this one; times are Unix milliseconds.
pub fn after_failure(
    cfg: &ForwardConfig,
    err: &DeliveryError,
    cycle_attempt: u32,
    cycle_started_ms: i64,
    now_ms: i64,
    jitter: f64,
) -> Next {
    let retry_after = match err {
        DeliveryError::Permanent { detail, .. } => {
            return Next::Dead {
                reason: format!("permanent failure: {detail}"),
            }
        }
        DeliveryError::Retryable { retry_after, .. } => *retry_after,
    };
    if cycle_attempt >= cfg.max_attempts {
        return Next::Dead {
            reason: format!(
                "max_attempts ({}) reached; last error: {}",
                cfg.max_attempts,
                err.detail()
            ),
        };
    }
    let backoff = delay(cycle_attempt, cfg.backoff_initial, cfg.backoff_max, jitter);
    let wait = retry_after.map_or(backoff, |ra| ra.min(cfg.backoff_max).max(backoff));
    let mut at = now_ms.saturating_add(wait.as_millis() as i64);
    if let Some(max_age) = cfg.max_age {
        let deadline =
            cycle_started_ms.saturating_add(max_age.as_millis().min(i64::MAX as u128) as i64);
        if now_ms >= deadline {
            return Next::Dead {
                reason: format!(
                    "max_age ({}) exceeded; last error: {}",
                    humantime::format_duration(max_age),
                    err.detail()
                ),
            };
        }
        at = at.min(deadline);
    }
    Next::Retry { at_ms: at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SinkTarget;
    use proptest::prelude::*;

    fn cfg(max_attempts: u32, max_age: Option<Duration>) -> ForwardConfig {
        ForwardConfig {
            target: SinkTarget::Http {
                url: reqwest::Url::parse("http://x").unwrap(),
            },
            timeout: Duration::from_secs(10),
            max_attempts,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            max_age,
            concurrency: 1,
            sign: None,
        }
    }

    fn retryable(ra: Option<Duration>) -> DeliveryError {
        DeliveryError::Retryable {
            status: Some(503),
            retry_after: ra,
            detail: "503".into(),
        }
    }

    #[test]
    fn ceilings_double_then_cap() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(600));
        let got: Vec<u64> = (1..=12).map(|n| ceiling(n, i, m).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(ceiling(u32::MAX, i, m), m);
    }

    #[test]
    fn retry_after_honoured_and_capped() {
        let c = cfg(8, None);
        assert!(matches!(
            after_failure(
                &c,
                &retryable(Some(Duration::from_secs(7))),
                1,
                0,
                1000,
                0.5
            ),
            Next::Retry { at_ms: 8000 }
        ));
        assert!(matches!(
            after_failure(
                &c,
                &retryable(Some(Duration::from_secs(9999))),
                1,
                0,
                0,
                0.5
            ),
            Next::Retry { at_ms: 600_000 }
        ));
    }

    #[test]
    fn a_retry_after_shorter_than_the_backoff_does_not_shorten_it() {
        let c = cfg(8, None);
        // Attempt 5: ceiling 16 s, jitter 0.5 → 8 s; `Retry-After: 0` (or a past date, read
        // as 0) and `Retry-After: 1` keep the 8 s, a longer one is waited for.
        for (ra, at_ms) in [(0, 8000), (1, 8000), (8, 8000), (12, 12_000)] {
            let next = after_failure(&c, &retryable(Some(Duration::from_secs(ra))), 5, 0, 0, 0.5);
            assert!(
                matches!(next, Next::Retry { at_ms: got } if got == at_ms),
                "Retry-After {ra}: {next:?}"
            );
        }
    }

    #[test]
    fn dead_after_max_attempts_permanent_and_max_age() {
        let c = cfg(3, Some(Duration::from_secs(60)));
        assert!(matches!(
            after_failure(&c, &retryable(None), 2, 0, 0, 0.0),
            Next::Retry { .. }
        ));
        assert!(matches!(
            after_failure(&c, &retryable(None), 3, 0, 0, 0.0),
            Next::Dead { .. }
        ));
        let perm = DeliveryError::Permanent {
            status: Some(400),
            detail: "bad".into(),
        };
        assert!(matches!(
            after_failure(&c, &perm, 1, 0, 0, 0.0),
            Next::Dead { .. }
        ));
        assert!(matches!(
            after_failure(&c, &retryable(None), 1, 0, 60_000, 0.0),
            Next::Dead { .. }
        ));
        // A retry is never scheduled past the deadline.
        assert!(matches!(
            after_failure(
                &c,
                &retryable(Some(Duration::from_secs(300))),
                1,
                0,
                1000,
                0.0
            ),
            Next::Retry { at_ms: 60_000 }
        ));
    }

    proptest! {
        #[test]
        fn delay_within_full_jitter_bounds(n in 1u32..100, init_ms in 1u64..10_000, max_ms in 1u64..3_600_000, j in 0.0f64..1.0) {
            let (i, m) = (Duration::from_millis(init_ms), Duration::from_millis(max_ms.max(init_ms)));
            let d = delay(n, i, m, j);
            let cap = ceiling(n, i, m);
            prop_assert!(d <= cap);
            prop_assert!(cap <= m);
            prop_assert!(cap >= i.min(m));
            // Ceilings never shrink from one attempt to the next.
            prop_assert!(ceiling(n + 1, i, m) >= cap);
        }
    }
}

//! Durations (humantime: `500ms`, `5m`, `24h`) and sizes (`512`, `64KiB`, `1MiB`, `1GiB`).

use std::time::Duration;

/// The longest duration any key takes. Far beyond any sensible setting, and small enough that
/// every use is safe: milliseconds as `i64`, `Instant + d`, `SystemTime + d`, Redis TTLs.
/// humantime's year is 365.25 days, so `"100y"` is exactly the maximum.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A humantime duration of at most [`MAX_DURATION`] (100 years).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s:?} is too long (the maximum is 100 years)"
        ));
    }
    Ok(d)
}

pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. \"512\", \"64KiB\", \"1MiB\")"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" | "k" | "kB" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return Err(format!("invalid size {s:?} (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1 potato").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10 sec"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("100y"), Ok(MAX_DURATION));
        for huge in ["101y", "300000000y", "300000000000y"] {
            assert_eq!(
                parse_duration(huge),
                Err(format!(
                    "duration {huge:?} is too long (the maximum is 100 years)"
                ))
            );
        }
    }
}

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
    let invalid = || {
        format!(
            "invalid size {s:?}: a whole number of B, KiB, MiB or GiB (e.g. \"512\", \"64KiB\", \"1MiB\"; KB, MB and GB are read as KiB, MiB and GiB)"
        )
    };
    let n: usize = num.parse().map_err(|_| invalid())?;
    // Any case: "1mb" is no less clear than "1MB".
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "kb" | "k" => 1 << 10,
        "mib" | "mb" | "m" => 1 << 20,
        "gib" | "gb" | "g" => 1 << 30,
        _ => return Err(invalid()),
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
        assert_eq!(parse_size("1mb"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        for bad in ["1 potato", "MiB", "1.5MiB", "-1KiB", "1 TiB"] {
            assert!(
                parse_size(bad).unwrap_err().ends_with("(e.g. \"512\", \"64KiB\", \"1MiB\"; KB, MB and GB are read as KiB, MiB and GiB)"),
                "{bad}"
            );
        }
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

//! Wall-clock time as the collector stores and shows it: Unix seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// RFC 3339 in UTC, or `-` for "never" (0 or before the epoch).
pub fn utc(secs: i64) -> String {
    // humantime cannot show years past 9999; such a time is not real.
    if secs <= 0 || secs >= 253_402_300_800 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs as u64)).to_string()
}

/// A compact age for tables: the two largest units, `3d 4h`, `12m 5s`.
pub fn age(secs: i64) -> String {
    if secs < 0 {
        return "-".into();
    }
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (name, size) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 || (!parts.is_empty() && rest == 0) {
            break;
        }
    }
    parts.join(" ")
}

/// A duration as written in the config file.
pub fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(0), "-");
        assert_eq!(age(0), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(3_600), "1h");
        assert_eq!(age(3 * 86_400 + 4 * 3_600 + 5), "3d 4h");
        assert_eq!(age(125), "2m 5s");
        assert_eq!(age(-1), "-");
        assert_eq!(duration(Duration::from_secs(30 * 86400)), "30days");
    }
}

//! Wall-clock readings in the two forms ccgate reports: Unix seconds (OpenAI `created`,
//! metrics timestamps) and RFC 3339 UTC strings (health and reload status).

use time::OffsetDateTime;

/// Seconds since the epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds `t` as an RFC 3339 UTC timestamp (like [`now_rfc3339`], without
/// fractions); the number itself if it is out of range.
pub fn rfc3339_of_unix(t: u64) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    i64::try_from(t)
        .ok()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Seconds since the epoch with fractions (0 if the clock is before it).
pub fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// RFC 3339 UTC timestamp with microseconds, like the health contract's example.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_microseconds_and_utc_offset() {
        let s = now_rfc3339();
        // 2026-01-02T03:04:05.123456+00:00
        assert_eq!(s.len(), 32, "{s}");
        assert!(s.ends_with("+00:00"), "{s}");
        assert_eq!(&s[19..20], ".", "{s}");
        assert!(unix_now() > 1_700_000_000);
    }
}

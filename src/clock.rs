//! The one place time is read and formatted: milliseconds since the Unix epoch, the unit every
//! stored time uses, and RFC 3339 in UTC for what people and PagerDuty read.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 in UTC for `ms` milliseconds since the epoch, to the millisecond with trailing zeros
/// of the fraction dropped, e.g. `2026-12-01T23:04:05.123Z`; a time `time` cannot represent
/// gives the epoch.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

//! Timestamps serialized as chrono serializes them (RFC 3339 in UTC with `Z`, the fraction of a
//! second in 3, 6 or 9 digits as needed, none when zero), written in one piece: chrono's own
//! `Serialize` hands serde_json the text a character or two at a time, each piece escaped on
//! its own, which was ~2 % of the relay's CPU at 20,000 deliveries/s (a handful of timestamps
//! per delivery). Reading is chrono's, unchanged.
//!
//! Use with `#[serde(serialize_with = "crate::domain::timestamp::serialize")]`, or
//! [`serialize_option`] on an `Option`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// `t` as chrono would serialize it, as one string.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    // The same writer and options chrono's `Serialize` uses, into a string first.
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// [`serialize`] for an optional timestamp (`null` for none).
pub fn serialize_option<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[derive(serde::Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    #[test]
    fn timestamps_serialize_exactly_as_chrono_serializes_them() {
        let base = Utc.with_ymd_and_hms(2026, 12, 6, 3, 20, 47).unwrap();
        // Whole seconds, milliseconds, microseconds, nanoseconds, and a spread of instants.
        let mut instants: Vec<DateTime<Utc>> = [0, 5_000_000, 123_456_000, 1, 999_999_999]
            .iter()
            .map(|n| base + chrono::Duration::nanoseconds(*n))
            .collect();
        let mut x: i64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            instants.push(Utc.timestamp_nanos(x.rem_euclid(4_102_444_800_000_000_000)));
        }
        for t in instants {
            let ours = serde_json::to_string(&Fast(t)).unwrap();
            assert_eq!(ours, serde_json::to_string(&t).unwrap(), "{t:?}");
        }
    }

    #[test]
    fn an_absent_timestamp_is_null() {
        #[derive(serde::Serialize)]
        struct Maybe(#[serde(serialize_with = "serialize_option")] Option<DateTime<Utc>>);
        assert_eq!(serde_json::to_string(&Maybe(None)).unwrap(), "null");
    }
}

//! Timestamps as the database stores them (microseconds since the Unix epoch,
//! UTC) and as the bentoml client reads and writes them.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_micros())
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// This instant plus `d` (saturating), e.g. `Timestamp::now().after(ttl)`.
    pub fn after(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.0).single().unwrap_or_default()
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2025-01-01T12:00:00.123456Z`:
    /// what the protocol recommends for every timestamp in a response.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime().to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Parses a timestamp sent by a client. bentoml sends `build_at` as
    /// `%Y-%m-%d %H:%M:%S.%f` with no zone (UTC wall-clock); other clients may
    /// send RFC 3339.
    pub fn parse_client(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
            return Some(Timestamp(dt.with_timezone(&Utc).timestamp_micros()));
        }
        for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
                return Some(Timestamp(naive.and_utc().timestamp_micros()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bentoml_build_at() {
        let t = Timestamp::parse_client("2026-11-24 19:44:50.976764").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T19:44:50.976764Z");
    }

    #[test]
    fn parses_rfc3339_with_offset() {
        let t = Timestamp::parse_client("2026-11-24T20:44:50.5+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T19:44:50.500000Z");
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(Timestamp::parse_client(""), None);
        assert_eq!(Timestamp::parse_client("yesterday"), None);
    }
}

//! Typed configuration values, parsed once when the configuration loads:
//! durations in the unit their key names, cron expressions and JWT
//! algorithms. A value out of range is refused there, named by its key
//! (`worker.poll_interval_ms: must be at least 10`); what only the
//! combination of keys decides stays in `Config::validate`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

/// A duration written as a whole number of the unit its key names (`_ms`,
/// `_secs`, `_minutes`, `_hours`, `_days`): each unit `UNIT_MS`
/// milliseconds, at least `MIN` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Units<const UNIT_MS: u64, const MIN: u64 = 0>(u64);

pub type Millis<const MIN: u64 = 0> = Units<1, MIN>;
pub type Secs<const MIN: u64 = 0> = Units<1_000, MIN>;
pub type Minutes<const MIN: u64 = 0> = Units<60_000, MIN>;
pub type Hours<const MIN: u64 = 0> = Units<3_600_000, MIN>;
pub type Days<const MIN: u64 = 0> = Units<86_400_000, MIN>;

impl<const UNIT_MS: u64, const MIN: u64> Units<UNIT_MS, MIN> {
    pub fn get(self) -> Duration {
        Duration::from_millis(self.0.saturating_mul(UNIT_MS))
    }

    /// The number as written, in the key's unit.
    pub fn count(self) -> u64 {
        self.0
    }
}

impl<const UNIT_MS: u64, const MIN: u64> From<u64> for Units<UNIT_MS, MIN> {
    /// A value set in code (tests, the demo, the benchmarks).
    fn from(n: u64) -> Self {
        Self(n)
    }
}

impl<'de, const UNIT_MS: u64, const MIN: u64> Deserialize<'de> for Units<UNIT_MS, MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if n < MIN {
            return Err(D::Error::custom(format_args!("must be at least {MIN}")));
        }
        if n.checked_mul(UNIT_MS).is_none() {
            return Err(D::Error::custom("is too large"));
        }
        Ok(Self(n))
    }
}

/// A cron expression (six fields with seconds, `0 */5 * * * *`, or seven
/// with years), or empty: off.
#[derive(Clone)]
pub struct Cron(Option<dashtam_scheduler::Schedule>);

impl Cron {
    /// Never.
    pub fn off() -> Self {
        Self(None)
    }

    pub fn schedule(&self) -> Option<&dashtam_scheduler::Schedule> {
        self.0.as_ref()
    }
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, "Cron({s})"),
            None => f.write_str("Cron(off)"),
        }
    }
}

impl FromStr for Cron {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::off());
        }
        dashtam_scheduler::parse_cron(s).map(|c| Self(Some(c)))
    }
}

impl<'de> Deserialize<'de> for Cron {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// A JWT signature algorithm the API accepts: HS256, RS256 or ES256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JwtAlgorithm(pub jsonwebtoken::Algorithm);

impl<'de> Deserialize<'de> for JwtAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        dashtam_api::auth::parse_algorithm(&name)
            .map(Self)
            .ok_or_else(|| {
                D::Error::custom(format_args!("{name:?} is not one of HS256, RS256, ES256"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_once_and_refuse_what_is_below_their_minimum() {
        let s: Secs<1> = serde_json::from_str("90").unwrap();
        assert_eq!(s.get(), Duration::from_secs(90));
        let h: Hours = serde_json::from_str("2").unwrap();
        assert_eq!(h.get(), Duration::from_secs(7200));
        let e = serde_json::from_str::<Millis<10>>("9").unwrap_err();
        assert!(e.to_string().contains("must be at least 10"), "{e}");
        assert!(serde_json::from_str::<Days>(&u64::MAX.to_string()).is_err());
        assert!(serde_json::from_str::<Secs>("-1").is_err());
    }

    #[test]
    fn crons_and_algorithms_parse_once() {
        assert!("".parse::<Cron>().unwrap().schedule().is_none());
        assert!(
            "0 */5 * * * *"
                .parse::<Cron>()
                .unwrap()
                .schedule()
                .is_some()
        );
        assert!("every five minutes".parse::<Cron>().is_err());
        let a: JwtAlgorithm = serde_json::from_str("\"ES256\"").unwrap();
        assert_eq!(a.0, jsonwebtoken::Algorithm::ES256);
        assert!(serde_json::from_str::<JwtAlgorithm>("\"none\"").is_err());
    }
}

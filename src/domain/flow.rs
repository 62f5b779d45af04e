//! Flow control, as values: the keys a task names (`concurrency_key`, `rate_key`, `lane`), the
//! limits an assignee declares for them (`[worker.limits]`), and rates such as `20/min`.
//! Enforcing them across replicas is `limits/`'s job; this module only parses, checks and
//! matches.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Longest concurrency key, rate key or lane, in characters.
pub const MAX_KEY: usize = 128;
/// Largest concurrency limit (also the most holders one key keeps).
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Largest burst of a rate.
pub const MAX_BURST: u32 = 10_000;

/// The flow control fields of one task (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowKeys {
    /// At most the key's limit of tasks with this key run at once, across replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Tasks with this key start no faster than the key's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_key: Option<String>,
    /// Tasks of one lane run one at a time, in creation order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
}

impl FlowKeys {
    /// True when the task names no key at all (it then costs nothing extra).
    pub fn is_empty(&self) -> bool {
        self.concurrency_key.is_none() && self.rate_key.is_none() && self.lane.is_none()
    }

    /// Each key, when given, is 1 to [`MAX_KEY`] characters and not blank.
    pub fn validate(&self) -> Result<(), String> {
        for (field, v) in [
            ("concurrency_key", &self.concurrency_key),
            ("rate_key", &self.rate_key),
            ("lane", &self.lane),
        ] {
            if let Some(v) = v {
                check_key(field, v)?;
            }
        }
        Ok(())
    }
}

/// `field`'s value `key` is 1 to [`MAX_KEY`] characters and not blank (any text: entry keys
/// encode it).
pub fn check_key(field: &str, key: &str) -> Result<(), String> {
    if key.trim().is_empty() || key.chars().count() > MAX_KEY {
        return Err(format!(
            "{field} must be 1 to {MAX_KEY} characters, not blank"
        ));
    }
    Ok(())
}

/// How many fair-share turns each priority of an assignee has: tenants hash onto these, and a
/// worker takes the turns round robin (see [`Share`]).
pub const SHARES: u8 = 16;

/// A tenant's fair-share turn within one priority: its tasks queue on the subject of the share
/// (`tasks.<assignee>.<p>.<kind>.s<NN>`), and workers pull from the shares with work in turn,
/// so a tenant with thousands queued delays another tenant's task by at most one task per free
/// slot. Tenants hash onto [`SHARES`] turns: two tenants that share a turn share its place in
/// the round, in creation order. A stable hash (FNV-1a), so every process agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Share(u8);

impl Share {
    /// The share of `tenant`.
    pub fn of(tenant: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in tenant.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Self((hash % u64::from(SHARES)) as u8)
    }

    /// Every share, in round-robin order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..SHARES).map(Self)
    }

    /// `None` (the tasks of no tenant), then every share: what each priority has a worker
    /// consumer for.
    pub fn every_turn() -> impl Iterator<Item = Option<Self>> {
        std::iter::once(None).chain(Self::all().map(Some))
    }

    /// Share number `n` (0 to [`SHARES`] - 1).
    pub fn from_index(n: usize) -> Option<Self> {
        u8::try_from(n).ok().filter(|&n| n < SHARES).map(Self)
    }

    /// Its subject token, `s00` to `s15`.
    pub fn token(self) -> String {
        format!("s{:02}", self.0)
    }

    /// Reads a subject token written by [`token`](Self::token).
    pub fn parse(token: &str) -> Option<Self> {
        let n: u8 = token.strip_prefix('s')?.parse().ok()?;
        (n < SHARES && token.len() == 3).then_some(Self(n))
    }

    /// Its number, 0 to [`SHARES`] - 1.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.token())
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("a turn is s00 to s15, not {text:?}")))
    }
}

/// `count` starts per `per` (a token bucket refilled evenly: one start every `per / count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parses `N/unit` or `N/<n><unit>`: `20/min`, `10/s`, `100/h`, `5/30s`, `1000/day`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("a rate is N/period such as 20/min, 10/s, 100/h, 5/30s or 1000/day: {text:?}")
        };
        let (n, period) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let digits = period.chars().take_while(char::is_ascii_digit).count();
        let times: u64 = match &period[..digits] {
            "" => 1,
            d => d.parse().map_err(|_| bad())?,
        };
        let unit = match &period[digits..] {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        let per = Duration::from_secs(times.checked_mul(unit).ok_or_else(bad)?);
        if count == 0 || per.is_zero() || per > Duration::from_secs(366 * 86_400) {
            return Err(bad());
        }
        Ok(Self { count, per })
    }

    /// Time between two starts when the bucket is empty.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.per.as_secs();
        let (n, unit) = match s {
            _ if s.is_multiple_of(86_400) => (s / 86_400, "day"),
            _ if s.is_multiple_of(3600) => (s / 3600, "h"),
            _ if s.is_multiple_of(60) => (s / 60, "min"),
            _ => (s, "s"),
        };
        match n {
            1 => write!(f, "{}/{unit}", self.count),
            n => write!(f, "{}/{n}{unit}", self.count),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Rate::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One key's limits: what an override (`PUT /api/limits/{assignee}/{key}`) sets, or what the
/// config's patterns give a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// Tasks with this `concurrency_key` running at once (0 holds them all).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub concurrency: Option<u32>,
    /// Starts per period of tasks with this `rate_key`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub rate: Option<Rate>,
    /// Starts allowed at once after a quiet spell (default 1: evenly spread).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub burst: Option<u32>,
}

/// A field that, when given, has a value: `null` is refused (leave the field out instead), so
/// a body means exactly what it says.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl KeyLimits {
    /// An override sets something, and the numbers are in range.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency.is_none() && self.rate.is_none() {
            return Err("give concurrency, rate (with an optional burst) or both".into());
        }
        if self.concurrency.is_some_and(|c| c > MAX_CONCURRENCY) {
            return Err(format!(
                "concurrency must be between 0 and {MAX_CONCURRENCY}"
            ));
        }
        match (self.rate, self.burst) {
            (None, Some(_)) => Err("burst needs a rate".into()),
            (_, Some(b)) if b == 0 || b > MAX_BURST => {
                Err(format!("burst must be between 1 and {MAX_BURST}"))
            }
            _ => Ok(()),
        }
    }
}

/// What `[worker.limits]` declares for an assignee: patterns (`*` matches any run of
/// characters) and an assignee-wide cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeclaredLimits {
    /// Pattern → tasks of a matching `concurrency_key` running at once.
    pub concurrency: BTreeMap<String, u32>,
    /// Pattern → the rate of a matching `rate_key`.
    pub rate: BTreeMap<String, Rate>,
    /// Pattern → the burst of a matching `rate_key` (default 1).
    pub burst: BTreeMap<String, u32>,
    /// Tasks of the assignee running at once across all replicas (unset: no cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
}

impl DeclaredLimits {
    /// Patterns are valid keys, numbers in range.
    pub fn validate(&self) -> Result<(), String> {
        let patterns = self.concurrency.keys().chain(self.rate.keys());
        for p in patterns.chain(self.burst.keys()) {
            check_key("a limits pattern", p)?;
        }
        if self.concurrency.values().any(|&c| c > MAX_CONCURRENCY) {
            return Err(format!("a concurrency limit is above {MAX_CONCURRENCY}"));
        }
        if self.burst.values().any(|&b| b == 0 || b > MAX_BURST) {
            return Err(format!("a burst must be between 1 and {MAX_BURST}"));
        }
        Ok(())
    }

    /// True when nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.concurrency.is_empty() && self.rate.is_empty() && self.max_running.is_none()
    }

    /// What the patterns give `key`: the most specific matching pattern of each map wins (an
    /// exact key, then the longest pattern).
    pub fn for_key(&self, key: &str) -> KeyLimits {
        KeyLimits {
            concurrency: best_match(&self.concurrency, key).copied(),
            rate: best_match(&self.rate, key).copied(),
            burst: best_match(&self.burst, key).copied(),
        }
    }
}

/// The value of the most specific pattern of `map` matching `key`.
fn best_match<'a, T>(map: &'a BTreeMap<String, T>, key: &str) -> Option<&'a T> {
    if let Some(v) = map.get(key) {
        return Some(v);
    }
    map.iter()
        .filter(|(p, _)| wildmatch::WildMatch::new(p).matches(key))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_the_forms_the_readme_shows() {
        let r = Rate::parse("20/min").unwrap();
        assert_eq!((r.count, r.per), (20, Duration::from_secs(60)));
        assert_eq!(
            Rate::parse("10/s").unwrap().interval(),
            Duration::from_millis(100)
        );
        assert_eq!(Rate::parse("5/30s").unwrap().per, Duration::from_secs(30));
        assert_eq!(Rate::parse(" 1000/day ").unwrap().to_string(), "1000/day");
        assert_eq!(Rate::parse("5/30s").unwrap().to_string(), "5/30s");
        for bad in [
            "",
            "20",
            "0/min",
            "-1/min",
            "20/fortnight",
            "x/s",
            "20/0s",
            "1/9999999d",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_most_specific_pattern_gives_a_key_its_limit() {
        let declared = DeclaredLimits {
            concurrency: [
                ("repo:*".into(), 2),
                ("repo:acme/*".into(), 1),
                ("*".into(), 9),
            ]
            .into(),
            rate: [("channel:*".into(), Rate::parse("20/min").unwrap())].into(),
            ..Default::default()
        };
        assert_eq!(declared.for_key("repo:acme/web").concurrency, Some(1));
        assert_eq!(declared.for_key("repo:other/x").concurrency, Some(2));
        assert_eq!(declared.for_key("anything").concurrency, Some(9));
        assert!(declared.for_key("channel:tg-1").rate.is_some());
        assert!(declared.for_key("repo:acme/web").rate.is_none());
    }

    #[test]
    fn overrides_must_set_something_in_range() {
        let ok = KeyLimits {
            concurrency: Some(1),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        assert!(KeyLimits::default().validate().is_err());
        let burst_alone = KeyLimits {
            concurrency: Some(1),
            burst: Some(3),
            ..Default::default()
        };
        assert!(burst_alone.validate().is_err());
    }

    #[test]
    fn keys_are_short_and_not_blank() {
        let long = "k".repeat(MAX_KEY + 1);
        let keys = FlowKeys {
            lane: Some(long),
            ..Default::default()
        };
        assert!(keys.validate().unwrap_err().contains("lane"));
        assert!(check_key("lane", " ").is_err());
        assert!(check_key("lane", "session:42").is_ok());
    }
}

//! When a schedule ticks: 5-field cron expressions, `@every <duration>` and the predefined
//! `@hourly` … `@yearly`, read in an IANA time zone. Pure: no I/O, no wall clock.
//!
//! Every API replica computes the same ticks from the same `(expression, time zone)`: the rules
//! below depend on nothing but the expression, the zone's tz-database rules (built into the
//! binary by `chrono-tz`) and the instant asked about.
//!
//! # Cron expressions
//! Five fields, `minute hour day-of-month month day-of-week`, each `*` or a comma list of
//! values (`5`), ranges (`1-5`) and steps (`*/15`, `10-50/20`); months may be named `JAN`–`DEC`,
//! days `SUN`–`SAT` (case-insensitive), and day-of-week 7 is Sunday as well as 0. When both day
//! fields are restricted (neither begins with `*`) a day matches if EITHER matches
//! (`0 0 13 * FRI` runs on every 13th and every Friday); otherwise both must match, as in Vixie
//! cron (`0 0 */2 * MON` runs on Mondays that fall on odd days). The finest resolution is one
//! minute: a sixth (seconds) field is refused; `@every 30s` covers sub-minute schedules.
//! `@hourly` = `0 * * * *`, `@daily` = `@midnight` = `0 0 * * *`, `@weekly` = `0 0 * * 0`,
//! `@monthly` = `0 0 1 * *`, `@yearly` = `@annually` = `0 0 1 1 *`.
//!
//! # Daylight saving time
//! A cron expression names wall-clock times in its zone; twice a year some of those do not exist
//! or exist twice. What happens depends on the hour field:
//!
//! - **Wall-clock jobs** (the hour field does not begin with `*`: `30 2 * * *`, `0 2,14 * * *`,
//!   `*/15 2 * * *`, `@daily`) run once per matching wall-clock time.
//!   - *Spring forward*: a matching time inside the gap (02:30 on 2026-03-29 in Europe/Berlin,
//!     where clocks go 02:00 → 03:00) runs ONCE, at the first instant after the gap (03:00 CEST
//!     = 01:00 UTC). All gap times of a job collapse into that one tick, which is also the tick
//!     of a matching 03:00: `*/15 2 * * *` and `0 2,3 * * *` both tick once at 01:00 UTC that
//!     night, never twice.
//!   - *Fall back*: a repeated time (02:30 on 2026-10-25 in Europe/Berlin) runs ONCE, at its
//!     FIRST occurrence (02:30 CEST = 00:30 UTC); the second pass through 02:00–03:00 is skipped.
//! - **Interval jobs** (the hour field begins with `*`: `0 * * * *`, `*/15 * * * *`,
//!   `0 */2 * * *`, `@hourly`) tick at every instant whose local time matches, as Vixie cron
//!   does for wildcard jobs.
//!   - *Spring forward*: they have no ticks inside the gap (02:00, 02:15, … do not exist); the
//!     gap is not collapsed. `*/15 * * * *` ticks at 01:45 CET then 03:00 CEST (00:45, 01:00
//!     UTC); `5 * * * *` at 01:05 CET then 03:05 CEST (00:05, 01:05 UTC): still one tick per
//!     real hour.
//!   - *Fall back*: they run in both occurrences of the repeated hour, which are different
//!     instants: `0 * * * *` fires at 00:00 UTC and 01:00 UTC, both 02:00 local.
//!
//! # `@every <duration>`
//! Ticks are at the multiples of the duration since the Unix epoch (UTC), so replicas agree and a
//! restart does not shift them; the time zone plays no part. See [`CronSpec::parse`].

use chrono::{DateTime, MappedLocalTime, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use std::time::Duration;

/// The longest `@every` period: 366 days, in seconds.
const MAX_EVERY_SECS: u64 = 366 * 86_400;
/// How far apart the transition search probes a zone's UTC offset. Two offset changes closer
/// together than this (none in the tz database since 1970) could be missed.
const PROBE_SECS: i64 = 6 * 3600;
/// A bound on the segments one search walks (each ends at a transition or a skipped repeat).
const MAX_WALK_STEPS: usize = 10_000;

/// A parsed schedule: when it ticks and in which time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSpec {
    expr: String,
    timezone: String,
    tz: Tz,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// `@every`: a period in whole seconds, ticks at its multiples since the epoch.
    Every(i64),
    /// A 5-field expression; `wall_clock` when the hour field does not begin with `*`.
    Cron { cron: Box<Cron>, wall_clock: bool },
}

/// Why a cron expression or time zone was refused (message names the problem; shown to API callers).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CronError {
    /// The expression is not a 5-field cron expression, `@every <duration>` or a predefined
    /// `@daily`…; the message names the field and the problem.
    #[error("invalid cron expression: {0}")]
    BadCron(String),
    /// The time zone is not an IANA name known to the tz database.
    #[error("unknown time zone {0:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")]
    BadTimeZone(String),
}

fn bad(message: impl Into<String>) -> CronError {
    CronError::BadCron(message.into())
}

impl CronSpec {
    /// Parses `expr` (5-field cron, `@every <dur>`, or a predefined `@daily`…) in IANA `timezone` (e.g. "Europe/Berlin", "UTC").
    ///
    /// `@every` takes one duration of whole numbers with units `d`, `h`, `m`, `s` (`2s`, `5m`,
    /// `1h30m`, `1d`), at least 1 s and at most 366 days, a whole number of seconds (`500ms` is
    /// refused). The time zone is checked for every kind of expression, `@every` included.
    pub fn parse(expr: &str, timezone: &str) -> Result<CronSpec, CronError> {
        let tz: Tz = timezone
            .parse()
            .map_err(|_| CronError::BadTimeZone(timezone.to_string()))?;
        let text = expr.trim();
        let kind = if text.is_empty() {
            return Err(bad("the expression is empty"));
        } else if let Some(rest) = text.strip_prefix('@') {
            parse_at_form(rest)?
        } else {
            parse_fields(text)?
        };
        Ok(CronSpec {
            expr: expr.to_string(),
            timezone: timezone.to_string(),
            tz,
            kind,
        })
    }

    /// The first tick strictly after `after`.  None only if the expression can never fire (e.g. 30 Feb).
    ///
    /// Ticks are whole seconds. The daylight-saving rules are those of the module documentation.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.timestamp();
        let tick = match &self.kind {
            Kind::Every(period) => after
                .div_euclid(*period)
                .checked_add(1)?
                .checked_mul(*period)?,
            Kind::Cron { cron, wall_clock } => self.walk_forward(cron, *wall_clock, after)?,
        };
        DateTime::from_timestamp(tick, 0)
    }

    /// The latest tick at or before `at` (used to recognise which tick a late-fired message belongs to, and for catch-up), searching back at most `within`.
    ///
    /// A tick exactly `within` before `at` is still found; anything earlier gives `None`. The
    /// ticks are exactly those [`CronSpec::next_after`] yields.
    pub fn last_at_or_before(&self, at: DateTime<Utc>, within: Duration) -> Option<DateTime<Utc>> {
        let lower = chrono::Duration::from_std(within)
            .ok()
            .and_then(|w| at.checked_sub_signed(w))
            .map_or(i64::MIN, |l| {
                l.timestamp() + i64::from(l.timestamp_subsec_nanos() > 0)
            });
        let at = at.timestamp();
        let tick = match &self.kind {
            Kind::Every(period) => at.div_euclid(*period).checked_mul(*period)?,
            Kind::Cron { cron, wall_clock } => self.walk_backward(cron, *wall_clock, at, lower)?,
        };
        if tick < lower {
            return None;
        }
        DateTime::from_timestamp(tick, 0)
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone name as given.
    pub fn timezone(&self) -> &str {
        &self.timezone
    }

    /// The zone's UTC offset in seconds at the instant `secs` (Unix seconds).
    fn offset_at(&self, secs: i64) -> i64 {
        // Outside chrono's range (hundreds of millennia) there is no offset to find; croner's
        // searches stay within the years 1-5000, so the fallback is never reached.
        DateTime::from_timestamp(secs, 0).map_or(0, |t| {
            let offset = self.tz.offset_from_utc_datetime(&t.naive_utc());
            i64::from(offset.fix().local_minus_utc())
        })
    }

    /// The first instant in `(from, until]` whose offset differs from the offset at `from`.
    fn next_transition(&self, from: i64, until: i64) -> Option<i64> {
        let offset = self.offset_at(from);
        let mut a = from;
        while a < until {
            let b = until.min(a.saturating_add(PROBE_SECS));
            if self.offset_at(b) != offset {
                return Some(self.bisect(a, b, offset));
            }
            a = b;
        }
        None
    }

    /// The latest instant `x` in `(floor, until]` such that `[x, until]` has the offset of `until`
    /// and `x - 1` has another: the start of `until`'s stretch, if it starts after `floor`.
    fn prev_transition(&self, until: i64, floor: i64) -> Option<i64> {
        let offset = self.offset_at(until);
        let mut b = until;
        while b > floor {
            let a = floor.max(b.saturating_sub(PROBE_SECS));
            if self.offset_at(a) != offset {
                return Some(self.bisect(a, b, self.offset_at(a)));
            }
            b = a;
        }
        None
    }

    /// Given `offset_at(lo) == lo_offset != offset_at(hi)`, the first instant after `lo` whose
    /// offset is no longer `lo_offset`.
    fn bisect(&self, mut lo: i64, mut hi: i64, lo_offset: i64) -> i64 {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.offset_at(mid) == lo_offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    /// Whether the instant `at`, whose wall-clock time is `local`, is the second occurrence of a
    /// repeated (fall-back) wall-clock time.
    fn is_second_pass(&self, local: &NaiveDateTime, at: i64) -> bool {
        match self.tz.from_local_datetime(local) {
            MappedLocalTime::Ambiguous(a, b) => at != a.timestamp().min(b.timestamp()),
            _ => false,
        }
    }

    /// The first tick of a cron expression strictly after `after` (Unix seconds). Walks the
    /// stretches of constant UTC offset: within one, local time is UTC plus that offset, and
    /// croner finds the next matching local time; at each offset change the DST rules apply.
    fn walk_forward(&self, cron: &Cron, wall_clock: bool, after: i64) -> Option<i64> {
        let mut from = after.checked_add(1)?;
        for _ in 0..MAX_WALK_STEPS {
            let offset = self.offset_at(from);
            let local = naive(from.checked_add(offset)?)?;
            let matched = cron.find_next_occurrence(&local, true).ok()?;
            let matched_secs = matched.and_utc().timestamp();
            let candidate = matched_secs - offset;
            match self.next_transition(from, candidate) {
                None if wall_clock && self.is_second_pass(&matched, candidate) => {
                    from = candidate + 1;
                }
                None => return Some(candidate),
                Some(change) => {
                    // A wall-clock time in a spring-forward gap ticks when the gap ends.
                    if wall_clock && matched_secs < change + self.offset_at(change) {
                        return Some(change);
                    }
                    from = change;
                }
            }
        }
        None
    }

    /// The latest tick of a cron expression at or before `at`, not before `lower` (Unix
    /// seconds): [`Self::walk_forward`] run backwards.
    fn walk_backward(&self, cron: &Cron, wall_clock: bool, at: i64, lower: i64) -> Option<i64> {
        let mut until = at;
        for _ in 0..MAX_WALK_STEPS {
            if until < lower {
                return None;
            }
            let offset = self.offset_at(until);
            let local = naive(until.checked_add(offset)?)?;
            let matched = cron.find_previous_occurrence(&local, true).ok()?;
            let matched_secs = matched.and_utc().timestamp();
            let candidate = matched_secs - offset;
            let floor = candidate.max(lower.saturating_sub(1));
            match self.prev_transition(until, floor) {
                None if candidate < lower => return None,
                None if wall_clock && self.is_second_pass(&matched, candidate) => {
                    until = candidate - 1;
                }
                None => return Some(candidate),
                Some(change) => {
                    if wall_clock && matched_secs >= change + self.offset_at(change - 1) {
                        return Some(change);
                    }
                    until = change - 1;
                }
            }
        }
        None
    }
}

/// The wall-clock date and time `secs` seconds after 1970-01-01 00:00.
fn naive(secs: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp(secs, 0).map(|t| t.naive_utc())
}

/// `@every <duration>` or a predefined schedule (`rest` is what follows the `@`).
fn parse_at_form(rest: &str) -> Result<Kind, CronError> {
    let mut words = rest.split_whitespace();
    let keyword = words.next().unwrap_or_default().to_ascii_lowercase();
    let args: Vec<&str> = words.collect();
    if keyword == "every" {
        return match args.as_slice() {
            [duration] => parse_every(duration).map(Kind::Every),
            [] => Err(bad(
                "@every needs a duration, e.g. `@every 5m` or `@every 1h30m`",
            )),
            _ => Err(bad(
                "@every takes one duration without spaces, e.g. `@every 1h30m`",
            )),
        };
    }
    let fields = match keyword.as_str() {
        "hourly" => "0 * * * *",
        "daily" | "midnight" => "0 0 * * *",
        "weekly" => "0 0 * * 0",
        "monthly" => "0 0 1 * *",
        "yearly" | "annually" => "0 0 1 1 *",
        _ => {
            return Err(bad(format!(
                "unknown @{keyword}: use @every <duration>, @hourly, @daily, @midnight, @weekly, \
                 @monthly, @yearly or @annually"
            )))
        }
    };
    if !args.is_empty() {
        return Err(bad(format!("@{keyword} takes nothing after it")));
    }
    parse_fields(fields)
}

/// The period of `@every <text>` in whole seconds, 1 s to 366 days.
fn parse_every(text: &str) -> Result<i64, CronError> {
    let not_a_duration = || {
        bad(format!(
            "@every {text:?} is not a duration: use whole numbers with units d, h, m, s, \
             e.g. 90s, 5m, 1h30m"
        ))
    };
    let lower = text.to_ascii_lowercase();
    let mut rest = lower.as_str();
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.len() - tail.trim_start_matches(|c: char| c.is_alphabetic()).len();
        let (unit, tail) = tail.split_at(unit_len);
        let per_unit: u128 = match unit {
            "d" => 86_400_000_000_000,
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(not_a_duration()),
        };
        // Digits beyond u64 are far past the 366-day limit: saturate and let the check refuse.
        let value = if number.is_empty() {
            return Err(not_a_duration());
        } else {
            number
                .parse::<u64>()
                .map_or(u128::from(u64::MAX), u128::from)
        };
        nanos = nanos.saturating_add(value.saturating_mul(per_unit));
        rest = tail;
    }
    every_seconds(text, nanos)
}

/// Checks an `@every` period given in nanoseconds and converts it to whole seconds.
fn every_seconds(text: &str, nanos: u128) -> Result<i64, CronError> {
    if nanos == 0 {
        return Err(bad(format!(
            "@every {text:?}: the period must be at least 1s"
        )));
    }
    if !nanos.is_multiple_of(1_000_000_000) {
        return Err(bad(format!(
            "@every {text:?}: the period must be a whole number of seconds (at least 1s)"
        )));
    }
    let secs = nanos / 1_000_000_000;
    if secs > u128::from(MAX_EVERY_SECS) {
        return Err(bad(format!(
            "@every {text:?}: the period must be at most 366 days"
        )));
    }
    i64::try_from(secs).map_err(|_| bad(format!("@every {text:?} is too long")))
}

/// One cron field's name, range and value names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    first_name: u32,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        first_name: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        first_name: 0,
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
        first_name: 0,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        first_name: 1,
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &DAYS,
        first_name: 0,
    },
];

/// A 5-field cron expression: each field is checked here (so errors name it), rewritten with
/// numbers only, and handed to croner, which finds matching wall-clock times.
fn parse_fields(text: &str) -> Result<Kind, CronError> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.len() {
        5 => {}
        6 => {
            return Err(bad(format!(
                "{text:?} has 6 fields, but a seconds field is not supported: cron takes 5 \
                 (minute hour day-of-month month day-of-week) and its finest resolution is one \
                 minute; use `@every 30s` for sub-minute schedules"
            )))
        }
        n => {
            return Err(bad(format!(
                "{text:?} has {n} field(s); cron takes 5: minute hour day-of-month month \
                 day-of-week"
            )))
        }
    }
    let mut normalized = Vec::with_capacity(5);
    for (field, part) in FIELDS.iter().zip(&parts) {
        normalized.push(
            normalize_field(field, part)
                .map_err(|problem| bad(format!("{} field {part:?}: {problem}", field.name)))?,
        );
    }
    // Vixie cron: a day field beginning with `*` makes both day fields must-match.
    let both_days = parts[2].starts_with('*') || parts[4].starts_with('*');
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .dom_and_dow(both_days)
        .build()
        .parse(&normalized.join(" "))
        .map_err(|e| bad(format!("{text:?}: {e}")))?;
    Ok(Kind::Cron {
        cron: Box::new(cron),
        wall_clock: !parts[1].starts_with('*'),
    })
}

/// One field rewritten with numbers only, or what is wrong with it.
fn normalize_field(field: &Field, text: &str) -> Result<String, String> {
    let elements = text
        .split(',')
        .map(|element| normalize_element(field, element))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(elements.join(","))
}

/// One list element: `*`, `N`, `N-M`, optionally followed by `/step` (after `*` or a range).
fn normalize_element(field: &Field, element: &str) -> Result<String, String> {
    if element.is_empty() {
        return Err("empty value (check for a stray comma)".into());
    }
    let (base, step) = match element.split_once('/') {
        Some((base, step)) => (base, Some(parse_step(field, step)?)),
        None => (element, None),
    };
    let base = if base == "*" {
        "*".to_string()
    } else if let Some((from, to)) = base.split_once('-') {
        let from = value(field, from, false)?;
        let to = value(field, to, from > 0)?;
        if from > to {
            return Err(format!(
                "range {base} is reversed (write the smaller value first)"
            ));
        }
        format!("{from}-{to}")
    } else if step.is_some() {
        return Err(format!(
            "a step needs `*` or a range before it (e.g. */5 or 10-30/5), got {element:?}"
        ));
    } else {
        value(field, base, false)?.to_string()
    };
    Ok(match step {
        Some(step) => format!("{base}/{step}"),
        None => base,
    })
}

/// A step: 1 up to the field's largest value.
fn parse_step(field: &Field, text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("step 0 is not allowed (a step must be at least 1)".into()),
        Ok(step) if step <= field.max => Ok(step),
        _ if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() => {
            Err(format!("step {text} is too large (at most {})", field.max))
        }
        _ => Err(format!("step {text:?} is not a number")),
    }
}

/// A value: a number in the field's range, or a month/day name. `sunday_is_7` (the end of a
/// range that starts after Sunday) maps `SUN` to 7, so that `FRI-SUN` is a forward range.
fn value(field: &Field, text: &str, sunday_is_7: bool) -> Result<u32, String> {
    let range = || format!("{}-{}", field.min, field.max);
    if text.is_empty() {
        return Err("a range needs a value on each side of `-`".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(n) if (field.min..=field.max).contains(&n) => Ok(n),
            _ => Err(format!("{text} is out of range {}", range())),
        };
    }
    match field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        Some(0) if sunday_is_7 && field.max == 7 => Ok(7),
        Some(i) => Ok(field.first_name + i as u32),
        None if field.names.is_empty() => {
            Err(format!("{text:?} is not a number in range {}", range()))
        }
        None => Err(format!(
            "{text:?} is neither a number in range {} nor one of {}",
            range(),
            field.names.join(" ")
        )),
    }
}

/// A task id for a schedule's tick, the same on every replica: `<name>-<YYYYMMDDTHHMMSSZ>` in UTC
/// (e.g. `nightly-20261203T080000Z`); when that would exceed 64 chars, the name part is cut and
/// followed by 8 hex chars of a SHA-256 of the full name so distinct names do not collide.
///
/// The id is built from `[A-Za-z0-9_-]` only and is at most 64 chars, so it is always a valid
/// [`TaskId`](crate::domain::TaskId). A name of up to 47 chars from `[a-z0-9_-]` (every valid
/// schedule name of that length) is kept as is; a longer one (or one with other characters,
/// which become `_`) becomes its first 37 chars, `-H` and 8 hex chars of the SHA-256 of the full
/// name. The uppercase `H` never occurs in a kept name, so a shortened name cannot equal a kept
/// one; two shortened names collide only if their first 37 chars and the first 32 bits of their
/// hashes agree.
pub fn tick_task_id(schedule: &str, tick: DateTime<Utc>) -> crate::domain::TaskId {
    use chrono::{Datelike, Timelike};
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        tick.year(),
        tick.month(),
        tick.day(),
        tick.hour(),
        tick.minute(),
        tick.second()
    );
    let budget = 64usize.saturating_sub(stamp.len() + 1);
    let plain = schedule
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    let name = if plain && schedule.len() <= budget {
        schedule.to_string()
    } else {
        shortened_name(schedule, budget)
    };
    let id = format!("{name}-{stamp}");
    crate::domain::TaskId::parse(&id)
        .expect("tick ids are built from [A-Za-z0-9_-] only and are at most 64 chars long")
}

/// The first `budget - 10` chars of `name` (others than `[a-z0-9_-]` as `_`), `-H`, and 8 hex
/// chars of the SHA-256 of the full name.
fn shortened_name(name: &str, budget: usize) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let prefix: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .take(budget.saturating_sub(10))
        .collect();
    format!("{prefix}-H{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("a test instant")
    }

    fn spec(expr: &str, timezone: &str) -> CronSpec {
        CronSpec::parse(expr, timezone).expect("a valid test expression")
    }

    /// The first `n` ticks after `from`, as `YYYY-MM-DDTHH:MM:SSZ`.
    fn ticks(expr: &str, timezone: &str, from: &str, n: usize) -> Vec<String> {
        let spec = spec(expr, timezone);
        let mut t = at(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = spec.next_after(t).expect("a next tick");
            out.push(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        out
    }

    fn cron_error(expr: &str) -> String {
        match CronSpec::parse(expr, "UTC") {
            Err(CronError::BadCron(message)) => message,
            other => panic!("{expr:?} should be refused as BadCron, got {other:?}"),
        }
    }

    #[test]
    fn every_2s_ticks_align_to_the_epoch() {
        let every = spec("@every 2s", "UTC");
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(every.next_after(epoch), Some(at("1970-01-01T00:00:02Z")));
        let got = ticks("@every 2s", "UTC", "2026-12-03T08:00:01.5Z", 3);
        assert_eq!(
            got,
            [
                "2026-12-03T08:00:02Z",
                "2026-12-03T08:00:04Z",
                "2026-12-03T08:00:06Z"
            ]
        );
        let seven = spec("@every 7s", "UTC");
        for start in [
            "2026-12-03T08:00:00Z",
            "2026-12-03T08:00:03Z",
            "2031-05-17T23:59:59.9Z",
        ] {
            let tick = seven.next_after(at(start)).expect("a tick");
            assert_eq!(tick.timestamp() % 7, 0, "after {start}");
            assert!(tick > at(start) && tick - at(start) <= chrono::Duration::seconds(7));
        }
    }

    #[test]
    fn every_1h30m_ticks_at_multiples_of_90_minutes_since_the_epoch_in_any_zone() {
        let expected = [
            "2026-12-03T09:00:00Z",
            "2026-12-03T10:30:00Z",
            "2026-12-03T12:00:00Z",
        ];
        assert_eq!(
            ticks("@every 1h30m", "UTC", "2026-12-03T08:00:00Z", 3),
            expected
        );
        assert_eq!(
            ticks("@every 1h30m", "Asia/Kolkata", "2026-12-03T08:00:00Z", 3),
            expected
        );
        assert_eq!(
            ticks("@every 90m", "Europe/Berlin", "2026-12-03T08:00:00Z", 3),
            expected
        );
        let every = spec("@every 5m", "Europe/Berlin");
        assert_eq!(
            every.next_after(at("2026-12-03T08:02:17Z")),
            Some(at("2026-12-03T08:05:00Z"))
        );
        assert_eq!(
            every.next_after(at("2026-12-03T08:05:00Z")),
            Some(at("2026-12-03T08:10:00Z"))
        );
    }

    #[test]
    fn every_refuses_zero_sub_second_garbage_and_over_366_days() {
        for (expr, problem) in [
            ("@every 0s", "at least 1s"),
            ("@every 500ms", "whole number of seconds"),
            ("@every 1500ms", "whole number of seconds"),
            ("@every abc", "not a duration"),
            ("@every 5", "not a duration"),
            ("@every 1.5h", "not a duration"),
            ("@every -5m", "not a duration"),
            ("@every", "needs a duration"),
            ("@every 1h 30m", "one duration"),
            ("@every 367d", "at most 366 days"),
            ("@every 99999999999999999999999d", "at most 366 days"),
        ] {
            let message = cron_error(expr);
            assert!(message.contains(problem), "{expr:?}: {message}");
        }
        assert!(CronSpec::parse("@every 366d", "UTC").is_ok());
        assert!(CronSpec::parse("@every 2000ms", "UTC").is_ok());
        assert!(CronSpec::parse("@EVERY 1D12H", "UTC").is_ok());
    }

    #[test]
    fn last_at_or_before_of_every_finds_the_tick_a_late_message_belongs_to() {
        let every = spec("@every 2s", "UTC");
        let late = at("2026-12-03T08:00:03.7Z");
        let tick = at("2026-12-03T08:00:02Z");
        assert_eq!(
            every.last_at_or_before(late, Duration::from_secs(10)),
            Some(tick)
        );
        assert_eq!(every.last_at_or_before(tick, Duration::ZERO), Some(tick));
        assert_eq!(every.last_at_or_before(late, Duration::from_secs(1)), None);
    }

    #[test]
    fn a_daily_0900_berlin_job_is_0800_utc_in_winter_and_0700_in_summer() {
        let daily = spec("0 9 * * *", "Europe/Berlin");
        assert_eq!(
            daily.next_after(at("2026-01-15T00:00:00Z")),
            Some(at("2026-01-15T08:00:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2026-07-15T00:00:00Z")),
            Some(at("2026-07-15T07:00:00Z"))
        );
    }

    #[test]
    fn a_daily_0230_job_runs_once_on_the_spring_forward_night() {
        let got = ticks("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 4);
        let expected = [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST, the end of the gap
            "2026-03-30T00:30:00Z", // 02:30 CEST
            "2026-03-31T00:30:00Z",
        ];
        assert_eq!(got, expected);
        let daily = spec("30 2 * * *", "Europe/Berlin");
        let late = at("2026-03-29T05:00:00Z");
        assert_eq!(
            daily.last_at_or_before(late, DAY),
            Some(at("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn a_daily_0230_job_runs_once_on_the_fall_back_night_at_the_first_0230() {
        let got = ticks("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2);
        // 02:30 CEST = 00:30 UTC; the second 02:30 (CET, 01:30 UTC) is skipped.
        assert_eq!(got, ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]);
        let daily = spec("30 2 * * *", "Europe/Berlin");
        let in_second_pass = at("2026-10-25T01:45:00Z"); // 02:45 CET
        assert_eq!(
            daily.last_at_or_before(in_second_pass, DAY),
            Some(at("2026-10-25T00:30:00Z"))
        );
        let just_after_first = at("2026-10-25T00:30:01Z");
        assert_eq!(
            daily.next_after(just_after_first),
            Some(at("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn an_hourly_job_fires_in_both_occurrences_of_the_repeated_hour() {
        let got = ticks("0 * * * *", "Europe/Berlin", "2026-10-24T22:30:00Z", 4);
        let expected = [
            "2026-10-24T23:00:00Z", // 01:00 CEST
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T01:00:00Z", // 02:00 CET
            "2026-10-25T02:00:00Z", // 03:00 CET
        ];
        assert_eq!(got, expected);
        let hourly = spec("@hourly", "Europe/Berlin");
        let late = at("2026-10-25T01:20:00Z");
        assert_eq!(
            hourly.last_at_or_before(late, DAY),
            Some(at("2026-10-25T01:00:00Z"))
        );
    }

    #[test]
    fn an_hourly_job_keeps_one_tick_per_real_hour_across_spring_forward() {
        let got = ticks("5 * * * *", "Europe/Berlin", "2026-03-28T23:30:00Z", 3);
        // 01:05 CET, then 02:05 does not exist, then 03:05 CEST.
        assert_eq!(
            got,
            [
                "2026-03-29T00:05:00Z",
                "2026-03-29T01:05:00Z",
                "2026-03-29T02:05:00Z"
            ]
        );
    }

    #[test]
    fn a_quarter_hourly_job_has_no_ticks_in_the_gap_and_one_at_0300() {
        let got = ticks("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:40:00Z", 3);
        // 01:45 CET, then 03:00 CEST once, then 03:15 CEST.
        assert_eq!(
            got,
            [
                "2026-03-29T00:45:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:15:00Z"
            ]
        );
    }

    #[test]
    fn gap_times_of_a_job_with_fixed_hours_collapse_into_one_tick() {
        let got = ticks("*/15 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 3);
        assert_eq!(
            got,
            [
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-03-30T00:15:00Z"
            ]
        );
        let got = ticks("0 2,3 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 3);
        assert_eq!(
            got,
            [
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-03-30T01:00:00Z"
            ]
        );
    }

    #[test]
    fn a_job_with_fixed_hours_runs_only_in_the_first_pass_of_a_repeated_hour() {
        let got = ticks("*/30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 4);
        let expected = [
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T00:30:00Z", // 02:30 CEST; the CET pass is skipped
            "2026-10-26T01:00:00Z",
            "2026-10-26T01:30:00Z",
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn new_york_follows_the_same_rules_on_its_own_dates() {
        // 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
        let got = ticks("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2);
        assert_eq!(got, ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]);
        let got = ticks("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2);
        assert_eq!(got, ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]);
    }

    #[test]
    fn lord_howe_half_hour_shifts_are_handled() {
        // 2026-10-04 02:00 +10:30 -> 02:30 +11:00: 02:15 ticks at the end of the gap.
        let got = ticks(
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2026-10-02T12:00:00Z",
            3,
        );
        let expected = [
            "2026-10-02T15:45:00Z", // 02:15 +10:30
            "2026-10-03T15:30:00Z", // 02:30 +11:00
            "2026-10-04T15:15:00Z", // 02:15 +11:00
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn last_at_or_before_searches_back_at_most_within() {
        let daily = spec("0 8 * * *", "UTC");
        let late = at("2026-12-03T08:00:30Z");
        let tick = at("2026-12-03T08:00:00Z");
        assert_eq!(
            daily.last_at_or_before(late, Duration::from_secs(30)),
            Some(tick)
        );
        assert_eq!(daily.last_at_or_before(late, Duration::from_secs(29)), None);
        assert_eq!(daily.last_at_or_before(tick, Duration::ZERO), Some(tick));
        let before = at("2026-12-03T07:59:59.999Z");
        assert_eq!(
            daily.last_at_or_before(before, DAY),
            Some(at("2026-12-02T08:00:00Z"))
        );
    }

    #[test]
    fn next_after_is_strictly_after_even_with_sub_second_instants() {
        let minutely = spec("* * * * *", "Europe/Berlin");
        let tick = at("2026-12-03T08:00:00Z");
        let nano = chrono::Duration::nanoseconds(1);
        assert_eq!(minutely.next_after(tick - nano), Some(tick));
        assert_eq!(minutely.next_after(tick), Some(at("2026-12-03T08:01:00Z")));
        assert_eq!(
            minutely.next_after(tick + nano),
            Some(at("2026-12-03T08:01:00Z"))
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_match_either_when_both_are_restricted() {
        let got = ticks("0 0 13 * FRI", "UTC", "2026-04-01T00:00:00Z", 4);
        // Fridays 3, 10, 17 April and Monday the 13th.
        let expected = ["2026-04-03", "2026-04-10", "2026-04-13", "2026-04-17"];
        assert_eq!(got, expected.map(|d| format!("{d}T00:00:00Z")));
    }

    #[test]
    fn a_day_field_starting_with_a_star_makes_both_day_fields_match() {
        // Mondays that fall on odd days of the month (Vixie cron's rule).
        let got = ticks("0 0 */2 * MON", "UTC", "2026-04-01T00:00:00Z", 3);
        let expected = ["2026-04-13", "2026-04-27", "2026-05-11"];
        assert_eq!(got, expected.map(|d| format!("{d}T00:00:00Z")));
    }

    #[test]
    fn month_and_day_names_lists_ranges_and_steps_are_understood() {
        let got = ticks("0 9 * jan-MAR Mon-Fri", "UTC", "2026-03-31T10:00:00Z", 1);
        assert_eq!(got, ["2027-01-01T09:00:00Z"]);
        let got = ticks("0 0 * * FRI-SUN", "UTC", "2026-04-01T00:00:00Z", 4);
        let expected = ["2026-04-03", "2026-04-04", "2026-04-05", "2026-04-10"];
        assert_eq!(got, expected.map(|d| format!("{d}T00:00:00Z")));
        let sunday = ["2026-04-05T00:00:00Z"];
        assert_eq!(ticks("0 0 * * 7", "UTC", "2026-04-01T00:00:00Z", 1), sunday);
        assert_eq!(
            ticks("0 0 * * SUN-SUN", "UTC", "2026-04-01T00:00:00Z", 1),
            sunday
        );
        let got = ticks("10-50/20,55 1,3 * * *", "UTC", "2026-04-01T00:00:00Z", 5);
        let times = ["01:10", "01:30", "01:50", "01:55", "03:10"];
        assert_eq!(got, times.map(|t| format!("2026-04-01T{t}:00Z")));
    }

    #[test]
    fn predefined_schedules_match_their_five_field_forms() {
        for (name, fields) in [
            ("@hourly", "0 * * * *"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
        ] {
            let from = "2026-03-20T00:00:00Z";
            let want = ticks(fields, "Europe/Berlin", from, 3);
            assert_eq!(ticks(name, "Europe/Berlin", from, 3), want, "{name}");
        }
        let message = cron_error("@fortnightly");
        assert!(message.contains("unknown @fortnightly"), "{message}");
        assert!(cron_error("@daily 5").contains("takes nothing"));
    }

    #[test]
    fn six_field_expressions_are_refused_naming_the_seconds_field() {
        let message = cron_error("0 */5 * * * *");
        assert!(message.contains("6 fields"), "{message}");
        assert!(message.contains("seconds field"), "{message}");
    }

    #[test]
    fn bad_fields_are_refused_naming_the_field_and_the_problem() {
        for (expr, words) in [
            (
                "61 * * * *",
                &["minute field", "61 is out of range 0-59"][..],
            ),
            ("0 24 * * *", &["hour field", "out of range 0-23"]),
            ("0 0 0 * *", &["day-of-month field", "out of range 1-31"]),
            ("0 0 1 13 *", &["month field", "out of range 1-12"]),
            ("0 0 * * 8", &["day-of-week field", "out of range 0-7"]),
            ("0 0 * * FOO", &["day-of-week field", "SUN MON"]),
            ("0 0 * FOO *", &["month field", "JAN FEB"]),
            ("5-1 * * * *", &["minute field", "reversed"]),
            ("*/0 * * * *", &["minute field", "step 0"]),
            ("*/60 * * * *", &["minute field", "too large"]),
            ("*/x * * * *", &["minute field", "not a number"]),
            ("1,,2 * * * *", &["minute field", "empty value"]),
            ("0 0 * * 1,", &["day-of-week field", "empty value"]),
            ("5/10 * * * *", &["minute field", "step needs"]),
            ("1- * * * *", &["minute field", "each side"]),
            ("0 0 ? * *", &["day-of-month field"]),
            ("0 0 L * *", &["day-of-month field"]),
            ("* * * *", &["4 field(s)", "cron takes 5"]),
            ("* * * * * * *", &["7 field(s)"]),
            ("", &["empty"]),
            ("   ", &["empty"]),
        ] {
            let message = cron_error(expr);
            for word in words {
                assert!(
                    message.contains(word),
                    "{expr:?}: {message:?} lacks {word:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_time_zones_are_refused_and_utc_is_accepted() {
        for zone in ["Mars/Olympus", "", "europe/berlin"] {
            let got = CronSpec::parse("0 9 * * *", zone);
            assert_eq!(got, Err(CronError::BadTimeZone(zone.to_string())));
            let got = CronSpec::parse("@every 5m", zone);
            assert_eq!(got, Err(CronError::BadTimeZone(zone.to_string())));
        }
        for zone in ["UTC", "Etc/UTC", "Europe/Berlin", "America/New_York"] {
            assert!(CronSpec::parse("0 9 * * *", zone).is_ok(), "{zone}");
        }
        let message = CronError::BadTimeZone("Mars/Olympus".into()).to_string();
        assert!(
            message.contains("Mars/Olympus") && message.contains("IANA"),
            "{message}"
        );
    }

    #[test]
    fn expr_and_timezone_are_kept_as_given() {
        let daily = spec(" 0 9 * * MON ", "Europe/Berlin");
        assert_eq!(daily.expr(), " 0 9 * * MON ");
        assert_eq!(daily.timezone(), "Europe/Berlin");
        assert_eq!(daily, spec(" 0 9 * * MON ", "Europe/Berlin"));
    }

    #[test]
    fn an_impossible_date_never_fires() {
        let never = spec("0 0 30 2 *", "Europe/Berlin");
        assert_eq!(never.next_after(at("2026-01-01T00:00:00Z")), None);
        let decade = Duration::from_secs(10 * 366 * 86_400);
        assert_eq!(
            never.last_at_or_before(at("2026-01-01T00:00:00Z"), decade),
            None
        );
    }

    #[test]
    fn a_leap_day_job_waits_for_the_next_leap_year() {
        let got = ticks("0 12 29 2 *", "UTC", "2026-03-01T00:00:00Z", 2);
        assert_eq!(got, ["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"]);
        let leap = spec("0 12 29 2 *", "UTC");
        let decade = Duration::from_secs(10 * 366 * 86_400);
        let last = leap.last_at_or_before(at("2027-01-01T00:00:00Z"), decade);
        assert_eq!(last, Some(at("2024-02-29T12:00:00Z")));
    }

    /// Walks a year of ticks: each strictly after the previous, and `last_at_or_before` agrees
    /// with `next_after` on every tick and on the second before it.
    fn check_a_year(expr: &str, zone: &str) -> usize {
        let spec = spec(expr, zone);
        let end = at("2027-01-01T00:00:00Z");
        let second = chrono::Duration::seconds(1);
        let mut previous = spec
            .next_after(at("2025-12-31T23:00:00Z"))
            .expect("a first tick");
        let mut count = 1;
        while previous < end {
            let next = spec.next_after(previous).expect("a next tick");
            assert!(next > previous, "{expr} in {zone}: {next} after {previous}");
            assert_eq!(
                spec.last_at_or_before(next, Duration::ZERO),
                Some(next),
                "{expr} {zone}"
            );
            let before = spec.last_at_or_before(next - second, DAY * 400);
            assert_eq!(before, Some(previous), "{expr} in {zone}: before {next}");
            previous = next;
            count += 1;
        }
        count
    }

    #[test]
    fn next_after_is_strictly_increasing_over_a_year_and_last_at_or_before_agrees() {
        for zone in [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            for expr in [
                "30 2 * * *",
                "0 * * * *",
                "*/20 1-3 * * *",
                "0 0 * * MON",
                "@every 3h",
            ] {
                check_a_year(expr, zone);
            }
        }
        let quarter_hours = check_a_year("*/15 * * * *", "Europe/Berlin");
        // One tick per real quarter hour from 2025-12-31T23:15Z to 2027-01-01T00:00Z: the 4 of
        // the lost hour and the 4 extra of the repeated one cancel out.
        assert_eq!(quarter_hours, 3 + 365 * 96 + 1);
        assert_eq!(check_a_year("30 2 * * *", "Europe/Berlin"), 366);
    }

    proptest::proptest! {
        /// For any instant `x`: the latest tick at or before it and the first tick after it have
        /// no tick between them, whatever the zone and the DST rule in play.
        #[test]
        fn no_tick_lies_between_last_at_or_before_and_next_after(
            secs in 1_767_225_600i64..1_798_761_600, // 2026
            which in 0usize..6,
        ) {
            let (expr, zone) = [
                ("30 2 * * *", "Europe/Berlin"),
                ("*/20 1-3 * * *", "America/New_York"),
                ("0 * * * *", "Europe/Berlin"),
                ("45 1,2 * * *", "Australia/Lord_Howe"),
                ("*/7 * * * *", "Australia/Lord_Howe"),
                ("@every 1h30m", "UTC"),
            ][which];
            let spec = spec(expr, zone);
            let x = DateTime::from_timestamp(secs, 0).expect("an instant in 2026");
            let next = spec.next_after(x).expect("a next tick");
            let last = spec.last_at_or_before(x, DAY * 2).expect("a tick within two days");
            proptest::prop_assert!(last <= x && x < next);
            proptest::prop_assert_eq!(spec.next_after(last), Some(next));
            proptest::prop_assert_eq!(spec.last_at_or_before(next, DAY), Some(next));
        }
    }

    #[test]
    fn short_names_give_readable_tick_ids() {
        let id = tick_task_id("nightly", at("2026-12-03T08:00:00Z"));
        assert_eq!(id.as_str(), "nightly-20261203T080000Z");
        let name47 = "a".repeat(47);
        let id = tick_task_id(&name47, at("2026-12-03T08:00:00Z"));
        assert_eq!(id.as_str(), format!("{name47}-20261203T080000Z"));
    }

    #[test]
    fn tick_ids_are_valid_task_ids_even_for_64_char_names() {
        let tick = at("2026-12-03T08:00:00Z");
        for name in [
            "a".repeat(48),
            "b".repeat(64),
            "x_-9".repeat(16),
            "Nightly Job!".into(),
        ] {
            let id = tick_task_id(&name, tick);
            assert!(id.as_str().len() <= 64, "{id}");
            assert_eq!(crate::domain::TaskId::parse(id.as_str()), Ok(id.clone()));
            assert!(id.as_str().ends_with("-20261203T080000Z"), "{id}");
            assert!(id.as_str().contains("-H"), "{id}");
            assert_eq!(tick_task_id(&name, tick), id, "the same on every call");
        }
        let id = tick_task_id(&"c".repeat(64), tick);
        assert!(id.as_str().starts_with(&"c".repeat(37)), "{id}");
    }

    #[test]
    fn distinct_long_names_get_distinct_tick_ids() {
        let tick = at("2026-12-03T08:00:00Z");
        let stem = "reports-weekly-for-the-whole-fleet-and-every-region";
        let names: Vec<String> = (0..50).map(|i| format!("{stem}-{i:02}")).collect();
        let ids: std::collections::HashSet<String> = names
            .iter()
            .map(|name| tick_task_id(name, tick).as_str().to_string())
            .collect();
        assert_eq!(ids.len(), names.len());
        let kept = tick_task_id(&"d".repeat(47), tick);
        let cut = tick_task_id(&"d".repeat(48), tick);
        assert_ne!(kept, cut);
        let other_tick = tick_task_id(&names[0], at("2026-12-03T08:00:01Z"));
        assert_ne!(other_tick, tick_task_id(&names[0], tick));
    }
}

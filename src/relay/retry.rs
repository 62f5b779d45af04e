//! When to try a delivery again, and whether to try at all.
//!
//! [`RetrySchedule`] is Svix's: the first attempt goes out immediately, then retries wait 5 s,
//! 5 min, 30 min, 2 h, 5 h, 10 h and 10 h, each with ±20 % jitter (eight attempts over about a
//! day and a half). A `Retry-After` from the receiver is honoured, capped at
//! [`MAX_RETRY_AFTER`], and never shortens the schedule.
//!
//! [`classify_status`] and [`classify_transport_error`] turn an outcome into a [`Verdict`]:
//! 2xx is delivered; 410 Gone disables the endpoint; 408, 409, 425, 429 and 5xx are retried;
//! other 4xx (and 1xx/3xx, since redirects are not followed) are permanent failures.
//!
//! This is the only module that may use the `backoff` crate (flagged unmaintained,
//! RUSTSEC-2025-0012); it only computes the delays of [`RetrySchedule::exponential`], and none
//! of its types appear in this module's API, so swapping it out touches this file alone.

use crate::outbound::client::SendError;
use backoff::backoff::Backoff as _;
use rand::Rng;
use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured; longer requests are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Jitter of the default schedule: each delay varies by up to ±20 %.
pub const DEFAULT_JITTER: f64 = 0.2;

/// A schedule that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryError {
    /// Jitter must be a fraction in `0.0..=1.0`.
    #[error("retry jitter must be between 0.0 and 1.0, got {0}")]
    Jitter(f64),
    /// A schedule needs at least one attempt.
    #[error("a retry schedule needs at least one delay")]
    Empty,
}

/// Delays before each delivery attempt, with jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// `delays[n]` is the wait before attempt `n` (0-based; `delays[0]` is usually zero).
    delays: Vec<Duration>,
    /// Each delay is scaled by a random factor in `1 - jitter ..= 1 + jitter`.
    jitter: f64,
}

impl Default for RetrySchedule {
    /// Svix's schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ±20 % jitter.
    fn default() -> Self {
        let secs = [
            0,
            5,
            5 * 60,
            30 * 60,
            2 * 3600,
            5 * 3600,
            10 * 3600,
            10 * 3600,
        ];
        Self {
            delays: secs.into_iter().map(Duration::from_secs).collect(),
            jitter: DEFAULT_JITTER,
        }
    }
}

impl RetrySchedule {
    /// A schedule with explicit delays (`delays[n]` before attempt `n`) and jitter.
    pub fn new(delays: Vec<Duration>, jitter: f64) -> Result<Self, RetryError> {
        if !(0.0..=1.0).contains(&jitter) {
            return Err(RetryError::Jitter(jitter));
        }
        if delays.is_empty() {
            return Err(RetryError::Empty);
        }
        Ok(Self { delays, jitter })
    }

    /// An exponential schedule: the first attempt immediately, then `initial`, doubling each
    /// time up to `max`, for `attempts` attempts in all, with `jitter`.
    pub fn exponential(
        initial: Duration,
        max: Duration,
        attempts: usize,
        jitter: f64,
    ) -> Result<Self, RetryError> {
        let mut exp = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(initial)
            .with_max_interval(max)
            .with_multiplier(2.0)
            .with_randomization_factor(0.0)
            .with_max_elapsed_time(None)
            .build();
        let mut delays = Vec::with_capacity(attempts);
        if attempts > 0 {
            delays.push(Duration::ZERO);
        }
        while delays.len() < attempts {
            delays.push(exp.next_backoff().unwrap_or(max).min(max));
        }
        Self::new(delays, jitter)
    }

    /// The un-jittered delays, one per attempt.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The jitter fraction.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// How many attempts the schedule allows in all.
    pub fn max_attempts(&self) -> usize {
        self.delays.len()
    }

    /// The wait before attempt `attempt` (0-based: the number of attempts already made), or
    /// `None` when the schedule is used up.
    ///
    /// The scheduled delay is jittered; a `retry_after` asked for by the receiver is capped at
    /// [`MAX_RETRY_AFTER`] and wins only when it is longer.
    pub fn delay_for(&self, attempt: usize, retry_after: Option<Duration>) -> Option<Duration> {
        self.delay_with_rng(attempt, retry_after, &mut rand::rng())
    }

    fn delay_with_rng<R: Rng + ?Sized>(
        &self,
        attempt: usize,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Option<Duration> {
        let base = *self.delays.get(attempt)?;
        let factor = if self.jitter > 0.0 {
            rng.random_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        let scheduled = base.mul_f64(factor);
        let asked = retry_after.map_or(Duration::ZERO, |r| r.min(MAX_RETRY_AFTER));
        Some(scheduled.max(asked))
    }
}

/// What to do after one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver took it; done.
    Delivered,
    /// Try again later; `after` is what the receiver asked for (Retry-After), if anything.
    Retry {
        /// The receiver's Retry-After, parsed.
        after: Option<Duration>,
    },
    /// Trying again will not help; give up on this message (dead letter).
    Permanent,
    /// The receiver said the endpoint is gone (410); give up and disable the endpoint.
    Disable,
}

/// Classifies an HTTP response status, per Svix: 2xx delivered; 410 disable; 408, 409, 425,
/// 429 and 5xx (and anything above 599) retry, with the `Retry-After` header if it parses;
/// every other status (other 4xx, 1xx, and 3xx since redirects are not followed) is permanent.
pub fn classify_status(status: u16, retry_after_header: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Disable,
        408 | 409 | 425 | 429 | 500.. => Verdict::Retry {
            after: retry_after_header.and_then(parse_retry_after),
        },
        _ => Verdict::Permanent,
    }
}

/// Classifies a request that got no usable response.
///
/// A destination refused by [`ssrf`](crate::outbound::ssrf) is permanent, as is a request that
/// cannot be made (an invalid header); timeouts, refused or reset connections, DNS failures
/// and everything else are retried.
pub fn classify_transport_error(err: &SendError) -> Verdict {
    if err.is_permanent() {
        Verdict::Permanent
    } else {
        Verdict::Retry { after: None }
    }
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, also the obsolete RFC 850 and asctime forms). A date in
/// the past means zero. Anything else is `None`.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

/// [`parse_retry_after`] as of `now`.
pub fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::client::{hardened, HardenedClient};
    use crate::outbound::ssrf::AllowList;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const SECS: [u64; 8] = [0, 5, 300, 1800, 7200, 18000, 36000, 36000];

    #[test]
    fn the_default_schedule_is_svix_with_twenty_percent_jitter() {
        let s = RetrySchedule::default();
        let expected: Vec<Duration> = SECS.into_iter().map(Duration::from_secs).collect();
        assert_eq!(s.delays(), expected.as_slice());
        assert_eq!(s.jitter(), 0.2);
        assert_eq!(s.max_attempts(), 8);
    }

    #[test]
    fn jittered_delays_stay_within_twenty_percent_of_the_schedule() {
        let s = RetrySchedule::default();
        let mut rng = StdRng::seed_from_u64(7);
        for (attempt, secs) in SECS.into_iter().enumerate() {
            let base = Duration::from_secs(secs);
            let (lo, hi) = (base.mul_f64(0.8), base.mul_f64(1.2));
            let mut seen = std::collections::HashSet::new();
            for _ in 0..200 {
                let d = s.delay_with_rng(attempt, None, &mut rng).unwrap();
                assert!(
                    d >= lo && d <= hi,
                    "attempt {attempt}: {d:?} not in {lo:?}..={hi:?}"
                );
                seen.insert(d);
            }
            if secs > 0 {
                assert!(seen.len() > 100, "attempt {attempt}: jitter barely varies");
            }
        }
        assert!(s.delay_for(1, None).unwrap() <= Duration::from_secs(6));
    }

    #[test]
    fn the_first_attempt_goes_out_immediately() {
        assert_eq!(
            RetrySchedule::default().delay_for(0, None),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_schedule_is_exhausted_after_its_last_attempt() {
        let s = RetrySchedule::default();
        assert!(s.delay_for(7, None).is_some());
        assert_eq!(s.delay_for(8, None), None);
        assert_eq!(s.delay_for(8, Some(Duration::from_secs(1))), None);
        assert_eq!(s.delay_for(usize::MAX, None), None);
    }

    #[test]
    fn retry_after_wins_only_when_longer_and_is_capped_at_a_day() {
        let s = RetrySchedule::new(vec![Duration::ZERO, Duration::from_secs(60)], 0.0).unwrap();
        let longer = Some(Duration::from_secs(600));
        assert_eq!(s.delay_for(1, longer), Some(Duration::from_secs(600)));
        let shorter = Some(Duration::from_secs(10));
        assert_eq!(s.delay_for(1, shorter), Some(Duration::from_secs(60)));
        let huge = Some(Duration::from_secs(10 * 24 * 3600));
        assert_eq!(s.delay_for(1, huge), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert_eq!(RetrySchedule::new(vec![], 0.1), Err(RetryError::Empty));
        let one = vec![Duration::ZERO];
        assert_eq!(
            RetrySchedule::new(one.clone(), 1.5),
            Err(RetryError::Jitter(1.5))
        );
        assert!(RetrySchedule::new(one.clone(), f64::NAN).is_err());
        assert!(RetrySchedule::new(one, -0.1).is_err());
    }

    #[test]
    fn an_exponential_schedule_doubles_up_to_its_maximum() {
        let s = RetrySchedule::exponential(Duration::from_secs(1), Duration::from_secs(10), 7, 0.0)
            .unwrap();
        let secs: Vec<u64> = s
            .delays()
            .iter()
            .map(|d| d.as_millis() as u64 / 1000)
            .collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 10, 10]);
        assert_eq!(s.delay_for(3, None), Some(Duration::from_secs(4)));
        assert_eq!(s.delay_for(7, None), None);
    }

    #[test]
    fn retry_after_parses_delta_seconds() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let huge = parse_retry_after("99999999999999999999999").unwrap();
        assert!(huge > MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_parses_http_dates_in_all_three_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let in_90s = Some(Duration::from_secs(90));
        assert_eq!(
            parse_retry_after_at("Wed, 21 Oct 2015 07:29:30 GMT", now),
            in_90s
        );
        assert_eq!(
            parse_retry_after_at("Wednesday, 21-Oct-15 07:29:30 GMT", now),
            in_90s
        );
        assert_eq!(
            parse_retry_after_at("Wed Oct 21 07:29:30 2015", now),
            in_90s
        );
        let past = parse_retry_after_at("Wed, 21 Oct 2015 07:00:00 GMT", now);
        assert_eq!(past, Some(Duration::ZERO));
    }

    #[test]
    fn garbage_retry_after_is_ignored() {
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "12 s",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_status_class_gets_the_svix_verdict() {
        let retry = Verdict::Retry { after: None };
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify_status(s, None), Verdict::Delivered, "{s}");
        }
        assert_eq!(classify_status(410, None), Verdict::Disable);
        for s in [408, 409, 425, 429, 500, 502, 503, 504, 599, 600] {
            assert_eq!(classify_status(s, None), retry, "{s}");
        }
        for s in [
            100, 101, 301, 302, 304, 307, 400, 401, 403, 404, 405, 413, 422, 451, 499,
        ] {
            assert_eq!(classify_status(s, None), Verdict::Permanent, "{s}");
        }
    }

    #[test]
    fn a_retried_status_carries_the_receivers_retry_after() {
        let v = classify_status(429, Some("30"));
        assert_eq!(
            v,
            Verdict::Retry {
                after: Some(Duration::from_secs(30))
            }
        );
        let v = classify_status(503, Some("later"));
        assert_eq!(v, Verdict::Retry { after: None });
        assert_eq!(classify_status(404, Some("30")), Verdict::Permanent);
    }

    fn client(allow: &[&str], timeout: Duration) -> HardenedClient {
        hardened(AllowList::new(allow.iter().copied()).unwrap(), timeout).unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let client = client(&["127.0.0.1/32"], Duration::from_secs(5));
        let err = client.post(&url, &[], Vec::new(), 16).await.unwrap_err();
        assert_eq!(
            classify_transport_error(&err),
            Verdict::Retry { after: None }
        );
    }

    #[tokio::test]
    async fn a_timeout_is_retried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (_sock, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let client = client(&["127.0.0.1/32"], Duration::from_millis(200));
        let url = format!("http://{addr}/").parse().unwrap();
        let err = client.post(&url, &[], Vec::new(), 16).await.unwrap_err();
        assert!(matches!(err, SendError::Timeout(_)), "{err:?}");
        assert_eq!(
            classify_transport_error(&err),
            Verdict::Retry { after: None }
        );
        hold.abort();
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_made_is_permanent() {
        let client = client(&["127.0.0.1/32"], Duration::from_secs(5));
        let url = "http://127.0.0.1:9/".parse().unwrap();
        let err = client
            .post(&url, &[("x-token", "line\nbreak")], Vec::new(), 16)
            .await
            .unwrap_err();
        assert_eq!(classify_transport_error(&err), Verdict::Permanent);
    }

    #[tokio::test]
    async fn a_destination_refused_by_the_safe_resolver_is_permanent() {
        let client = client(&[], Duration::from_secs(5));
        let url = "http://localhost:9/".parse().unwrap();
        let err = client.post(&url, &[], Vec::new(), 16).await.unwrap_err();
        assert_eq!(
            classify_transport_error(&err),
            Verdict::Permanent,
            "{err:?}"
        );
    }
}

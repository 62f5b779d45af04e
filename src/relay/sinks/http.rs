//! The HTTP plumbing the HTTP sinks share: the SSRF check, one JSON `POST`, reading a bounded
//! body, classifying the answer, and keeping secrets out of what is reported.

use super::{Attempt, SinkContext};
use crate::outbound::client::SendError;
use crate::relay::retry::{classify_status, classify_transport_error, parse_retry_after, Verdict};
use std::time::Duration;

/// Most response bytes read (enough for any JSON a platform answers; the rest is dropped).
const MAX_READ_BYTES: usize = 64 * 1024;

/// What stands in for a secret in reported text.
const REDACTED: &str = "[redacted]";

/// Replaces a destination's secrets (tokens, URL paths carrying tokens) in reported text.
#[derive(Debug, Default)]
pub(super) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for these secrets; empty ones are ignored.
    pub(super) fn new<'a>(secrets: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    /// Also redacts the path and query of `url`, where webhook URLs keep their tokens.
    pub(super) fn with_url_path(mut self, url: &str) -> Self {
        if let Ok(u) = url::Url::parse(url) {
            let path = u.path().trim_start_matches('/');
            if !path.is_empty() {
                self.secrets.push(path.to_string());
            }
            if let Some(q) = u.query().filter(|q| !q.is_empty()) {
                self.secrets.push(q.to_string());
            }
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
        self
    }

    /// `text` with every secret replaced. A secret longer than the text is not looked for
    /// (setting up a search for a long secret cost ~1.5 % of the relay's CPU at 15,000
    /// deliveries/s whose answers were "ok").
    pub(super) fn apply(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_string(), |t, s| {
            if s.len() > t.len() {
                t
            } else {
                t.replace(s.as_str(), REDACTED)
            }
        })
    }

    /// `text` redacted; `None` when empty. Not clipped here: the delivery loop keeps its first
    /// 4 KiB and notes whether more was cut off (`clip_response`).
    pub(super) fn report(&self, text: &str) -> Option<String> {
        let text = self.apply(text.trim());
        (!text.is_empty()).then_some(text)
    }
}

/// A response, read.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    /// HTTP status.
    pub(super) status: u16,
    /// The `Retry-After` header, if any.
    pub(super) retry_after: Option<String>,
    /// The body (at most [`MAX_READ_BYTES`], lossily decoded).
    pub(super) body: String,
}

impl Reply {
    /// The verdict for this reply per [`classify_status`].
    pub(super) fn verdict(&self) -> Verdict {
        classify_status(self.status, self.retry_after.as_deref())
    }

    /// This reply as an attempt with `verdict`, its body redacted and clipped.
    pub(super) fn attempt(&self, verdict: Verdict, redact: &Redactor) -> Attempt {
        Attempt::new(verdict, Some(self.status), redact.report(&self.body))
    }

    /// The body as JSON, if it is.
    pub(super) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// POSTs `body` as JSON to `url` with `headers`. `Err` is the finished attempt when there is no
/// reply to judge: the URL was refused (permanent, nothing sent) or the request failed.
pub(super) async fn post_json(
    ctx: &SinkContext,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    redact: &Redactor,
) -> Result<Reply, Attempt> {
    let url = match ctx.checked(url) {
        Ok(url) => url,
        Err(e) => return Err(Attempt::permanent(redact.apply(&format!("refused: {e}")))),
    };
    let mut all = Vec::with_capacity(headers.len() + 1);
    all.push(("content-type", "application/json"));
    all.extend(headers.iter().map(|(name, value)| (*name, value.as_str())));
    let answer = ctx
        .http
        .post(&url, &all, body, MAX_READ_BYTES)
        .await
        .map_err(|e| transport_failure(&e, redact))?;
    let retry_after = answer
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    Ok(Reply {
        status: answer.status,
        retry_after,
        body: String::from_utf8_lossy(&answer.body).into_owned(),
    })
}

/// A request that got no usable response, classified and described (never with its URL).
fn transport_failure(err: &SendError, redact: &Redactor) -> Attempt {
    Attempt::new(
        classify_transport_error(err),
        None,
        redact.report(&describe(err)),
    )
}

/// An error and its causes, joined by `: `.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// A wait in seconds as platforms give it: a `Retry-After` value (delta-seconds or HTTP date) or
/// fractional seconds (`1.5`, Discord). Negative, non-finite or absurd values are `None`.
pub(super) fn parse_seconds(value: &str) -> Option<Duration> {
    parse_retry_after(value).or_else(|| {
        let secs: f64 = value.trim().parse().ok()?;
        if secs.is_finite() && secs >= 0.0 {
            Duration::try_from_secs_f64(secs).ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{ctx, job, Answer, Receiver};
    use super::super::{send, SinkContext};
    use super::*;
    use crate::outbound::destination::Destination;
    use crate::outbound::ssrf::AllowList;

    fn slack(rx: &Receiver) -> Destination {
        Destination::Slack {
            url: rx.url("/hook"),
        }
    }

    #[tokio::test]
    async fn a_500_is_retried_with_the_body_as_response() {
        let rx = Receiver::answering(|_| Answer::status(500).body("boom")).await;
        let out = send(&ctx(), &slack(&rx), &job("hi")).await;
        assert_eq!(out.verdict, Verdict::Retry { after: None });
        assert_eq!(out.status, Some(500));
        assert_eq!(out.response.as_deref(), Some("boom"));
    }

    #[tokio::test]
    async fn a_404_is_permanent() {
        let rx = Receiver::answering(|_| Answer::status(404)).await;
        let out = send(&ctx(), &slack(&rx), &job("hi")).await;
        assert_eq!(out.verdict, Verdict::Permanent);
        assert_eq!(out.status, Some(404));
    }

    #[tokio::test]
    async fn a_410_disables_the_destination() {
        let rx = Receiver::answering(|_| Answer::status(410).body("channel_is_archived")).await;
        let out = send(&ctx(), &slack(&rx), &job("hi")).await;
        assert_eq!(out.verdict, Verdict::Disable);
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_is_permanent() {
        let rx = Receiver::answering(|_| {
            Answer::status(302).header("location", "http://169.254.169.254/latest/meta-data/")
        })
        .await;
        let out = send(&ctx(), &slack(&rx), &job("hi")).await;
        assert_eq!(out.verdict, Verdict::Permanent);
        assert_eq!(rx.seen().len(), 1);
    }

    #[tokio::test]
    async fn loopback_without_an_allowlist_is_refused_before_any_request() {
        let rx = Receiver::ok().await;
        let strict = SinkContext::new(AllowList::default(), Duration::from_secs(5)).unwrap();
        for url in [
            rx.url("/hook"),
            rx.url("/hook").replace("127.0.0.1", "localhost"),
        ] {
            let out = send(&strict, &Destination::Slack { url }, &job("hi")).await;
            assert_eq!(out.verdict, Verdict::Permanent);
            assert!(out.response.unwrap().starts_with("refused"));
        }
        assert!(rx.seen().is_empty(), "the receiver saw a request");
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_is_retried() {
        let rx = Receiver::answering(|_| Answer::status(200).delay(Duration::from_secs(3))).await;
        let allow = AllowList::new(["127.0.0.1/32"]).unwrap();
        let quick = SinkContext::new(allow, Duration::from_millis(300)).unwrap();
        let out = send(&quick, &slack(&rx), &job("hi")).await;
        assert_eq!(out.verdict, Verdict::Retry { after: None });
        assert!(out.response.unwrap().contains("timed out"));
        assert!(out.duration < Duration::from_secs(2), "{:?}", out.duration);
        assert_eq!(rx.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_and_reported_without_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/services/T0/B0/SECRETPATH");
        let out = send(&ctx(), &Destination::Slack { url }, &job("hi")).await;
        assert_eq!(out.verdict, Verdict::Retry { after: None });
        let response = out.response.unwrap();
        assert!(!response.contains("SECRETPATH"), "{response}");
        assert!(!response.contains("127.0.0.1"), "{response}");
    }

    #[test]
    fn a_url_checked_again_gets_the_same_answer() {
        let ctx = ctx();
        for _ in 0..2 {
            let url = ctx.checked("http://127.0.0.1:9/hook?x=1").unwrap();
            assert_eq!(url.as_str(), "http://127.0.0.1:9/hook?x=1");
            assert!(ctx.checked("http://10.0.0.1/hook").is_err());
            assert!(ctx.checked("ftp://127.0.0.1/").is_err());
        }
    }

    #[test]
    fn the_redactor_hides_secrets_and_url_paths() {
        let r = Redactor::new([Some("tok123"), None, Some(" ")])
            .with_url_path("https://hooks.slack.com/services/T/B/xyz?key=k9");
        let text = r.apply("bad tok123 at /services/T/B/xyz?key=k9");
        assert_eq!(text, "bad [redacted] at /[redacted]?[redacted]");
    }

    #[test]
    fn platform_waits_parse_as_seconds_fractions_or_dates() {
        assert_eq!(parse_seconds("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_seconds("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("NaN"), None);
        assert_eq!(parse_seconds("1e300"), None);
    }
}

//! Sending one delivery job to one destination, once. Retrying, ordering and bookkeeping are the
//! caller's (`relay::deliver`); a sink only reports how the attempt went.
//!
//! One file per sink family:
//!
//! - `webhook`: the JSON event envelope, signed per Standard Webhooks.
//! - `chat`: seed 000's push format, `{sessionId, content, role: "assistant"}` with a Bearer token.
//! - `openclaw`: the OpenClaw gateway's `POST /hooks/agent`.
//! - `command`: a configured argv template, run without a shell.
//! - `platforms`: Telegram `sendMessage`, Discord and Slack webhooks, long text split to fit.
//! - `log` (here): one `tracing` line, for development.
//!
//! Every HTTP request goes through `http`: the URL is checked against [`ssrf::check_url`] first
//! (a refusal is [`Verdict::Permanent`], and no request is made), the hardened client
//! ([`outbound::client`]) refuses names that resolve to internal addresses
//! ([`ssrf::SafeResolver`]), statuses go through [`retry::classify_status`] and transport errors
//! through [`retry::classify_transport_error`].
//!
//! Tokens, secrets and URLs never appear in [`SendOutcome::response`] or in logs: the client's
//! errors carry no URL, and the destination's secrets are replaced by `[redacted]` in
//! anything a receiver or an error could echo.
//!
//! A destination for people (everything but `webhook`) given an empty `job.text` has nothing to
//! say: the attempt is [`Verdict::Delivered`] without a request.
//!
//! [`ssrf::check_url`]: crate::outbound::ssrf::check_url
//! [`ssrf::SafeResolver`]: crate::outbound::ssrf::SafeResolver
//! [`outbound::client`]: crate::outbound::client
//! [`retry::classify_status`]: super::retry::classify_status
//! [`retry::classify_transport_error`]: super::retry::classify_transport_error

mod chat;
mod command;
mod http;
mod openclaw;
mod platforms;
mod webhook;

#[cfg(test)]
mod testkit;

use super::job::DeliveryJob;
use super::retry::Verdict;
use crate::memory::Memory;
use crate::outbound::client::{self, ClientError};
use crate::outbound::destination::Destination;
use crate::outbound::ssrf::{check_url, AllowList, SsrfError};
use std::time::{Duration, Instant};

/// The per-attempt time limit used when the config names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the sinks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The hardened HTTP client could not be built.
    #[error("cannot build the relay's HTTP client")]
    Client(#[from] ClientError),
}

/// What every sink shares: the hardened HTTP client ([`client::hardened`]: refuses internal
/// addresses unless allowlisted, follows no redirects, uses no proxy), and the per-attempt timeout.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The outbound HTTP client (its timeout is `timeout`).
    pub http: client::HardenedClient,
    /// Internal addresses/hosts allowed anyway (e.g. a local gateway).
    pub allow: AllowList,
    /// Per-attempt time limit.
    pub timeout: Duration,
    /// URLs [`ssrf::check_url`] passed with this `allow`, parsed (see [`SinkContext::checked`]).
    ///
    /// [`ssrf::check_url`]: crate::outbound::ssrf::check_url
    passed: Memory<String, url::Url>,
}

/// At most this many passed URLs are kept (all are dropped when it is reached: URLs given per
/// task are unbounded, a fleet's destinations are few).
const PASSED_URLS: usize = 4096;

impl SinkContext {
    /// Builds the shared context around [`client::hardened`] with `allow` and a `timeout` per
    /// request.
    pub fn new(allow: AllowList, timeout: Duration) -> Result<SinkContext, SinkError> {
        let http = client::hardened(allow.clone(), timeout)?;
        Ok(SinkContext {
            http,
            allow,
            timeout,
            passed: Memory::new(PASSED_URLS),
        })
    }

    /// `url` checked by [`ssrf::check_url`] against `allow`, parsed; a URL that passed once is
    /// not parsed and checked again (the check depends on the URL and `allow` only; parsing was
    /// ~2 % of the relay's CPU at 20,000 deliveries/s).
    ///
    /// [`ssrf::check_url`]: crate::outbound::ssrf::check_url
    pub fn checked(&self, url: &str) -> Result<url::Url, SsrfError> {
        if let Some(passed) = self.passed.get(url) {
            return Ok(passed);
        }
        let parsed = check_url(url, &self.allow)?;
        self.passed.insert(url.to_string(), parsed.clone());
        Ok(parsed)
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq)]
pub struct SendOutcome {
    /// Delivered, retry (maybe after a time), permanent failure, or disable the destination.
    pub verdict: Verdict,
    /// HTTP status of the (last) response, if any.
    pub status: Option<u16>,
    /// Response body (as read, up to 64 KiB; the record keeps its first 4 KiB) or error text.
    pub response: Option<String>,
    /// How long the attempt took.
    pub duration: Duration,
}

/// Sends `job` to `dest` once.
pub async fn send(ctx: &SinkContext, dest: &Destination, job: &DeliveryJob) -> SendOutcome {
    let start = Instant::now();
    let attempt = if is_for_people(dest) && job.text.trim().is_empty() {
        Attempt::new(
            Verdict::Delivered,
            None,
            Some("empty message: nothing to send".into()),
        )
    } else {
        dispatch(ctx, dest, job).await
    };
    let outcome = SendOutcome {
        verdict: attempt.verdict,
        status: attempt.status,
        response: attempt.response,
        duration: start.elapsed(),
    };
    tracing::debug!(
        sink = dest.kind(),
        job_id = %job.id,
        verdict = ?outcome.verdict,
        status = ?outcome.status,
        duration_ms = outcome.duration.as_millis() as u64,
        "delivery attempt"
    );
    outcome
}

async fn dispatch(ctx: &SinkContext, dest: &Destination, job: &DeliveryJob) -> Attempt {
    match dest {
        Destination::Webhook {
            url,
            secret,
            headers,
            ..
        } => webhook::send(ctx, (url, headers), secret.as_deref(), job).await,
        Destination::Chat {
            url,
            session_id,
            token,
            ..
        } => chat::send(ctx, url, session_id, token.as_deref(), job).await,
        Destination::Openclaw {
            url, token, fields, ..
        } => openclaw::send(ctx, url, token.as_deref(), fields, job).await,
        Destination::Command { argv, vars } => command::run(ctx, argv, vars, job).await,
        Destination::Telegram {
            bot_token,
            chat_id,
            api_base,
            ..
        } => {
            let base = api_base.as_deref();
            platforms::telegram(ctx, bot_token.as_deref(), chat_id, base, job).await
        }
        Destination::Discord { url } => platforms::discord(ctx, url, job).await,
        Destination::Slack { url } => platforms::slack(ctx, url, job).await,
        Destination::Log {} => log(job),
    }
}

/// Whether `dest` delivers `job.text` to people (rather than the event to a machine).
fn is_for_people(dest: &Destination) -> bool {
    !matches!(dest, Destination::Webhook { .. })
}

/// The `log` sink: one `info` line with the message.
fn log(job: &DeliveryJob) -> Attempt {
    let names = job.task.as_ref().and_then(|t| t.names());
    let task_id = names.as_ref().map(|t| t.id.as_str());
    tracing::info!(
        job_id = %job.id,
        event = %job.event_type(),
        task_id,
        text = %job.text,
        "relay message"
    );
    Attempt::new(Verdict::Delivered, None, None)
}

/// How one attempt went, before its duration is known.
#[derive(Debug, Clone, PartialEq)]
struct Attempt {
    verdict: Verdict,
    status: Option<u16>,
    response: Option<String>,
}

impl Attempt {
    fn new(verdict: Verdict, status: Option<u16>, response: Option<String>) -> Self {
        Self {
            verdict,
            status,
            response,
        }
    }

    /// A failure that retrying cannot fix, explained.
    fn permanent(why: impl Into<String>) -> Self {
        Self::new(Verdict::Permanent, None, Some(why.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{ctx, job, Receiver};
    use super::*;
    use crate::outbound::client::USER_AGENT;

    #[tokio::test]
    async fn an_empty_message_for_people_is_delivered_without_a_request() {
        let rx = Receiver::ok().await;
        let dest = Destination::Slack { url: rx.url("/s") };
        let out = send(&ctx(), &dest, &job("  \n")).await;
        assert_eq!(out.verdict, Verdict::Delivered);
        assert!(rx.seen().is_empty());
    }

    #[tokio::test]
    async fn the_log_sink_always_delivers() {
        let out = send(&ctx(), &Destination::Log {}, &job("hello")).await;
        assert_eq!(out.verdict, Verdict::Delivered);
        assert_eq!(out.status, None);
    }

    #[tokio::test]
    async fn requests_carry_the_taskfleet_user_agent() {
        let rx = Receiver::ok().await;
        let dest = Destination::Slack { url: rx.url("/s") };
        send(&ctx(), &dest, &job("hi")).await;
        let seen = rx.seen();
        let ua = seen[0].header("user-agent").unwrap_or_default();
        assert_eq!(ua, USER_AGENT);
        assert!(ua.starts_with("taskfleet/"));
    }
}

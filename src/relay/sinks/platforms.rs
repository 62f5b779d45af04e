//! Chat platforms: Telegram, Discord and Slack.
//!
//! Requests (all `POST`, `content-type: application/json`):
//!
//! - Telegram: `<api_base>/bot<token>/sendMessage` with `{"chat_id": "<chat_id>", "text": …}`,
//!   plain text (no `parse_mode`), split at 4096 UTF-16 units.
//! - Discord: the webhook URL with `{"content": …, "allowed_mentions": {"parse": []}}` (task text
//!   never pings `@everyone` or anyone else), split at 2000.
//! - Slack: the incoming-webhook URL with `{"text": …}`, split at 4000 characters (Slack's advice
//!   for readable messages) with `&`, `<` and `>` escaped as Slack requires, so task text cannot
//!   inject `<!channel>` mentions or links.
//!
//! Long text is split with [`split_message`] (line breaks, then spaces, never inside a
//! character or an emoji sequence) and the parts are sent in order, each waiting for the one
//! before. The first part that is not delivered ends the attempt with that part's verdict; since
//! a sink keeps no state between attempts, a retry sends every part again.
//!
//! A `429` is a retry after the time the platform asks for: Telegram's JSON
//! `parameters.retry_after` (seconds), Discord's JSON `retry_after` (fractional seconds) or
//! else its `Retry-After` header, Slack's `Retry-After` header. The bot token (in Telegram's
//! URL path) and the webhook URLs' paths (which carry their tokens) are redacted from every
//! response and error.

use super::http::{parse_seconds, post_json, Redactor, Reply};
use super::{Attempt, SinkContext};
use crate::relay::job::DeliveryJob;
use crate::relay::retry::Verdict;
use crate::text::split::{split_message, DISCORD_LIMIT, TELEGRAM_LIMIT};
use serde_json::{json, Value};

/// The Telegram Bot API, unless the destination names another base.
const TELEGRAM_API: &str = "https://api.telegram.org";
/// Longest Slack message sent (characters before escaping); Slack truncates at 40 000 but
/// advises staying under 4000.
const SLACK_MESSAGE_LIMIT: usize = 4000;

/// Sends `job.text` to a Telegram chat.
pub(super) async fn telegram(
    ctx: &SinkContext,
    bot_token: Option<&str>,
    chat_id: &str,
    api_base: Option<&str>,
    job: &DeliveryJob,
) -> Attempt {
    let Some(token) = bot_token.filter(|t| !t.trim().is_empty()) else {
        return Attempt::permanent("telegram: no bot token configured");
    };
    let base = api_base.unwrap_or(TELEGRAM_API).trim_end_matches('/');
    let url = format!("{base}/bot{token}/sendMessage");
    let redact = Redactor::new([Some(token)]);
    let parts = split_message(&job.text, TELEGRAM_LIMIT);
    let bodies = parts.iter().map(|p| json!({"chat_id": chat_id, "text": p}));
    send_parts(ctx, &url, bodies, &redact, |reply| {
        let asked = reply
            .json()
            .and_then(|b| seconds(&b["parameters"]["retry_after"]));
        rate_limited(reply, asked)
    })
    .await
}

/// Sends `job.text` to a Discord webhook.
pub(super) async fn discord(ctx: &SinkContext, url: &str, job: &DeliveryJob) -> Attempt {
    let redact = Redactor::default().with_url_path(url);
    let parts = split_message(&job.text, DISCORD_LIMIT);
    let bodies = parts
        .iter()
        .map(|p| json!({"content": p, "allowed_mentions": {"parse": []}}));
    send_parts(ctx, url, bodies, &redact, |reply| {
        let asked = reply.json().and_then(|b| seconds(&b["retry_after"]));
        rate_limited(reply, asked)
    })
    .await
}

/// Sends `job.text` to a Slack incoming webhook.
pub(super) async fn slack(ctx: &SinkContext, url: &str, job: &DeliveryJob) -> Attempt {
    let redact = Redactor::default().with_url_path(url);
    let parts = split_message(&job.text, SLACK_MESSAGE_LIMIT);
    let bodies = parts.iter().map(|p| json!({"text": slack_escape(p)}));
    send_parts(ctx, url, bodies, &redact, |reply| rate_limited(reply, None)).await
}

/// POSTs each body in turn; stops at the first one that is not delivered.
async fn send_parts(
    ctx: &SinkContext,
    url: &str,
    bodies: impl ExactSizeIterator<Item = Value>,
    redact: &Redactor,
    judge: impl Fn(&Reply) -> Verdict,
) -> Attempt {
    let total = bodies.len();
    let mut last = Attempt::new(Verdict::Delivered, None, Some("nothing to send".into()));
    for (i, body) in bodies.enumerate() {
        let mut attempt =
            match post_json(ctx, url, &[], body.to_string().into_bytes(), redact).await {
                Ok(reply) => reply.attempt(judge(&reply), redact),
                Err(failed) => failed,
            };
        if attempt.verdict != Verdict::Delivered {
            if total > 1 {
                let said = attempt.response.take().unwrap_or_default();
                attempt.response = Some(format!("part {}/{total}: {said}", i + 1));
            }
            return attempt;
        }
        last = attempt;
    }
    last
}

/// The verdict for a platform reply: a 429 waits for what the body asked (`asked`), else what
/// `Retry-After` says (fractions allowed); everything else per the shared classification.
fn rate_limited(reply: &Reply, asked: Option<std::time::Duration>) -> Verdict {
    if reply.status == 429 {
        let header = reply.retry_after.as_deref().and_then(parse_seconds);
        return Verdict::Retry {
            after: asked.or(header),
        };
    }
    reply.verdict()
}

/// A JSON number or numeric string of seconds.
fn seconds(v: &Value) -> Option<std::time::Duration> {
    match v {
        Value::Number(n) => parse_seconds(&n.to_string()),
        Value::String(s) => parse_seconds(s),
        _ => None,
    }
}

/// Escapes the three characters Slack's `text` treats as markup.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{ctx, job, Answer, Receiver};
    use super::super::{send, Destination};
    use super::*;
    use crate::text::split::text_len;
    use std::time::Duration;

    fn telegram_to(rx: &Receiver) -> Destination {
        Destination::Telegram {
            bot_token: Some("123456:ABC-SECRET".into()),
            bot_token_env: None,
            chat_id: "-100987".into(),
            api_base: Some(rx.url("")),
        }
    }

    #[tokio::test]
    async fn long_telegram_text_arrives_as_two_parts_in_order() {
        let rx = Receiver::answering(|_| Answer::status(200).json(json!({"ok": true}))).await;
        let text = format!("{}\n{}", "a".repeat(2500), "b".repeat(2499));
        assert_eq!(text.chars().count(), 5000);
        let out = send(&ctx(), &telegram_to(&rx), &job(&text)).await;
        assert_eq!(out.verdict, Verdict::Delivered);
        let seen = rx.seen();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            assert_eq!(s.path, "/bot123456:ABC-SECRET/sendMessage");
            assert_eq!(s.json()["chat_id"], "-100987");
        }
        assert_eq!(seen[0].json()["text"], "a".repeat(2500));
        assert_eq!(seen[1].json()["text"], "b".repeat(2499));
    }

    #[tokio::test]
    async fn a_telegram_word_without_breaks_is_cut_within_the_limit() {
        let rx = Receiver::answering(|_| Answer::status(200).json(json!({"ok": true}))).await;
        let text = "x".repeat(5000);
        send(&ctx(), &telegram_to(&rx), &job(&text)).await;
        let parts: Vec<String> = rx
            .seen()
            .iter()
            .map(|s| s.json()["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| text_len(p) <= TELEGRAM_LIMIT));
        assert_eq!(parts.concat(), text);
    }

    #[tokio::test]
    async fn telegram_429_waits_for_parameters_retry_after_and_hides_the_token() {
        let rx = Receiver::answering(|_| {
            Answer::status(429).json(json!({
                "ok": false, "error_code": 429,
                "description": "Too Many Requests: retry after 5 (bot123456:ABC-SECRET)",
                "parameters": {"retry_after": 5},
            }))
        })
        .await;
        let out = send(&ctx(), &telegram_to(&rx), &job("hi")).await;
        let after = Some(Duration::from_secs(5));
        assert_eq!(out.verdict, Verdict::Retry { after });
        assert!(!out.response.unwrap().contains("ABC-SECRET"));
    }

    #[tokio::test]
    async fn a_failed_second_part_stops_the_attempt_and_says_which_part() {
        let rx = Receiver::answering(|n| match n {
            0 => Answer::status(200).json(json!({"ok": true})),
            _ => Answer::status(502).body("bad gateway"),
        })
        .await;
        let text = format!("{}\n{}\n{}", "a".repeat(4000), "b".repeat(4095), "c");
        let out = send(&ctx(), &telegram_to(&rx), &job(&text)).await;
        assert_eq!(out.verdict, Verdict::Retry { after: None });
        assert_eq!(out.response.as_deref(), Some("part 2/3: bad gateway"));
        assert_eq!(rx.seen().len(), 2);
    }

    #[tokio::test]
    async fn telegram_without_a_token_is_permanent() {
        let dest = Destination::Telegram {
            bot_token: None,
            bot_token_env: None,
            chat_id: "1".into(),
            api_base: None,
        };
        assert_eq!(
            send(&ctx(), &dest, &job("x")).await.verdict,
            Verdict::Permanent
        );
    }

    #[tokio::test]
    async fn a_telegram_transport_error_never_shows_the_bot_token() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dest = Destination::Telegram {
            bot_token: Some("999:TOKEN-XYZ".into()),
            bot_token_env: None,
            chat_id: "1".into(),
            api_base: Some(format!("http://127.0.0.1:{port}")),
        };
        let out = send(&ctx(), &dest, &job("x")).await;
        assert_eq!(out.verdict, Verdict::Retry { after: None });
        assert!(!format!("{out:?}").contains("TOKEN-XYZ"), "{out:?}");
    }

    #[tokio::test]
    async fn discord_gets_content_split_at_2000_without_mentions() {
        let rx = Receiver::answering(|_| Answer::status(204)).await;
        let dest = Destination::Discord {
            url: rx.url("/api/webhooks/1/tok"),
        };
        let text = format!("@everyone {}", "word ".repeat(500));
        let out = send(&ctx(), &dest, &job(&text)).await;
        assert_eq!(out.verdict, Verdict::Delivered);
        let seen = rx.seen();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            let body = s.json();
            assert!(text_len(body["content"].as_str().unwrap()) <= DISCORD_LIMIT);
            assert_eq!(body["allowed_mentions"], json!({"parse": []}));
        }
        assert!(seen[0].json()["content"]
            .as_str()
            .unwrap()
            .starts_with("@everyone word"));
    }

    #[tokio::test]
    async fn discord_429_retries_after_its_fractional_retry_after() {
        let rx = Receiver::answering(|_| {
            Answer::status(429)
                .header("retry-after", "2")
                .json(json!({"message": "You are being rate limited.", "retry_after": 1.5, "global": false}))
        })
        .await;
        let dest = Destination::Discord {
            url: rx.url("/api/webhooks/1/tok"),
        };
        let out = send(&ctx(), &dest, &job("hi")).await;
        let after = Some(Duration::from_millis(1500));
        assert_eq!(out.verdict, Verdict::Retry { after });
        assert_eq!(out.status, Some(429));
    }

    #[tokio::test]
    async fn discord_429_without_a_body_uses_the_retry_after_header() {
        let rx = Receiver::answering(|_| Answer::status(429).header("retry-after", "0.25")).await;
        let dest = Destination::Discord {
            url: rx.url("/api/webhooks/1/tok"),
        };
        let out = send(&ctx(), &dest, &job("hi")).await;
        let after = Some(Duration::from_millis(250));
        assert_eq!(out.verdict, Verdict::Retry { after });
    }

    #[tokio::test]
    async fn slack_gets_escaped_text() {
        let rx = Receiver::ok().await;
        let dest = Destination::Slack {
            url: rx.url("/services/T/B/x"),
        };
        let out = send(&ctx(), &dest, &job("<!channel> a & b > c")).await;
        assert_eq!(out.verdict, Verdict::Delivered);
        assert_eq!(out.response.as_deref(), Some("ok"));
        let body = rx.seen()[0].json();
        assert_eq!(body, json!({"text": "&lt;!channel&gt; a &amp; b &gt; c"}));
    }

    #[tokio::test]
    async fn slack_429_retries_after_its_retry_after_header() {
        let rx = Receiver::answering(|_| Answer::status(429).header("retry-after", "7")).await;
        let dest = Destination::Slack {
            url: rx.url("/services/T/B/x"),
        };
        let out = send(&ctx(), &dest, &job("hi")).await;
        let after = Some(Duration::from_secs(7));
        assert_eq!(out.verdict, Verdict::Retry { after });
    }
}

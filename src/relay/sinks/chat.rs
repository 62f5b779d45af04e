//! The `chat` sink: seed 000's push endpoint.
//!
//! `POST <url>` with `content-type: application/json`, `authorization: Bearer <token>` when a
//! token is set, and the body `{"sessionId": …, "content": <job.text>, "role": "assistant"}`.
//! The session is the job's own (`session_id` of a push) or else the destination's.

use super::http::{post_json, Redactor};
use super::{Attempt, SinkContext};
use crate::relay::job::DeliveryJob;

/// Pushes `job.text` to `url` as an assistant message of the session.
pub(super) async fn send(
    ctx: &SinkContext,
    url: &str,
    session_id: &str,
    token: Option<&str>,
    job: &DeliveryJob,
) -> Attempt {
    let body = serde_json::json!({
        "sessionId": job.session_id.as_deref().unwrap_or(session_id),
        "content": job.text,
        "role": "assistant",
    });
    let token = token.filter(|t| !t.trim().is_empty());
    let headers: Vec<_> = token
        .map(|t| ("authorization", format!("Bearer {t}")))
        .into_iter()
        .collect();
    let redact = Redactor::new([token]);
    match post_json(ctx, url, &headers, body.to_string().into_bytes(), &redact).await {
        Ok(reply) => reply.attempt(reply.verdict(), &redact),
        Err(failed) => failed,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{ctx, job, Answer, Receiver};
    use super::super::{send, Destination};
    use crate::relay::retry::Verdict;
    use serde_json::json;

    fn chat(rx: &Receiver, token: Option<&str>) -> Destination {
        Destination::Chat {
            url: rx.url("/api/push"),
            session_id: "sess-config".into(),
            token: token.map(String::from),
            token_env: None,
        }
    }

    #[tokio::test]
    async fn a_chat_push_has_the_seed_000_shape_and_a_bearer_token() {
        let rx = Receiver::ok().await;
        let out = send(&ctx(), &chat(&rx, Some("tok-123")), &job("🚀 started")).await;
        assert_eq!(out.verdict, Verdict::Delivered);
        let s = &rx.seen()[0];
        assert_eq!(s.path, "/api/push");
        assert_eq!(s.header("authorization"), Some("Bearer tok-123"));
        assert_eq!(s.header("content-type"), Some("application/json"));
        assert_eq!(
            s.json(),
            json!({"sessionId": "sess-config", "content": "🚀 started", "role": "assistant"})
        );
    }

    #[tokio::test]
    async fn a_push_job_session_overrides_the_destination_session() {
        let rx = Receiver::ok().await;
        let mut push = job("hello");
        push.session_id = Some("sess-from-push".into());
        send(&ctx(), &chat(&rx, None), &push).await;
        let s = &rx.seen()[0];
        assert_eq!(s.json()["sessionId"], "sess-from-push");
        assert!(s.header("authorization").is_none());
    }

    #[tokio::test]
    async fn a_token_echoed_by_the_receiver_is_redacted() {
        let rx = Receiver::answering(|_| Answer::status(401).body("bad token tok-123")).await;
        let out = send(&ctx(), &chat(&rx, Some("tok-123")), &job("x")).await;
        assert_eq!(out.verdict, Verdict::Permanent);
        assert_eq!(out.response.as_deref(), Some("bad token [redacted]"));
    }
}

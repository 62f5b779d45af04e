//! The `webhook` sink: `POST <url>` with the JSON event envelope ([`DeliveryJob::envelope`]),
//! signed per Standard Webhooks when a `whsec_` secret is set.
//!
//! Headers: `content-type: application/json`, `webhook-id: <job.id>` (the same on every retry,
//! so receivers can de-duplicate), `webhook-timestamp: <unix seconds>` and, with a secret,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`. The body is serialized
//! and the timestamp and signature computed afresh on every attempt, so a retry hours later
//! still passes the receiver's timestamp tolerance. When traces are exported, `traceparent` (W3C
//! trace context) names the delivery attempt's span, in the trace of the task.

use super::http::{post_json, Redactor};
use super::{Attempt, SinkContext};
use crate::outbound::signature::{
    signature_header, signers, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SECRET_PREFIX,
};
use crate::relay::job::DeliveryJob;
use std::collections::BTreeMap;

/// Sends the envelope of `job` to `url` with the destination's extra `headers`, signed with
/// `secret` when there is one (several secrets, space-separated, each sign: a rotation).
pub(super) async fn send(
    ctx: &SinkContext,
    (url, extra): (&str, &BTreeMap<String, String>),
    secret: Option<&str>,
    job: &DeliveryJob,
) -> Attempt {
    let signers = match signers(secret.unwrap_or_default()) {
        Ok(signers) => signers,
        // SignatureError never carries key material.
        Err(e) => return Attempt::permanent(format!("webhook secret: {e}")),
    };
    let body = match serde_json::to_vec(&job.envelope()) {
        Ok(body) => body,
        Err(e) => return Attempt::permanent(format!("cannot serialize the envelope: {e}")),
    };
    let timestamp = chrono::Utc::now().timestamp();
    let mut headers: Vec<(&str, String)> = extra
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    headers.push((HEADER_ID, job.id.clone()));
    headers.push((HEADER_TIMESTAMP, timestamp.to_string()));
    if !signers.is_empty() {
        let signature = signature_header(&signers, &job.id, timestamp, &body);
        headers.push((HEADER_SIGNATURE, signature));
    }
    // The delivery's trace (`traceparent`), when spans are exported: the receiver's work joins
    // the task's trace.
    let trace = crate::telemetry::http_trace_headers();
    for (name, value) in &trace {
        if let Ok(value) = value.to_str() {
            headers.push((name.as_str(), value.to_string()));
        }
    }
    // Each secret, and its key alone (the base64 after `whsec_`), is as secret as the whole;
    // so may be an extra header's value (see `header_secrets`).
    let parts = secret.unwrap_or_default().split_whitespace();
    let keys = parts.clone().filter_map(|s| s.strip_prefix(SECRET_PREFIX));
    let values = extra.iter().flat_map(header_secrets);
    let redact = Redactor::new(parts.chain(keys).chain(values).map(Some));
    match post_json(ctx, url, &headers, body, &redact).await {
        Ok(reply) => reply.attempt(reply.verdict(), &redact),
        Err(failed) => failed,
    }
}

/// Words in a header's name that say its value is a credential.
const CREDENTIAL_NAMES: [&str; 7] = [
    "auth",
    "token",
    "secret",
    "key",
    "password",
    "cookie",
    "signature",
];

/// What of an extra header's value is kept out of reports: the value and, after a scheme
/// (`Bearer <token>`), the credential alone. A header whose name says it holds a credential
/// (`Authorization`, `X-Api-Key`, …) is redacted however short; any other only from 8
/// characters on (shorter, it is no secret, and replacing it would garble the answer).
fn header_secrets<'a>((name, value): (&String, &'a String)) -> impl Iterator<Item = &'a str> {
    let name = name.to_ascii_lowercase();
    let credential = CREDENTIAL_NAMES.iter().any(|w| name.contains(w));
    let value = value.trim();
    let last = value.split_whitespace().last().unwrap_or_default();
    [value, last]
        .into_iter()
        .filter(move |v| credential || v.len() >= 8)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{ctx, job, task_job, Answer, Receiver};
    use super::super::{send, Destination};
    use crate::outbound::signature::Signer;
    use crate::relay::retry::Verdict;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn webhook(rx: &Receiver, secret: Option<&str>) -> Destination {
        Destination::Webhook {
            url: rx.url("/hooks/taskfleet"),
            secret: secret.map(String::from),
            secret_env: None,
            events: vec![],
            headers: Default::default(),
            headers_env: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_signed_webhook_verifies_and_keeps_its_id_across_attempts() {
        let rx = Receiver::ok().await;
        let dest = webhook(&rx, Some(SECRET));
        let job = task_job("✅ done");
        for _ in 0..2 {
            let out = send(&ctx(), &dest, &job).await;
            assert_eq!(out.verdict, Verdict::Delivered);
            assert_eq!(out.status, Some(200));
        }
        let seen = rx.seen();
        assert_eq!(seen.len(), 2);
        let signer = Signer::from_secret(SECRET).unwrap();
        for s in &seen {
            assert_eq!(s.method, "POST");
            assert_eq!(s.path, "/hooks/taskfleet");
            assert_eq!(s.header("content-type"), Some("application/json"));
            let (id, ts, sig) = (
                s.header("webhook-id").unwrap(),
                s.header("webhook-timestamp").unwrap(),
                s.header("webhook-signature").unwrap(),
            );
            assert_eq!(id, job.id);
            assert!(sig.starts_with("v1,"));
            signer.verify(id, ts, &s.body, sig).unwrap();
        }
        assert_eq!(
            seen[0].header("webhook-id"),
            seen[1].header("webhook-id"),
            "webhook-id must be stable across retries"
        );
    }

    #[tokio::test]
    async fn a_secret_being_rotated_signs_with_both_so_a_receiver_holding_either_verifies() {
        let rx = Receiver::ok().await;
        let new = Signer::generate_secret();
        let both = format!("{new} {SECRET}");
        let out = send(&ctx(), &webhook(&rx, Some(&both)), &job("x")).await;
        assert_eq!(out.verdict, Verdict::Delivered);
        let s = &rx.seen()[0];
        let (id, ts, sig) = (
            s.header("webhook-id").unwrap(),
            s.header("webhook-timestamp").unwrap(),
            s.header("webhook-signature").unwrap(),
        );
        assert_eq!(sig.split(' ').count(), 2, "{sig}");
        for secret in [new.as_str(), SECRET] {
            let signer = Signer::from_secret(secret).unwrap();
            signer.verify(id, ts, &s.body, sig).unwrap();
        }
    }

    #[tokio::test]
    async fn extra_headers_are_sent_and_a_long_one_is_never_recorded() {
        // A receiver that echoes the token it was sent (a misconfigured gateway, say).
        let token = "Bearer s3cr3t-t0ken-of-the-gateway";
        let rx =
            Receiver::answering(move |_| Answer::status(401).body(&format!("bad {token}"))).await;
        let mut dest = webhook(&rx, None);
        if let Destination::Webhook { headers, .. } = &mut dest {
            headers.insert("Authorization".into(), token.into());
            headers.insert("X-Team".into(), "ops".into());
        }
        let out = send(&ctx(), &dest, &job("x")).await;
        let s = &rx.seen()[0];
        assert_eq!(s.header("authorization"), Some(token));
        assert_eq!(s.header("x-team"), Some("ops"));
        assert!(s.header("webhook-id").is_some());
        let response = out.response.unwrap();
        assert!(!response.contains("s3cr3t"), "{response}");
    }

    #[tokio::test]
    async fn a_short_credential_header_and_its_token_alone_are_never_recorded() {
        // A receiver that echoes the token alone, and a short key, back.
        let rx =
            Receiver::answering(|_| Answer::status(403).body("token abc12 and key k9 refused"))
                .await;
        let mut dest = webhook(&rx, None);
        if let Destination::Webhook { headers, .. } = &mut dest {
            headers.insert("Authorization".into(), "Bearer abc12".into());
            headers.insert("X-Api-Key".into(), "k9".into());
            headers.insert("X-Team".into(), "and".into());
        }
        let out = send(&ctx(), &dest, &job("x")).await;
        let s = &rx.seen()[0];
        assert_eq!(s.header("authorization"), Some("Bearer abc12"));
        assert_eq!(s.header("x-api-key"), Some("k9"));
        let response = out.response.unwrap();
        assert_eq!(response, "token [redacted] and key [redacted] refused");
    }

    #[tokio::test]
    async fn the_body_is_the_event_envelope() {
        let rx = Receiver::ok().await;
        let job = task_job("✅ done");
        send(&ctx(), &webhook(&rx, Some(SECRET)), &job).await;
        let body = rx.seen()[0].json();
        assert_eq!(body["type"], "task.completed");
        assert_eq!(body["id"], job.id.as_str());
        assert_eq!(body["data"]["text"], "✅ done");
        assert_eq!(body["data"]["task"]["id"], "t_42");
        let envelope = serde_json::json!({
            "type": "task.completed", "id": job.id, "timestamp": job.created_time,
            "data": {"event": job.event, "task": job.task, "text": job.text},
        });
        assert_eq!(body, envelope);
    }

    #[tokio::test]
    async fn a_signature_made_with_another_secret_does_not_verify() {
        let rx = Receiver::ok().await;
        send(&ctx(), &webhook(&rx, Some(SECRET)), &job("x")).await;
        let s = &rx.seen()[0];
        let other = Signer::from_secret(&Signer::generate_secret()).unwrap();
        let (id, ts) = (
            s.header("webhook-id").unwrap(),
            s.header("webhook-timestamp").unwrap(),
        );
        let sig = s.header("webhook-signature").unwrap();
        assert!(other.verify(id, ts, &s.body, sig).is_err());
    }

    #[tokio::test]
    async fn without_a_secret_the_webhook_is_sent_unsigned() {
        let rx = Receiver::ok().await;
        let out = send(&ctx(), &webhook(&rx, None), &job("")).await;
        assert_eq!(
            out.verdict,
            Verdict::Delivered,
            "webhooks send even empty text"
        );
        let s = &rx.seen()[0];
        assert!(s.header("webhook-id").is_some() && s.header("webhook-timestamp").is_some());
        assert!(s.header("webhook-signature").is_none());
    }

    #[tokio::test]
    async fn a_malformed_second_secret_is_permanent_and_neither_is_reported() {
        let rx = Receiver::ok().await;
        let both = format!("{SECRET} whsec_TOPSECRET*notbase64");
        let out = send(&ctx(), &webhook(&rx, Some(&both)), &job("x")).await;
        assert_eq!(out.verdict, Verdict::Permanent);
        let response = out.response.unwrap();
        assert!(!response.contains("TOPSECRET") && !response.contains(&SECRET[6..]));
        assert!(rx.seen().is_empty());
    }

    #[tokio::test]
    async fn a_malformed_secret_is_permanent_and_never_reported() {
        let rx = Receiver::ok().await;
        let bad = "whsec_TOPSECRET*notbase64";
        let out = send(&ctx(), &webhook(&rx, Some(bad)), &job("x")).await;
        assert_eq!(out.verdict, Verdict::Permanent);
        assert!(!out.response.unwrap().contains("TOPSECRET"));
        assert!(rx.seen().is_empty());
    }
}

//! The `openclaw` sink: the OpenClaw gateway's webhook ingress, `POST /hooks/agent`.
//!
//! The request: `POST <url>/hooks/agent` (the path is appended unless the URL already ends in
//! `/hooks/agent`), `content-type: application/json`, and with a token both
//! `x-openclaw-token: <token>` and `authorization: Bearer <token>` (the gateway accepts
//! either). The body:
//!
//! ```json
//! {"message": "<job.text>", "name": "taskfleet", "channel": "telegram", "to": "123", "deliver": true}
//! ```
//!
//! `message` is always the job's text; `name` is `taskfleet` unless `fields` says otherwise;
//! every entry of `fields` is added as a string, except `deliver` (`true`/`false`) and
//! `timeoutSeconds` (a whole number), which the gateway wants as a boolean and a number.
//! No `sessionKey` is sent unless configured: gateways refuse it by default.

use super::http::{post_json, Redactor};
use super::{Attempt, SinkContext};
use crate::relay::job::DeliveryJob;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The hook path on the gateway.
const AGENT_PATH: &str = "/hooks/agent";

/// Asks the gateway at `url` to run an agent turn with `job.text`.
pub(super) async fn send(
    ctx: &SinkContext,
    url: &str,
    token: Option<&str>,
    fields: &BTreeMap<String, String>,
    job: &DeliveryJob,
) -> Attempt {
    let Some(target) = agent_url(url) else {
        return Attempt::permanent("refused: invalid URL");
    };
    let token = token.filter(|t| !t.trim().is_empty());
    let mut headers = Vec::new();
    if let Some(t) = token {
        headers.push(("x-openclaw-token", t.to_string()));
        headers.push(("authorization", format!("Bearer {t}")));
    }
    let body = Value::Object(body(&job.text, fields)).to_string();
    let redact = Redactor::new([token]);
    match post_json(ctx, &target, &headers, body.into_bytes(), &redact).await {
        Ok(reply) => reply.attempt(reply.verdict(), &redact),
        Err(failed) => failed,
    }
}

/// `url` with `/hooks/agent` appended to its path (kept when already there), query kept.
fn agent_url(url: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    let path = u.path().trim_end_matches('/').to_string();
    if !path.ends_with(AGENT_PATH) {
        u.set_path(&format!("{path}{AGENT_PATH}"));
    }
    Some(u.into())
}

/// The request body: `message`, `name`, then `fields` (which cannot replace `message`).
fn body(text: &str, fields: &BTreeMap<String, String>) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("message".into(), text.into());
    body.insert("name".into(), "taskfleet".into());
    for (key, value) in fields {
        if key != "message" {
            body.insert(key.clone(), field_value(key, value));
        }
    }
    body
}

/// A configured field as the gateway expects it.
fn field_value(key: &str, value: &str) -> Value {
    match (key, value.trim()) {
        ("deliver", "true") => Value::Bool(true),
        ("deliver", "false") => Value::Bool(false),
        ("timeoutSeconds", v) => v.parse::<u64>().map_or_else(|_| value.into(), Value::from),
        _ => value.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{ctx, job, Receiver};
    use super::super::{send, Destination};
    use super::*;
    use crate::relay::retry::Verdict;
    use serde_json::json;

    #[tokio::test]
    async fn the_gateway_gets_hooks_agent_with_the_token_and_the_message() {
        let rx = Receiver::ok().await;
        let fields = BTreeMap::from([
            ("channel".to_string(), "telegram".to_string()),
            ("to".to_string(), "123456".to_string()),
            ("deliver".to_string(), "true".to_string()),
            ("message".to_string(), "ignored".to_string()),
        ]);
        let dest = Destination::Openclaw {
            url: rx.url("/"),
            token: Some("hook-secret".into()),
            token_env: None,
            fields,
        };
        let out = send(&ctx(), &dest, &job("✅ Weekly report done")).await;
        assert_eq!(out.verdict, Verdict::Delivered);
        let s = &rx.seen()[0];
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/hooks/agent");
        assert_eq!(s.header("x-openclaw-token"), Some("hook-secret"));
        assert_eq!(s.header("authorization"), Some("Bearer hook-secret"));
        assert_eq!(
            s.json(),
            json!({
                "message": "✅ Weekly report done",
                "name": "taskfleet",
                "channel": "telegram",
                "to": "123456",
                "deliver": true,
            })
        );
    }

    #[test]
    fn the_agent_path_is_appended_once() {
        let cases = [
            ("http://gw:18789", "http://gw:18789/hooks/agent"),
            ("http://gw:18789/", "http://gw:18789/hooks/agent"),
            ("http://gw/base/", "http://gw/base/hooks/agent"),
            ("http://gw/hooks/agent", "http://gw/hooks/agent"),
        ];
        for (given, expected) in cases {
            assert_eq!(agent_url(given).as_deref(), Some(expected), "{given}");
        }
        assert_eq!(agent_url("not a url"), None);
    }

    #[test]
    fn typed_fields_become_booleans_and_numbers() {
        assert_eq!(field_value("deliver", "false"), json!(false));
        assert_eq!(field_value("timeoutSeconds", "120"), json!(120));
        assert_eq!(field_value("timeoutSeconds", "soon"), json!("soon"));
        assert_eq!(field_value("to", "+15551234567"), json!("+15551234567"));
    }
}

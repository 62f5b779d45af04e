//! Where the relay delivers: destinations named in the config (`[relay.destinations.<name>]`) or
//! given per task (`notify` on create), and the stable key each one is queued under.

use crate::domain::EventKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Headers a webhook's extra `headers` may not name: taskfleet sets them (the body's type and
/// length, the connection, the Standard Webhooks signature, the trace).
pub const RESERVED_HEADERS: [&str; 10] = [
    "content-type",
    "content-length",
    "host",
    "connection",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "tracestate",
];

/// A destination could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The JSON/TOML does not describe a destination.
    #[error("invalid destination: {0}")]
    Invalid(String),
    /// A name that the config does not define.
    #[error("unknown destination {0:?}")]
    UnknownName(String),
    /// A secret comes from an environment variable that is not set.
    #[error("destination {name:?}: environment variable {var} is not set")]
    MissingEnv {
        /// The destination.
        name: String,
        /// The variable.
        var: String,
    },
}

/// One place to deliver to. Secrets can be given inline or, better, as `*_env` variable names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Destination {
    /// POST the JSON event envelope, signed per Standard Webhooks when a `whsec_` secret is set.
    Webhook {
        /// Target URL.
        url: String,
        /// `whsec_…` signing secret (several, space-separated, while rotating: each signs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        /// Variable holding the signing secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_env: Option<String>,
        /// Only these event types (default: all but `output`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        events: Vec<EventKind>,
        /// Extra request headers, by name (`{"X-Team": "ops"}`); not one taskfleet sets itself
        /// (see [`RESERVED_HEADERS`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        /// Extra request headers whose values are variables of the relay's environment
        /// (`{"Authorization": "OPS_AUTH"}`); read at start into `headers`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers_env: BTreeMap<String, String>,
    },
    /// Seed 000's push endpoint: `{sessionId, content, role: "assistant"}` with a Bearer token.
    Chat {
        /// Push endpoint URL.
        url: String,
        /// Session to push to.
        session_id: String,
        /// Bearer token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Variable holding the Bearer token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_env: Option<String>,
    },
    /// The OpenClaw gateway's `POST /hooks/agent` (token header).
    Openclaw {
        /// Gateway base URL, e.g. `http://127.0.0.1:18789`.
        url: String,
        /// Hook token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Variable holding the hook token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_env: Option<String>,
        /// Extra fields merged into the request body (e.g. `{"channel": "telegram", "to": "…"}`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        fields: BTreeMap<String, String>,
    },
    /// Run a command: argv template with `{text}`, `{task_id}`, `{task_name}`, `{event}` and any
    /// key of `vars` (e.g. `{channel}`, `{target}`). Never through a shell.
    Command {
        /// The argv template.
        argv: Vec<String>,
        /// Values for extra placeholders.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        vars: BTreeMap<String, String>,
    },
    /// Telegram `sendMessage` (4096-character limit).
    Telegram {
        /// Bot token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bot_token: Option<String>,
        /// Variable holding the bot token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bot_token_env: Option<String>,
        /// Chat id.
        chat_id: String,
        /// API base (default `https://api.telegram.org`; tests point it at a local receiver).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_base: Option<String>,
    },
    /// A Discord webhook (2000-character limit).
    Discord {
        /// Webhook URL.
        url: String,
    },
    /// A Slack incoming webhook.
    Slack {
        /// Webhook URL.
        url: String,
    },
    /// Print to the relay's log (development).
    Log {},
}

impl Destination {
    /// The stable key this destination is queued under: `n_<name>` for named ones,
    /// `h_<hash>` for ad-hoc ones. Safe as a subject token and a consumer name. A named
    /// destination aimed at one chat session is queued apart, under [`session_key`].
    pub fn key(&self, name: Option<&str>) -> String {
        match name {
            Some(n) => named_key(n, None),
            None => {
                let canonical = serde_json::to_vec(self).expect("destinations serialize");
                let d = Sha256::digest(&canonical);
                let hex: String = d.iter().take(10).map(|b| format!("{b:02x}")).collect();
                format!("h_{hex}")
            }
        }
    }

    /// The kind of destination, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Chat { .. } => "chat",
            Self::Openclaw { .. } => "openclaw",
            Self::Command { .. } => "command",
            Self::Telegram { .. } => "telegram",
            Self::Discord { .. } => "discord",
            Self::Slack { .. } => "slack",
            Self::Log {} => "log",
        }
    }

    /// Whether this destination wants an event of `kind`. Machines (webhooks) get every event but
    /// raw `output`; people's channels get what renders as a message.
    pub fn wants(&self, kind: EventKind) -> bool {
        match self {
            Self::Webhook { events, .. } if !events.is_empty() => events.contains(&kind),
            Self::Webhook { .. } => kind != EventKind::Output,
            _ => kind != EventKind::Output && kind != EventKind::Created,
        }
    }

    /// Refuses extra webhook headers that are no valid HTTP header, or that taskfleet sets
    /// itself.
    pub fn check(&self) -> Result<(), DestinationError> {
        let Self::Webhook {
            headers,
            headers_env,
            ..
        } = self
        else {
            return Ok(());
        };
        let mut seen = std::collections::HashSet::new();
        for name in headers.keys().chain(headers_env.keys()) {
            let lower = name.to_ascii_lowercase();
            if !seen.insert(lower.clone()) {
                return Err(DestinationError::Invalid(format!(
                    "header {name} is given twice (header names are the same in any case, \
                     across headers and headers_env)"
                )));
            }
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(DestinationError::Invalid(format!(
                    "{name:?} is no HTTP header name"
                )));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(DestinationError::Invalid(format!(
                    "header {name} is set by taskfleet (extra headers may not be one of {})",
                    RESERVED_HEADERS.join(", ")
                )));
            }
        }
        match headers
            .iter()
            .find(|(_, v)| http::HeaderValue::from_str(v).is_err())
        {
            Some((name, _)) => Err(DestinationError::Invalid(format!(
                "the value of header {name} is no valid HTTP header value"
            ))),
            None => Ok(()),
        }
    }

    /// The `*_env` field this destination sets, if any: a variable of the relay's environment,
    /// read for the destinations of its config only.
    fn env_field(&self) -> Option<&'static str> {
        match self {
            Self::Webhook {
                secret_env: Some(_),
                ..
            } => Some("secret_env"),
            Self::Webhook { headers_env, .. } if !headers_env.is_empty() => Some("headers_env"),
            Self::Chat {
                token_env: Some(_), ..
            }
            | Self::Openclaw {
                token_env: Some(_), ..
            } => Some("token_env"),
            Self::Telegram {
                bot_token_env: Some(_),
                ..
            } => Some("bot_token_env"),
            _ => None,
        }
    }

    /// Copies secrets named by `*_env` into the destination, so delivery needs no environment.
    pub fn resolve_env(mut self, name: &str) -> Result<Self, DestinationError> {
        fn take(
            name: &str,
            inline: &mut Option<String>,
            var: &mut Option<String>,
        ) -> Result<(), DestinationError> {
            if let Some(v) = var.take() {
                let value = std::env::var(&v).map_err(|_| DestinationError::MissingEnv {
                    name: name.to_string(),
                    var: v.clone(),
                })?;
                *inline = Some(value);
            }
            Ok(())
        }
        match &mut self {
            Self::Webhook {
                secret,
                secret_env,
                headers,
                headers_env,
                ..
            } => {
                take(name, secret, secret_env)?;
                for (header, var) in std::mem::take(headers_env) {
                    let mut value = None;
                    take(name, &mut value, &mut Some(var.clone()))?;
                    let value = value.unwrap_or_default();
                    if http::HeaderValue::from_str(&value).is_err() {
                        return Err(DestinationError::Invalid(format!(
                            "{name}: variable {var} (header {header}) holds no valid HTTP \
                             header value"
                        )));
                    }
                    headers.insert(header, value);
                }
            }
            Self::Chat {
                token, token_env, ..
            }
            | Self::Openclaw {
                token, token_env, ..
            } => take(name, token, token_env)?,
            Self::Telegram {
                bot_token,
                bot_token_env,
                ..
            } => take(name, bot_token, bot_token_env)?,
            _ => {}
        }
        Ok(self)
    }

    /// The URL this destination calls, if it calls one (for the SSRF check).
    pub fn url(&self) -> Option<String> {
        match self {
            Self::Webhook { url, .. }
            | Self::Chat { url, .. }
            | Self::Openclaw { url, .. }
            | Self::Discord { url }
            | Self::Slack { url } => Some(url.clone()),
            Self::Telegram { api_base, .. } => Some(
                api_base
                    .clone()
                    .unwrap_or_else(|| "https://api.telegram.org".into()),
            ),
            Self::Command { .. } | Self::Log {} => None,
        }
    }
}

/// The queue key of named destination `name` (`n_<name>`), or of it aimed at chat session
/// `session_id` ([`session_key`]). Needs no configured destination: the relay keys a name it
/// does not have the same way.
pub fn named_key(name: &str, session_id: Option<&str>) -> String {
    match session_id {
        Some(s) => session_key(name, s),
        None => format!("n_{name}"),
    }
}

/// The queue key of named destination `name` aimed at chat session `session_id`:
/// `n_<name>_<hash of the session>`, so each session is its own ordered queue.
pub fn session_key(name: &str, session_id: &str) -> String {
    let d = Sha256::digest(session_id.as_bytes());
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("n_{name}_{hex}")
}

/// `{"destination": "<name>", "session_id": "<id>"}` in a task's `notify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionEntry {
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
}

/// An entry of a task's `notify`: a configured destination's name, a destination object, or a
/// configured destination aimed at one chat session
/// (`{"destination": "<name>", "session_id": "<id>"}`).
pub fn parse_notify(entry: &serde_json::Value) -> Result<NotifyEntry, DestinationError> {
    match entry {
        serde_json::Value::String(name) => Ok(NotifyEntry::Named(name.clone())),
        serde_json::Value::Object(map)
            if map.contains_key("destination")
                || (map.contains_key("session_id") && !map.contains_key("type")) =>
        {
            let e: SessionEntry = serde_json::from_value(entry.clone())
                .map_err(|e| DestinationError::Invalid(e.to_string()))?;
            match (e.session_id, e.destination) {
                (None, Some(name)) => Ok(NotifyEntry::Named(name)),
                (None, None) => Err(DestinationError::Invalid(
                    "a notify entry needs a destination or a session_id".into(),
                )),
                (Some(s), _) if s.trim().is_empty() => Err(DestinationError::Invalid(
                    "session_id must not be empty".into(),
                )),
                (Some(session_id), name) => Ok(NotifyEntry::Session { name, session_id }),
            }
        }
        obj @ serde_json::Value::Object(_) => {
            let dest: Destination = serde_json::from_value(obj.clone())
                .map_err(|e| DestinationError::Invalid(e.to_string()))?;
            // Whoever may create a task must not run commands on the relay's host: a command
            // destination comes from the relay's config only.
            if matches!(dest, Destination::Command { .. }) {
                return Err(DestinationError::Invalid(
                    "a command destination can only be configured in the relay's config \
                     ([relay.destinations.<name>]), then named in notify"
                        .into(),
                ));
            }
            dest.check()?;
            // Nor read the relay's environment (it would be sent to a URL the caller chose).
            if let Some(field) = dest.env_field() {
                return Err(DestinationError::Invalid(format!(
                    "{field} names a variable of the relay's environment, read only for a \
                     destination of its config ([relay.destinations.<name>], then named in notify)"
                )));
            }
            Ok(NotifyEntry::Inline(dest))
        }
        other => Err(DestinationError::Invalid(format!(
            "expected a destination name or object, got {other}"
        ))),
    }
}

/// A parsed `notify` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyEntry {
    /// `"ops"`: a destination of the config.
    Named(String),
    /// `{"type": "webhook", …}`.
    Inline(Destination),
    /// `{"destination": "chat", "session_id": "s1"}`: a destination of the config, delivering
    /// to this session (the job's `session_id`) instead of its own.
    Session {
        /// The configured destination; `None` (`{"session_id": "s1"}` alone) means the relay's
        /// `push_destination`.
        name: Option<String>,
        /// The chat session to deliver to.
        session_id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_task_cannot_bring_its_own_command_destination() {
        let entry = json!({"type": "command", "argv": ["touch", "/tmp/pwned"]});
        let refused = parse_notify(&entry).unwrap_err().to_string();
        assert!(refused.contains("relay's config"), "{refused}");
    }

    #[test]
    fn notify_entries_are_names_or_typed_objects() {
        assert_eq!(
            parse_notify(&json!("ops")).unwrap(),
            NotifyEntry::Named("ops".into())
        );
        let w = parse_notify(&json!({"type": "webhook", "url": "https://example.com/h"})).unwrap();
        assert!(matches!(
            w,
            NotifyEntry::Inline(Destination::Webhook { .. })
        ));
        assert!(parse_notify(&json!({"type": "pager", "url": "x"})).is_err());
        assert!(parse_notify(&json!({"type": "webhook"})).is_err());
        assert!(parse_notify(&json!(42)).is_err());
    }

    #[test]
    fn session_entries_name_a_destination_and_a_session_queued_apart() {
        assert_eq!(
            parse_notify(&json!({"destination": "chat", "session_id": "s1"})).unwrap(),
            NotifyEntry::Session {
                name: Some("chat".into()),
                session_id: "s1".into()
            }
        );
        assert_eq!(
            parse_notify(&json!({"session_id": "s2"})).unwrap(),
            NotifyEntry::Session {
                name: None,
                session_id: "s2".into()
            }
        );
        assert_eq!(
            parse_notify(&json!({"destination": "ops"})).unwrap(),
            NotifyEntry::Named("ops".into())
        );
        assert!(parse_notify(&json!({"destination": "chat", "session_id": " "})).is_err());
        assert!(parse_notify(&json!({"destination": "chat", "session": "s1"})).is_err());
        assert!(parse_notify(&json!({"destination": 3, "session_id": "s1"})).is_err());

        let (a, b) = (session_key("chat", "s1"), session_key("chat", "s2"));
        assert_ne!(a, b);
        assert_eq!(a, session_key("chat", "s1"));
        assert!(a.starts_with("n_chat_") && a != "n_chat");
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }

    #[test]
    fn keys_are_stable_subject_tokens_and_differ_by_content() {
        let a = Destination::Discord {
            url: "https://d/1".into(),
        };
        let b = Destination::Discord {
            url: "https://d/2".into(),
        };
        assert_eq!(a.key(None), a.clone().key(None));
        assert_ne!(a.key(None), b.key(None));
        assert_eq!(a.key(Some("ops")), "n_ops");
        assert!(a
            .key(None)
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }

    #[test]
    fn webhooks_get_every_event_but_output_and_people_skip_created() {
        let w = Destination::Webhook {
            url: "u".into(),
            secret: None,
            secret_env: None,
            events: vec![],
            headers: Default::default(),
            headers_env: Default::default(),
        };
        assert!(w.wants(EventKind::Heartbeat) && !w.wants(EventKind::Output));
        let c = Destination::Log {};
        assert!(c.wants(EventKind::Completed) && !c.wants(EventKind::Created));
    }

    fn webhook_with(headers: &[(&str, &str)], headers_env: &[(&str, &str)]) -> Destination {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Destination::Webhook {
            url: "https://example.com/h".into(),
            secret: None,
            secret_env: None,
            events: vec![],
            headers: map(headers),
            headers_env: map(headers_env),
        }
    }

    #[test]
    fn extra_headers_may_not_be_ones_taskfleet_sets_nor_invalid() {
        assert!(
            webhook_with(&[("X-Team", "ops")], &[("Authorization", "V")])
                .check()
                .is_ok()
        );
        for (name, value) in [
            ("Webhook-Signature", "v1,forged"),
            ("content-type", "text/plain"),
            ("Bad Name", "x"),
            ("X-Ok", "line\nbreak"),
        ] {
            let refused = webhook_with(&[(name, value)], &[]).check();
            assert!(refused.is_err(), "{name}: {value:?}");
        }
        let from_env = webhook_with(&[], &[("Host", "V")]).check();
        assert!(from_env.is_err(), "a variable's header is checked too");
    }

    #[test]
    fn a_header_named_twice_in_any_case_is_refused_naming_it() {
        let twice = webhook_with(&[("X-Team", "ops"), ("x-team", "dev")], &[]).check();
        let across = webhook_with(&[("Authorization", "a")], &[("AUTHORIZATION", "V")]).check();
        for refused in [twice, across] {
            let e = refused.expect_err("a header sent twice").to_string();
            assert!(e.contains("given twice"), "{e}");
        }
    }

    #[test]
    fn a_headers_variable_is_read_into_the_headers_at_start() {
        let path = std::env::var("PATH").expect("tests run with a PATH");
        let d = webhook_with(&[("X-Team", "ops")], &[("X-Path", "PATH")]);
        let Destination::Webhook {
            headers,
            headers_env,
            ..
        } = d.resolve_env("ops").unwrap()
        else {
            unreachable!("a webhook stays a webhook")
        };
        assert_eq!(headers.get("X-Path"), Some(&path));
        assert_eq!(headers.get("X-Team").map(String::as_str), Some("ops"));
        assert!(headers_env.is_empty());
    }

    #[test]
    fn secrets_from_missing_variables_are_an_error_naming_the_variable() {
        let d = Destination::Chat {
            url: "u".into(),
            session_id: "s".into(),
            token: None,
            token_env: Some("TASKFLEET_TEST_SURELY_UNSET_VAR".into()),
        };
        let e = d.resolve_env("chat").unwrap_err();
        assert!(e.to_string().contains("TASKFLEET_TEST_SURELY_UNSET_VAR"));
    }
}

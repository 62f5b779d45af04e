//! What one NATS connection may do: the JetStream API subjects that permissions name, the
//! per-user inbox prefix, and the server's own account of the connection's permissions
//! (`$SYS.REQ.USER.INFO`).
//!
//! `taskfleet nats-config` (in [`crate::natsauth`]) builds every user's permissions from these
//! builders and from [`super::subjects`]; the topology asks [`user_permissions`] whether this
//! connection may create streams before it tries.

use serde::Deserialize;
use std::time::Duration;

/// Answered by the server itself for every connection: the user, its account and permissions.
pub const USER_INFO: &str = "$SYS.REQ.USER.INFO";

/// Prefix of every JetStream API subject.
const JS_API: &str = "$JS.API";

/// `$JS.API.INFO`: the account's JetStream usage and limits.
pub fn js_info() -> String {
    format!("{JS_API}.INFO")
}

/// `$JS.API.STREAM.<verb>.<stream>`, e.g. `CREATE`, `UPDATE`, `INFO`, `MSG.DELETE`.
pub fn stream_api(verb: &str, stream: &str) -> String {
    format!("{JS_API}.STREAM.{verb}.{stream}")
}

/// `$JS.API.CONSUMER.<verb>.<stream>[.<rest>]`. For `CREATE`, async-nats puts the consumer's
/// name and then its filter subject after the stream (`CREATE.TASKS.worker_anna_p0.tasks.anna.p0.*`),
/// and the server refuses a create whose filter differs from the one in the subject.
pub fn consumer_api(verb: &str, stream: &str, rest: Option<&str>) -> String {
    match rest {
        Some(r) => format!("{JS_API}.CONSUMER.{verb}.{stream}.{r}"),
        None => format!("{JS_API}.CONSUMER.{verb}.{stream}"),
    }
}

/// Direct gets on `stream`: by sequence or "next for subject" (`None`), or the last message of
/// subjects matching `subject` (`$JS.API.DIRECT.GET.KV_tasks.$KV.tasks.>` for KV reads).
pub fn direct_get(stream: &str, subject: Option<&str>) -> String {
    match subject {
        Some(s) => format!("{JS_API}.DIRECT.GET.{stream}.{s}"),
        None => format!("{JS_API}.DIRECT.GET.{stream}"),
    }
}

/// Acknowledgements of one consumer's messages: the reply subjects they arrive with, in the
/// current form (`$JS.ACK.<stream>.<consumer>.…`) and the longer one with domain and account
/// hash (`$JS.ACK.<domain>.<hash>.<stream>.<consumer>.…`) that newer servers may switch to.
pub fn acks(stream: &str, consumer: &str) -> [String; 2] {
    [
        format!("$JS.ACK.{stream}.{consumer}.>"),
        format!("$JS.ACK.*.*.{stream}.{consumer}.>"),
    ]
}

/// Flow-control replies of push consumers (ordered KV watches) on `stream`.
pub fn flow_control(stream: &str) -> String {
    format!("$JS.FC.{stream}.>")
}

/// Every key of a KV bucket (puts, deletes and purges are publishes to these).
pub fn kv_keys(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

/// The stream behind a KV bucket.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The inbox prefix of `user`'s connections. Replies (JetStream API answers, pulled messages,
/// publish acks) go to `<prefix>.…`; each user may subscribe to its own prefix only, so no user
/// can read another's replies, which a shared `_INBOX.>` would allow.
pub fn inbox_prefix(user: &str) -> String {
    let token: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX_{token}")
}

/// Allow and deny lists of one direction.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Rules {
    /// Subjects (with wildcards) allowed; empty allows everything not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Subjects (with wildcards) denied; deny wins over allow.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Rules {
    fn permits(&self, subject: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|p| subject_matches(p, subject)))
            && !self.deny.iter().any(|p| subject_matches(p, subject))
    }
}

/// A connection's permissions as the server reports them; both `None` means unrestricted.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Permissions {
    /// What it may publish.
    #[serde(default)]
    pub publish: Option<Rules>,
    /// What it may subscribe to.
    #[serde(default)]
    pub subscribe: Option<Rules>,
}

impl Permissions {
    /// Whether a publish to the literal `subject` is allowed.
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.as_ref().is_none_or(|r| r.permits(subject))
    }

    /// Whether a subscription to the literal `subject` is allowed.
    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe.as_ref().is_none_or(|r| r.permits(subject))
    }
}

#[derive(Deserialize)]
struct UserInfoResponse {
    data: Option<UserInfo>,
}

#[derive(Deserialize)]
struct UserInfo {
    #[serde(default)]
    permissions: Option<Permissions>,
}

/// Asks the server what this connection may do. `None` when it cannot tell (no answer, or an
/// answer without data); callers then behave as before permissions existed.
pub async fn user_permissions(client: &async_nats::Client) -> Option<Permissions> {
    let request = client.request(USER_INFO, bytes::Bytes::new());
    let reply = tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .ok()?
        .ok()?;
    let info: UserInfoResponse = serde_json::from_slice(&reply.payload).ok()?;
    Some(info.data?.permissions.unwrap_or_default())
}

/// Whether the literal `subject` matches `pattern` (`*` one token, `>` one or more at the end).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_the_server() {
        assert!(subject_matches("tasks.anna.>", "tasks.anna.p0.exec"));
        assert!(!subject_matches("tasks.anna.>", "tasks.anna"));
        assert!(subject_matches("tasks.*.p0", "tasks.trump.p0"));
        assert!(!subject_matches("tasks.*.p0", "tasks.trump.p0.exec"));
        assert!(!subject_matches("tasks.anna.p0", "tasks.anna"));
        assert!(subject_matches(">", "$JS.API.STREAM.CREATE.TASKS"));
        assert!(!subject_matches("events.anna.>", "events.trump.x.started"));
    }

    #[test]
    fn deny_wins_and_no_rules_mean_no_restriction() {
        let p = Permissions {
            publish: Some(Rules {
                allow: vec!["tasks.>".into()],
                deny: vec!["tasks.trump.>".into()],
            }),
            subscribe: None,
        };
        assert!(p.may_publish("tasks.anna.p0"));
        assert!(!p.may_publish("tasks.trump.p0"));
        assert!(!p.may_publish("events.anna.x.started"));
        assert!(p.may_subscribe("anything"));
        assert!(Permissions::default().may_publish(&stream_api("CREATE", "TASKS")));
    }

    #[test]
    fn the_servers_user_info_answer_parses() {
        let text = r#"{"server":{"name":"n"},"data":{"user":"worker-anna","account":"$G",
            "permissions":{"publish":{"allow":["$JS.API.STREAM.INFO.TASKS"]},
            "subscribe":{"allow":["_INBOX_worker-anna.>"]},"responses":{"max":1,"ttl":1}}}}"#;
        let info: UserInfoResponse = serde_json::from_str(text).unwrap();
        let p = info.data.unwrap().permissions.unwrap();
        assert!(!p.may_publish(&stream_api("CREATE", "TASKS")));
        assert!(p.may_subscribe("_INBOX_worker-anna.abc"));
        let unrestricted = r#"{"data":{"user":"api","account":"$G"}}"#;
        let info: UserInfoResponse = serde_json::from_str(unrestricted).unwrap();
        assert!(info.data.unwrap().permissions.is_none());
    }

    #[test]
    fn api_subjects_and_inbox_prefixes() {
        assert_eq!(
            consumer_api("CREATE", "TASKS", Some("worker_anna_p0.tasks.anna.p0.*")),
            "$JS.API.CONSUMER.CREATE.TASKS.worker_anna_p0.tasks.anna.p0.*"
        );
        assert_eq!(
            direct_get("KV_tasks", Some("$KV.tasks.>")),
            "$JS.API.DIRECT.GET.KV_tasks.$KV.tasks.>"
        );
        assert_eq!(
            acks("EVENTS", "relay_events")[0],
            "$JS.ACK.EVENTS.relay_events.>"
        );
        assert_eq!(inbox_prefix("worker-anna"), "_INBOX_worker-anna");
        assert_eq!(inbox_prefix("a.b*c"), "_INBOX_a_b_c");
    }
}

//! Queue messages on `tasks.<assignee>.<p>[.<kind>]`, as workers and the pending list read them
//! (`tasks::decode_queued`): any subject, headers and bytes are read or refused without a panic;
//! what is accepted agrees with its subject and passes validation; a create request published
//! the way taskfleet publishes it reads back as sent. What is refused becomes a dead letter of
//! the subject's assignee (`tasks::refused_task`). Subject names round-trip through their
//! builders and parsers (`bus::subjects`), and so do the names inside them.

use crate::gen;
use async_nats::header::{HeaderValue, NATS_MESSAGE_ID};
use async_nats::HeaderMap;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use std::str::FromStr;
use taskfleet::bus::{encode, subjects, RECORDED_HEADER};
use taskfleet::domain::{Assignee, EventKind, NewTask, Priority, TaskId, TaskKind, TaskStatus};
use taskfleet::tasks::{decode_queued, refused_task, QueuedMessage};

/// The parts of a queue message, owned.
#[derive(Debug, Clone)]
struct Message {
    subject: String,
    headers: Option<HeaderMap>,
    payload: Vec<u8>,
    seq: u64,
    published_ns: i128,
}

impl Message {
    fn view(&self) -> QueuedMessage<'_> {
        QueuedMessage {
            subject: &self.subject,
            headers: self.headers.as_ref(),
            payload: &self.payload,
            seq: self.seq,
            published_ns: self.published_ns,
        }
    }
}

/// A subject token: a valid name of some sort, or junk.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        gen::assignee().prop_map(|a| a.to_string()),
        select(&["p0", "p1", "p2", "P1", "0", "p3", "manual", "exec", "agent", "hook", "noop"][..])
            .prop_map(str::to_string),
        gen::text(8),
        Just(String::new()),
    ]
}

/// Subjects: task subjects, almost-task subjects, and anything.
fn subject() -> impl Strategy<Value = String> {
    let built = (gen::assignee(), gen::priority(), gen::kind())
        .prop_map(|(a, p, k)| subjects::task(&a, p, k, None));
    let tokens = (
        select(&["tasks", "events", "task", ""][..]),
        vec(token(), 0..5),
    )
        .prop_map(|(head, rest)| {
            std::iter::once(head.to_string())
                .chain(rest)
                .collect::<Vec<_>>()
                .join(".")
        });
    prop_oneof![2 => built, 2 => tokens, 1 => gen::text(30)]
}

/// Headers a producer may set: a `Nats-Msg-Id` (a task id or anything) and the
/// `Taskfleet-Recorded` marker.
fn headers() -> impl Strategy<Value = Option<HeaderMap>> {
    let msg_id = prop_oneof![gen::task_id().prop_map(|i| i.to_string()), gen::text(20)];
    let recorded = prop_oneof![
        gen::event_kind().prop_map(|k| k.as_str().to_string()),
        gen::text(10)
    ];
    prop::option::of((prop::option::of(msg_id), prop::option::of(recorded))).prop_map(|h| {
        h.map(|(id, recorded)| {
            // Header values cannot hold line breaks (the client refuses them).
            let valid = |v: Option<String>| v.and_then(|v| HeaderValue::from_str(&v).ok());
            let mut map = HeaderMap::new();
            if let Some(v) = valid(id) {
                map.insert(NATS_MESSAGE_ID, v);
            }
            if let Some(v) = valid(recorded) {
                map.insert(RECORDED_HEADER, v);
            }
            map
        })
    })
}

/// Bodies: random bytes, any JSON, create requests with fields dropped or made up.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let request = (
        gen::new_task(),
        vec(
            (
                select(
                    &[
                        "assigned_to",
                        "priority",
                        "kind",
                        "id",
                        "task_name",
                        "payload",
                    ][..],
                ),
                prop::option::of(gen::json()),
            ),
            0..3,
        ),
    )
        .prop_map(|(new, edits)| {
            let mut v = serde_json::to_value(&new).expect("serializes");
            for (field, value) in edits {
                let obj = v.as_object_mut().expect("an object");
                match value {
                    Some(x) => obj.insert(field.to_string(), x),
                    None => obj.remove(field),
                };
            }
            serde_json::to_vec(&v).expect("serializes")
        });
    prop_oneof![
        1 => vec(any::<u8>(), 0..5000),
        1 => gen::json().prop_map(|v| serde_json::to_vec(&v).expect("serializes")),
        2 => request,
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        subject(),
        headers(),
        payload(),
        any::<u64>(),
        prop_oneof![any::<i128>(), (0i128..4_102_444_800_000_000_000),],
    )
        .prop_map(|(subject, headers, payload, seq, published_ns)| Message {
            subject,
            headers,
            payload,
            seq,
            published_ns,
        })
}

/// The message a create request is published as (`TaskService::create` and retries).
fn published(new: &NewTask, seq: u64, msg_id: Option<&TaskId>) -> Message {
    let headers = msg_id.map(|id| {
        let mut h = HeaderMap::new();
        h.insert(NATS_MESSAGE_ID, id.as_str());
        h
    });
    Message {
        subject: subjects::task(&new.assigned_to, new.priority, new.kind, new.share()),
        headers,
        payload: encode(new).to_vec(),
        seq,
        published_ns: 1_767_225_600_000_000_000,
    }
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn any_queue_message_is_read_or_refused_and_what_is_read_agrees_with_its_subject(
        msg in message()
    ) {
        match decode_queued(msg.view()) {
            Ok((id, new)) => {
                let subject_says = subjects::parse_task(&msg.subject);
                prop_assert_eq!(subject_says, Some((new.assigned_to.clone(), new.priority, new.kind)));
                prop_assert!(new.validate().is_ok());
                if let Some(named) = &new.id {
                    prop_assert_eq!(&id, named);
                }
                // Every reader derives the same id for the same message.
                let again = decode_queued(msg.view()).map(|(id, _)| id);
                prop_assert_eq!(again, Ok(id));
            }
            Err(why) => {
                prop_assert!(!why.is_empty());
                let dead = refused_task(msg.view(), &why);
                let assignee = msg.subject.split('.').nth(1).and_then(|a| Assignee::parse(a).ok());
                prop_assert_eq!(dead.is_some(), assignee.is_some(), "{}", msg.subject);
                if let Some(t) = dead {
                    prop_assert_eq!(Some(&t.assigned_to), assignee.as_ref());
                    prop_assert_eq!(t.status, TaskStatus::Failed);
                    prop_assert_eq!(t.error, Some(format!("refused: {why}")));
                    prop_assert_eq!(t.queue_seq, Some(msg.seq));
                    let kept = &msg.payload[..msg.payload.len().min(4096)];
                    let raw = String::from_utf8_lossy(kept);
                    prop_assert_eq!(t.payload["raw"].as_str(), Some(raw.as_ref()));
                    prop_assert_eq!(t.payload["subject"].as_str(), Some(msg.subject.as_str()));
                }
            }
        }
    }

    #[test]
    fn a_create_request_published_on_its_subject_reads_back_as_sent(
        new in gen::new_task(),
        seq in 1u64..u64::MAX,
        msg_id in prop::option::of(gen::task_id()),
    ) {
        let msg = published(&new, seq, msg_id.as_ref());
        let (id, read) = decode_queued(msg.view()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            serde_json::to_value(&read).expect("serializes"),
            serde_json::to_value(&new).expect("serializes")
        );
        match (&new.id, &msg_id) {
            (Some(named), _) => prop_assert_eq!(&id, named),
            (None, Some(header)) => prop_assert_eq!(&id, header),
            (None, None) => prop_assert!(TaskId::parse(id.as_str()).is_ok()),
        }
    }

    #[test]
    fn a_body_without_assignee_priority_or_kind_takes_them_from_its_subject(
        new in gen::new_task(),
        drop in vec(select(&["assigned_to", "priority", "kind"][..]), 0..3),
    ) {
        let mut body = serde_json::to_value(&new).expect("serializes");
        for field in drop {
            body.as_object_mut().expect("an object").remove(field);
        }
        let mut msg = published(&new, 7, None);
        msg.payload = serde_json::to_vec(&body).expect("serializes");
        let (_, read) = decode_queued(msg.view()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            (read.assigned_to, read.priority, read.kind),
            (new.assigned_to, new.priority, new.kind)
        );
    }

    #[test]
    fn a_body_that_disagrees_with_its_subject_is_refused(
        new in gen::new_task(),
        other in (gen::assignee(), gen::priority(), gen::kind()),
    ) {
        let ours = (new.assigned_to.clone(), new.priority, new.kind);
        prop_assume!(other != ours);
        let mut msg = published(&new, 7, None);
        msg.subject = subjects::task(&other.0, other.1, other.2, None);
        prop_assert!(decode_queued(msg.view()).is_err());
    }

    #[test]
    fn subject_names_round_trip_through_their_builders_and_parsers(
        a in gen::assignee(),
        p in gen::priority(),
        k in gen::kind(),
        id in gen::task_id(),
        e in gen::event_kind(),
        s in gen::status(),
        junk in gen::text(40),
    ) {
        prop_assert_eq!(subjects::parse_task(&subjects::task(&a, p, k, None)), Some((a.clone(), p, k)));
        prop_assert_eq!(
            subjects::parse_event(&subjects::event(&a, &id, e)),
            Some((a.clone(), id.clone(), e))
        );
        prop_assert_eq!(
            subjects::parse_index(&subjects::status_index(s, &a, &id)),
            Some((a.clone(), id.clone()))
        );
        prop_assert_eq!(Assignee::parse(a.as_str()), Ok(a));
        prop_assert_eq!(TaskId::parse(id.as_str()), Ok(id));
        prop_assert_eq!(Priority::parse(p.as_str()), Ok(p));
        prop_assert_eq!(Priority::parse(p.token()), Ok(p));
        prop_assert_eq!(TaskKind::parse(k.as_str()), Ok(k));
        prop_assert_eq!(EventKind::parse(e.as_str()), Some(e));
        prop_assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        // Anything else is read or refused without a panic.
        let _ = (subjects::parse_task(&junk), subjects::parse_event(&junk), subjects::parse_index(&junk));
        let _ = (Assignee::parse(&junk), TaskId::parse(&junk), Priority::parse(&junk), TaskKind::parse(&junk));
        let _: Result<Value, _> = serde_json::from_str(&junk);
    }
}

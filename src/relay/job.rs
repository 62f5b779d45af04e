//! What travels through the delivery queue, and what the relay records about each attempt
//! (where those records are stored: the delivery store, [`super::store`]).

use crate::domain::{timestamp, EventKind, Task, TaskEvent};
use crate::outbound::destination::Destination;
use crate::telemetry::TraceContext;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One message for one destination (a stream message on `deliveries.<key>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// Stable across retries (`webhook-id`; receivers de-duplicate on it).
    pub id: String,
    /// The destination's queue key.
    pub key: String,
    /// The configured name, when it is a named destination (resolved again at delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The destination itself for per-task ones (named ones come from the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// The task event, if this delivers one (a push has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventJson>,
    /// The task as it was when the event was fanned out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskJson>,
    /// The message for people (Live Task Pulse format, or a push's content).
    pub text: String,
    /// For pushes: the chat session to deliver to (overrides the destination's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When the job was queued.
    #[serde(serialize_with = "timestamp::serialize")]
    pub created_time: DateTime<Utc>,
}

impl DeliveryJob {
    /// The event type as webhook receivers see it: `task.completed`, …, or `push`.
    pub fn event_type(&self) -> String {
        match &self.event {
            Some(e) => format!("task.{}", e.kind.as_str()),
            None => "push".into(),
        }
    }

    /// The JSON body a webhook receives: `type`, `id`, `timestamp` and `data` (`event`,
    /// `task`, `text`), serialized straight from the job (no JSON tree in between).
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope {
            kind: self.event_type(),
            id: &self.id,
            timestamp: self.created_time,
            data: EnvelopeData {
                event: self.event.as_ref(),
                task: self.task.as_ref(),
                text: &self.text,
            },
        }
    }
}

impl DeliveryJob {
    /// About how many bytes the job takes queued (its message, task and event JSON plus a
    /// margin for the rest): what [`Parcel::bundles`] sizes bundles by, without encoding.
    pub fn approx_size(&self) -> usize {
        let raw = |j: Option<&str>| j.map_or(0, str::len);
        let task = raw(self.task.as_ref().map(|t| t.0.get()));
        let event = raw(self.event.as_ref().map(|e| e.raw.get()));
        self.text.len() + task + event + 2 * self.id.len() + 256
    }
}

/// The header of a queue message that holds a [`Bundle`] (its value: how many jobs); a message
/// without it holds one [`DeliveryJob`].
pub const BUNDLE_HEADER: &str = "Taskfleet-Bundle";

/// At most this many jobs go in one bundle.
pub const BUNDLE_JOBS: usize = 32;

/// A bundle stops growing at about this many bytes (a job larger than that goes alone).
pub const BUNDLE_BYTES: usize = 256 * 1024;

/// Several jobs of one destination, in their events' order, queued as one message: storing,
/// handing out and acknowledging it is paid once for all of them (the fan-out groups each
/// window of events this way). Each job keeps its own id, record and retries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    /// The jobs, oldest event first.
    pub jobs: Vec<DeliveryJob>,
    /// The trace each job's event belongs to, in the same order (the message's headers carry
    /// the first one's only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<TraceContext>,
    /// Some jobs may have been queued before, in another message (their events were fanned out
    /// again after the relay stopped, so the window, and with it the bundle's id, may differ):
    /// each job's record is read before it is attempted, and one already settled is skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recheck: bool,
}

/// One destination's jobs (in order) cut into runs of at most [`BUNDLE_JOBS`] jobs and about
/// [`BUNDLE_BYTES`] (a job larger than that runs alone).
fn runs<S>(jobs: Vec<(DeliveryJob, S)>) -> Vec<Vec<(DeliveryJob, S)>> {
    let mut runs: Vec<Vec<(DeliveryJob, S)>> = Vec::new();
    let mut bytes = 0;
    for (job, span) in jobs {
        let size = job.approx_size();
        match runs.last_mut() {
            Some(run) if run.len() < BUNDLE_JOBS && bytes + size <= BUNDLE_BYTES => {
                bytes += size;
                run.push((job, span));
            }
            _ => {
                bytes = size;
                runs.push(vec![(job, span)]);
            }
        }
    }
    runs
}

/// What one queue message holds: one job, or a bundle of one destination's jobs.
#[derive(Debug, Clone, PartialEq)]
pub enum Parcel {
    /// One job (a push, a replay, a throttled event, an event alone in its window).
    One(Box<DeliveryJob>),
    /// Several jobs of one destination.
    Bundle(Bundle),
}

impl Parcel {
    /// Groups `jobs` (in event order, with the span of each one's event) by destination into
    /// parcels: a destination's jobs in order, in bundles of at most [`BUNDLE_JOBS`] jobs and
    /// about [`BUNDLE_BYTES`]; a job alone stays one job unless `recheck` (see
    /// [`Bundle::recheck`]). Each parcel carries the span of its first job, and a bundle the
    /// trace of each job (`trace` reads it from the job's span).
    pub fn bundles<S>(
        jobs: Vec<(DeliveryJob, S)>,
        recheck: bool,
        trace: impl Fn(&S) -> TraceContext,
    ) -> Vec<(Parcel, S)> {
        // Destinations in the order they first appear (a window for 100 holds 6,400 jobs).
        let mut by_key: Vec<Vec<(DeliveryJob, S)>> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        for (job, span) in jobs {
            match index.get(&job.key) {
                Some(&i) => by_key[i].push((job, span)),
                None => {
                    index.insert(job.key.clone(), by_key.len());
                    by_key.push(vec![(job, span)]);
                }
            }
        }
        let mut out = Vec::new();
        for run in by_key.into_iter().flat_map(runs) {
            // Only a bundle carries its jobs' traces (a job alone has its message's headers).
            let traces = match (run.len(), recheck) {
                (1, false) => Vec::new(),
                _ => run.iter().map(|(_, s)| trace(s)).collect(),
            };
            let (jobs, spans): (Vec<DeliveryJob>, Vec<S>) = run.into_iter().unzip();
            let span = spans.into_iter().next().expect("a run holds a job");
            let bundle = Bundle {
                jobs,
                traces,
                recheck,
            };
            out.push((Self::of(bundle), span));
        }
        out
    }

    /// `bundle` (at least one job) as a parcel: one job alone unless it says to recheck.
    fn of(mut bundle: Bundle) -> Self {
        if bundle.jobs.len() == 1 && !bundle.recheck {
            Self::One(Box::new(bundle.jobs.remove(0)))
        } else {
            Self::Bundle(bundle)
        }
    }

    /// The destination queue key.
    pub fn key(&self) -> &str {
        match self {
            Self::One(job) => &job.key,
            Self::Bundle(b) => b.jobs.first().map_or("", |j| j.key.as_str()),
        }
    }

    /// The de-duplication id: the job's id, or a bundle's first and last job ids.
    pub fn msg_id(&self) -> String {
        match self {
            Self::One(job) => job.id.clone(),
            Self::Bundle(b) => {
                let id = |j: Option<&DeliveryJob>| j.map_or("", |j| j.id.as_str()).to_string();
                format!("{}..{}", id(b.jobs.first()), id(b.jobs.last()))
            }
        }
    }

    /// The message body, and the value of [`BUNDLE_HEADER`] for a bundle.
    pub fn encoded(&self) -> (Vec<u8>, Option<String>) {
        let body = match self {
            Self::One(job) => serde_json::to_vec(&**job),
            Self::Bundle(b) => serde_json::to_vec(b),
        };
        let count = match self {
            Self::One(_) => None,
            Self::Bundle(b) => Some(b.jobs.len().to_string()),
        };
        (body.expect("a delivery job serializes"), count)
    }

    /// Reads a queue message: a bundle when `bundle` (its [`BUNDLE_HEADER`] is set), else one
    /// job.
    pub fn decode(bundle: bool, body: &[u8]) -> Result<Self, serde_json::Error> {
        if bundle {
            serde_json::from_slice(body).map(Self::Bundle)
        } else {
            serde_json::from_slice(body).map(|job| Self::One(Box::new(job)))
        }
    }

    /// The jobs as a bundle (one job alone: a bundle of one that needs no recheck).
    pub fn into_bundle(self) -> Bundle {
        match self {
            Self::One(job) => Bundle {
                jobs: vec![*job],
                ..Bundle::default()
            },
            Self::Bundle(b) => b,
        }
    }

    /// Its jobs as parcels of one each (a bundle the queue refused, sent again apart; they
    /// keep the bundle's recheck and their traces).
    pub fn apart(self) -> Vec<Parcel> {
        let Bundle {
            jobs,
            mut traces,
            recheck,
        } = self.into_bundle();
        traces.resize(jobs.len(), TraceContext::new());
        let one = |(job, cx): (DeliveryJob, TraceContext)| Bundle {
            jobs: vec![job],
            traces: if cx.is_empty() { Vec::new() } else { vec![cx] },
            recheck,
        };
        jobs.into_iter()
            .zip(traces)
            .map(one)
            .map(Self::of)
            .collect()
    }
}

/// A task as the JSON it was queued with: a delivery passes it on (into the webhook body and
/// the record) without reading it, so a job costs no task decoding or encoding per delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskJson(Box<RawValue>);

impl TaskJson {
    /// The JSON of `task`.
    pub fn of(task: &Task) -> Self {
        Self(serde_json::value::to_raw_value(task).expect("a task serializes"))
    }

    /// The task's id and name, read from the JSON (`None` if it has none).
    pub fn names(&self) -> Option<TaskNames> {
        serde_json::from_str(self.0.get()).ok()
    }
}

impl PartialEq for TaskJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// A task event as the JSON it was queued with, and the two fields a delivery reads of it: the
/// rest is passed on (webhook body, record) without decoding or encoding it again.
#[derive(Debug, Clone)]
pub struct EventJson {
    raw: Box<RawValue>,
    /// The event type.
    pub kind: EventKind,
    /// The task it happened to.
    pub task_id: String,
}

/// The fields of an event's JSON that [`EventJson`] reads.
#[derive(Deserialize)]
struct EventHead {
    #[serde(rename = "type")]
    kind: EventKind,
    task_id: String,
}

impl EventJson {
    /// The JSON of `event`.
    pub fn of(event: &TaskEvent) -> Self {
        Self {
            raw: serde_json::value::to_raw_value(event).expect("an event serializes"),
            kind: event.kind,
            task_id: event.task_id.as_str().to_string(),
        }
    }

    /// The event without its data and with its message cut to 4 KiB (what a dead record keeps
    /// of a job too large to queue); unchanged if it cannot be read as an event.
    pub fn clipped(&self) -> Self {
        match serde_json::from_str::<TaskEvent>(self.raw.get()) {
            Ok(mut event) => {
                event.data = serde_json::Value::Null;
                event.message = event.message.as_deref().map(|m| clip_response(m).0);
                Self::of(&event)
            }
            Err(_) => self.clone(),
        }
    }
}

impl PartialEq for EventJson {
    fn eq(&self, other: &Self) -> bool {
        self.raw.get() == other.raw.get()
    }
}

impl Serialize for EventJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EventJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        let head: EventHead = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
        Ok(Self {
            raw,
            kind: head.kind,
            task_id: head.task_id,
        })
    }
}

/// What the sinks that name a task read of it ([`TaskJson::names`]).
#[derive(Debug, Deserialize)]
pub struct TaskNames {
    /// The task id.
    pub id: String,
    /// The task's name.
    #[serde(default)]
    pub task_name: String,
}

/// The JSON body a webhook receives ([`DeliveryJob::envelope`]).
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// `task.<event type>`, or `push`.
    #[serde(rename = "type")]
    kind: String,
    /// The delivery id (also the `webhook-id` header).
    id: &'a str,
    /// When the job was queued.
    #[serde(serialize_with = "timestamp::serialize")]
    timestamp: DateTime<Utc>,
    /// What happened.
    data: EnvelopeData<'a>,
}

/// The `data` of an [`Envelope`]: the event, the task as it was then (`null` for a push), and
/// the message for people.
#[derive(Debug, Serialize)]
struct EnvelopeData<'a> {
    event: Option<&'a EventJson>,
    task: Option<&'a TaskJson>,
    text: &'a str,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it started.
    #[serde(serialize_with = "timestamp::serialize")]
    pub time: DateTime<Utc>,
    /// HTTP status, when there was a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How long it took.
    pub duration_ms: u64,
    /// The response body (its first 4 KiB, decoded as UTF-8 with bad bytes replaced) or the
    /// error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Whether `response` was cut to [`MAX_RESPONSE_BYTES`] (stored only when it was).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// When the next attempt is due (none after the last).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "timestamp::serialize_option"
    )]
    pub next_attempt_time: Option<DateTime<Utc>>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Queued or waiting for a retry.
    Pending,
    /// The destination accepted it.
    Delivered,
    /// Given up: attempts exhausted, a permanent error, or a disabled destination.
    Dead,
}

impl DeliveryStatus {
    /// The status as its record-key token (and JSON value): `pending`, `delivered`, `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// Parses a status token.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Everything the relay knows about one delivery (KV bucket `deliveries`; where and how it is
/// stored: the delivery store, [`super::store`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The job.
    pub job: DeliveryJob,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<Attempt>,
    /// Why it is dead, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last change.
    #[serde(serialize_with = "timestamp::serialize")]
    pub updated_time: DateTime<Utc>,
}

/// Queue key of pushes (`POST /api/push`): delivered to the relay's `push_destination`.
pub const PUSH_KEY: &str = "push";

/// Largest response body kept per attempt.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Cuts a response body to [`MAX_RESPONSE_BYTES`] at a character boundary; `true` with it
/// when something was cut off.
pub fn clip_response(body: &str) -> (String, bool) {
    if body.len() <= MAX_RESPONSE_BYTES {
        return (body.to_string(), false);
    }
    let mut end = MAX_RESPONSE_BYTES;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    (body[..end].to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Assignee, NewTask, TaskId};

    /// A `step` event with `data` and `message`, and its task, as a job's JSON carries them.
    fn event_and_task(message: &str) -> (TaskEvent, Task) {
        let id = TaskId::parse("t_7").unwrap();
        let anna = Assignee::parse("anna").unwrap();
        let mut event = TaskEvent::new(&id, &anna, EventKind::Step, "bot");
        event.message = Some(message.to_string());
        event.data = serde_json::json!({"progress": 0.5});
        let new: NewTask = serde_json::from_value(
            serde_json::json!({"task_name": "Report", "assigned_to": "anna"}),
        )
        .unwrap();
        (event, Task::from_new(id, new))
    }

    #[test]
    fn a_job_read_back_passes_its_event_and_task_on_unchanged() {
        let (event, task) = event_and_task("half way");
        let job = DeliveryJob {
            id: format!("{}.n_hook", event.id),
            key: "n_hook".into(),
            name: Some("hook".into()),
            destination: None,
            event: Some(EventJson::of(&event)),
            task: Some(TaskJson::of(&task)),
            text: "…".into(),
            session_id: None,
            created_time: chrono::Utc::now(),
        };
        let bytes = serde_json::to_vec(&job).unwrap();
        let back: DeliveryJob = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, job);
        let read = back.event.as_ref().unwrap();
        assert_eq!((read.kind, read.task_id.as_str()), (EventKind::Step, "t_7"));
        let names = back.task.as_ref().unwrap().names().unwrap();
        assert_eq!(
            (names.id.as_str(), names.task_name.as_str()),
            ("t_7", "Report")
        );
        let as_json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(as_json["event"], serde_json::to_value(&event).unwrap());
        assert_eq!(as_json["task"], serde_json::to_value(&task).unwrap());
    }

    /// A job for destination `key` whose text is `text`.
    fn job_for(key: &str, text: &str) -> DeliveryJob {
        DeliveryJob {
            id: format!("evt_{text}.{key}"),
            key: key.into(),
            name: None,
            destination: None,
            event: None,
            task: None,
            text: text.into(),
            session_id: None,
            created_time: chrono::Utc::now(),
        }
    }

    /// No trace (the tests' parcels carry `()` as their span).
    fn no_trace(_: &()) -> TraceContext {
        TraceContext::new()
    }

    /// What each parcel holds: its key and its jobs' texts.
    fn shape(parcels: &[(Parcel, ())]) -> Vec<(String, Vec<String>)> {
        let texts = |p: &Parcel| p.clone().into_bundle().jobs.into_iter().map(|j| j.text);
        parcels
            .iter()
            .map(|(p, _)| (p.key().to_string(), texts(p).collect()))
            .collect()
    }

    #[test]
    fn a_window_is_bundled_per_destination_in_event_order() {
        let jobs = ["a", "b", "c", "d"]
            .iter()
            .zip(["h1", "h2", "h1", "h1"])
            .map(|(text, key)| (job_for(key, text), ()))
            .collect();

        let parcels = Parcel::bundles(jobs, false, no_trace);

        let texts = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shape(&parcels),
            [
                ("h1".to_string(), texts(&["a", "c", "d"])),
                ("h2".to_string(), texts(&["b"])),
            ]
        );
        assert!(
            matches!(parcels[1].0, Parcel::One(_)),
            "a job alone goes alone"
        );
        assert_eq!(parcels[0].0.msg_id(), "evt_a.h1..evt_d.h1");
    }

    #[test]
    fn a_bundle_holds_at_most_32_jobs_and_about_256_kib() {
        let many = (0..70)
            .map(|i| (job_for("h", &i.to_string()), ()))
            .collect();
        let sizes: Vec<usize> = Parcel::bundles(many, false, no_trace)
            .iter()
            .map(|(p, _)| p.clone().into_bundle().jobs.len())
            .collect();
        assert_eq!(sizes, [BUNDLE_JOBS, BUNDLE_JOBS, 6]);

        let big = |i: usize| {
            let mut job = job_for("h", &i.to_string());
            job.text = "x".repeat(100 * 1024);
            (job, ())
        };
        let sizes: Vec<usize> = Parcel::bundles((0..5).map(big).collect(), false, no_trace)
            .iter()
            .map(|(p, _)| p.clone().into_bundle().jobs.len())
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn a_window_handed_out_again_bundles_even_a_job_alone_to_check_its_record() {
        let parcels = Parcel::bundles(vec![(job_for("h", "a"), ())], true, no_trace);
        match &parcels[0].0 {
            Parcel::Bundle(b) => assert!(b.recheck && b.jobs.len() == 1),
            other => panic!("expected a bundle, got {other:?}"),
        }
        let apart = parcels[0].0.clone().apart();
        assert!(matches!(&apart[0], Parcel::Bundle(b) if b.recheck));
    }

    #[test]
    fn a_bundle_reads_back_as_the_jobs_it_was_queued_with() {
        let jobs = vec![(job_for("h", "a"), ()), (job_for("h", "b"), ())];
        let (parcel, _) = Parcel::bundles(jobs, false, no_trace).remove(0);
        let (body, count) = parcel.encoded();
        assert_eq!(count.as_deref(), Some("2"));
        assert_eq!(Parcel::decode(true, &body).unwrap(), parcel);
        assert!(Parcel::decode(false, &body).is_err(), "a bundle is no job");
    }

    #[test]
    fn a_job_whose_event_has_no_type_cannot_be_read() {
        let job = serde_json::json!({
            "id": "evt_1.n_hook", "key": "n_hook", "text": "",
            "created_time": "2026-12-04T00:00:00Z", "event": {"task_id": "t_7"},
        });
        let read = serde_json::from_value::<DeliveryJob>(job);
        assert!(read.unwrap_err().to_string().contains("type"));
    }

    #[test]
    fn a_clipped_event_keeps_no_data_and_at_most_4_kib_of_message() {
        let (event, _) = event_and_task(&"x".repeat(10_000));
        let clipped = EventJson::of(&event).clipped();
        let back: TaskEvent = serde_json::from_str(clipped.raw.get()).unwrap();
        assert_eq!(back.data, serde_json::Value::Null);
        assert_eq!(back.message.unwrap().len(), MAX_RESPONSE_BYTES);
        assert_eq!((back.id, back.kind), (event.id, event.kind));
    }

    #[test]
    fn a_long_body_is_cut_at_4_kib_on_a_character_boundary_and_flagged() {
        let (short, cut) = clip_response("ok");
        assert_eq!((short.as_str(), cut), ("ok", false));
        let long = "€".repeat(2000);
        let (clipped, cut) = clip_response(&long);
        assert!(cut);
        assert_eq!(clipped.len(), 4095, "1365 three-byte characters");
        assert!(long.starts_with(&clipped));
    }

    #[test]
    fn an_attempt_stores_the_truncated_flag_only_when_set() {
        let a = Attempt {
            time: chrono::Utc::now(),
            status: Some(500),
            duration_ms: 3,
            response: Some("x".into()),
            truncated: false,
            next_attempt_time: None,
        };
        let plain = serde_json::to_value(&a).unwrap();
        assert!(plain.get("truncated").is_none(), "{plain}");
        let cut = serde_json::to_value(Attempt {
            truncated: true,
            ..a
        })
        .unwrap();
        assert_eq!(cut["truncated"], true);
        let back: Attempt = serde_json::from_value(plain).unwrap();
        assert!(!back.truncated);
    }
}

//! What the suite reads to judge a run: JetStream API answers (stream subjects and their counts,
//! leaders, consumers), the ledger's event trail per task, the tasks running under a worker, and
//! the side-effect file exec tasks append to.

use super::fleet::{holder_pid, Http};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A JetStream API request (`$JS.API.…`) answered as JSON; an `error` in the answer is an `Err`.
pub async fn js(nc: &async_nats::Client, subject: &str, body: Value) -> anyhow::Result<Value> {
    js_within(nc, subject, body, Duration::from_secs(5)).await
}

/// [`js`] with its own time limit.
pub async fn js_within(
    nc: &async_nats::Client,
    subject: &str,
    body: Value,
    limit: Duration,
) -> anyhow::Result<Value> {
    let req = nc.request(subject.to_string(), body.to_string().into());
    let msg = tokio::time::timeout(limit, req)
        .await
        .with_context(|| format!("{subject}: no answer within {limit:?}"))??;
    let v: Value = serde_json::from_slice(&msg.payload)?;
    if !v["error"].is_null() {
        bail!("{subject}: {}", v["error"]);
    }
    Ok(v)
}

/// Every subject of `stream` matching `filter`, with its message count.
pub async fn subjects(
    nc: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    loop {
        let body = json!({"subjects_filter": filter, "offset": out.len()});
        let v = js(nc, &format!("$JS.API.STREAM.INFO.{stream}"), body).await?;
        let page = v["state"]["subjects"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let before = out.len();
        for (s, n) in page {
            out.insert(s, n.as_u64().unwrap_or(0));
        }
        let total = v["total"].as_u64().unwrap_or(0) as usize;
        if out.len() >= total || out.len() == before {
            return Ok(out);
        }
    }
}

/// How many messages of `stream` match `filter`.
pub async fn count(nc: &async_nats::Client, stream: &str, filter: &str) -> anyhow::Result<u64> {
    Ok(subjects(nc, stream, filter).await?.values().sum())
}

/// Ids of the tasks of `assignee` with at least one event of type `kind` in the ledger.
pub async fn tasks_with(
    nc: &async_nats::Client,
    assignee: &str,
    kind: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let filter = format!("events.{assignee}.*.{kind}");
    let subjects = subjects(nc, "EVENTS", &filter).await?;
    Ok(subjects
        .keys()
        .filter_map(|s| s.split('.').nth(2).map(str::to_string))
        .collect())
}

/// One task's event trail in the ledger: how many events of each type.
pub type Trail = BTreeMap<String, u64>;

/// The event trail of every task of `assignee`.
pub async fn trails(
    nc: &async_nats::Client,
    assignee: &str,
) -> anyhow::Result<HashMap<String, Trail>> {
    let subjects = subjects(nc, "EVENTS", &format!("events.{assignee}.*.*")).await?;
    let mut out: HashMap<String, Trail> = HashMap::new();
    for (s, n) in subjects {
        let mut parts = s.split('.').skip(2);
        if let (Some(id), Some(kind)) = (parts.next(), parts.next()) {
            *out.entry(id.into())
                .or_default()
                .entry(kind.into())
                .or_default() += n;
        }
    }
    Ok(out)
}

/// The server name leading `stream`, if it has a leader now (asked with a 1 s limit, so polls
/// during an election see the new leader within about a second).
pub async fn stream_leader(
    nc: &async_nats::Client,
    stream: &str,
) -> anyhow::Result<Option<String>> {
    let subject = format!("$JS.API.STREAM.INFO.{stream}");
    let v = js_within(nc, &subject, json!({}), Duration::from_secs(1)).await?;
    Ok(v["cluster"]["leader"].as_str().map(str::to_string))
}

/// A consumer's `num_ack_pending` (delivered, not yet acknowledged) and `num_pending`.
pub async fn consumer_pending(
    nc: &async_nats::Client,
    stream: &str,
    consumer: &str,
) -> anyhow::Result<(u64, u64)> {
    let v = js(
        nc,
        &format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
        json!({}),
    )
    .await?;
    Ok((
        v["num_ack_pending"].as_u64().unwrap_or(0),
        v["num_pending"].as_u64().unwrap_or(0),
    ))
}

/// Ids of the running tasks of `assignee`, with the pid of each one's lease holder.
pub async fn running(http: &Http, assignee: &str) -> anyhow::Result<Vec<(String, Option<u32>)>> {
    let path = format!("/api/tasks?assigned_to={assignee}&status=running&limit=1000");
    let list = http.get_ok(&path).await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["status"] == "running")
        .map(|t| {
            let holder = t["lease"]["holder"].as_str().unwrap_or_default();
            (
                t["id"].as_str().unwrap_or_default().to_string(),
                holder_pid(holder),
            )
        })
        .collect())
}

/// Every task of `assignee` the API lists (all pages, newest first).
pub async fn all_tasks(http: &Http, assignee: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut before = String::new();
    loop {
        let path = format!("/api/tasks?assigned_to={assignee}&limit=1000{before}");
        let (status, next, body) = http.call_paged(&path).await?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        out.extend(body.as_array().cloned().unwrap_or_default());
        match next {
            Some(cursor) => before = format!("&before={cursor}"),
            None => return Ok(out),
        }
    }
}

/// A file exec tasks append their task id to, one line per run (O_APPEND, so concurrent runs
/// never tear a line): how often each task's command really ran.
pub struct RunLog {
    path: PathBuf,
}

impl RunLog {
    /// A run log at `dir/runs.txt`.
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("runs.txt"),
        }
    }

    /// The shell command of an exec task: record the run, then sleep `secs` (0: none).
    pub fn command(&self, secs: f64) -> String {
        let record = format!("echo \"$TASKFLEET_TASK_ID\" >> '{}'", self.path.display());
        if secs > 0.0 {
            format!("{record}; sleep {secs}")
        } else {
            record
        }
    }

    /// Runs per task id.
    pub fn counts(&self) -> HashMap<String, u64> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut out = HashMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            *out.entry(line.to_string()).or_default() += 1;
        }
        out
    }
}

/// Now, in unix nanoseconds (to compare with the times JetStream stored messages at).
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Which clock an event's time is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// When the stream stored it.
    Stored,
    /// The record's own `time`, stamped by its writer before sending it: a write sent before a
    /// fault and stored after it (its answer lost, sent again once a leader was back) was in
    /// flight at the fault.
    Stamped,
}

/// When each event of type `kind` of `assignee` happened by `clock` (unix ns), per task, read
/// from the ledger in batches.
pub async fn event_times(
    nc: &async_nats::Client,
    assignee: &str,
    kind: &str,
    clock: Clock,
) -> anyhow::Result<HashMap<String, Vec<i128>>> {
    let filter = format!("events.{assignee}.*.{kind}");
    let mut out: HashMap<String, Vec<i128>> = HashMap::new();
    let mut start = 1;
    loop {
        let msgs = taskfleet::bus::direct::batch(nc, "EVENTS", &filter, start, 1000).await?;
        let Some(last) = msgs.last().map(|m| m.sequence) else {
            return Ok(out);
        };
        for m in msgs {
            let stamped = || {
                let record: Value = serde_json::from_slice(&m.payload).ok()?;
                let time = chrono::DateTime::parse_from_rfc3339(record["time"].as_str()?).ok()?;
                time.timestamp_nanos_opt().map(i128::from)
            };
            let at = match clock {
                Clock::Stored => Some(m.time.unix_timestamp_nanos()),
                Clock::Stamped => stamped(),
            };
            if let (Some(id), Some(at)) = (m.subject.split('.').nth(2), at) {
                out.entry(id.to_string()).or_default().push(at);
            }
        }
        start = last + 1;
    }
}

/// The tasks of `assignee` running at `t` (unix ns) as the ledger tells it: a `started` sent at
/// or before `t` (its writer's stamp: a claim whose answer the fault lost is stored later), and
/// no `completed` or `failed` stored at or before it.
pub async fn running_at(
    nc: &async_nats::Client,
    assignee: &str,
    t: i128,
) -> anyhow::Result<BTreeSet<String>> {
    let started = event_times(nc, assignee, "started", Clock::Stamped).await?;
    let mut ended = event_times(nc, assignee, "completed", Clock::Stored).await?;
    for (id, times) in event_times(nc, assignee, "failed", Clock::Stored).await? {
        ended.entry(id).or_default().extend(times);
    }
    Ok(started
        .into_iter()
        .filter(|(id, s)| {
            s.iter().any(|&x| x <= t) && !ended.get(id).is_some_and(|e| e.iter().any(|&x| x <= t))
        })
        .map(|(id, _)| id)
        .collect())
}

/// The tasks of `assignee` with a `started` stored in `[t0, t1]` (unix ns).
pub async fn started_between(
    nc: &async_nats::Client,
    assignee: &str,
    (t0, t1): (i128, i128),
) -> anyhow::Result<BTreeSet<String>> {
    let started = event_times(nc, assignee, "started", Clock::Stored).await?;
    Ok(started
        .into_iter()
        .filter(|(_, s)| s.iter().any(|&x| (t0..=t1).contains(&x)))
        .map(|(id, _)| id)
        .collect())
}

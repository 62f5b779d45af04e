//! Scenario 5b: a queue message whose `Nats-Msg-Id` header value is not UTF-8
//! (`Nats-Msg-Id: \xff\xfe`), published with a raw `HPUB` to a worker subject and to a manual
//! subject, with a valid body. Afterwards it must have left the worker queue (run, or
//! dead-lettered), the valid tasks published after it must run on every priority, and the
//! pending listing (which reads the manual subject) must answer without a 5xx.
//!
//! async-nats drops the connection that receives such a message; before c0e4098 that stopped the
//! queue (the message stuck, the pending listing 503). Every fault here is reported as caused by
//! the header.

use super::fleet::{Fleet, Nats};
use super::junk::publish;
use super::load::{progress, wait_count};
use super::observe::{count, tasks_with};
use super::rawnats;
use super::report::Outcome;
use super::worker_kill::WORKER_ENV;
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The assignee of this scenario.
const A: &str = "chaos5u";

/// Prefix of every fault here, so the report tells them apart.
const WHY: &str = "[Nats-Msg-Id not UTF-8]";

/// Runs the scenario in `dir`.
pub async fn run(dir: &Path, out: &mut Outcome) -> anyhow::Result<()> {
    let mut f = Fleet::single(dir).await?;
    f.spawn_worker(A, 4, &WORKER_ENV).await?;
    let Nats::Single(node) = &f.nats else {
        anyhow::bail!("5b runs on a single server")
    };
    let port = node.port;
    let body = br#"{"task_name": "header not utf-8"}"#;
    // Two different ids: JetStream would drop the second as a duplicate of the first.
    let sends: [(String, &[u8]); 2] = [
        (format!("tasks.{A}.p1.noop"), b"Nats-Msg-Id: \xff\xfe"),
        (format!("tasks.{A}.p1"), b"Nats-Msg-Id: \xfe\xff"),
    ];
    for (subject, header) in sends {
        match rawnats::hpub(port, &subject, &[header], body).await {
            Ok(ack) => out.figure(
                &format!("raw HPUB to {subject}"),
                format!("JetStream ack {ack}"),
            ),
            Err(e) => out.fault(format!("{WHY} raw HPUB to {subject} failed: {e:#}")),
        }
    }
    let published = Instant::now();
    let valid = publish_valid(&f).await?;
    let nc = f.nc.clone();
    let probe = || async {
        Ok(tasks_with(&nc, A, "completed")
            .await?
            .intersection(&valid)
            .count())
    };
    match wait_count(
        "valid tasks published after the bad header to finish",
        valid.len(),
        Duration::from_secs(45),
        probe,
    )
    .await
    {
        Ok(_) => out.recovered(
            "bad header published → every valid task after it finished",
            published.elapsed(),
        ),
        Err(e) => out.fault(format!("{WHY} {e:#}")),
    }
    let done = tasks_with(&f.nc, A, "completed").await?;
    out.lost = valid.difference(&done).count();
    left_the_queue(&f, &done, &valid, out).await?;
    pending_listing(&f, out).await;
    disconnects(&mut f, out);
    Ok(())
}

/// A noop task on each priority, published with async-nats after the bad message.
async fn publish_valid(f: &Fleet) -> anyhow::Result<BTreeSet<String>> {
    let js = async_nats::jetstream::new(f.nc.clone());
    let mut ids = BTreeSet::new();
    for p in ["p0", "p1", "p2"] {
        let id = format!("valid-u-{p}");
        let body = json!({"task_name": format!("valid {p} after the bad header")}).to_string();
        publish(&js, &format!("tasks.{A}.{p}.noop"), &id, body.into_bytes())
            .await
            .map_err(anyhow::Error::msg)?;
        ids.insert(id);
    }
    progress(format!(
        "published {} valid noop tasks after the bad header",
        ids.len()
    ));
    Ok(ids)
}

/// The bad message left the worker queue within 30 s: it ran (a task beyond the valid ones
/// completed) or is a dead letter.
async fn left_the_queue(
    f: &Fleet,
    done: &BTreeSet<String>,
    valid: &BTreeSet<String>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let nc = f.nc.clone();
    let filter = format!("tasks.{A}.*.*");
    let gone = || async { Ok(usize::from(count(&nc, "TASKS", &filter).await? == 0)) };
    let drained = wait_count(
        "the bad message to leave the worker queue",
        1,
        Duration::from_secs(30),
        gone,
    )
    .await
    .is_ok();
    let ran = done.difference(valid).count();
    let dead = f
        .http
        .get_ok(&format!("/api/dead-letters?assigned_to={A}&limit=100"))
        .await;
    let dead = dead.map(|d| d.as_array().map_or(0, Vec::len));
    out.figure(
        "the bad message on the worker subject",
        format!("left the queue: {drained}; ran as a task: {ran}; dead letters: {dead:?}"),
    );
    if !drained {
        out.fault(format!("{WHY} the message is stuck on tasks.{A}.p1.noop: still in TASKS 30 s after the valid tasks"));
    }
    if drained && ran == 0 && !matches!(dead, Ok(n) if n > 0) {
        out.fault(format!(
            "{WHY} the message left the queue but neither ran nor is a dead letter"
        ));
    }
    Ok(())
}

/// `GET /pending` reads the manual subject that holds the bad message: no 5xx.
async fn pending_listing(f: &Fleet, out: &mut Outcome) {
    let path = format!("/api/tasks/pending?assigned_to={A}");
    let answer = f.http.call(f.http.req(Method::GET, &path)).await;
    let text = match &answer {
        Ok((s, b)) => format!(
            "{s} {}",
            b.to_string().chars().take(160).collect::<String>()
        ),
        Err(e) => format!("no answer: {e}"),
    };
    out.figure(
        "GET /pending with the bad message on the manual subject",
        &text,
    );
    if !matches!(answer, Ok((s, _)) if s < 500) {
        out.fault(format!("{WHY} GET {path} → {text}"));
    }
}

/// Connection losses the worker and the API logged (async-nats's `event: disconnected`). Since
/// the fix of c0e4098 queue reads go over a second connection that drops on such a message by
/// design, so they are a figure, not a fault; a process that died is one.
fn disconnects(f: &mut Fleet, out: &mut Outcome) {
    let count = |log: String| {
        log.lines()
            .filter(|l| l.contains("event: disconnected"))
            .count()
    };
    let worker = f.workers.first().map_or(0, |w| count(w.log()));
    let api = f.api.as_ref().map_or(0, |a| count(a.log()));
    out.figure(
        "NATS connections dropped (logged `event: disconnected`)",
        format!("worker {worker}, API {api}"),
    );
    if !f.workers.first_mut().is_some_and(|w| w.alive()) || !f.api_alive() {
        out.fault(format!("{WHY} a process died"));
    }
}

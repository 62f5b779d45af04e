//! Judging a run of exec tasks: every task that was created finished exactly once (as the API
//! shows it and as the ledger records it), and every command that ran twice belongs to a task
//! that was in flight at a fault.

use super::fleet::Fleet;
use super::load::Create;
use super::observe::{self, RunLog};
use super::report::Outcome;
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The task ids the creates got; a key that never got a 2xx is a fault (the client gave up),
/// and a key that named two ids is one.
pub fn created_ids(creates: &[Create], out: &mut Outcome) -> Vec<String> {
    let mut ids = Vec::new();
    for c in creates {
        match &c.id {
            Some(id) => ids.push(id.clone()),
            None => out.fault(format!(
                "create with key {} got no 2xx (answers {:?}, last {})",
                c.key,
                c.answers,
                c.refusal.as_deref().unwrap_or("-")
            )),
        }
        if let Some(other) = &c.other_id {
            out.fault(format!(
                "idempotency key {} answered two task ids: {:?} and {other}",
                c.key, c.id
            ));
        }
        if let Some((status, id)) = &c.repeat {
            if *status != 200 || id != &c.id {
                out.fault(format!(
                    "repeating key {} answered {status} with {id:?} (wanted 200 with {:?})",
                    c.key, c.id
                ));
            }
        }
    }
    ids
}

/// The status of each task as `GET /api/tasks/{id}` answers it (`"HTTP <n>"` for an error).
pub async fn api_statuses(f: &Fleet, ids: &[String]) -> HashMap<String, String> {
    let http = f.http.clone();
    futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let http = http.clone();
            async move {
                let r = http.call(http.req(reqwest::Method::GET, &format!("/api/tasks/{id}")));
                let status = match r.await {
                    Ok((200, t)) => t["status"].as_str().unwrap_or("?").to_string(),
                    Ok((s, _)) => format!("HTTP {s}"),
                    Err(e) => format!("no answer: {e}"),
                };
                (id, status)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Sets `lost` and `duplicates` of exec tasks `ids` of `assignee` whose commands wrote `runs`,
/// and reports faults: a task not completed, completed twice, completed without its command
/// running, or run twice without having been in flight at a fault (`in_flight`).
pub async fn exec_tasks(
    f: &Fleet,
    assignee: &str,
    ids: &[String],
    runs: &RunLog,
    in_flight: &BTreeSet<String>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let statuses = api_statuses(f, ids).await;
    let trails = observe::trails(&f.nc, assignee).await?;
    let ran = runs.counts();
    let mut not_done: Vec<String> = Vec::new();
    let (mut dups, mut stray, mut retried_outside) = (0u64, Vec::new(), 0usize);
    for id in ids {
        let status = statuses.get(id).map_or("?", String::as_str);
        let trail = trails.get(id).cloned().unwrap_or_default();
        let completed = trail.get("completed").copied().unwrap_or(0);
        let n = ran.get(id).copied().unwrap_or(0);
        if status != "completed" || completed != 1 || n == 0 {
            not_done.push(format!(
                "{id}: API says {status}, {completed} completed events, ran {n}×"
            ));
        }
        dups += n.saturating_sub(1);
        if n > 1 && !in_flight.contains(id) {
            stray.push(format!("{id} ran {n}×"));
        }
        if trail.get("started").copied().unwrap_or(0) > 1 && !in_flight.contains(id) {
            retried_outside += 1;
        }
    }
    out.lost += not_done.len();
    out.duplicates += dups as usize;
    if !not_done.is_empty() {
        out.fault(format!(
            "{} task(s) not completed exactly once, e.g. {:?}",
            not_done.len(),
            &not_done[..not_done.len().min(5)]
        ));
    }
    if !stray.is_empty() {
        out.fault(format!(
            "{} task(s) ran twice without being in flight at a fault: {:?}",
            stray.len(),
            &stray[..stray.len().min(5)]
        ));
    }
    let unknown: Vec<&String> = ran.keys().filter(|k| !ids.contains(k)).collect();
    if !unknown.is_empty() {
        out.fault(format!(
            "{} task(s) ran whose create got no 2xx: {unknown:?}",
            unknown.len()
        ));
    }
    out.figure(
        "tasks started more than once outside the in-flight set (takeovers without a second run)",
        retried_outside,
    );
    Ok(())
}

/// Waits in the background until every task of `ids` has a `completed` (or `failed`) event,
/// and resolves to how long that took from `since`.
pub fn watch_finished(
    nc: async_nats::Client,
    assignee: String,
    ids: BTreeSet<String>,
    since: Instant,
    limit: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<Duration>> {
    tokio::spawn(async move {
        loop {
            let done = observe::tasks_with(&nc, &assignee, "completed").await;
            let failed = observe::tasks_with(&nc, &assignee, "failed").await;
            if let (Ok(done), Ok(failed)) = (done, failed) {
                if ids
                    .iter()
                    .all(|id| done.contains(id) || failed.contains(id))
                {
                    return Ok(since.elapsed());
                }
            }
            if since.elapsed() > limit {
                anyhow::bail!(
                    "the {} task(s) in flight were not finished {limit:?} after the fault",
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Every key that got a 2xx names a task that exists exactly once among the tasks the API lists
/// for `assignee`, and the API lists no task outside the created ones.
pub async fn once_per_key(
    f: &Fleet,
    assignee: &str,
    creates: &[Create],
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let listed = super::observe::all_tasks(&f.http, assignee).await?;
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for t in &listed {
        let key = t["idempotency_key"]
            .as_str()
            .unwrap_or("(none)")
            .to_string();
        by_key
            .entry(key)
            .or_default()
            .push(t["id"].as_str().unwrap_or_default().to_string());
    }
    let mut twice = Vec::new();
    let mut missing = Vec::new();
    for c in creates {
        let Some(id) = &c.id else {
            if let Some(ids) = by_key.get(&c.key) {
                let log = task_log(f, &ids[0]).await;
                out.fault(format!("create with key {} answered {:?}, yet the task exists: {ids:?}, its log: {log} (a client that believes the answer never learns its id)", c.key, c.answers));
            }
            continue;
        };
        match by_key.get(&c.key).map(Vec::as_slice) {
            Some([only]) if only == id => {}
            Some([]) | None => missing.push(format!("{} ({id})", c.key)),
            Some(ids) => twice.push(format!("{} → {ids:?} (answered {id})", c.key)),
        }
    }
    let keys: BTreeSet<&str> = creates.iter().map(|c| c.key.as_str()).collect();
    let strays = by_key.keys().filter(|k| !keys.contains(k.as_str())).count();
    out.figure(
        "tasks listed by the API",
        format!("{} for {} keys", listed.len(), creates.len()),
    );
    if !twice.is_empty() {
        out.fault(format!(
            "{} idempotency key(s) with more than one task, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        ));
    }
    if !missing.is_empty() {
        out.fault(format!(
            "{} create(s) answered 2xx but the task is not listed, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if strays > 0 {
        out.fault(format!("{strays} listed task(s) under a key nobody sent"));
    }
    Ok(())
}

/// A task's log in short: `create by api, start by chaos6@host-12-ab, complete by …`.
async fn task_log(f: &Fleet, id: &str) -> String {
    let r = f.http.call(
        f.http
            .req(reqwest::Method::GET, &format!("/api/tasks/{id}/logs")),
    );
    let Ok((200, logs)) = r.await else {
        return "(unreadable)".into();
    };
    let entries: Vec<String> = logs
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let (action, by) = (
                l["action"].as_str().unwrap_or("?"),
                l["operator"].as_str().unwrap_or("?"),
            );
            format!(
                "{action} by {by} at {}",
                l["created_time"].as_str().unwrap_or("?")
            )
        })
        .collect();
    entries.join(", ")
}

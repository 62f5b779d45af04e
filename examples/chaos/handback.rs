//! Scenario 3: SIGTERM hand-back. A worker running eight 5 s tasks gets SIGTERM; after its
//! 1 s grace it hands them back (`retried` "handed back", a `Nak` so JetStream redelivers at
//! once, a ring on `wake.<assignee>`), and a second, idle worker finishes them. The lease is the
//! default 30 s, so only a hand-back brings them back this fast.

use super::fleet::{holder_pid, Fleet};
use super::load::{exec_bodies, progress, wait_count, Creator, CreatorOptions};
use super::observe::{running, RunLog};
use super::report::Outcome;
use super::verify::{created_ids, exec_tasks, watch_finished};
use reqwest::Method;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The assignee of this scenario.
const A: &str = "chaos3";

/// Tasks the stopping worker runs at once.
const SLOTS: usize = 8;

/// Worker timings: the default 30 s lease, 1 s to finish before the hand-back.
const ENV: [(&str, &str); 4] = [
    ("TASKFLEET_WORKER__ACK_WAIT_S", "30"),
    ("TASKFLEET_WORKER__IDLE_POLL_MS", "200"),
    ("TASKFLEET_WORKER__KILL_GRACE_S", "1"),
    ("TASKFLEET_WORKER__SHUTDOWN_GRACE_S", "1"),
];

/// Runs the scenario in `dir`.
pub async fn run(dir: &Path, out: &mut Outcome) -> anyhow::Result<()> {
    let mut f = Fleet::single(dir).await?;
    f.spawn_worker(A, SLOTS, &ENV).await?;
    let runs = RunLog::new(dir);
    let (ids, in_flight) = fill_first_worker(&f, &runs, out).await?;
    let pid = f.workers[0].pid();
    let other = f.spawn_worker(A, SLOTS, &ENV).await?;
    let other_pid = f.workers[other].pid();
    f.workers[0].term()?;
    let asked = Instant::now();
    progress(format!(
        "SIGTERM to worker pid {pid} running {} tasks; worker pid {other_pid} idle",
        in_flight.len()
    ));
    let limit = Duration::from_secs(60);
    let finished = watch_finished(f.nc.clone(), A.into(), in_flight.clone(), asked, limit);
    let restarted = restarted_elsewhere(&f.nc, &in_flight, asked).await;
    match f.workers[0].wait_exit(Duration::from_secs(20)).await {
        Some(status) => {
            let secs = asked.elapsed().as_secs_f64();
            out.figure(
                "the stopped worker exited",
                format!("{secs:.1} s after SIGTERM, {status}"),
            );
        }
        None => out.fault(format!("worker pid {pid} still runs 20 s after SIGTERM")),
    }
    match restarted {
        Ok(took) => out.recovered(
            "SIGTERM → every handed-back task started again on the other worker",
            took,
        ),
        Err(e) => out.fault(format!("{e:#}")),
    }
    let took = finished.await??;
    out.recovered("SIGTERM → every handed-back task finished", took);
    if took >= Duration::from_secs(25) {
        out.fault(format!("the tasks came back only after {took:?}: that is the 30 s lease running out, not a hand-back"));
    }
    out.in_flight = format!("{} running on the stopped worker", in_flight.len());
    handed_back(&f, &in_flight, pid, other_pid, out).await;
    exec_tasks(&f, A, &ids, &runs, &in_flight, out).await
}

/// Creates one 5 s task per slot of the first worker and waits until it runs them all; returns
/// the created ids and the running ones.
async fn fill_first_worker(
    f: &Fleet,
    runs: &RunLog,
    out: &mut Outcome,
) -> anyhow::Result<(Vec<String>, BTreeSet<String>)> {
    let opts = CreatorOptions {
        parallel: 4,
        give_up: Duration::from_secs(30),
        repeat_every: None,
        pace: Duration::ZERO,
    };
    let bodies = exec_bodies(A, SLOTS, &runs.command(5.0), "s3");
    let creates = Creator::spawn(f.http.clone(), bodies, opts)
        .finish()
        .await?;
    let ids = created_ids(&creates, out);
    let pid = f.workers[0].pid();
    let held = || async {
        let list = running(&f.http, A).await?;
        Ok(list.iter().filter(|(_, h)| *h == Some(pid)).count())
    };
    let what = "the first worker to run all its slots";
    wait_count(what, SLOTS, Duration::from_secs(30), held).await?;
    let list = running(&f.http, A).await?;
    Ok((ids, list.into_iter().map(|(id, _)| id).collect()))
}

/// Waits until every task in `ids` has a second `started` event; how long after `since`.
async fn restarted_elsewhere(
    nc: &async_nats::Client,
    ids: &BTreeSet<String>,
    since: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let trails = super::observe::trails(nc, A).await?;
        let again = ids
            .iter()
            .filter(|id| {
                trails
                    .get(*id)
                    .and_then(|t| t.get("started"))
                    .copied()
                    .unwrap_or(0)
                    >= 2
            })
            .count();
        if again == ids.len() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(40) {
            anyhow::bail!(
                "only {again} of {} handed-back tasks started again 40 s after SIGTERM",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each task's log shows the hand-back (`retry` … "handed back") and its completion by the
/// other worker.
async fn handed_back(
    f: &Fleet,
    ids: &BTreeSet<String>,
    stopped: u32,
    other: u32,
    out: &mut Outcome,
) {
    let mut bad = Vec::new();
    for id in ids {
        let logs = f
            .http
            .call(f.http.req(Method::GET, &format!("/api/tasks/{id}/logs")))
            .await;
        let logs = logs.map(|(_, v)| v).unwrap_or_default();
        let entries = logs.as_array().cloned().unwrap_or_default();
        let back = entries.iter().any(|l| {
            l["action"] == "retry" && l["message"].as_str().unwrap_or("").contains("handed back")
        });
        let by = entries
            .iter()
            .rev()
            .find(|l| l["action"] == "complete")
            .and_then(|l| l["operator"].as_str())
            .and_then(holder_pid);
        if !back || by != Some(other) {
            bad.push(format!("{id}: handed back {back}, completed by pid {by:?}"));
        }
    }
    out.figure(
        "tasks handed back and completed by the other worker",
        format!(
            "{} of {} (stopped pid {stopped}, other pid {other})",
            ids.len() - bad.len(),
            ids.len()
        ),
    );
    if !bad.is_empty() {
        out.fault(format!("hand-back not as expected: {bad:?}"));
    }
}

//! Scenario 2: `kill -9` of nats-server under load, and a restart on the same port and store,
//! while a client keeps creating tasks over HTTP with idempotency keys (each key sent again
//! until it gets a 2xx; every tenth key once more after its 2xx). Every create that got a 2xx
//! must exist exactly once afterwards, and every task must run.

use super::fleet::{Fleet, Nats};
use super::load::{
    answer_counts, answers_text, exec_bodies, progress, wait_count, Creator, CreatorOptions,
};
use super::observe::{now_ns, running_at, tasks_with, RunLog};
use super::report::Outcome;
use super::verify::{created_ids, exec_tasks, once_per_key};
use super::worker_kill::WORKER_ENV;
use super::Scale;
use std::path::Path;
use std::time::{Duration, Instant};

/// The assignee of this scenario.
const A: &str = "chaos2";

/// How long nats-server stays down.
const DOWN: Duration = Duration::from_secs(2);

/// Runs the scenario in `dir`.
pub async fn run(dir: &Path, scale: Scale, out: &mut Outcome) -> anyhow::Result<()> {
    let n = scale.of(3000);
    let mut f = Fleet::single(dir).await?;
    let runs = RunLog::new(dir);
    let creator = start_load(&mut f, &runs, n).await?;
    let c = &creator;
    wait_count(
        "creates answered 2xx before the kill",
        n / 3,
        Duration::from_secs(120),
        || async { Ok(c.created()) },
    )
    .await?;
    let (killed, restarted, kill_ns) = kill_and_restart(&mut f).await?;
    out.recovered(
        &format!("kill -9 → nats-server accepts JetStream again (down {DOWN:?} on purpose)"),
        restarted - killed,
    );
    let at_restart = creator.created();
    let first = wait_count(
        "the first create answered 2xx after the restart",
        at_restart + 1,
        Duration::from_secs(60),
        || async { Ok(c.created()) },
    )
    .await?;
    out.recovered("restart → first create answered 2xx", first);
    let creates = creator.finish().await?;
    out.figure(
        "create answers (status×count; no-answer = refused or timed out, then sent again)",
        answers_text(&answer_counts(&creates)),
    );
    let ids = created_ids(&creates, out);
    let nc = f.nc.clone();
    let what = format!("{} tasks to finish", ids.len());
    wait_count(&what, ids.len(), Duration::from_secs(180), || async {
        Ok(tasks_with(&nc, A, "completed").await?.len())
    })
    .await?;
    out.recovered("kill -9 → every task finished", killed.elapsed());
    let in_flight = running_at(&f.nc, A, kill_ns).await?;
    out.in_flight = format!("{} running at the kill (from the ledger)", in_flight.len());
    let what = format!(
        "{} created over HTTP with idempotency keys, 2 workers × 8",
        ids.len()
    );
    out.figure("tasks", what);
    exec_tasks(&f, A, &ids, &runs, &in_flight, out).await?;
    once_per_key(&f, A, &creates, out).await
}

/// Two workers (8 slots each, 5 s leases) and a client creating `n` exec tasks at a steady
/// pace, every tenth key sent twice.
async fn start_load(f: &mut Fleet, runs: &RunLog, n: usize) -> anyhow::Result<Creator> {
    for _ in 0..2 {
        f.spawn_worker(A, 8, &WORKER_ENV).await?;
    }
    let opts = CreatorOptions {
        parallel: 8,
        give_up: Duration::from_secs(90),
        repeat_every: Some(10),
        pace: Duration::from_millis(10),
    };
    let bodies = exec_bodies(A, n, &runs.command(0.05), "s2");
    Ok(Creator::spawn(f.http.clone(), bodies, opts))
}

/// `kill -9` of the nats-server, [`DOWN`] of nothing, then the same binary on the same port and
/// store. Returns when it was killed, when it accepted JetStream again, and the kill in unix ns.
async fn kill_and_restart(f: &mut Fleet) -> anyhow::Result<(Instant, Instant, i128)> {
    let Nats::Single(node) = &mut f.nats else {
        anyhow::bail!("scenario 2 runs on a single server");
    };
    let pid = node.pid().unwrap_or_default();
    node.kill9();
    let (killed, kill_ns) = (Instant::now(), now_ns());
    progress(format!(
        "kill -9 of nats-server pid {pid}; restarting it in {DOWN:?} on port {}",
        node.port
    ));
    tokio::time::sleep(DOWN).await;
    node.start().await?;
    progress(format!(
        "nats-server back as pid {}",
        node.pid().unwrap_or_default()
    ));
    Ok((killed, Instant::now(), kill_ns))
}

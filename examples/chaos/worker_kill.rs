//! Scenario 1: `kill -9` of a worker, twice, while 2,000 exec tasks run on two worker processes.
//! Each killed worker is started again at once; its tasks come back after `ack_wait` and run on
//! the other one (or its successor).

use super::fleet::Fleet;
use super::load::{exec_bodies, wait_count, Creator, CreatorOptions};
use super::observe::{running, tasks_with, RunLog};
use super::report::Outcome;
use super::verify::{created_ids, exec_tasks, watch_finished};
use super::Scale;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The assignee of this scenario.
const A: &str = "chaos1";

/// Worker timings of the suite: a 5 s lease (`ack_wait`), so a killed worker's tasks come back
/// after 5 s instead of the default 30.
pub const WORKER_ENV: [(&str, &str); 4] = [
    ("TASKFLEET_WORKER__ACK_WAIT_S", "5"),
    ("TASKFLEET_WORKER__IDLE_POLL_MS", "200"),
    ("TASKFLEET_WORKER__KILL_GRACE_S", "1"),
    ("TASKFLEET_WORKER__SHUTDOWN_GRACE_S", "2"),
];

/// One kill: when, what the killed worker held, and the wait for those tasks to finish.
struct Kill {
    pid: u32,
    in_flight: BTreeSet<String>,
    finished: tokio::task::JoinHandle<anyhow::Result<Duration>>,
}

/// Runs the scenario in `dir`.
pub async fn run(dir: &Path, scale: Scale, out: &mut Outcome) -> anyhow::Result<()> {
    let n = scale.of(2000);
    let mut f = Fleet::single(dir).await?;
    for _ in 0..2 {
        f.spawn_worker(A, 8, &WORKER_ENV).await?;
    }
    let runs = RunLog::new(dir);
    let bodies = exec_bodies(A, n, &runs.command(0.1), "s1");
    let opts = CreatorOptions {
        parallel: 8,
        give_up: Duration::from_secs(60),
        repeat_every: None,
        pace: Duration::ZERO,
    };
    let creator = Creator::spawn(f.http.clone(), bodies, opts);
    let mut kills = Vec::new();
    for round in 1..=2 {
        let at = n * round / 3;
        let what = format!("{at} of {n} tasks to finish before kill {round}");
        let nc = f.nc.clone();
        wait_count(&what, at, Duration::from_secs(180), || done(&nc)).await?;
        kills.push(kill_worker(&mut f, round - 1).await?);
    }
    let ids = created_ids(&creator.finish().await?, out);
    let nc = f.nc.clone();
    let what = format!("{} tasks to finish", ids.len());
    wait_count(&what, ids.len(), Duration::from_secs(180), || done(&nc)).await?;
    let mut in_flight = BTreeSet::new();
    let mut sizes = Vec::new();
    for (i, k) in kills.into_iter().enumerate() {
        let took = k.finished.await??;
        out.recovered(
            &format!(
                "kill {} (pid {}) → its {} in-flight tasks finished elsewhere",
                i + 1,
                k.pid,
                k.in_flight.len()
            ),
            took,
        );
        sizes.push(k.in_flight.len().to_string());
        in_flight.extend(k.in_flight);
    }
    out.in_flight = format!(
        "{} tasks on the killed workers, {} distinct (a task taken over after kill 1 may be in flight again at kill 2)",
        sizes.join(" + "),
        in_flight.len()
    );
    out.figure("tasks", ids.len());
    out.figure("workers", "2 × concurrency 8, ack_wait 5 s");
    exec_tasks(&f, A, &ids, &runs, &in_flight, out).await
}

/// Tasks of the scenario with a `completed` event.
async fn done(nc: &async_nats::Client) -> anyhow::Result<usize> {
    Ok(tasks_with(nc, A, "completed").await?.len())
}

/// `kill -9` of worker `victim`, the tasks it held (still `running` under its lease right
/// after), and a new worker in its place.
async fn kill_worker(f: &mut Fleet, victim: usize) -> anyhow::Result<Kill> {
    let pid = f.workers[victim].pid();
    f.workers[victim].kill9();
    let at = Instant::now();
    let held: BTreeSet<String> = running(&f.http, A)
        .await?
        .into_iter()
        .filter(|(_, holder)| *holder == Some(pid))
        .map(|(id, _)| id)
        .collect();
    super::load::progress(format!(
        "kill -9 of worker pid {pid}: {} of its tasks in flight",
        held.len()
    ));
    let finished = watch_finished(
        f.nc.clone(),
        A.into(),
        held.clone(),
        at,
        Duration::from_secs(120),
    );
    let new = f.spawn_worker(A, 8, &WORKER_ENV).await?;
    f.workers.swap(victim, new);
    f.workers.pop();
    Ok(Kill {
        pid,
        in_flight: held,
        finished,
    })
}

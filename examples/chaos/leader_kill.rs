//! Scenario 6: `kill -9` of the `TASKS` stream leader in a three-node cluster (every stream with
//! three replicas, as docs/cluster.md configures it) while tasks are created over HTTP and run
//! by two workers. Nothing may be lost; the node is started again at the end and must catch up.

use super::fleet::{Fleet, Nats};
use super::load::{
    answer_counts, answers_text, exec_bodies, progress, wait_count, Creator, CreatorOptions,
};
use super::observe::{
    event_times, js, now_ns, running_at, started_between, stream_leader, tasks_with, Clock, RunLog,
};
use super::report::Outcome;
use super::verify::{created_ids, exec_tasks, once_per_key};
use super::worker_kill::WORKER_ENV;
use super::Scale;
use anyhow::Context;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The assignee of this scenario.
const A: &str = "chaos6";

/// Runs the scenario in `dir`.
pub async fn run(dir: &Path, scale: Scale, out: &mut Outcome) -> anyhow::Result<()> {
    let n = scale.of(1500);
    let mut f = Fleet::cluster(dir).await?;
    let runs = RunLog::new(dir);
    let creator = start_load(&mut f, &runs, n).await?;
    let nc = f.nc.clone();
    let done = || async { Ok(tasks_with(&nc, A, "completed").await?.len()) };
    wait_count(
        "tasks to finish before the kill",
        n / 5,
        Duration::from_secs(180),
        done,
    )
    .await?;
    let leader = stream_leader(&f.nc, "TASKS")
        .await?
        .context("TASKS has no leader")?;
    gather_leaders(&f.nc, &leader).await;
    out.figure(
        "the killed node led",
        led_by(&f.nc, &leader).await.join(", "),
    );
    let (killed, kill_ns) = (kill_node(&mut f, &leader)?, now_ns());
    let elected = new_leader(&f.nc, &leader, killed).await?;
    let elected_ns = now_ns();
    out.recovered("kill -9 → TASKS has a new leader", elected);
    let creates = creator.finish().await?;
    out.figure(
        "create answers (status×count)",
        answers_text(&answer_counts(&creates)),
    );
    let ids = created_ids(&creates, out);
    let what = format!("{} tasks to finish", ids.len());
    wait_count(&what, ids.len(), Duration::from_secs(240), done).await?;
    out.recovered("kill -9 → every task finished", killed.elapsed());
    let in_flight = in_flight(&f.nc, (kill_ns, elected_ns), out).await?;
    stall(&f.nc, kill_ns, out).await?;
    out.figure(
        "tasks",
        format!(
            "{} created over HTTP, 2 workers × 8, ack_wait 5 s, R3 streams",
            ids.len()
        ),
    );
    exec_tasks(&f, A, &ids, &runs, &in_flight, out).await?;
    once_per_key(&f, A, &creates, out).await?;
    catch_up(&mut f, &leader, out).await
}

/// Two workers (8 slots each, 5 s leases) and a client creating `n` exec tasks at a steady pace.
async fn start_load(f: &mut Fleet, runs: &RunLog, n: usize) -> anyhow::Result<Creator> {
    for _ in 0..2 {
        f.spawn_worker(A, 8, &WORKER_ENV).await?;
    }
    let opts = CreatorOptions {
        parallel: 4,
        give_up: Duration::from_secs(120),
        repeat_every: Some(10),
        pace: Duration::from_millis(15),
    };
    let bodies = exec_bodies(A, n, &runs.command(0.05), "s6");
    Ok(Creator::spawn(f.http.clone(), bodies, opts))
}

/// The tasks in flight around the kill, from the ledger: running at the kill, or started
/// between the kill and the election of the new leader (takeovers included).
async fn in_flight(
    nc: &async_nats::Client,
    (kill_ns, elected_ns): (i128, i128),
    out: &mut Outcome,
) -> anyhow::Result<BTreeSet<String>> {
    let at_kill = running_at(nc, A, kill_ns).await?;
    let during = started_between(nc, A, (kill_ns, elected_ns)).await?;
    let all: BTreeSet<String> = at_kill.union(&during).cloned().collect();
    out.in_flight = format!(
        "{} running at the kill, {} started between the kill and the new leader \
         (takeovers included); {} distinct, from the ledger",
        at_kill.len(),
        during.len(),
        all.len()
    );
    Ok(all)
}

/// The longest time no task finished, from the kill on (the fleet's stall), as a recovery time.
async fn stall(nc: &async_nats::Client, kill_ns: i128, out: &mut Outcome) -> anyhow::Result<()> {
    let mut times: Vec<i128> = event_times(nc, A, "completed", Clock::Stored)
        .await?
        .into_values()
        .flatten()
        .collect();
    times.push(kill_ns);
    times.sort_unstable();
    let longest = times
        .windows(2)
        .filter(|w| w[1] >= kill_ns)
        .map(|w| w[1] - w[0].max(kill_ns))
        .max()
        .unwrap_or(0);
    let first = times
        .iter()
        .find(|&&t| t > kill_ns)
        .map_or(0, |t| t - kill_ns);
    out.recovered(
        "kill -9 → first task finished after it",
        Duration::from_nanos(first as u64),
    );
    out.recovered(
        "longest time without any task finishing, after the kill",
        Duration::from_nanos(longest as u64),
    );
    Ok(())
}

/// Moves the leaders of `EVENTS`, the idempotency bucket and the worker consumers to `name`
/// (a step-down with a preferred server), so the kill hits all of them at once. Best effort:
/// what it leads in the end is reported.
async fn gather_leaders(nc: &async_nats::Client, name: &str) {
    let body = json!({"placement": {"preferred": name}});
    let mut asks: Vec<String> = ["EVENTS", "KV_task_idempotency"]
        .iter()
        .map(|s| format!("$JS.API.STREAM.LEADER.STEPDOWN.{s}"))
        .collect();
    for p in ["p0", "p1", "p2"] {
        asks.push(format!(
            "$JS.API.CONSUMER.LEADER.STEPDOWN.TASKS.worker_{A}_{p}"
        ));
    }
    for subject in asks {
        if let Err(e) = js(nc, &subject, body.clone()).await {
            progress(format!("step-down {subject}: {e:#}"));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// What server `name` leads: streams, and the worker consumers of the scenario.
async fn led_by(nc: &async_nats::Client, name: &str) -> Vec<String> {
    let mut led = Vec::new();
    for s in ["TASKS", "EVENTS", "KV_task_idempotency"] {
        if stream_leader(nc, s).await.ok().flatten().as_deref() == Some(name) {
            led.push(s.to_string());
        }
    }
    for p in ["p0", "p1", "p2"] {
        let c = format!("worker_{A}_{p}");
        let info = js(nc, &format!("$JS.API.CONSUMER.INFO.TASKS.{c}"), json!({})).await;
        if info.ok().is_some_and(|v| v["cluster"]["leader"] == name) {
            led.push(format!("TASKS/{c}"));
        }
    }
    led.insert(0, name.to_string());
    led
}

/// `kill -9` of the node called `name`.
fn kill_node(f: &mut Fleet, name: &str) -> anyhow::Result<Instant> {
    let Nats::Cluster(c) = &mut f.nats else {
        anyhow::bail!("scenario 6 runs on a cluster");
    };
    let i = c.index_of(name).context("the leader is no node of ours")?;
    let pid = c.nodes[i].pid().unwrap_or_default();
    c.nodes[i].kill9();
    progress(format!(
        "kill -9 of {name} (pid {pid}), the TASKS stream leader"
    ));
    Ok(Instant::now())
}

/// Waits until `TASKS` names a leader other than `old`; how long after `since`.
async fn new_leader(
    nc: &async_nats::Client,
    old: &str,
    since: Instant,
) -> anyhow::Result<Duration> {
    loop {
        if let Ok(Some(l)) = stream_leader(nc, "TASKS").await {
            if l != old {
                progress(format!("TASKS leader is now {l}"));
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("TASKS has no new leader 60 s after the kill");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the killed node again (same ports and store) and waits until it is healthy.
async fn catch_up(f: &mut Fleet, name: &str, out: &mut Outcome) -> anyhow::Result<()> {
    let Nats::Cluster(c) = &mut f.nats else {
        return Ok(());
    };
    let i = c.index_of(name).context("node")?;
    let started = Instant::now();
    c.nodes[i].start().await?;
    match c.wait_formed(Duration::from_secs(60)).await {
        Ok(()) => out.recovered(
            &format!("restart of {name} → every node healthy again (caught up)"),
            started.elapsed(),
        ),
        Err(e) => out.fault(format!("{name} did not catch up after its restart: {e:#}")),
    }
    Ok(())
}

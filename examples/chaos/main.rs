//! `make chaos`: a reproducible fault suite against the release binary and real nats-servers on
//! loopback (random ports, temporary store dirs). Each scenario starts its own fleet, injects
//! its fault, and prints `lost` (must be 0), `duplicates` (at-least-once repeats, compared with
//! what was in flight at the fault) and `recovery time`; each has a deadline and fails loudly
//! past it. Every process the suite starts is ended by its pid (see `procs.rs`).
//!
//! Run: `cargo build --release --bin taskfleet --example chaos &&
//!       target/release/examples/chaos [--only 1,2,5b] [--scale 0.25] [--keep] [--json FILE]`
//!
//! What each scenario does and the latest figures: docs/reliability.md.

#![deny(unsafe_code)]

mod bad_header;
mod fleet;
mod handback;
mod junk;
mod junk_http;
mod leader_kill;
mod load;
mod nats;
mod nats_kill;
mod observe;
mod procs;
mod rawnats;
mod relay_kill;
mod report;
mod verify;
mod worker_kill;

use report::Outcome;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Multiplies the task counts of the scenarios (`--scale 0.25` for a quick run).
#[derive(Debug, Clone, Copy)]
pub struct Scale(f64);

impl Scale {
    /// `n` scaled, at least 12.
    pub fn of(self, n: usize) -> usize {
        ((n as f64 * self.0).round() as usize).max(12)
    }
}

/// The scenarios: id, title, deadline in seconds.
const SCENARIOS: [(&str, &str, u64); 7] = [
    (
        "1",
        "kill -9 of a worker, twice, while 2,000 exec tasks run",
        300,
    ),
    (
        "2",
        "kill -9 of nats-server and restart, under HTTP creates with idempotency keys",
        300,
    ),
    (
        "3",
        "SIGTERM: a worker hands its running tasks back, another finishes them",
        120,
    ),
    (
        "4",
        "kill -9 of the relay while 1,500 webhooks are delivered",
        240,
    ),
    ("5", "junk on every queue subject and every HTTP route", 240),
    (
        "5b",
        "a queue message whose Nats-Msg-Id header is not UTF-8",
        150,
    ),
    (
        "6",
        "kill -9 of the TASKS stream leader in a 3-node cluster",
        360,
    ),
];

/// Command-line options.
struct Opts {
    only: Option<Vec<String>>,
    scale: Scale,
    keep: bool,
    json: Option<PathBuf>,
    deadline: Option<u64>,
}

/// `--help`.
const HELP: &str =
    "usage: chaos [--only 1,2,3,4,5,5b,6] [--scale F] [--keep] [--json FILE] [--deadline S]\n\
  --only   run these scenarios (default: all)\n\
  --scale  multiply task counts (0.25 for a quick run; figures in docs come from 1)\n\
  --keep   keep every scenario's directory (logs, stores); failed ones are always kept\n\
  --json   also write the outcomes as JSON to FILE\n\
  --deadline  seconds each scenario may take (default: its own, 120 to 360)";

/// Reads the flags.
fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        only: None,
        scale: Scale(1.0),
        keep: false,
        json: None,
        deadline: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value\n{HELP}"))
        };
        match a.as_str() {
            "--only" => o.only = Some(value()?.split(',').map(|s| s.trim().to_string()).collect()),
            "--scale" => o.scale = Scale(value()?.parse()?),
            "--keep" => o.keep = true,
            "--json" => o.json = Some(PathBuf::from(value()?)),
            "--deadline" => o.deadline = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{HELP}"),
        }
    }
    if let Some(only) = &o.only {
        for id in only {
            if !SCENARIOS.iter().any(|(s, _, _)| s == id) {
                anyhow::bail!("no scenario {id:?}\n{HELP}");
            }
        }
    }
    Ok(o)
}

/// Runs scenario `id` in `dir`, filling `out`.
async fn run_one(id: &str, dir: &Path, scale: Scale, out: &mut Outcome) -> anyhow::Result<()> {
    match id {
        "1" => worker_kill::run(dir, scale, out).await,
        "2" => nats_kill::run(dir, scale, out).await,
        "3" => handback::run(dir, out).await,
        "4" => relay_kill::run(dir, scale, out).await,
        "5" => junk::run(dir, out).await,
        "5b" => bad_header::run(dir, out).await,
        "6" => leader_kill::run(dir, scale, out).await,
        _ => anyhow::bail!("no scenario {id}"),
    }
}

/// Runs one scenario under its deadline; its processes are gone when this returns.
async fn scenario(id: &str, title: &str, deadline: u64, base: &Path, o: &Opts) -> Outcome {
    let deadline = o.deadline.unwrap_or(deadline);
    let dir = base.join(format!("s{id}"));
    let mut out = Outcome::new(id, title);
    eprintln!(
        "\n==> [{id}] {title} (deadline {deadline} s; logs in {})",
        dir.display()
    );
    let started = Instant::now();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        out.fault(format!("cannot create {}: {e}", dir.display()));
        return out;
    }
    let run = tokio::time::timeout(
        Duration::from_secs(deadline),
        run_one(id, &dir, o.scale, &mut out),
    )
    .await;
    match run {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.fault(format!("the scenario stopped: {e:#}")),
        Err(_) => out.fault(format!(
            "DEADLINE of {deadline} s passed; last progress: {}",
            load::last_progress()
        )),
    }
    out.secs = started.elapsed().as_secs_f64();
    let left = procs::registered();
    if !left.is_empty() {
        procs::kill_registered();
        out.fault(format!(
            "processes still running after the scenario (now killed): {left:?}"
        ));
    }
    if out.passed() && !o.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        out.figure("logs and stores kept in", dir.display());
    }
    out
}

/// What the figures were made with: date, commit, nats-server version, cores.
fn header() -> serde_json::Value {
    let nats = taskfleet::natsd::find_binary(None)
        .ok()
        .and_then(|b| taskfleet::natsd::version(&b))
        .map(|(a, b, c)| format!("{a}.{b}.{c}"));
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    json!({"date": date, "nats-server": nats, "commit": commit, "cores": std::thread::available_parallelism().map_or(0, |n| n.get())})
}

/// Runs the selected scenarios one after another, then prints the summary.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    fleet::taskfleet_bin()?;
    tokio::spawn(async {
        taskfleet::shutdown::signal().await;
        let pids = procs::kill_registered();
        eprintln!("\nchaos: interrupted; killed the processes it started: {pids:?}");
        std::process::exit(130);
    });
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let base = std::env::temp_dir().join(format!("taskfleet-chaos-{stamp}-{}", std::process::id()));
    let meta = header();
    eprintln!("chaos: {meta}");
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for (id, title, deadline) in SCENARIOS {
        if o.only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|s| s == id))
        {
            continue;
        }
        let out = scenario(id, title, deadline, &base, &o).await;
        out.print();
        outcomes.push(out);
    }
    let _ = std::fs::remove_dir(&base);
    summary(&outcomes, started.elapsed(), &meta, &o)
}

/// The table of every scenario, the total time, the JSON line; fails if any scenario failed.
fn summary(
    outcomes: &[Outcome],
    took: Duration,
    meta: &serde_json::Value,
    o: &Opts,
) -> anyhow::Result<()> {
    println!("\n| scenario | result | lost | duplicates | recovery | time |");
    println!("|---|---|---|---|---|---|");
    for out in outcomes {
        let recovery = out.recovery.last().map_or("—".to_string(), |(_, d)| {
            format!("{:.1} s", d.as_secs_f64())
        });
        let verdict = if out.passed() {
            "passed".to_string()
        } else {
            format!("FAILED ({} fault(s))", out.faults.len())
        };
        println!(
            "| {} {} | {verdict} | {} | {} | {recovery} | {:.0} s |",
            out.id, out.title, out.lost, out.duplicates, out.secs
        );
    }
    println!("\ntotal: {:.0} s", took.as_secs_f64());
    let all = json!({"meta": meta, "secs": took.as_secs_f64(), "scenarios": outcomes.iter().map(Outcome::json).collect::<Vec<_>>()});
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)? + "\n")?;
    }
    println!("{all}");
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.id.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!(
            "chaos: scenario(s) {} failed (faults above)",
            failed.join(", ")
        );
        std::process::exit(1);
    }
    Ok(())
}

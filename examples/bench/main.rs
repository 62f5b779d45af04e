//! The taskfleet side of `make bench` (issue 7): the scenarios of the benchmark contract, each
//! on a fresh nats-server (the repo's `nats.conf`) with the API as a `taskfleet api` process and
//! workers as `taskfleet worker --assignee bench --concurrency 8` processes (and, for the wide
//! throughput rows, one `--concurrency 64` process). Progress goes to stderr; the last line of
//! stdout is one JSON object (`--out FILE` also writes it there).
//!
//! Run: `cargo build --release --bin taskfleet --example bench &&
//!       target/release/examples/bench [--tasks 5000] [--quick] [--out FILE]
//!       [--samples 300] [--p2 10000] [--relay-events 20000] [--relay-fanout-events 1000]
//!       [--only throughput,latency,p0,relay,fanout,flow]`
//!
//! What is measured, and where taskfleet stamps it, is in docs/benchmarks.md.

#![deny(unsafe_code)]

mod fleet;
mod relay;
mod relay_config;
mod scenarios;

use scenarios::{Create, Shape, CONCURRENCY, WIDE_CONCURRENCY};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// The `taskfleet` binary's allocator (src/main.rs), so the relay this process runs in-process
/// is measured as `taskfleet relay` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line options.
pub struct Opts {
    /// Tasks per throughput run.
    pub tasks: usize,
    /// Idle-latency samples (after `warmup`).
    pub samples: usize,
    /// Idle-latency warm-up tasks.
    pub warmup: usize,
    /// P2 tasks queued behind the blocker.
    pub p2: usize,
    /// Step events forwarded by the relay to one destination.
    pub relay_events: usize,
    /// Step events forwarded by the relay to each of [`relay::FANOUT_DESTINATIONS`].
    pub relay_fanout_events: usize,
    out: Option<PathBuf>,
    only: Option<Vec<String>>,
}

fn parse_args() -> anyhow::Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        tasks: if quick { 500 } else { 5000 },
        samples: if quick { 50 } else { 300 },
        warmup: 20,
        p2: if quick { 1000 } else { 10_000 },
        // Long enough that the relay's start (a consumer per destination) is a small part of
        // the figure: 20,000 and 100,000 deliveries, a few seconds each.
        relay_events: if quick { 300 } else { 20_000 },
        relay_fanout_events: if quick { 20 } else { 1000 },
        out: None,
        only: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--quick" => {}
            "--tasks" => o.tasks = value()?.parse()?,
            "--samples" => o.samples = value()?.parse()?,
            "--p2" => o.p2 = value()?.parse()?,
            "--relay-events" => o.relay_events = value()?.parse()?,
            "--relay-fanout-events" => o.relay_fanout_events = value()?.parse()?,
            "--out" => o.out = Some(PathBuf::from(value()?)),
            "--only" => o.only = Some(value()?.split(',').map(str::to_string).collect()),
            "-h" | "--help" => {
                eprintln!("{}", HELP);
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{HELP}"),
        }
    }
    if o.tasks == 0 || o.samples == 0 || o.relay_events == 0 || o.relay_fanout_events == 0 {
        anyhow::bail!(
            "--tasks, --samples, --relay-events and --relay-fanout-events must be at least 1"
        );
    }
    Ok(o)
}

const HELP: &str = "usage: bench [--tasks N] [--quick] [--out FILE] [--samples N] [--p2 N] \
                    [--relay-events N] [--relay-fanout-events N] \
                    [--only throughput,latency,p0,relay,fanout,flow]";

impl Opts {
    fn wants(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    }
}

fn versions() -> Value {
    let nats = taskfleet::natsd::find_binary(None)
        .ok()
        .and_then(|b| taskfleet::natsd::version(&b))
        .map(|(a, b, c)| format!("{a}.{b}.{c}"));
    let lock = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"));
    let async_nats = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"async-nats\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string));
    json!({
        "taskfleet": env!("CARGO_PKG_VERSION"), "nats-server": nats,
        "async-nats": async_nats, "rustc": rustc,
    })
}

/// Runs one part, timing it; a failure is reported and leaves its figures null.
async fn part<T>(
    name: &str,
    errors: &mut Vec<String>,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    eprintln!("==> taskfleet: {name} …");
    let t = Instant::now();
    match f.await {
        Ok(v) => {
            eprintln!("    {name}: done in {:.1} s", t.elapsed().as_secs_f64());
            Some(v)
        }
        Err(e) => {
            eprintln!(
                "    {name}: FAILED after {:.1} s: {e:#}",
                t.elapsed().as_secs_f64()
            );
            errors.push(format!("{name}: {e:#}"));
            None
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    fleet::taskfleet_bin()?;
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut out = json!({
        "system": "taskfleet", "versions": versions(), "tasks": o.tasks,
        "concurrency": CONCURRENCY, "throughput": [], "idle_latency_ms": null,
        "p0_behind_p2_ms": null, "relay_per_s": null, "relay_fanout_per_s": null,
        "rss_mb": null, "extra": {},
    });

    if o.wants("latency") {
        let what = format!("idle latency ({} samples) and idle RSS", o.samples);
        if let Some(mut v) = part(&what, &mut errors, scenarios::latency_and_rss(&o)).await {
            out["idle_latency_ms"] = v["idle_latency_ms"].take();
            out["rss_mb"] = v["rss_mb"].take();
            for k in [
                "idle_latency_ms_http",
                "idle_latency_ms_claim_stamp",
                "idle_latency_ms_started_event",
                "rss_mb_fresh",
            ] {
                out["extra"][k] = v[k].take();
            }
        }
    }
    if o.wants("throughput") {
        out["throughput"] = Value::Array(throughput_rows(&o, &mut errors).await);
    }
    if o.wants("flow") {
        out["extra"]["flow"] = Value::Array(flow_rows(&o, &mut errors).await);
    }
    if o.wants("p0") {
        let what = format!("P0 behind {} P2", o.p2);
        if let Some(mut v) = part(&what, &mut errors, scenarios::p0_behind_p2(&o)).await {
            out["p0_behind_p2_ms"] = json!({"p2_queued": v["p2_queued"], "ms": v["ms"]});
            for k in ["p2_queued", "ms"] {
                v.as_object_mut().map(|m| m.remove(k));
            }
            out["extra"]["p0_behind_p2"] = v;
        }
    }
    relay_parts(&o, &mut out, &mut errors).await;
    out["extra"]["secs"] = json!(started.elapsed().as_secs_f64());
    if !errors.is_empty() {
        out["errors"] = json!(errors);
    }

    print_summary(&out);
    if let Some(path) = &o.out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    println!("{}", serde_json::to_string(&out)?);
    if !errors.is_empty() {
        anyhow::bail!("{} part(s) failed", errors.len());
    }
    Ok(())
}

/// The relay's parts into `out`: to one webhook (`relay`), to [`relay::FANOUT_DESTINATIONS`]
/// (`fanout`).
async fn relay_parts(o: &Opts, out: &mut Value, errors: &mut Vec<String>) {
    if o.wants("relay") {
        let what = format!("relay, {} step events, 1 signed webhook", o.relay_events);
        if let Some(rate) = part(&what, errors, relay::relay(o)).await {
            out["relay_per_s"] = json!(rate);
        }
    }
    if o.wants("fanout") {
        let what = format!(
            "relay, {} step events × {} signed webhooks",
            o.relay_fanout_events,
            relay::FANOUT_DESTINATIONS
        );
        if let Some(mut v) = part(&what, errors, relay::relay_fanout(o)).await {
            out["relay_fanout_per_s"] = v["deliveries_per_s"].take();
            out["extra"]["relay_fanout"] = v;
        }
    }
}

/// Every run of [`throughput_matrix`], in order; a failed run is left out (and in `errors`).
async fn throughput_rows(o: &Opts, errors: &mut Vec<String>) -> Vec<Value> {
    let mut rows = Vec::new();
    for shape in throughput_matrix() {
        let Shape {
            how,
            steps,
            procs,
            concurrency,
            ..
        } = shape;
        let what = format!(
            "throughput, {} tasks, {} create, steps {steps}, {procs} worker process(es) × \
             {concurrency}",
            o.tasks,
            how.name()
        );
        if let Some(row) = part(&what, errors, scenarios::throughput(o, shape)).await {
            eprintln!(
                "    → {:.0} tasks/s",
                row["tasks_per_s"].as_f64().unwrap_or(0.0)
            );
            rows.push(row);
        }
    }
    rows
}

/// Flow control's cost (issue 13): 4 worker processes × 8, NATS creates, without keys and with
/// the tasks spread over 100 concurrency keys of limit 1.
async fn flow_rows(o: &Opts, errors: &mut Vec<String>) -> Vec<Value> {
    let mut rows = Vec::new();
    for keys in [0, 100] {
        let shape = Shape {
            how: Create::Nats,
            steps: 0,
            procs: 4,
            concurrency: CONCURRENCY,
            keys,
        };
        let what = format!(
            "flow control, {} tasks over {keys} keys of limit 1, 4 × 8",
            o.tasks
        );
        if let Some(row) = part(&what, errors, scenarios::throughput(o, shape)).await {
            eprintln!(
                "    → {:.0} tasks/s, {:.2} limit writes per task",
                row["tasks_per_s"].as_f64().unwrap_or(0.0),
                row["limit_writes_per_task"].as_f64().unwrap_or(0.0)
            );
            rows.push(row);
        }
    }
    rows
}

/// The throughput runs: 1, 2 and 4 processes × 8 (HTTP and NATS creates, 0 and 3 steps), then
/// one process × 64 (NATS creates, 0 and 3 steps).
fn throughput_matrix() -> Vec<Shape> {
    let c8 = [
        (Create::Http, 0, 1),
        (Create::Nats, 0, 1),
        (Create::Http, 3, 1),
        (Create::Nats, 3, 1),
        (Create::Nats, 0, 2),
        (Create::Nats, 0, 4),
    ];
    let c64 = [(Create::Nats, 0, 1), (Create::Nats, 3, 1)];
    let shape = |concurrency| {
        move |(how, steps, procs)| Shape {
            how,
            steps,
            procs,
            concurrency,
            keys: 0,
        }
    };
    let mut all: Vec<Shape> = c8.into_iter().map(shape(CONCURRENCY)).collect();
    all.extend(c64.into_iter().map(shape(WIDE_CONCURRENCY)));
    all
}

fn print_summary(out: &Value) {
    let f = |v: &Value| v.as_f64().map_or("—".to_string(), |x| format!("{x:.2}"));
    eprintln!("\ntaskfleet, {} tasks per throughput run:", out["tasks"]);
    for r in out["throughput"].as_array().into_iter().flatten() {
        eprintln!(
            "  throughput {} create, steps {}, {} proc(s) × {}: {:.0} tasks/s ({:.2} s)",
            r["create"].as_str().unwrap_or("?"),
            r["steps"],
            r["procs"],
            r["concurrency"],
            r["tasks_per_s"].as_f64().unwrap_or(0.0),
            r["secs"].as_f64().unwrap_or(0.0)
        );
    }
    let (l, h) = (
        &out["idle_latency_ms"],
        &out["extra"]["idle_latency_ms_http"],
    );
    eprintln!(
        "  idle latency ms: nats p50 {} p99 {} ({} of {} over 100 ms); http p50 {} p99 {} ({} over 100 ms)",
        f(&l["p50"]),
        f(&l["p99"]),
        l["over_100ms"],
        l["samples"],
        f(&h["p50"]),
        f(&h["p99"]),
        h["over_100ms"]
    );
    eprintln!(
        "  P0 behind {} P2: {} ms",
        out["p0_behind_p2_ms"]["p2_queued"],
        f(&out["p0_behind_p2_ms"]["ms"])
    );
    eprintln!("  relay: {} deliveries/s", f(&out["relay_per_s"]));
    eprintln!(
        "  relay fan-out ({} destinations): {} deliveries/s",
        relay::FANOUT_DESTINATIONS,
        f(&out["relay_fanout_per_s"])
    );
    eprintln!(
        "  idle RSS MB: worker {}, api {}",
        f(&out["rss_mb"]["worker"]),
        f(&out["rss_mb"]["api"])
    );
}

//! The report of `make bench` (issue 7): reads the JSON objects written by the taskfleet, BullMQ
//! and raw-JetStream benchmarks (see examples/bench/ and docs/benchmarks.md), prints a markdown
//! section with one row per figure (throughput at concurrency 8 and 64, latency, P0, relay to one
//! webhook and to 100, RSS, writes stored per task) and the targets of the issue "Task storage
//! v2" judged against them, puts it between `<!-- bench:begin -->` and `<!-- bench:end -->` of
//! the doc, and writes the merged JSON.
//!
//! Run: `target/release/examples/bench_report [--doc docs/benchmarks.md]
//!       [--json docs/benchmarks.json] [--command "make bench"] TASKFLEET.json BULLMQ.json RAW.json`
//!
//! A missing or unreadable file leaves that system's column as "—".

#![deny(unsafe_code)]

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;

/// The marker after which the generated section starts.
const BEGIN: &str = "<!-- bench:begin -->";
/// The marker before which the generated section ends.
const END: &str = "<!-- bench:end -->";
/// The three systems, in column order: the `system` field of their JSON and their name.
const SYSTEMS: [(&str, &str); 3] = [
    ("taskfleet", "taskfleet"),
    ("bullmq", "BullMQ"),
    ("raw-jetstream", "raw JetStream"),
];

/// Command-line options.
struct Opts {
    /// The doc whose generated section is replaced.
    doc: Option<PathBuf>,
    /// Where the merged JSON goes.
    json: Option<PathBuf>,
    /// The command shown as having produced the figures.
    command: String,
    /// The three results: taskfleet, BullMQ, raw JetStream.
    files: Vec<PathBuf>,
}

/// Reads the command line.
fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        doc: None,
        json: None,
        command: "make bench".into(),
        files: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--doc" => o.doc = Some(value()?.into()),
            "--json" => o.json = Some(value()?.into()),
            "--command" => o.command = value()?,
            s if s.starts_with("--") => bail!("unknown flag {s}"),
            _ => o.files.push(a.into()),
        }
    }
    if o.files.len() != 3 {
        bail!("usage: bench_report [--doc MD] [--json OUT] [--command TEXT] TASKFLEET.json BULLMQ.json RAW.json");
    }
    Ok(o)
}

/// Reads the three results, placed by their `system` field (else by position).
fn load(files: &[PathBuf]) -> [Option<Value>; 3] {
    let mut out: [Option<Value>; 3] = [None, None, None];
    for (i, path) in files.iter().enumerate() {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("bench_report: {}: {e}; its column shows —", path.display());
                continue;
            }
        };
        // The file is the JSON object, or a program's stdout whose last line is.
        let parsed = serde_json::from_str::<Value>(&text).or_else(|e| {
            text.lines()
                .rev()
                .find(|l| l.trim_start().starts_with('{'))
                .map_or(Err(e), serde_json::from_str)
        });
        let v = match parsed {
            Ok(v) if v.is_object() => v,
            _ => {
                eprintln!(
                    "bench_report: {} holds no JSON object; its column shows —",
                    path.display()
                );
                continue;
            }
        };
        let slot = SYSTEMS
            .iter()
            .position(|(s, _)| v["system"].as_str() == Some(s))
            .unwrap_or(i);
        if slot != i {
            eprintln!(
                "bench_report: {} is {}, not {}",
                path.display(),
                v["system"],
                SYSTEMS[i].0
            );
        }
        out[slot] = Some(v);
    }
    out
}

/// What a figure is measured in, which decides its format and which direction is better.
#[derive(Clone, Copy)]
enum Unit {
    /// Tasks or deliveries per second: higher is better.
    PerS,
    /// Milliseconds: lower is better.
    Ms,
    /// Megabytes of memory: lower is better.
    Mb,
    /// Writes stored per task: lower is better.
    Count,
}

/// One line of the table: a figure for each system, in [`SYSTEMS`] order.
struct Row {
    label: String,
    unit: Unit,
    values: [Option<f64>; 3],
}

/// A finite number, else `None`.
fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// One throughput run of the matrix.
#[derive(Clone, Copy)]
struct Run {
    /// Worker processes.
    procs: u64,
    /// Steps per task.
    steps: u64,
    /// Tasks in flight per worker process.
    concurrency: u64,
    /// How taskfleet created the tasks (`http` or `nats`); the others have one way.
    create: &'static str,
}

impl Run {
    /// A run of `procs` × `concurrency`, `steps` steps, taskfleet creating by `create`.
    const fn new(procs: u64, steps: u64, concurrency: u64, create: &'static str) -> Self {
        Self {
            procs,
            steps,
            concurrency,
            create,
        }
    }

    /// How the row label names the run.
    fn label(self) -> String {
        let procs = if self.procs == 1 {
            "1 worker process".to_string()
        } else {
            format!("{} worker processes", self.procs)
        };
        let how = how(self.create);
        format!(
            "{procs} × {}, {} steps ({how})",
            self.concurrency, self.steps
        )
    }
}

/// How the labels say taskfleet created its tasks.
fn how(create: &str) -> &'static str {
    if create == "http" {
        "taskfleet creates over HTTP"
    } else {
        "taskfleet publishes to NATS"
    }
}

/// The throughput rows of the table: the runs at concurrency 8, then the wide ones (one
/// process × 64).
const RUNS: [Run; 8] = [
    Run::new(1, 0, 8, "http"),
    Run::new(1, 0, 8, "nats"),
    Run::new(1, 3, 8, "http"),
    Run::new(1, 3, 8, "nats"),
    Run::new(2, 0, 8, "nats"),
    Run::new(4, 0, 8, "nats"),
    Run::new(1, 0, 64, "nats"),
    Run::new(1, 3, 64, "nats"),
];

/// The runs whose writes stored per task get a table row.
const WRITE_RUNS: [Run; 4] = [
    Run::new(1, 0, 8, "nats"),
    Run::new(1, 0, 8, "http"),
    Run::new(1, 3, 8, "nats"),
    Run::new(1, 3, 8, "http"),
];

/// Per system, the key of a run's rate.
const RATE: [&str; 3] = ["tasks_per_s"; 3];
/// Per system, the key of a run's writes stored per task: JetStream messages (taskfleet, raw
/// JetStream), Redis write commands appended to the AOF (BullMQ).
const WRITES: [&str; 3] = [
    "stream_writes_per_task",
    "redis_writes_per_task",
    "stream_writes_per_task",
];

/// The result row of `run` in `sys` (a row without `concurrency` has the system's); with
/// `create`, it must also have been created that way.
fn find_run<'a>(sys: &'a Value, run: Run, create: Option<&str>) -> Option<&'a Value> {
    let default = sys["concurrency"].as_u64().unwrap_or(8);
    sys["throughput"].as_array()?.iter().find(|r| {
        r["procs"].as_u64() == Some(run.procs)
            && r["steps"].as_u64() == Some(run.steps)
            && r["concurrency"].as_u64().unwrap_or(default) == run.concurrency
            && create.is_none_or(|c| r["create"].as_str() == Some(c))
    })
}

/// `keys[i]` of `run`'s result row of each system (taskfleet's created as `run` says).
fn run_values(sys: &[Option<Value>; 3], run: Run, keys: [&str; 3]) -> [Option<f64>; 3] {
    std::array::from_fn(|i| {
        let create = (i == 0).then_some(run.create);
        let row = sys[i].as_ref().and_then(|s| find_run(s, run, create));
        row.and_then(|r| num(&r[keys[i]]))
    })
}

/// Every row of the table, in order.
fn rows(sys: &[Option<Value>; 3]) -> Vec<Row> {
    let mut rows: Vec<Row> = RUNS
        .iter()
        .map(|&run| Row {
            label: format!("throughput, {}", run.label()),
            unit: Unit::PerS,
            values: run_values(sys, run, RATE),
        })
        .collect();
    rows.extend(latency_rows(sys));
    rows.extend(other_rows(sys));
    rows.extend(WRITE_RUNS.iter().map(|&run| Row {
        label: format!(
            "writes stored per task, {} steps ({})",
            run.steps,
            how(run.create)
        ),
        unit: Unit::Count,
        values: run_values(sys, run, WRITES),
    }));
    rows
}

/// `f` of each system's result (`None` for a missing one).
fn pick(sys: &[Option<Value>; 3], f: impl Fn(&Value) -> Option<f64>) -> [Option<f64>; 3] {
    std::array::from_fn(|i| sys[i].as_ref().and_then(&f))
}

/// Idle dispatch latency: the NATS create (the contract's figure), then taskfleet's HTTP one.
fn latency_rows(sys: &[Option<Value>; 3]) -> Vec<Row> {
    let mut rows = Vec::new();
    for p in ["p50", "p99"] {
        rows.push(Row {
            label: format!("idle dispatch latency {p} (taskfleet publishes to NATS)"),
            unit: Unit::Ms,
            values: pick(sys, |s| num(&s["idle_latency_ms"][p])),
        });
    }
    for p in ["p50", "p99"] {
        let mut values = pick(sys, |s| num(&s["idle_latency_ms"][p]));
        values[0] = sys[0]
            .as_ref()
            .and_then(|s| num(&s["extra"]["idle_latency_ms_http"][p]));
        rows.push(Row {
            label: format!("idle dispatch latency {p} (taskfleet creates over HTTP)"),
            unit: Unit::Ms,
            values,
        });
    }
    rows
}

/// P0 behind P2, relay, idle RSS.
fn other_rows(sys: &[Option<Value>; 3]) -> Vec<Row> {
    let queued = (sys.iter().flatten())
        .find_map(|s| s["p0_behind_p2_ms"]["p2_queued"].as_u64())
        .unwrap_or(10_000);
    let mut rows = vec![
        Row {
            label: format!(
                "P0 start after the slot frees, behind {} queued P2",
                grouped(queued as i64)
            ),
            unit: Unit::Ms,
            values: pick(sys, |s| num(&s["p0_behind_p2_ms"]["ms"])),
        },
        Row {
            label:
                "relay: progress events to one webhook, in order (taskfleet signs each, and starts \
                    on a backlog)"
                    .into(),
            unit: Unit::PerS,
            values: pick(sys, |s| num(&s["relay_per_s"])),
        },
        Row {
            label: fanout_label(sys),
            unit: Unit::PerS,
            values: pick(sys, |s| num(&s["relay_fanout_per_s"])),
        },
    ];
    for (k, what) in [
        ("worker", "one idle worker process"),
        ("api", "the idle API process"),
    ] {
        rows.push(Row {
            label: format!("RSS of {what}"),
            unit: Unit::Mb,
            values: pick(sys, |s| num(&s["rss_mb"][k])),
        });
    }
    rows
}

/// The fan-out relay row's label, with the events and destinations the programs report
/// (`extra.relay_fanout`; the first system that has them).
fn fanout_label(sys: &[Option<Value>; 3]) -> String {
    let size =
        |k: &str| (sys.iter().flatten()).find_map(|s| s["extra"]["relay_fanout"][k].as_u64());
    let events = size("events").map_or("progress events".into(), |n| {
        format!("{} progress events", grouped(n as i64))
    });
    let destinations = size("destinations").unwrap_or(100);
    format!(
        "relay: {events} × {destinations} webhook destinations, in order per destination \
         (taskfleet signs each, and starts on a backlog)"
    )
}

/// One target of an issue ("Task storage v2", "Relay v2"), judged against the figures.
struct Target {
    what: String,
    measured: String,
    ratio: String,
    met: Option<bool>,
}

/// The issue's targets, in the order it states them.
fn targets(sys: &[Option<Value>; 3]) -> Vec<Target> {
    let mut out = Vec::new();
    for (steps, factor) in [(0, 2.0), (3, 1.5)] {
        for concurrency in [8, 64] {
            let run = Run::new(1, steps, concurrency, "nats");
            out.push(ahead_of_bullmq(sys, run, factor));
        }
    }
    let null = Value::Null;
    let tf = sys[0].as_ref().unwrap_or(&null);
    for (p, limit) in [("p50", 0.5), ("p99", 1.5)] {
        let what = format!("idle dispatch latency {p} ≤ {limit} ms (taskfleet publishes to NATS)");
        out.push(at_most(
            what,
            num(&tf["idle_latency_ms"][p]),
            limit,
            Unit::Ms,
        ));
    }
    let rss = num(&tf["rss_mb"]["worker"]);
    out.push(at_most(
        "RSS of one idle worker process ≤ 15 MB".into(),
        rss,
        15.0,
        Unit::Mb,
    ));
    for (create, steps, limit) in [("nats", 0, 3.0), ("http", 0, 4.0), ("nats", 3, 6.0)] {
        let what = format!(
            "writes stored per task ≤ {limit}, {steps} steps ({}; the most of any run)",
            how(create)
        );
        out.push(at_most(
            what,
            max_writes(tf, create, steps),
            limit,
            Unit::Count,
        ));
    }
    out
}

/// taskfleet's rate in `run` at least `factor` × BullMQ's.
fn ahead_of_bullmq(sys: &[Option<Value>; 3], run: Run, factor: f64) -> Target {
    let [t, b, _] = run_values(sys, run, RATE);
    let ratio = t.zip(b).filter(|&(_, b)| b > 0.0).map(|(t, b)| t / b);
    let tasks = if run.steps == 0 {
        "trivial tasks".to_string()
    } else {
        format!("tasks of {} steps", run.steps)
    };
    Target {
        what: format!(
            "{tasks} published to NATS, 1 worker process × {}: taskfleet ≥ {factor}× BullMQ",
            run.concurrency
        ),
        measured: format!(
            "{} vs {}",
            fmt_value(t, Unit::PerS),
            fmt_value(b, Unit::PerS)
        ),
        ratio: ratio.map_or("—".into(), |r| format!("{r:.2}× BullMQ")),
        met: ratio.map(|r| r >= factor),
    }
}

/// The targets of the issue "Relay v2": signed webhook deliveries per second, in order.
fn relay_targets(sys: &[Option<Value>; 3]) -> Vec<Target> {
    let null = Value::Null;
    let tf = sys[0].as_ref().unwrap_or(&null);
    [
        ("one destination", "relay_per_s", 5_000.0),
        ("100 destinations", "relay_fanout_per_s", 20_000.0),
    ]
    .into_iter()
    .map(|(to, key, floor)| {
        let measured = num(&tf[key]);
        Target {
            what: format!("relay, {to}: ≥ {} deliveries/s", grouped(floor as i64)),
            measured: fmt_value(measured, Unit::PerS),
            ratio: measured.map_or("—".into(), |m| format!("{:.2}× the target", m / floor)),
            met: measured.map(|m| m >= floor),
        }
    })
    .collect()
}

/// A figure of taskfleet's at most `limit`.
fn at_most(what: String, measured: Option<f64>, limit: f64, unit: Unit) -> Target {
    Target {
        what,
        measured: fmt_value(measured, unit),
        ratio: measured.map_or("—".into(), |m| format!("{:.2}× the limit", m / limit)),
        met: measured.map(|m| m <= limit),
    }
}

/// The most JetStream messages per task any taskfleet run created this way stored (every
/// process count and concurrency).
fn max_writes(tf: &Value, create: &str, steps: u64) -> Option<f64> {
    (tf["throughput"].as_array()?.iter())
        .filter(|r| r["create"].as_str() == Some(create) && r["steps"].as_u64() == Some(steps))
        .filter_map(|r| num(&r["stream_writes_per_task"]))
        .reduce(f64::max)
}

/// 12345 → "12,345".
fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// A figure as the table shows it ("—" for none).
fn fmt_value(v: Option<f64>, unit: Unit) -> String {
    let Some(x) = v else { return "—".into() };
    match unit {
        Unit::PerS => format!("{}/s", grouped(x.round() as i64)),
        Unit::Ms => format!("{x:.2} ms"),
        Unit::Mb => format!("{x:.1} MB"),
        Unit::Count => format!("{x:.2}"),
    }
}

/// `a ÷ b` to two decimals, "—" without both.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

/// A file's text, empty when unreadable.
fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Cores, CPU, RAM, OS and kernel of this machine.
fn machine() -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string());
    let mem_kb: Option<f64> = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string());
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    json!({
        "cores": cores, "cpu": model,
        "ram_gib": mem_kb.map(|k| (k / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "os": os, "kernel": kernel,
    })
}

/// A system's `versions` as "name version, …".
fn versions(v: &Value) -> String {
    v["versions"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().map_or(v.to_string(), str::to_string)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "—".into())
}

/// The generated section: header, table, targets, notes.
fn section(sys: &[Option<Value>; 3], command: &str, date: &str, m: &Value) -> String {
    let mut s = header(sys, command, date, m);
    s.push_str(&table(sys));
    s.push_str(&targets_block("Task storage v2", targets(sys)));
    s.push_str(&targets_block("Relay v2", relay_targets(sys)));
    let notes = notes(sys);
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes from the programs:\n\n{}", notes.join("\n"));
    }
    s
}

/// What produced the figures: command, date, machine, and each system's versions and sizes.
fn header(sys: &[Option<Value>; 3], command: &str, date: &str, m: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "_Generated by `{command}` (scripts/bench.sh → examples/bench_report.rs); re-run it rather than editing by hand._\n"
    );
    let _ = writeln!(s, "- **Command:** `{command}`");
    let _ = writeln!(s, "- **Date:** {date}");
    let _ = writeln!(
        s,
        "- **Machine:** {} cores ({}), {} GiB RAM, {}, Linux {}",
        m["cores"],
        m["cpu"].as_str().unwrap_or("unknown CPU"),
        m["ram_gib"],
        m["os"].as_str().unwrap_or("unknown OS"),
        m["kernel"].as_str().unwrap_or("?")
    );
    for (i, (_, name)) in SYSTEMS.iter().enumerate() {
        let Some(v) = &sys[i] else {
            let _ = writeln!(s, "- **{name}:** no result (not run, or it failed)");
            continue;
        };
        let _ = writeln!(
            s,
            "- **{name}:** {}; {} tasks per throughput run, concurrency {} per worker process{}",
            versions(v),
            v["tasks"],
            v["concurrency"],
            wide_note(v)
        );
        for e in v["errors"].as_array().into_iter().flatten() {
            let _ = writeln!(s, "  - failed: {}", e.as_str().unwrap_or("?"));
        }
    }
    s
}

/// " (64 on the × 64 rows)" when some throughput runs had another concurrency than the
/// system's.
fn wide_note(v: &Value) -> String {
    let default = v["concurrency"].as_u64();
    let mut other: Vec<u64> = (v["throughput"].as_array().into_iter().flatten())
        .filter_map(|r| r["concurrency"].as_u64())
        .filter(|&c| Some(c) != default)
        .collect();
    other.sort_unstable();
    other.dedup();
    if other.is_empty() {
        return String::new();
    }
    let wide: Vec<String> = other
        .iter()
        .map(|c| format!("{c} on the × {c} rows"))
        .collect();
    format!(" ({})", wide.join(", "))
}

/// The side-by-side table and how to read its ratios.
fn table(sys: &[Option<Value>; 3]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n| figure | taskfleet | BullMQ | raw JetStream | taskfleet/BullMQ | taskfleet/raw |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for r in rows(sys) {
        let [t, b, raw] = r.values;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.label,
            fmt_value(t, r.unit),
            fmt_value(b, r.unit),
            fmt_value(raw, r.unit),
            ratio(t, b),
            ratio(t, raw)
        );
    }
    let _ = writeln!(
        s,
        "\nRatios are plain value ratios (taskfleet ÷ the other). Higher is better for tasks/s and \
         deliveries/s (a ratio above 1 means taskfleet is ahead); lower is better for ms, MB and \
         writes (a ratio below 1 means taskfleet is ahead). BullMQ and raw JetStream have one way \
         to create, so their figures repeat on the HTTP and NATS rows. Writes stored per task: \
         JetStream messages for taskfleet and raw JetStream (the streams' last sequences ÷ \
         tasks), Redis write commands appended to the AOF per job for BullMQ (a Lua script's \
         effects one command each; MULTI/EXEC not counted)."
    );
    s
}

/// The issue's targets as a table, each met or not with its ratio.
fn targets_block(issue: &str, all: Vec<Target>) -> String {
    let met = all.iter().filter(|t| t.met == Some(true)).count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n**Targets of the issue \"{issue}\"**, computed from the figures above: \
         {met} of {} met.\n",
        all.len()
    );
    let _ = writeln!(s, "| target | measured | ratio | met? |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    for t in all {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "— (no figure)",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {verdict} |",
            t.what, t.measured, t.ratio
        );
    }
    s
}

/// Per system: the writes stored per task of every run, its `*_note` fields, and slow idle
/// latency samples.
fn notes(sys: &[Option<Value>; 3]) -> Vec<String> {
    let mut notes = Vec::new();
    for (i, (_, name)) in SYSTEMS.iter().enumerate() {
        let Some(obj) = sys[i].as_ref().and_then(Value::as_object) else {
            continue;
        };
        notes.extend(writes_note(name, obj, WRITES[i]));
        for (k, v) in obj {
            if let (Some(what), Some(text)) = (k.strip_suffix("_note"), v.as_str()) {
                notes.push(format!("- {name}, {}: {text}", what.replace('_', " ")));
            }
        }
        notes.extend(slow_latency_notes(name, obj));
    }
    notes
}

/// "- NAME, writes stored per task: 3.00 (nats, 1 × 8, 0 steps); …" over every throughput run.
fn writes_note(name: &str, obj: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    let default = obj.get("concurrency").and_then(Value::as_u64).unwrap_or(8);
    let runs = obj.get("throughput").and_then(Value::as_array)?;
    let stored: Vec<String> = (runs.iter())
        .filter_map(|r| {
            let w = num(&r[key])?;
            let how = match r["create"].as_str() {
                Some(c) if c != "add" => format!("{c}, "),
                _ => String::new(),
            };
            let c = r["concurrency"].as_u64().unwrap_or(default);
            let bytes = num(&r["aof_bytes_per_task"]).map_or(String::new(), |b| {
                format!("; {} AOF bytes", grouped(b as i64))
            });
            Some(format!(
                "{w:.2} ({how}{} × {c}, {} steps{bytes})",
                r["procs"], r["steps"]
            ))
        })
        .collect();
    let what = if key == "redis_writes_per_task" {
        "Redis write commands appended to the AOF per job"
    } else {
        "JetStream messages stored per task"
    };
    (!stored.is_empty()).then(|| format!("- {name}, {what}: {}", stored.join("; ")))
}

/// Idle latency runs where some samples took over 100 ms.
fn slow_latency_notes(name: &str, obj: &serde_json::Map<String, Value>) -> Vec<String> {
    let latencies = [
        ("", obj.get("idle_latency_ms")),
        (
            " (HTTP create)",
            obj.get("extra").and_then(|e| e.get("idle_latency_ms_http")),
        ),
    ];
    let mut notes = Vec::new();
    for (how, l) in latencies {
        let Some(l) = l else { continue };
        if let (Some(slow), Some(n)) = (l["over_100ms"].as_u64(), l["samples"].as_u64()) {
            if slow > 0 {
                notes.push(format!(
                    "- {name}, idle latency{how}: {slow} of {n} samples took over 100 ms (max {:.0} ms)",
                    l["max"].as_f64().unwrap_or(f64::NAN)
                ));
            }
        }
    }
    notes
}

/// Replaces what lies between the markers of `doc`.
fn splice(doc: &str, body: &str) -> anyhow::Result<String> {
    let (Some(a), Some(b)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("the doc has no {BEGIN} … {END} markers");
    };
    if b < a {
        bail!("{END} comes before {BEGIN}");
    }
    Ok(format!("{}{BEGIN}\n{}{}", &doc[..a], body, &doc[b..]))
}

/// Loads the results, prints the section, splices it into the doc and writes the merged JSON.
fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    let sys = load(&o.files);
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let m = machine();
    let body = section(&sys, &o.command, &date, &m);
    println!("{body}");
    if let Some(doc) = &o.doc {
        let text = std::fs::read_to_string(doc).with_context(|| doc.display().to_string())?;
        std::fs::write(doc, splice(&text, &body)?)?;
        eprintln!("bench_report: updated {}", doc.display());
    }
    if let Some(path) = &o.json {
        let mut systems = serde_json::Map::new();
        for (i, (key, _)) in SYSTEMS.iter().enumerate() {
            systems.insert(key.to_string(), sys[i].clone().unwrap_or(Value::Null));
        }
        let merged = json!({
            "date": date, "command": o.command, "machine": m, "systems": systems,
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&merged)? + "\n")?;
        eprintln!("bench_report: wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn relay_targets_are_met_at_or_above_5_000_and_20_000_deliveries_per_s() {
        let tf = serde_json::json!({"relay_per_s": 5000.0, "relay_fanout_per_s": 19_999.0});
        let met: Vec<_> = super::relay_targets(&[Some(tf), None, None])
            .into_iter()
            .map(|t| t.met)
            .collect();
        assert_eq!(met, [Some(true), Some(false)]);
        let none = super::relay_targets(&[None, None, None]);
        assert!(none.iter().all(|t| t.met.is_none()));
    }

    #[test]
    fn the_fanout_row_names_the_events_and_destinations_a_program_reported() {
        let tf = serde_json::json!({"system": "taskfleet", "relay_fanout_per_s": 4000.0,
            "extra": {"relay_fanout": {"events": 100, "destinations": 100}}});
        let sys = [Some(tf), None, None];
        let row = (super::rows(&sys).into_iter())
            .find(|r| r.label.contains("100 webhook destinations"))
            .expect("a fan-out row");
        assert_eq!(
            row.label,
            "relay: 100 progress events × 100 webhook destinations, in order per destination \
             (taskfleet signs each, and starts on a backlog)"
        );
        assert_eq!(row.values, [Some(4000.0), None, None]);
    }

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = "intro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nrest\n";
        let out = super::splice(doc, "new\n").unwrap();
        assert_eq!(
            out,
            "intro\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\nrest\n"
        );
    }
}

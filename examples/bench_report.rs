//! The report of `make bench` (issue 7): reads the JSON objects written by the taskfleet, BullMQ
//! and raw-JetStream benchmarks (see examples/bench/ and docs/benchmarks.md), prints a markdown
//! section with one row per figure, puts it between `<!-- bench:begin -->` and
//! `<!-- bench:end -->` of the doc, and writes the merged JSON.
//!
//! Run: `target/release/examples/bench_report [--doc docs/benchmarks.md]
//!       [--json docs/benchmarks.json] [--command "make bench"] TASKFLEET.json BULLMQ.json RAW.json`
//!
//! A missing or unreadable file leaves that system's column as "—".

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";
const SYSTEMS: [(&str, &str); 3] = [
    ("taskfleet", "taskfleet"),
    ("bullmq", "BullMQ"),
    ("raw-jetstream", "raw JetStream"),
];

struct Opts {
    doc: Option<PathBuf>,
    json: Option<PathBuf>,
    command: String,
    files: Vec<PathBuf>,
}

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
    PerS,
    Ms,
    Mb,
}

struct Row {
    label: String,
    unit: Unit,
    values: [Option<f64>; 3],
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// The throughput row of `sys` with these procs and steps (and create, when given).
fn throughput(sys: &Value, procs: u64, steps: u64, create: Option<&str>) -> Option<f64> {
    sys["throughput"]
        .as_array()?
        .iter()
        .find(|r| {
            r["procs"].as_u64() == Some(procs)
                && r["steps"].as_u64() == Some(steps)
                && create.is_none_or(|c| r["create"].as_str() == Some(c))
        })
        .and_then(|r| num(&r["tasks_per_s"]))
}

fn rows(sys: &[Option<Value>; 3]) -> Vec<Row> {
    let null = Value::Null;
    let get = |i: usize| sys[i].as_ref().unwrap_or(&null);
    let mut rows = Vec::new();
    let matrix = [
        (1, 0, "http"),
        (1, 0, "nats"),
        (1, 3, "http"),
        (1, 3, "nats"),
        (2, 0, "nats"),
        (4, 0, "nats"),
    ];
    for (procs, steps, create) in matrix {
        let how = if create == "http" {
            "taskfleet creates over HTTP"
        } else {
            "taskfleet publishes to NATS"
        };
        let procs_text = if procs == 1 {
            "1 worker process".to_string()
        } else {
            format!("{procs} worker processes")
        };
        rows.push(Row {
            label: format!("throughput, {procs_text} × 8, {steps} steps ({how})"),
            unit: Unit::PerS,
            values: [
                throughput(get(0), procs, steps, Some(create)),
                throughput(get(1), procs, steps, None),
                throughput(get(2), procs, steps, None),
            ],
        });
    }
    let pick = |f: &dyn Fn(&Value) -> Option<f64>| [f(get(0)), f(get(1)), f(get(2))];
    for (p, name) in [("p50", "p50"), ("p99", "p99")] {
        rows.push(Row {
            label: format!("idle dispatch latency {name} (taskfleet publishes to NATS)"),
            unit: Unit::Ms,
            values: pick(&|s| num(&s["idle_latency_ms"][p])),
        });
    }
    for p in ["p50", "p99"] {
        let mut values = pick(&|s| num(&s["idle_latency_ms"][p]));
        values[0] = num(&get(0)["extra"]["idle_latency_ms_http"][p]);
        rows.push(Row {
            label: format!("idle dispatch latency {p} (taskfleet creates over HTTP)"),
            unit: Unit::Ms,
            values,
        });
    }
    let queued = (0..3)
        .find_map(|i| get(i)["p0_behind_p2_ms"]["p2_queued"].as_u64())
        .unwrap_or(10_000);
    rows.push(Row {
        label: format!(
            "P0 start after the slot frees, behind {} queued P2",
            grouped(queued as i64)
        ),
        unit: Unit::Ms,
        values: pick(&|s| num(&s["p0_behind_p2_ms"]["ms"])),
    });
    rows.push(Row {
        label: "relay: progress events to one webhook, in order".into(),
        unit: Unit::PerS,
        values: pick(&|s| num(&s["relay_per_s"])),
    });
    for (k, what) in [
        ("worker", "one idle worker process"),
        ("api", "the idle API process"),
    ] {
        rows.push(Row {
            label: format!("RSS of {what}"),
            unit: Unit::Mb,
            values: pick(&|s| num(&s["rss_mb"][k])),
        });
    }
    rows
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

fn fmt_value(v: Option<f64>, unit: Unit) -> String {
    let Some(x) = v else { return "—".into() };
    match unit {
        Unit::PerS => format!("{}/s", grouped(x.round() as i64)),
        Unit::Ms => format!("{x:.2} ms"),
        Unit::Mb => format!("{x:.1} MB"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

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

fn section(sys: &[Option<Value>; 3], command: &str, date: &str, m: &Value) -> String {
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
        match &sys[i] {
            Some(v) => {
                let _ = writeln!(
                    s,
                    "- **{name}:** {}; {} tasks per throughput run, concurrency {} per worker process",
                    versions(v),
                    v["tasks"],
                    v["concurrency"]
                );
                for e in v["errors"].as_array().into_iter().flatten() {
                    let _ = writeln!(s, "  - failed: {}", e.as_str().unwrap_or("?"));
                }
            }
            None => {
                let _ = writeln!(s, "- **{name}:** no result (not run, or it failed)");
            }
        }
    }
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
         deliveries/s (a ratio above 1 means taskfleet is ahead); lower is better for ms and MB (a \
         ratio below 1 means taskfleet is ahead). BullMQ and raw JetStream have one way to create, \
         so their figures repeat on the HTTP and NATS rows."
    );
    let mut notes = Vec::new();
    for (i, (_, name)) in SYSTEMS.iter().enumerate() {
        let Some(obj) = sys[i].as_ref().and_then(Value::as_object) else {
            continue;
        };
        let stored: Vec<String> = obj
            .get("throughput")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r["procs"].as_u64() == Some(1))
            .filter_map(|r| {
                let w = r["stream_writes_per_task"].as_f64()?;
                let how = r["create"]
                    .as_str()
                    .map_or(String::new(), |c| format!("{c}, "));
                Some(format!("{w:.1} ({how}{} steps)", r["steps"]))
            })
            .collect();
        if !stored.is_empty() {
            notes.push(format!(
                "- {name}, JetStream messages stored per task: {}",
                stored.join("; ")
            ));
        }
        for (k, v) in obj {
            if let (Some(what), Some(text)) = (k.strip_suffix("_note"), v.as_str()) {
                notes.push(format!("- {name}, {}: {text}", what.replace('_', " ")));
            }
        }
        let latencies = [
            ("", &obj.get("idle_latency_ms")),
            (
                " (HTTP create)",
                &obj.get("extra").and_then(|e| e.get("idle_latency_ms_http")),
            ),
        ];
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
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes from the programs:\n\n{}", notes.join("\n"));
    }
    s
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
    fn splice_replaces_only_between_the_markers() {
        let doc = "intro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nrest\n";
        let out = super::splice(doc, "new\n").unwrap();
        assert_eq!(
            out,
            "intro\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\nrest\n"
        );
    }
}

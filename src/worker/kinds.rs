//! Running one claimed task by kind: `exec` and `agent` run a process, `hook` hands the task to a
//! local endpoint and waits for the bot to report back, `noop` completes at once.

use super::process::{self, OutputChunk, ProcessSpec, Stream};
use super::Ctx;
use crate::domain::payload::{AgentMode, AgentPayload, ExecPayload};
use crate::domain::{EventKind, Task, TaskKind, TaskStatus};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a run ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Finish the task as completed.
    Completed { result: Value, detail: Value },
    /// Finish the task as failed.
    Failed { error: String, detail: Value },
    /// Stopped by the worker (cancel, lease lost, hand-back): the stop reason decides.
    Stopped,
    /// Somebody else finished it (a bot reporting through the API): just acknowledge.
    FinishedElsewhere,
}

/// Largest result text kept from a command's output.
const RESULT_TAIL: usize = 64 * 1024;

fn failed(error: impl Into<String>) -> Outcome {
    Outcome::Failed {
        error: error.into(),
        detail: Value::Null,
    }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// Runs `task` until it ends or `stop` is cancelled.
pub(super) async fn run(ctx: &Ctx, task: &Task, stop: CancellationToken) -> Outcome {
    match task.kind {
        TaskKind::Noop => run_noop(ctx, task, stop).await,
        TaskKind::Exec => match serde_json::from_value::<ExecPayload>(task.payload.clone()) {
            Ok(p) => {
                let timeout = p
                    .timeout_s
                    .or(task.timeout_s)
                    .unwrap_or(ctx.settings.exec_timeout_s);
                let spec = ctx.spec(task, p.program(), p.cwd.clone(), &p.env, timeout, p.pty);
                run_process(ctx, task, spec, None, stop).await
            }
            Err(e) => failed(format!("exec payload: {e}")),
        },
        TaskKind::Agent => match serde_json::from_value::<AgentPayload>(task.payload.clone()) {
            Ok(p) => run_agent(ctx, task, p, stop).await,
            Err(e) => failed(format!("agent payload: {e}")),
        },
        TaskKind::Hook => run_hook(ctx, task, stop).await,
        TaskKind::Manual => failed("manual tasks are claimed by bots over the API, not by workers"),
    }
}

/// `noop` completes at once. With `{"steps": N}` (N ≤ 100) it first reports N steps, as a task
/// reporting its progress would, and with `{"sleep_ms": M}` (≤ 60 s) it first waits M ms:
/// benchmarks use these to price a step update and to hold a slot busy. With `{"stamp": true}`
/// its result is `{"handler_started_us": <µs since the epoch>}`, the wall clock when the handler
/// began (its claim stored): benchmarks time dispatch up to there.
async fn run_noop(ctx: &Ctx, task: &Task, stop: CancellationToken) -> Outcome {
    let stamped = (task.payload.get("stamp").and_then(Value::as_bool) == Some(true))
        .then(|| chrono::Utc::now().timestamp_micros());
    let number = |key: &str, max: u64| {
        task.payload
            .get(key)
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(max)
    };
    let (steps, sleep_ms) = (number("steps", 100), number("sleep_ms", 60_000));
    if sleep_ms > 0 {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)) => {}
            _ = stop.cancelled() => return Outcome::Stopped,
        }
    }
    for i in 1..=steps {
        let name = Some(format!("step {i}"));
        if let Err(e) = ctx.tasks.step(&task.id, None, name, &ctx.worker_id).await {
            return failed(format!("step {i}: {e}"));
        }
    }
    let result = match stamped {
        Some(us) => json!({ "handler_started_us": us }),
        None => json!("ok"),
    };
    Outcome::Completed {
        result,
        detail: Value::Null,
    }
}

async fn run_agent(ctx: &Ctx, task: &Task, p: AgentPayload, stop: CancellationToken) -> Outcome {
    let agents = &ctx.settings.agents;
    let (agent_id, template) = match agents.get(&p.agent_id) {
        Some(t) => (p.agent_id.clone(), t),
        None => match ctx
            .settings
            .fallback_agent
            .as_ref()
            .and_then(|f| agents.get(f).map(|t| (f, t)))
        {
            Some((fallback, t)) => {
                let note = format!(
                    "agent {:?} is not configured; running with the fallback agent {fallback:?}",
                    p.agent_id
                );
                ctx.tasks
                    .record(
                        task,
                        EventKind::Progress,
                        &ctx.worker_id,
                        Some(note),
                        json!({"fallback_agent": fallback}),
                    )
                    .await;
                (fallback.clone(), t)
            }
            None => {
                let known: Vec<&str> = agents.keys().map(String::as_str).collect();
                return failed(format!(
                    "unknown agent_id {:?}; configured agents: {}",
                    p.agent_id,
                    known.join(", ")
                ));
            }
        },
    };
    let argv_template = match p.mode {
        AgentMode::Session => template.session_argv.as_ref().unwrap_or(&template.argv),
        AgentMode::Run => &template.argv,
    };
    let cwd = p.cwd.clone().unwrap_or_default();
    let argv: Vec<String> = argv_template
        .iter()
        .map(|a| {
            a.replace("{prompt}", &p.prompt)
                .replace("{cwd}", &cwd)
                .replace("{task_id}", task.id.as_str())
        })
        .collect();
    let timeout = p
        .run_timeout_s
        .or(task.timeout_s)
        .unwrap_or(ctx.settings.exec_timeout_s);
    let mut spec = ctx.spec(
        task,
        argv,
        p.cwd.clone(),
        &Default::default(),
        timeout,
        false,
    );
    spec.env.push(("TASKFLEET_AGENT_ID".into(), agent_id));
    // One-shot runs get no stdin; sessions keep it open for follow-ups.
    let close_stdin = (p.mode == AgentMode::Run).then_some(());
    run_process(ctx, task, spec, close_stdin, stop).await
}

async fn run_process(
    ctx: &Ctx,
    task: &Task,
    spec: ProcessSpec,
    close_stdin: Option<()>,
    stop: CancellationToken,
) -> Outcome {
    let seconds = spec.timeout.map(|t| t.as_secs()).unwrap_or_default();
    let (out_tx, mut out_rx) = mpsc::channel::<OutputChunk>(64);
    let (in_tx, in_rx) = mpsc::channel(16);
    if close_stdin.is_none() {
        ctx.running.set_stdin(&task.id, Some(in_tx));
    } else {
        drop(in_tx);
    }
    let pump = {
        let (tasks, task, worker) = (ctx.tasks.clone(), task.clone(), ctx.worker_id.clone());
        tokio::spawn(async move {
            while let Some(c) = out_rx.recv().await {
                let stream = match c.stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                let data = json!({
                    "stream": stream, "first_line": c.first_line,
                    "text": c.text, "dropped_bytes": c.dropped_bytes,
                });
                tasks
                    .record(&task, EventKind::Output, &worker, None, data)
                    .await;
            }
        })
    };
    let res = process::run(spec, out_tx, in_rx, stop).await;
    ctx.running.set_stdin(&task.id, None);
    let _ = pump.await;
    let o = match res {
        Ok(o) => o,
        Err(e) => return failed(format!("cannot start the command: {e}")),
    };
    let detail = json!({
        "exit_code": o.exit_code, "signal": o.signal,
        "stdout_bytes": o.stdout_bytes, "stderr_bytes": o.stderr_bytes,
    });
    if o.cancelled {
        Outcome::Stopped
    } else if o.timed_out {
        Outcome::Failed {
            error: format!("timed out after {seconds} s"),
            detail,
        }
    } else if o.exit_code == Some(0) {
        Outcome::Completed {
            result: Value::String(tail(&o.stdout_tail, RESULT_TAIL)),
            detail,
        }
    } else {
        let why = match (o.exit_code, o.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended abnormally".to_string(),
        };
        let stderr = tail(o.stderr_tail.trim_end(), 2000);
        Outcome::Failed {
            error: if stderr.is_empty() {
                why
            } else {
                format!("{why}: {stderr}")
            },
            detail,
        }
    }
}

/// `hook`: POST the task to the bot's gateway, then keep the lease until the bot reports back
/// through the API (the task leaves `running`).
async fn run_hook(ctx: &Ctx, task: &Task, stop: CancellationToken) -> Outcome {
    let Some(url) = ctx.settings.hook_url.clone() else {
        return failed("no worker.hook_url is configured for hook tasks");
    };
    let body = json!({
        "task": task,
        "api_url": ctx.api_url,
        "task_token": ctx.task_token(task),
    });
    let sent = ctx
        .http()
        .post(&url)
        .timeout(Duration::from_secs(15))
        .json(&body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            return failed(format!(
                "hook endpoint answered HTTP {}",
                r.status().as_u16()
            ))
        }
        Err(e) => return failed(format!("hook endpoint unreachable: {e}")),
    }
    // Every event of the task wakes a re-read of its state (a bot reporting back sends one);
    // a slow poll covers events missed on core NATS. Heard over the reader connection: an
    // event whose headers no client can parse (a fleet user wrote it) drops that one, not the
    // connection leases and events go over.
    let subject = crate::bus::subjects::task_ledger(&task.assigned_to, &task.id);
    let reader = match ctx.tasks.bus().reader().await {
        Ok(r) => r,
        Err(e) => return failed(format!("cannot follow the task's events: {e}")),
    };
    let mut events = match reader.client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => return failed(format!("cannot follow the task's events: {e}")),
    };
    loop {
        // Only a state newer than our claim counts: an older one is a lagging replica's.
        match ctx.tasks.get(&task.id).await {
            Ok(t)
                if t.revision > task.revision
                    && (t.status != TaskStatus::Running || t.attempt != task.attempt) =>
            {
                return Outcome::FinishedElsewhere
            }
            _ => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return Outcome::Stopped,
            Some(_) = events.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

impl Ctx {
    /// The process spec for a task's command, with the task's environment.
    fn spec(
        &self,
        task: &Task,
        argv: Vec<String>,
        cwd: Option<String>,
        env: &std::collections::BTreeMap<String, String>,
        timeout_s: u64,
        pty: bool,
    ) -> ProcessSpec {
        let mut vars: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.push(("TASKFLEET_TASK_ID".into(), task.id.to_string()));
        vars.push(("TASKFLEET_API_URL".into(), self.api_url.clone()));
        if let Some(t) = self.task_token(task) {
            vars.push(("TASKFLEET_TASK_TOKEN".into(), t));
        }
        ProcessSpec {
            argv,
            cwd: cwd.filter(|c| !c.is_empty()).map(PathBuf::from),
            env: vars,
            timeout: Some(Duration::from_secs(timeout_s)),
            kill_grace: Duration::from_secs(self.settings.kill_grace_s),
            pty,
            output_cap: self.settings.output_cap_bytes,
            chunk_interval: Duration::from_millis(self.settings.output_interval_ms),
        }
    }
}

//! `taskfleet pulse …` (and `async-task …`): what a bot calls from inside a task — start, steps,
//! heartbeats, progress, done/fail, pushes and status — backed by the fleet. Calls that cannot
//! reach the API are spooled and replayed (see `spool.rs`), so the command always returns fast.

use super::spool::{send, CallError, Spool, SpooledCall};
use crate::client::ApiClient;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::process::ExitCode;

/// Flags shared by every pulse verb.
#[derive(Debug, Args)]
pub struct PulseArgs {
    #[command(flatten)]
    flags: super::api_flags::ApiFlags,
    /// Chat session that receives this task's pushes [default: $OPENCLAW_SESSION].
    #[arg(long, env = "OPENCLAW_SESSION", global = true)]
    session: Option<String>,
    #[command(subcommand)]
    cmd: PulseCmd,
}

#[derive(Debug, Subcommand)]
enum PulseCmd {
    /// Create a task (or attach to the one a worker runs) and print its id; returns at once.
    Start {
        description: String,
        /// Named steps.
        #[arg(long, num_args = 1..)]
        steps: Vec<String>,
        /// Assignee [default: $TASKFLEET_ASSIGNEE, else "agent"].
        #[arg(long, env = "TASKFLEET_ASSIGNEE")]
        assignee: Option<String>,
    },
    /// Finish the current step and move to the next: `next [ID] "<info>"`.
    #[command(alias = "step")]
    Next { args: Vec<String> },
    /// A long step is alive: `heartbeat [ID] "<info>"`.
    Heartbeat { args: Vec<String> },
    /// Percent done: `progress [ID] 60 ["<info>"]`.
    Progress { args: Vec<String> },
    /// Finish successfully: `done [ID] "<result>"`.
    Done { args: Vec<String> },
    /// Finish unsuccessfully: `fail [ID] "<error>"`.
    #[command(alias = "error")]
    Fail { args: Vec<String> },
    /// Send a message to the session, with no task.
    Push { message: String },
    /// Current tasks with step progress; stalled ones flagged.
    Status { id: Option<String> },
    /// Remove finished tasks older than the retention.
    Cleanup {
        #[arg(long, default_value_t = 7)]
        older_than_days: u64,
    },
    /// (internal) retry the spool for up to a minute.
    #[command(name = "__replay", hide = true)]
    Replay,
}

/// Flags of `async-task` (seed 000), same meaning as there.
#[derive(Debug, Args)]
pub struct AsyncTaskArgs {
    #[command(flatten)]
    pulse: PulseArgs,
}

struct Ctx {
    client: ApiClient,
    spool: Spool,
    session: Option<String>,
    api: String,
}

/// What a call without a task id says when `session` started none: the usual slip is a start
/// with `--session` (or `$OPENCLAW_SESSION`) and a later call without it.
fn no_task(session: &str) -> String {
    format!(
        "no task: session `{session}` started none; pass an ID, or run `pulse start` first \
         (a task started with --session or $OPENCLAW_SESSION is found with the same session)"
    )
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("taskfleet pulse: {msg}");
    ExitCode::FAILURE
}

impl Ctx {
    fn session_name(&self) -> &str {
        self.session.as_deref().unwrap_or("default")
    }

    /// `[ID] text`: the id (explicit, else $TASKFLEET_TASK_ID, else this session's last task).
    fn target(&self, args: &[String]) -> Result<(String, String), String> {
        let (id, text) = match args {
            [id, text] => (Some(id.clone()), text.clone()),
            [text] => (None, text.clone()),
            [] => (None, String::new()),
            _ => return Err("expected [ID] \"<text>\"".into()),
        };
        let id = id
            .or_else(|| std::env::var("TASKFLEET_TASK_ID").ok())
            .or_else(|| self.spool.last_task(self.session_name()))
            .ok_or_else(|| no_task(self.session_name()))?;
        Ok((self.spool.resolve(&id), text))
    }

    /// Sends a write, replaying earlier spooled calls first; spools it when the API is down.
    async fn write(
        &self,
        method: &str,
        path: String,
        body: Value,
        placeholder: Option<String>,
    ) -> Result<Option<Value>, ExitCode> {
        let spooled_before = self.spool.replay(&self.client).await.is_err();
        let call = SpooledCall {
            method: method.into(),
            path,
            body: Some(body),
            idempotency_key: format!("pulse-{}", ulid::Ulid::new()),
            placeholder,
        };
        let result = if spooled_before {
            Err(CallError::Unreachable(
                "earlier calls are still queued".into(),
            ))
        } else {
            send(&self.client, &call).await
        };
        match result {
            Ok(v) => Ok(Some(v)),
            Err(CallError::Refused(status, msg)) => Err(fail(format!("{msg} (HTTP {status})"))),
            Err(CallError::Unreachable(why)) => {
                if let Err(e) = self.spool.push(&call) {
                    return Err(fail(format!(
                        "API unreachable ({why}) and cannot spool: {e}"
                    )));
                }
                eprintln!(
                    "taskfleet pulse: the API at {} is unreachable ({why}); queued the call in {} — it is sent on the next pulse call or within a minute",
                    self.api,
                    self.spool.path().display()
                );
                spawn_background_replay();
                Ok(None)
            }
        }
    }
}

fn spawn_background_replay() {
    use std::os::unix::process::CommandExt;
    if let Ok(exe) = std::env::current_exe() {
        let _ = std::process::Command::new(exe)
            .args(["pulse", "__replay"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
    }
}

/// Runs one `pulse` verb.
pub(super) async fn run(args: PulseArgs) -> ExitCode {
    run_as(args, false).await
}

/// Runs one `async-task` verb (seed 000's messages).
pub(super) async fn run_async_task(args: AsyncTaskArgs) -> ExitCode {
    run_as(args.pulse, true).await
}

async fn run_as(args: PulseArgs, async_task: bool) -> ExitCode {
    let ctx = Ctx {
        client: args
            .flags
            .client(std::env::var("TASKFLEET_TASK_TOKEN").ok()),
        spool: Spool::open(),
        session: args.session.clone().filter(|s| !s.is_empty()),
        api: args.flags.api.clone(),
    };
    match &args.cmd {
        PulseCmd::Start {
            description,
            steps,
            assignee,
        } => start(&ctx, description, steps, assignee.as_deref(), async_task).await,
        PulseCmd::Next { args } => {
            step_like(&ctx, args, "step", |info| json!({ "info": info })).await
        }
        PulseCmd::Heartbeat { args } => {
            step_like(&ctx, args, "heartbeat", |info| json!({ "info": info })).await
        }
        PulseCmd::Progress { args } => progress(&ctx, args).await,
        PulseCmd::Done { args } => finish(&ctx, args, true, async_task).await,
        PulseCmd::Fail { args } => finish(&ctx, args, false, async_task).await,
        PulseCmd::Push { message } => push(&ctx, message).await,
        PulseCmd::Status { id } => {
            super::pulse_status::status(
                &ctx.client,
                &ctx.spool,
                ctx.session.as_deref(),
                id.as_deref(),
                args.flags.json,
            )
            .await
        }
        PulseCmd::Cleanup { older_than_days } => {
            let body = json!({ "older_than_s": older_than_days * 86_400 });
            match ctx
                .write("POST", "/api/tasks/cleanup".into(), body, None)
                .await
            {
                Ok(Some(v)) => {
                    println!(
                        "removed {} finished task(s)",
                        v["removed"].as_u64().unwrap_or(0)
                    );
                    ExitCode::SUCCESS
                }
                Ok(None) => ExitCode::SUCCESS,
                Err(code) => code,
            }
        }
        PulseCmd::Replay => {
            for _ in 0..12 {
                if ctx.spool.replay(&ctx.client).await.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            ExitCode::SUCCESS
        }
    }
}

async fn start(
    ctx: &Ctx,
    description: &str,
    steps: &[String],
    assignee: Option<&str>,
    async_task: bool,
) -> ExitCode {
    if let Ok(id) = std::env::var("TASKFLEET_TASK_ID") {
        // Inside a task a worker runs: attach to it.
        ctx.spool.set_last_task(ctx.session_name(), &id);
        let _ = ctx
            .write(
                "POST",
                format!("/api/tasks/{id}/heartbeat"),
                json!({ "info": description }),
                None,
            )
            .await;
        println!("{id}");
        return ExitCode::SUCCESS;
    }
    let placeholder = format!("spool-{}", ulid::Ulid::new());
    let mut body = json!({
        "task_name": description,
        "assigned_to": assignee.unwrap_or("agent"),
        "steps": steps,
        "created_by": format!("pulse:{}", ctx.session_name()),
        "idempotency_key": placeholder,
    });
    // async-task pushes its own seed-000 messages; pulse tasks are announced by the relay.
    if !async_task {
        if let Some(s) = &ctx.session {
            body["notify"] = json!([{ "session_id": s }]);
        }
    }
    let id = match ctx
        .write("POST", "/api/tasks".into(), body, Some(placeholder.clone()))
        .await
    {
        Ok(Some(task)) => task["id"].as_str().unwrap_or(&placeholder).to_string(),
        Ok(None) => placeholder,
        Err(code) => return code,
    };
    if let Err(code) = ctx
        .write("PUT", format!("/api/tasks/{id}/start"), json!({}), None)
        .await
    {
        return code;
    }
    ctx.spool.set_last_task(ctx.session_name(), &id);
    println!("{id}");
    ExitCode::SUCCESS
}

async fn step_like(
    ctx: &Ctx,
    args: &[String],
    verb: &str,
    body: impl Fn(&str) -> Value,
) -> ExitCode {
    let (id, text) = match ctx.target(args) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    match ctx
        .write("POST", format!("/api/tasks/{id}/{verb}"), body(&text), None)
        .await
    {
        Ok(Some(task)) => {
            let p = &task["progress"];
            match (p["done"].as_u64(), p["total"].as_u64()) {
                (Some(d), Some(t)) if t > 0 => {
                    println!("[{d}/{t}] {}", p["current"].as_str().unwrap_or("done"))
                }
                _ => println!("ok"),
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

async fn progress(ctx: &Ctx, args: &[String]) -> ExitCode {
    let (id_arg, rest) = match args.first().map(|a| a.parse::<u8>()) {
        Some(Ok(_)) => (None, args),
        Some(Err(_)) if args.len() >= 2 => (Some(args[0].clone()), &args[1..]),
        _ => return fail("usage: progress [ID] <percent 0-100> [\"<info>\"]"),
    };
    let Some(Ok(percent)) = rest.first().map(|p| p.parse::<u8>()) else {
        return fail("percent must be a whole number from 0 to 100");
    };
    let info = rest.get(1).cloned().unwrap_or_default();
    let target: Vec<String> = id_arg
        .into_iter()
        .chain(std::iter::once(info.clone()))
        .collect();
    let (id, _) = match ctx.target(&target) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let body = json!({ "percent": percent, "info": info });
    match ctx
        .write("POST", format!("/api/tasks/{id}/progress"), body, None)
        .await
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

async fn finish(ctx: &Ctx, args: &[String], ok: bool, async_task: bool) -> ExitCode {
    let (id, text) = match ctx.target(args) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let (verb, body) = if ok {
        ("complete", json!({ "result": text }))
    } else {
        ("fail", json!({ "error": text }))
    };
    if let Err(code) = ctx
        .write("PUT", format!("/api/tasks/{id}/{verb}"), body, None)
        .await
    {
        return code;
    }
    if async_task {
        let message = if ok {
            format!("✅ {text}")
        } else {
            format!("❌ Task failed: {text}")
        };
        return push(ctx, &message).await;
    }
    println!("{}", if ok { "done" } else { "failed" });
    ExitCode::SUCCESS
}

async fn push(ctx: &Ctx, message: &str) -> ExitCode {
    let mut body = json!({ "content": message, "role": "assistant" });
    if let Some(s) = &ctx.session {
        body["sessionId"] = json!(s);
    }
    match ctx.write("POST", "/api/push".into(), body, None).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

//! `taskfleet task …`: the API from the shell. Tables by default, `--json` for scripts; errors
//! print the server's message and exit non-zero.

use super::output::{Output, MESSAGE_CHARS};
use crate::client::{ApiClient, ClientError};
use crate::domain::{EventKind, Task, TaskStatus};
use crate::text::message::first_line;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};
use std::process::ExitCode;

/// Flags shared by every `task` subcommand.
#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(flatten)]
    flags: super::api_flags::ApiFlags,
    #[command(subcommand)]
    cmd: TaskCmd,
}

#[derive(Debug, Subcommand)]
enum TaskCmd {
    /// Create a task (now, or later with --at / --in).
    Create(Box<CreateArgs>),
    /// Show one task.
    Get { id: String },
    /// List tasks, newest first (a full page prints, on stderr, the flag for the next one).
    List(ListArgs),
    /// Pending tasks, P0 first.
    Pending {
        #[arg(long, short = 'a')]
        assignee: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Claim a pending task.
    Start { id: String },
    /// Finish a running task.
    Complete {
        id: String,
        /// Result text (or JSON with --result-json).
        #[arg(long, short = 'r')]
        result: Option<String>,
        /// Parse --result as JSON.
        #[arg(long)]
        result_json: bool,
        /// Fencing token from `start`.
        #[arg(long)]
        fencing_token: Option<String>,
    },
    /// Fail a running task.
    Fail {
        id: String,
        #[arg(long, short = 'e')]
        error: String,
        #[arg(long)]
        fencing_token: Option<String>,
    },
    /// Cancel a pending or running task.
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Queue a failed or cancelled task again.
    Retry { id: String },
    /// Move a scheduled (delayed) task to another time.
    Reschedule {
        id: String,
        #[command(flatten)]
        when: When,
    },
    /// The task log.
    Logs { id: String },
    /// Captured output of a command task (the last lines, or from --offset).
    Output {
        id: String,
        #[arg(long)]
        offset: Option<usize>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Write to a running command's stdin.
    Input {
        id: String,
        /// Text to write (add \n yourself, or use --line).
        data: String,
        /// Append a newline.
        #[arg(long)]
        line: bool,
        /// Close stdin afterwards.
        #[arg(long)]
        eof: bool,
    },
    /// Tasks that used up their attempts.
    Dead {
        /// Only this assignee's dead letters.
        #[arg(long, short = 'a')]
        assignee: Option<String>,
        /// Dead letters per page (the API's default when not given).
        #[arg(long)]
        limit: Option<usize>,
        /// The page after the one that printed this cursor (oldest first).
        #[arg(long)]
        after: Option<String>,
    },
    /// Follow a task's events live until it finishes.
    Watch {
        id: String,
        /// Keep following after the task finishes.
        #[arg(long, conflicts_with = "exit_status")]
        follow: bool,
        /// Exit 0 only if the task completed, 1 if it failed or was cancelled.
        #[arg(long)]
        exit_status: bool,
    },
}

/// `task list`'s flags: the filters of `GET /api/tasks`.
#[derive(Debug, Args)]
struct ListArgs {
    /// Only this assignee's tasks.
    #[arg(long, short = 'a')]
    assignee: Option<String>,
    /// pending, running, stalled, completed, failed, cancelled or scheduled.
    #[arg(long, short = 's')]
    status: Option<String>,
    /// P0, P1 or P2.
    #[arg(long, short = 'p')]
    priority: Option<String>,
    /// manual, exec, agent, hook or noop.
    #[arg(long)]
    kind: Option<String>,
    /// Text in the name (any case).
    #[arg(long, short = 'q')]
    text: Option<String>,
    /// Tasks per page (the API's default when not given).
    #[arg(long)]
    limit: Option<usize>,
    /// The page after the one that printed this cursor.
    #[arg(long)]
    before: Option<String>,
    /// Only tasks finished within this long (10m, 1h, 2d), with --status completed, failed or
    /// cancelled: the API's `finished_after`.
    #[arg(long)]
    since: Option<String>,
}

impl ListArgs {
    /// `finished_after` for `--since`: now less the duration.
    fn finished_after(&self) -> Result<Option<String>, ClientError> {
        let Some(since) = &self.since else {
            return Ok(None);
        };
        let back = duration_flag("--since", since)?;
        let at = (chrono::Duration::from_std(back).ok())
            .and_then(|back| chrono::Utc::now().checked_sub_signed(back))
            .ok_or_else(|| bad_flag(format!("--since {since:?} reaches before any date")))?;
        Ok(Some(
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ))
    }
}

/// The value of a duration flag (`--in`, `--since`): `10m`, `2h`, `1d`…
fn duration_flag(flag: &str, value: &str) -> Result<std::time::Duration, ClientError> {
    humantime::parse_duration(value).map_err(|e| {
        bad_flag(format!(
            "{flag} {value:?} is not a duration like 10m or 2h: {e}"
        ))
    })
}

/// `task create`'s flags.
#[derive(Debug, Args)]
struct CreateArgs {
    /// Task name.
    #[arg(long, short = 'n')]
    name: String,
    /// Assignee (container), e.g. anna.
    #[arg(long, short = 'a')]
    assignee: String,
    /// P0, P1 or P2.
    #[arg(long, short = 'p', default_value = "P1")]
    priority: String,
    /// manual (default), exec, agent, hook, noop.
    #[arg(long)]
    kind: Option<String>,
    /// Longer description.
    #[arg(long)]
    description: Option<String>,
    /// Kind-specific payload as a JSON object.
    #[arg(long)]
    payload: Option<String>,
    /// Step names.
    #[arg(long, num_args = 1..)]
    steps: Vec<String>,
    /// Who asks.
    #[arg(long)]
    created_by: Option<String>,
    /// Attempts before failing for good.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Per-attempt timeout in seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// Repeated creates with this key return the first task.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    when: When,
    #[command(flatten)]
    flow: FlowFlags,
    /// Wait until the task finishes, its events on stderr; then print it and exit 0 if it
    /// completed, 1 if it failed or was cancelled (Ctrl-C stops the wait, not the task).
    #[arg(long)]
    wait: bool,
}

/// Flow control of a new task (limits per key across every replica; see `taskfleet limits`).
#[derive(Debug, Args)]
struct FlowFlags {
    /// At most the key's limit of tasks with this key run at once, e.g. repo:acme/web.
    #[arg(long)]
    concurrency_key: Option<String>,
    /// Tasks with this key start no faster than its rate, e.g. channel:tg-123.
    #[arg(long)]
    rate_key: Option<String>,
    /// Tasks of one lane (e.g. a chat session) run one at a time, in creation order.
    #[arg(long)]
    lane: Option<String>,
    /// Whose fair share of the workers it runs in (default: who creates it); within a
    /// priority, workers take tenants' tasks in turn.
    #[arg(long)]
    tenant: Option<String>,
}

/// When a delayed task should run (neither: at once).
#[derive(Debug, Args)]
struct When {
    /// Run at this time (RFC 3339, e.g. 2026-12-24T09:00:00+01:00).
    #[arg(long, conflicts_with = "in_")]
    at: Option<String>,
    /// Run after this long, e.g. 90s, 10m, 2h, 1day.
    #[arg(long = "in", id = "in_")]
    in_: Option<String>,
}

impl When {
    /// Puts `run_at` or `delay_s` into a request body.
    fn fill(&self, body: &mut Value) -> Result<(), ClientError> {
        if let Some(at) = &self.at {
            body["run_at"] = at.as_str().into();
        }
        if let Some(d) = &self.in_ {
            let d = duration_flag("--in", d)?;
            body["delay_s"] = d.as_secs().max(u64::from(d.subsec_nanos() > 0)).into();
        }
        Ok(())
    }
}

impl CreateArgs {
    /// The create request these flags describe.
    fn body(&self) -> Result<Value, ClientError> {
        let payload: Option<Value> = match &self.payload {
            Some(p) => Some(
                serde_json::from_str(p)
                    .map_err(|e| bad_flag(format!("--payload is not JSON: {e}")))?,
            ),
            None => None,
        };
        let mut body = json!({
            "task_name": self.name, "assigned_to": self.assignee, "priority": self.priority,
        });
        let fields = [
            ("kind", self.kind.clone().map(Value::from)),
            ("description", self.description.clone().map(Value::from)),
            ("payload", payload),
            ("created_by", self.created_by.clone().map(Value::from)),
            ("max_attempts", self.max_attempts.map(Value::from)),
            ("timeout_s", self.timeout.map(Value::from)),
            (
                "idempotency_key",
                self.idempotency_key.clone().map(Value::from),
            ),
            ("steps", (!self.steps.is_empty()).then(|| json!(self.steps))),
            (
                "concurrency_key",
                self.flow.concurrency_key.clone().map(Value::from),
            ),
            ("rate_key", self.flow.rate_key.clone().map(Value::from)),
            ("lane", self.flow.lane.clone().map(Value::from)),
            ("tenant", self.flow.tenant.clone().map(Value::from)),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                body[k] = v;
            }
        }
        self.when.fill(&mut body)?;
        Ok(body)
    }
}

/// A flag the CLI itself refuses (exit code and message like the server's 400).
fn bad_flag(message: String) -> ClientError {
    ClientError::Api {
        status: 400,
        code: "bad_request".into(),
        message,
    }
}

/// Runs one `task` subcommand.
pub(super) async fn run(args: TaskArgs) -> ExitCode {
    let client = args.flags.client(None);
    match execute(&client, &args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(&e, ClientError::Api { status: 401, .. }) {
                eprintln!(
                    "hint: set TASKFLEET_API_KEY, or run where `taskfleet up` wrote data/api-key"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs `args`' subcommand; its exit code (only `create --wait` ends in anything but success
/// without an error).
async fn execute(client: &ApiClient, args: &TaskArgs) -> Result<ExitCode, ClientError> {
    let out = Output {
        json: args.flags.json,
    };
    match &args.cmd {
        TaskCmd::Create(create) if create.wait => {
            return create_and_wait(client, out, create).await
        }
        TaskCmd::Create(create) => out.task(&client.create_task(&create.body()?).await?),
        TaskCmd::Get { id } => out.task(&client.get_task(id).await?),
        TaskCmd::List(args) => list(client, out, args).await?,
        TaskCmd::Pending { assignee, limit } => {
            let q = query(&[
                ("assigned_to", assignee.clone()),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            out.tasks(&client.pending(&q).await?);
        }
        TaskCmd::Start { id } => out.task(&client.action(id, "start", None).await?),
        TaskCmd::Complete {
            id,
            result,
            result_json,
            fencing_token,
        } => {
            let result = result_value(result.as_deref(), *result_json)?;
            let body = json!({ "result": result, "fencing_token": fencing_token });
            out.task(&client.action(id, "complete", Some(&body)).await?);
        }
        TaskCmd::Fail {
            id,
            error,
            fencing_token,
        } => {
            let body = json!({ "error": error, "fencing_token": fencing_token });
            out.task(&client.action(id, "fail", Some(&body)).await?);
        }
        TaskCmd::Cancel { id, reason } => {
            let body = json!({ "reason": reason });
            out.task(&client.action(id, "cancel", Some(&body)).await?);
        }
        TaskCmd::Retry { id } => out.task(&client.action(id, "retry", None).await?),
        TaskCmd::Reschedule { id, when } => {
            let mut body = json!({});
            when.fill(&mut body)?;
            if body.as_object().is_some_and(|o| o.is_empty()) {
                return Err(bad_flag(
                    "give --at <RFC 3339 time> or --in <duration>".into(),
                ));
            }
            out.task(&client.action(id, "reschedule", Some(&body)).await?);
        }
        TaskCmd::Logs { id } => out.logs(&client.logs(id).await?),
        TaskCmd::Output { id, offset, limit } => output(client, out, id, *offset, *limit).await?,
        TaskCmd::Input {
            id,
            data,
            line,
            eof,
        } => input(client, out, id, data, *line, *eof).await?,
        TaskCmd::Dead {
            assignee,
            limit,
            after,
        } => dead(client, out, assignee.clone(), (*limit, after.clone())).await?,
        TaskCmd::Watch {
            id,
            follow,
            exit_status,
        } => {
            watch(client, out, id, *follow).await?;
            if *exit_status {
                return Ok(outcome(&client.get_task(id).await?));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--result` as JSON (`--result-json`) or as a string.
fn result_value(result: Option<&str>, as_json: bool) -> Result<Value, ClientError> {
    match (result, as_json) {
        (Some(r), true) => serde_json::from_str(r).map_err(|e| ClientError::Api {
            status: 400,
            code: "bad_request".into(),
            message: format!("--result is not JSON: {e}"),
        }),
        (Some(r), false) => Ok(Value::from(r)),
        (None, _) => Ok(Value::Null),
    }
}

/// `task output`: the captured lines of a command task.
async fn output(
    client: &ApiClient,
    out: Output,
    id: &str,
    offset: Option<usize>,
    limit: Option<usize>,
) -> Result<(), ClientError> {
    let q = query(&[
        ("offset", offset.map(|o| o.to_string())),
        ("limit", limit.map(|l| l.to_string())),
    ]);
    let page = client.output(id, &q).await?;
    if out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&page).unwrap_or_default()
        );
    } else {
        for line in page["lines"].as_array().into_iter().flatten() {
            println!("{}", line.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// One line per dead letter.
fn print_dead(dead: &[crate::domain::Task]) {
    for t in dead {
        println!(
            "{}  {}  {}  attempts {}  {}",
            t.id,
            t.assigned_to,
            t.task_name,
            t.attempt,
            t.error.as_deref().unwrap_or("")
        );
    }
    if dead.is_empty() {
        println!("(no dead letters)");
    }
}

/// `task list`: one page; when there may be more, the flag that prints the next goes to stderr
/// (stdout stays the table, or the JSON).
async fn list(client: &ApiClient, out: Output, args: &ListArgs) -> Result<(), ClientError> {
    let q = query(&[
        ("assigned_to", args.assignee.clone()),
        ("status", args.status.clone()),
        ("priority", args.priority.clone()),
        ("kind", args.kind.clone()),
        ("q", args.text.clone()),
        ("limit", args.limit.map(|l| l.to_string())),
        ("before", args.before.clone()),
        ("finished_after", args.finished_after()?),
    ]);
    let (tasks, next) = client.list_tasks_page(&q).await?;
    out.tasks(&tasks);
    if let Some(cursor) = next {
        eprintln!("more: add --before {cursor} for the next page");
    }
    Ok(())
}

/// `task input`: writes to a running task's stdin.
async fn input(
    client: &ApiClient,
    out: Output,
    id: &str,
    data: &str,
    line: bool,
    eof: bool,
) -> Result<(), ClientError> {
    let text = if line {
        format!("{data}\n")
    } else {
        data.to_string()
    };
    let answer = client.input(id, &text, eof).await?;
    if out.json {
        println!("{answer}");
    } else {
        let closed = if eof { " and closed stdin" } else { "" };
        println!("wrote {} bytes{closed}", text.len());
    }
    Ok(())
}

/// `task dead`: the dead letters, with their errors.
async fn dead(
    client: &ApiClient,
    out: Output,
    assignee: Option<String>,
    (limit, after): (Option<usize>, Option<String>),
) -> Result<(), ClientError> {
    let q = query(&[
        ("assigned_to", assignee),
        ("limit", limit.map(|l| l.to_string())),
        ("after", after),
    ]);
    let (dead, next) = client.dead_letters_page(&q).await?;
    match out.json {
        true => out.tasks(&dead),
        false => print_dead(&dead),
    }
    if let Some(cursor) = next {
        eprintln!("more: add --after {cursor} for the next page");
    }
    Ok(())
}

/// `task watch`: prints events as they come, until the task ends (or forever with `follow`).
async fn watch(client: &ApiClient, out: Output, id: &str, follow: bool) -> Result<(), ClientError> {
    eprintln!("watching task {id} (Ctrl-C to stop) …");
    follow_events(client, out, id, follow, |line| println!("{line}")).await
}

/// Reads `id`'s events (those so far, then live ones) and hands each, as a line (JSON with
/// `out.json`), to `print`, until the task ends (or forever with `follow`) or the feed does.
async fn follow_events(
    client: &ApiClient,
    out: Output,
    id: &str,
    follow: bool,
    print: impl Fn(String),
) -> Result<(), ClientError> {
    let events = client.watch(id).await?;
    futures::pin_mut!(events);
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if out.json {
            print(serde_json::to_string(&ev).unwrap_or_default());
        } else {
            // An output event carries its lines in `data.text`, not in `message`.
            let text = ev.message.as_deref().or(ev.data["text"].as_str());
            print(format!(
                "{}  {:<10} {}",
                ev.time.format("%Y-%m-%d %H:%M:%S"),
                ev.kind.as_str(),
                first_line(text.unwrap_or(""), MESSAGE_CHARS)
            ));
        }
        let terminal = matches!(
            ev.kind,
            EventKind::Completed | EventKind::Failed | EventKind::Cancelled
        );
        if terminal && !follow {
            break;
        }
    }
    Ok(())
}

/// `task create --wait`: creates the task, prints its events on stderr until it finishes, then
/// the task as it finished on stdout; success only if it completed.
async fn create_and_wait(
    client: &ApiClient,
    out: Output,
    create: &CreateArgs,
) -> Result<ExitCode, ClientError> {
    let task = client.create_task(&create.body()?).await?;
    let id = task.id.to_string();
    eprintln!(
        "created task {id}; waiting for it to finish (Ctrl-C stops the wait, not the task) …"
    );
    let text = Output { json: false };
    follow_events(client, text, &id, false, |line| eprintln!("{line}")).await?;
    let done = client.get_task(&id).await?;
    out.task(&done);
    Ok(outcome(&done))
}

/// The exit code of a wait for `done` to finish: success only if it completed; otherwise why
/// not, on stderr.
fn outcome(done: &Task) -> ExitCode {
    let id = &done.id;
    match done.status {
        TaskStatus::Completed => ExitCode::SUCCESS,
        status if status.is_terminal() => {
            let why = done.error.as_deref().unwrap_or("no reason given");
            eprintln!(
                "error: task {id} {status}: {}",
                first_line(why, MESSAGE_CHARS)
            );
            ExitCode::FAILURE
        }
        status => {
            eprintln!(
                "error: the API's event feed ended while task {id} was {status}; \
                 `taskfleet task watch {id}` follows it again"
            );
            ExitCode::FAILURE
        }
    }
}

fn query(pairs: &[(&'static str, Option<String>)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect()
}

//! `taskfleet schedule …`: cron schedules over the API (create, list, get, pause, resume,
//! trigger, delete). Tables by default, `--json` for scripts.

use crate::client::{ApiClient, ClientError};
use crate::schedules::ScheduleView;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use std::process::ExitCode;

/// Flags shared by every `schedule` subcommand.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    flags: super::api_flags::ApiFlags,
    #[command(subcommand)]
    cmd: ScheduleCmd,
}

#[derive(Debug, Subcommand)]
enum ScheduleCmd {
    /// Create a schedule: a task created at every tick.
    Create(Box<CreateArgs>),
    /// Every schedule, with its next fire time and last task.
    List,
    /// Show one schedule.
    Get { name: String },
    /// No ticks until resumed.
    Pause { name: String },
    /// Resume a paused schedule from now on.
    Resume { name: String },
    /// Create the schedule's task now (its ticks do not move).
    Trigger { name: String },
    /// Delete a schedule.
    Delete { name: String },
}

/// Flags of `taskfleet schedule create`.
#[derive(Debug, Args)]
struct CreateArgs {
    /// Schedule name, `[a-z0-9_-]{1,64}`.
    #[arg(long, short = 'n')]
    name: String,
    /// 5-field cron expression (`0 9 * * *`), `@every 5m`, `@daily`, ….
    #[arg(long)]
    cron: String,
    /// IANA time zone of the cron fields, e.g. Europe/Berlin.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// `allow` (default) or `skip` (no task while the previous one is pending or running).
    #[arg(long, default_value = "allow")]
    overlap: String,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
    /// The whole task create body as JSON (instead of the flags below).
    #[arg(long, conflicts_with_all = ["task_name", "assignee"])]
    task: Option<String>,
    /// Each task's name.
    #[arg(long, required_unless_present = "task")]
    task_name: Option<String>,
    /// Each task's assignee, e.g. anna.
    #[arg(long, short = 'a', required_unless_present = "task")]
    assignee: Option<String>,
    /// P0, P1 or P2.
    #[arg(long, short = 'p', default_value = "P1")]
    priority: String,
    /// manual (default), exec, agent, hook, noop.
    #[arg(long)]
    kind: Option<String>,
    /// Kind-specific payload as a JSON object.
    #[arg(long)]
    payload: Option<String>,
}

fn parse_json(what: &str, raw: &str) -> Result<Value, String> {
    serde_json::from_str(raw).map_err(|e| format!("--{what} is not JSON: {e}"))
}

impl CreateArgs {
    fn body(&self) -> Result<Value, String> {
        let task = match &self.task {
            Some(raw) => parse_json("task", raw)?,
            None => {
                let mut t = json!({
                    "task_name": self.task_name,
                    "assigned_to": self.assignee,
                    "priority": self.priority,
                });
                if let Some(k) = &self.kind {
                    t["kind"] = json!(k);
                }
                if let Some(p) = &self.payload {
                    t["payload"] = parse_json("payload", p)?;
                }
                t
            }
        };
        Ok(json!({
            "name": self.name, "cron": self.cron, "timezone": self.timezone,
            "overlap": self.overlap, "paused": self.paused, "task": task,
        }))
    }
}

/// Runs one `schedule` subcommand; errors print the server's message and exit non-zero.
pub(super) async fn run(args: ScheduleArgs) -> ExitCode {
    let client = args.flags.client(None);
    let json = args.flags.json;
    match dispatch(&client, args.cmd, json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(client: &ApiClient, cmd: ScheduleCmd, json: bool) -> Result<(), String> {
    let err = |e: ClientError| e.to_string();
    let one = match cmd {
        ScheduleCmd::Create(a) => client.create_schedule(&a.body()?).await,
        ScheduleCmd::List => {
            let all = client.schedules().await.map_err(err)?;
            print_list(&all, json);
            return Ok(());
        }
        ScheduleCmd::Get { name } => client.schedule(Method::GET, &name, None).await,
        ScheduleCmd::Pause { name } => client.schedule_action(&name, "pause").await,
        ScheduleCmd::Resume { name } => client.schedule_action(&name, "resume").await,
        ScheduleCmd::Delete { name } => client.schedule(Method::DELETE, &name, None).await,
        ScheduleCmd::Trigger { name } => {
            let task = client.trigger_schedule(&name).await.map_err(err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&task).unwrap_or_default()
                );
            } else {
                println!("created task {} ({})", task.id, task.status);
            }
            return Ok(());
        }
    }
    .map_err(err)?;
    print_one(&one, json);
    Ok(())
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(crate::schedules::tick_text)
        .unwrap_or_else(|| "-".into())
}

fn print_one(v: &ScheduleView, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let s = &v.schedule;
    println!("name:       {}", s.name);
    println!("cron:       {}   timezone: {}", s.cron, s.timezone);
    println!(
        "task:       {} for {} ({})",
        s.task.task_name, s.task.assigned_to, s.task.priority
    );
    let overlap = match s.overlap {
        crate::schedules::Overlap::Allow => "allow",
        crate::schedules::Overlap::Skip => "skip",
    };
    println!("overlap:    {overlap}   paused: {}", s.paused);
    println!("next fire:  {}", when(s.next_fire_time));
    let status = v.last_task_status.map(|st| st.to_string());
    println!(
        "last task:  {} ({})   last tick: {}",
        s.last_task_id
            .as_ref()
            .map_or("-".into(), |i| i.to_string()),
        status.as_deref().unwrap_or("-"),
        when(s.last_tick)
    );
    println!(
        "ticks:      {} created, {} skipped, {} missed",
        s.created, s.skipped, s.missed
    );
}

fn print_list(all: &[ScheduleView], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(all).unwrap_or_default());
        return;
    }
    if all.is_empty() {
        println!("(no schedules)");
        return;
    }
    println!(
        "{:<24} {:<16} {:<16} {:<6} {:<21} {:<28} status",
        "name", "cron", "timezone", "paused", "next fire", "last task"
    );
    for v in all {
        let s = &v.schedule;
        println!(
            "{:<24} {:<16} {:<16} {:<6} {:<21} {:<28} {}",
            s.name,
            s.cron,
            s.timezone,
            s.paused,
            when(s.next_fire_time),
            s.last_task_id
                .as_ref()
                .map_or("-".into(), |i| i.to_string()),
            v.last_task_status.map_or("-".into(), |st| st.to_string()),
        );
    }
}

//! `pulse status`: current tasks with step progress — a bar on a terminal, plain lines otherwise,
//! JSON with `--json` — flagging stalled ones (running, no update for 3 min).

use super::pulse::is_stalled;
use super::spool::Spool;
use crate::client::ApiClient;
use crate::domain::{Task, TaskStatus};
use serde_json::json;
use std::io::IsTerminal;
use std::process::ExitCode;

const STALL_AFTER_MIN: i64 = 3;

fn icon(t: &Task, stalled: bool) -> &'static str {
    match (t.status, stalled) {
        (_, true) => "⚠️",
        (TaskStatus::Running, _) => "🔄",
        (TaskStatus::Completed, _) => "🎉",
        (TaskStatus::Failed, _) => "❌",
        (TaskStatus::Cancelled, _) => "🚫",
        (TaskStatus::Pending, _) => "⏳",
        (TaskStatus::Scheduled, _) => "⏰",
    }
}

fn bar(done: u32, total: u32) -> String {
    let width = 10usize;
    let filled = if total == 0 {
        0
    } else {
        (done as usize * width) / total as usize
    };
    format!(
        "[{}{}]",
        "█".repeat(filled),
        "░".repeat(width - filled.min(width))
    )
}

fn age(t: &Task) -> String {
    let secs = (crate::domain::now() - t.updated_time).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s => format!("{}h ago", s / 3600),
    }
}

/// Prints the status of one task or of the session's running tasks.
pub(super) async fn status(
    client: &ApiClient,
    spool: &Spool,
    session: Option<&str>,
    id: Option<&str>,
    as_json: bool,
) -> ExitCode {
    let _ = spool.replay(client).await;
    let session = session.unwrap_or("default");
    let tasks: Vec<Task> = match id
        .map(|i| spool.resolve(i))
        .or_else(|| std::env::var("TASKFLEET_TASK_ID").ok())
    {
        Some(id) => match client.get_task(&id).await {
            Ok(t) => vec![t],
            Err(e) => {
                eprintln!("taskfleet pulse: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => {
            let mine = format!("pulse:{session}");
            let running = client
                .list_tasks(&[("status", "running".into()), ("limit", "1000".into())])
                .await;
            match running {
                Ok(ts) => {
                    let mut ts: Vec<Task> = ts
                        .into_iter()
                        .filter(|t| t.created_by.as_deref() == Some(mine.as_str()))
                        .collect();
                    if ts.is_empty() {
                        if let Some(last) = spool.last_task(session) {
                            ts.extend(client.get_task(&last).await.ok());
                        }
                    }
                    ts
                }
                Err(e) => {
                    eprintln!("taskfleet pulse: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let stall = chrono::Duration::minutes(STALL_AFTER_MIN);
    if as_json {
        let rows: Vec<_> = tasks
            .iter()
            .map(|t| {
                json!({
                    "id": t.id, "task_name": t.task_name, "status": t.status,
                    "done": t.progress.done, "total": t.progress.total,
                    "current": t.progress.current, "percent": t.progress.percent,
                    "info": t.progress.info, "updated_time": t.updated_time,
                    "stalled": is_stalled(t, stall),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    if tasks.is_empty() {
        println!("no current tasks");
        return ExitCode::SUCCESS;
    }
    let tty = std::io::stdout().is_terminal();
    for t in &tasks {
        let stalled = is_stalled(t, stall);
        let p = &t.progress;
        let steps = if p.total > 0 {
            let shown = if tty {
                format!("{} ", bar(p.done, p.total))
            } else {
                String::new()
            };
            format!(" {shown}[{}/{}]", p.done, p.total)
        } else {
            String::new()
        };
        let now = p
            .current
            .as_deref()
            .map(|c| format!(" now: {c}"))
            .unwrap_or_default();
        let pct = p.percent.map(|x| format!(" {x}%")).unwrap_or_default();
        let info = p
            .info
            .as_deref()
            .map(|i| format!(" ({i})"))
            .unwrap_or_default();
        println!(
            "{} {} 【{}】 {}{steps}{now}{pct}{info} — {}{}",
            icon(t, stalled),
            t.id,
            t.task_name,
            t.status,
            age(t),
            if stalled {
                " — may be stuck (no update for 3 min)"
            } else {
                ""
            }
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(super::bar(0, 3), "[░░░░░░░░░░]");
        assert_eq!(super::bar(3, 3), "[██████████]");
        assert_eq!(super::bar(1, 2), "[█████░░░░░]");
    }
}

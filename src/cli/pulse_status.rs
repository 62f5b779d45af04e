//! `pulse status`: current tasks with step progress — a bar on a terminal, plain lines otherwise,
//! JSON with `--json` — flagging stalled ones by the fleet's stall rule (running, no update for
//! longer than the `relay.stall_after_s` the API reports; see `fleet_stall_rule`).

use super::spool::Spool;
use crate::client::{ApiClient, ClientError};
use crate::domain::{StallRule, Task, TaskStatus};
use serde_json::json;
use std::io::IsTerminal;
use std::process::ExitCode;

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
    let tasks = match current_tasks(client, spool, session, id).await {
        Ok(tasks) => tasks,
        Err(e) => {
            eprintln!("taskfleet pulse: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rule = fleet_stall_rule(client, &tasks).await;
    let now = crate::domain::now();
    let stalled: Vec<bool> = tasks
        .iter()
        .map(|t| rule.is_some_and(|r| r.is_stalled(t, now)))
        .collect();
    if as_json {
        print_json(&tasks, &stalled);
    } else if tasks.is_empty() {
        // A session other than the one the task was started in is the usual reason.
        println!("no current tasks in session `{session}`");
    } else {
        print_lines(&tasks, &stalled, rule.as_ref().map(stall_note));
    }
    ExitCode::SUCCESS
}

/// The tasks `status` shows: the one named by `id` (or `TASKFLEET_TASK_ID`), else the running
/// tasks this session created, else the session's last task.
async fn current_tasks(
    client: &ApiClient,
    spool: &Spool,
    session: &str,
    id: Option<&str>,
) -> Result<Vec<Task>, ClientError> {
    let named = id
        .map(|i| spool.resolve(i))
        .or_else(|| std::env::var("TASKFLEET_TASK_ID").ok());
    if let Some(id) = named {
        return Ok(vec![client.get_task(&id).await?]);
    }
    let mine = format!("pulse:{session}");
    let running = client
        .list_tasks(&[("status", "running".into()), ("limit", "1000".into())])
        .await?;
    let mut tasks: Vec<Task> = running
        .into_iter()
        .filter(|t| t.created_by.as_deref() == Some(mine.as_str()))
        .collect();
    if tasks.is_empty() {
        if let Some(last) = spool.last_task(session) {
            tasks.extend(client.get_task(&last).await.ok());
        }
    }
    Ok(tasks)
}

/// The fleet's stall rule ([`StallRule`]), with the threshold the API reports in `/healthz`
/// (its `relay.stall_after_s`): `pulse status` runs inside bots' containers without the fleet's
/// config, and a task-scoped token may not list tasks. Asked only when a task is running; if the
/// API does not say, no task is flagged and stderr says so.
async fn fleet_stall_rule(client: &ApiClient, tasks: &[Task]) -> Option<StallRule> {
    if !tasks.iter().any(|t| t.status == TaskStatus::Running) {
        return None;
    }
    match client.stall_rule().await {
        Ok(rule) => Some(rule),
        Err(e) => {
            eprintln!("taskfleet pulse: cannot tell which tasks are stalled: {e}");
            None
        }
    }
}

/// What the plain lines say of a stalled task.
fn stall_note(rule: &StallRule) -> String {
    let secs = rule.after.as_secs();
    let threshold = match secs {
        s if s < 120 => format!("{s} s"),
        s => format!("{} min", s / 60),
    };
    format!(" — may be stuck (no update for more than {threshold})")
}

/// `--json`: one object per task, with its step progress and `stalled`.
fn print_json(tasks: &[Task], stalled: &[bool]) {
    let rows: Vec<_> = tasks
        .iter()
        .zip(stalled)
        .map(|(t, stalled)| {
            json!({
                "id": t.id, "task_name": t.task_name, "status": t.status,
                "done": t.progress.done, "total": t.progress.total,
                "current": t.progress.current, "percent": t.progress.percent,
                "info": t.progress.info, "updated_time": t.updated_time,
                "stalled": stalled,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&rows).unwrap_or_default()
    );
}

/// One line per task: icon, name, status, steps (a bar on a terminal), age, a stall warning.
fn print_lines(tasks: &[Task], stalled: &[bool], note: Option<String>) {
    let tty = std::io::stdout().is_terminal();
    for (t, &is_stalled) in tasks.iter().zip(stalled) {
        let p = &t.progress;
        let steps = match (p.total > 0, tty) {
            (false, _) => String::new(),
            (true, true) => format!(" {} [{}/{}]", bar(p.done, p.total), p.done, p.total),
            (true, false) => format!(" [{}/{}]", p.done, p.total),
        };
        // What a finished task last reported while it ran is no longer news.
        let live = !t.status.is_terminal();
        let now = p
            .current
            .as_deref()
            .filter(|_| live)
            .map(|c| format!(" now: {c}"));
        let pct = p.percent.filter(|_| live).map(|x| format!(" {x}%"));
        let info = p
            .info
            .as_deref()
            .filter(|_| live)
            .map(|i| format!(" ({i})"));
        println!(
            "{} {} 【{}】 {}{steps}{}{}{} — {}{}",
            icon(t, is_stalled),
            t.id,
            t.task_name,
            t.status,
            now.unwrap_or_default(),
            pct.unwrap_or_default(),
            info.unwrap_or_default(),
            age(t),
            note.as_deref().filter(|_| is_stalled).unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stall_note_names_the_fleets_threshold() {
        use crate::domain::StallRule;
        let note = |secs| super::stall_note(&StallRule::from_secs(secs));
        assert_eq!(note(1), " — may be stuck (no update for more than 1 s)");
        assert_eq!(note(180), " — may be stuck (no update for more than 3 min)");
    }

    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(super::bar(0, 3), "[░░░░░░░░░░]");
        assert_eq!(super::bar(3, 3), "[██████████]");
        assert_eq!(super::bar(1, 2), "[█████░░░░░]");
    }
}

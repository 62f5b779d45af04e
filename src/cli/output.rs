//! How `taskfleet task` prints: tables for people, JSON for scripts.

use crate::domain::{LogEntry, Task};
use crate::text::message::first_line;

/// Most chars of a task's name in a table row (the rest is `…`; `--json` has it whole).
const NAME_CHARS: usize = 60;
/// Most chars of a log or event message in a table row (its first line; `--json` has it whole).
pub(super) const MESSAGE_CHARS: usize = 100;

/// Printer for one command's results.
pub(super) struct Output {
    /// JSON instead of tables.
    pub(super) json: bool,
}

impl Output {
    pub(super) fn task(&self, t: &Task) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(t).unwrap_or_default());
            return;
        }
        println!("id:          {}", t.id);
        println!("name:        {}", t.task_name);
        println!(
            "assigned_to: {}   priority: {}   kind: {}",
            t.assigned_to, t.priority, t.kind
        );
        println!(
            "status:      {}   attempt: {}/{}",
            t.status, t.attempt, t.max_attempts
        );
        if t.progress.total > 0 {
            println!(
                "progress:    {}/{} {}",
                t.progress.done,
                t.progress.total,
                t.progress.current.as_deref().unwrap_or("")
            );
        }
        if let Some(l) = &t.lease {
            println!("lease:       {} (fencing token {})", l.holder, l.token);
        }
        if let Some(r) = &t.result {
            // A command's output ends with a newline: not a blank line in the listing.
            println!(
                "result:      {}",
                r.as_str()
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_else(|| r.to_string())
            );
        }
        if let Some(e) = &t.error {
            println!("error:       {e}");
        }
        println!(
            "created:     {} by {}",
            t.created_time.format("%Y-%m-%d %H:%M:%S"),
            t.created_by.as_deref().unwrap_or("-")
        );
        if let Some(at) = t.run_at {
            println!("runs at:     {} UTC", at.format("%Y-%m-%d %H:%M:%S"));
        }
        if let Some(key) = &t.debounce_key {
            println!("debounce:    {key}");
        }
    }

    pub(super) fn tasks(&self, tasks: &[Task]) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(tasks).unwrap_or_default()
            );
            return;
        }
        if tasks.is_empty() {
            println!("(no tasks)");
            return;
        }
        let aw = width(tasks.iter().map(|t| t.assigned_to.as_str()), 14);
        println!(
            "{:<26}  {:<3} {:<9} {:<aw$} {:<6} {:<19} NAME",
            "ID", "PRI", "STATUS", "ASSIGNEE", "KIND", "CREATED"
        );
        for t in tasks {
            println!(
                "{:<26}  {:<3} {:<9} {:<aw$} {:<6} {:<19} {}",
                t.id.as_str(),
                t.priority.as_str(),
                t.status.as_str(),
                t.assigned_to.as_str(),
                t.kind.as_str(),
                t.created_time.format("%Y-%m-%d %H:%M:%S").to_string(),
                first_line(&t.task_name, NAME_CHARS)
            );
        }
    }

    pub(super) fn logs(&self, rows: &[LogEntry]) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
            return;
        }
        let st = |s: Option<crate::domain::TaskStatus>| s.map(|s| s.as_str()).unwrap_or("-");
        let ow = width(rows.iter().map(|r| r.operator.as_str()), 12);
        println!(
            "{:<19}  {:<9} {:<9} {:<9} {:<ow$} MESSAGE",
            "TIME", "ACTION", "FROM", "TO", "OPERATOR"
        );
        for r in rows {
            println!(
                "{:<19}  {:<9} {:<9} {:<9} {:<ow$} {}",
                r.created_time.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.action,
                st(r.old_status),
                st(r.new_status),
                r.operator,
                first_line(r.message.as_deref().unwrap_or(""), MESSAGE_CHARS)
            );
        }
    }
}

/// A column as wide as its widest value (in characters), and at least `min`: a worker's name
/// as a log's operator (`anna@web-1-7-3f2a`) or a long assignee no longer shifts the next column.
fn width<'a>(values: impl Iterator<Item = &'a str>, min: usize) -> usize {
    values
        .map(|v| v.chars().count())
        .max()
        .unwrap_or(0)
        .max(min)
}

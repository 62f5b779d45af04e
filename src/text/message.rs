//! Human messages for task events, in the Live Task Pulse format (seed 002): an emoji, the
//! `[done/total]` count, the step and a one-line note, never more than three lines.
//!
//! ```text
//! 🚀 Started 【Weekly report】        🚀 开始【周报】
//! 📋 fetch → summarise → publish      📋 抓取 → 摘要 → 发布
//! 🔄 now: fetch                       🔄 当前: 抓取
//! ```
//!
//! [`Templates`] holds one template per [`EventKind`]; English and Chinese are built in and any
//! kind can be overridden. An empty template means "no message": built in, `created` (the task
//! is only queued) and `output` (raw output is too noisy for chat; the result or error says what
//! matters) are empty, so [`Templates::render`] gives `None` for them.
//!
//! # Template syntax
//!
//! `{placeholder}` is replaced by a value; `{? … }` is an optional group, left out when any
//! placeholder inside it is empty; `{{` and `}}` are literal braces. Every value is one line of
//! at most 300 characters (longer ones end with `…`), so a template of three lines renders to
//! at most three lines; longer templates are refused.
//!
//! | placeholder | value |
//! |---|---|
//! | `{name}` | the task's name |
//! | `{steps}` | its steps, joined by ` → ` (empty without steps) |
//! | `{current}` | `data.current`, else the task's current step, else its first step |
//! | `{done}`, `{total}` | `data.done` (else `data.index + 1`, else the task's count) and `data.total` (else the task's); both empty when the task has no steps |
//! | `{step}` | `data.step`, else the step at `data.index`; for heartbeat/progress the current step, or the task name for a task without steps |
//! | `{next}` | `data.next`, else the step after the finished one (empty after the last) |
//! | `{percent}` | `data.percent`, else the task's reported percent |
//! | `{info}`, `{message}` | the event's message (`{message}` of an `output` event falls back to the last line of `data.text`) |
//! | `{result}` | the event's message, else the task's result |
//! | `{error}` | the event's message, else the task's error (the reason, for a cancel) |
//! | `{minutes}` | `data.minutes`, else minutes since the task's last update, else 3 |
//! | `{attempt}` | `data.attempt`, else the event's attempt + 1 (the attempt about to run) |
//! | `{run_at}` | when a delayed task runs (`2026-12-24 08:00 UTC`) |
//!
//! A `step` event is expected to carry `data: {"index": 0, "step": "s1", "next": "s2", "done":
//! 1, "total": 3}` (every field optional); heartbeat and progress events
//! `{"step": "s2", "percent": 60, "done": 1, "total": 3}`; stalled events `{"minutes": 3}`.

use crate::domain::{EventKind, Task, TaskEvent};
use serde_json::Value;
use std::collections::HashMap;

/// Most lines a message may have.
pub const MAX_LINES: usize = 3;
/// Most characters of one value (result, error, info…), including the `…` of a cut.
pub const MAX_VALUE_CHARS: usize = 300;
/// Minutes without an update after which a running task counts as stalled (seed 002).
pub const STALL_MINUTES: i64 = 3;

const PLACEHOLDERS: [&str; 15] = [
    "name", "steps", "current", "done", "total", "step", "next", "percent", "info", "message",
    "result", "error", "minutes", "attempt", "run_at",
];

/// A template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// `{something}` that is not a known placeholder.
    #[error("{kind:?} template: unknown placeholder {{{name}}}")]
    UnknownPlaceholder {
        /// The template's event kind.
        kind: EventKind,
        /// The unknown name.
        name: String,
    },
    /// An unclosed `{`, a stray `}` or a group inside a group.
    #[error("{kind:?} template: unbalanced braces or nested {{? }} group")]
    Syntax {
        /// The template's event kind.
        kind: EventKind,
    },
    /// More than [`MAX_LINES`] lines.
    #[error("{kind:?} template has {lines} lines; at most 3 are allowed")]
    TooManyLines {
        /// The template's event kind.
        kind: EventKind,
        /// How many it has.
        lines: usize,
    },
}

/// A built-in language.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// English.
    #[default]
    En,
    /// Chinese (simplified), as in seed 002.
    Zh,
}

/// One message template per event kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    by_kind: HashMap<EventKind, String>,
}

impl Templates {
    /// The built-in templates of `lang`.
    pub fn builtin(lang: Language) -> Self {
        use EventKind::*;
        let scheduled = match lang {
            Language::En => "⏰ 【{name}】 scheduled for {run_at}",
            Language::Zh => "⏰ 【{name}】已安排在 {run_at} 执行",
        };
        let (started, step, pulse, completed, failed, cancelled, retried, stalled) = match lang {
            Language::En => (
                "🚀 Started 【{name}】{?\n📋 {steps}\n🔄 now: {current}}",
                "✅{? [{done}/{total}]}{? {step}} done{? ({info})}{?\n🔄 → {next}}",
                "🔄{? [{done}/{total}]} {step}{?: {percent}%}{? ({info})}",
                "🎉 【{name}】 done!{?\nResult: {result}}",
                "❌ 【{name}】 failed{?: {error}}",
                "🚫 【{name}】 cancelled{?: {error}}",
                "🔁 【{name}】 retrying (attempt {attempt})",
                "⚠️ 【{name}】 may be stuck (no update for {minutes} min)",
            ),
            Language::Zh => (
                "🚀 开始【{name}】{?\n📋 {steps}\n🔄 当前: {current}}",
                "✅{? [{done}/{total}]}{? {step}}完成{?({info})}{?\n🔄 → {next}}",
                "🔄{? [{done}/{total}]} {step}{?: {percent}%}{?({info})}",
                "🎉 【{name}】完成!{?\n结果: {result}}",
                "❌ 【{name}】失败{?\n错误: {error}}",
                "🚫 【{name}】已取消{?\n原因: {error}}",
                "🔁 【{name}】重试中(第{attempt}次尝试)",
                "⚠️ 【{name}】可能卡住了({minutes}分钟无更新)",
            ),
        };
        let by_kind = [
            (Scheduled, scheduled),
            (Created, ""),
            (Started, started),
            (Step, step),
            (Heartbeat, pulse),
            (Progress, pulse),
            (Output, ""),
            (Completed, completed),
            (Failed, failed),
            (Cancelled, cancelled),
            (Retried, retried),
            (Stalled, stalled),
        ];
        let by_kind = by_kind
            .into_iter()
            .map(|(k, t)| (k, t.to_string()))
            .collect();
        Self { by_kind }
    }

    /// These templates with some replaced; each replacement is checked first. An empty
    /// template silences its kind.
    pub fn with_overrides<I, S>(mut self, overrides: I) -> Result<Self, MessageError>
    where
        I: IntoIterator<Item = (EventKind, S)>,
        S: Into<String>,
    {
        for (kind, template) in overrides {
            let template = template.into();
            validate(kind, &template)?;
            self.by_kind.insert(kind, template);
        }
        Ok(self)
    }

    /// The template for `kind`.
    pub fn get(&self, kind: EventKind) -> &str {
        self.by_kind.get(&kind).map_or("", String::as_str)
    }

    /// The message for `event` of `task`, or `None` when its kind's template is empty (built
    /// in: `created` and `output`) or it is a debounced create folded into a task already
    /// announced (one message per task, not per create).
    pub fn render(&self, task: &Task, event: &TaskEvent) -> Option<String> {
        if event.kind == EventKind::Scheduled && event.data["folded"] == true {
            return None;
        }
        let parts = parse(self.get(event.kind)).ok()?;
        let values = Values::new(task, event);
        let mut out = String::new();
        for part in &parts {
            match part {
                Part::Group(inner) if inner.iter().all(|p| values.filled(p)) => {
                    inner.iter().for_each(|p| values.write(p, &mut out));
                }
                other => values.write(other, &mut out),
            }
        }
        let out = out
            .trim()
            .lines()
            .take(MAX_LINES)
            .collect::<Vec<_>>()
            .join("\n");
        (!out.is_empty()).then_some(out)
    }
}

#[derive(Debug)]
enum Part {
    Text(String),
    Var(String),
    Group(Vec<Part>),
}

fn validate(kind: EventKind, template: &str) -> Result<(), MessageError> {
    let parts = parse(template).map_err(|e| match e {
        Some(name) => MessageError::UnknownPlaceholder { kind, name },
        None => MessageError::Syntax { kind },
    })?;
    let text: String = parts
        .iter()
        .flat_map(|p| match p {
            Part::Group(inner) => inner.iter().collect::<Vec<_>>(),
            other => vec![other],
        })
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let lines = text.matches('\n').count() + 1;
    if lines > MAX_LINES {
        return Err(MessageError::TooManyLines { kind, lines });
    }
    Ok(())
}

/// Parses a template; the error is the unknown placeholder's name, or `None` for bad syntax.
fn parse(template: &str) -> Result<Vec<Part>, Option<String>> {
    let mut top: Vec<Part> = Vec::new();
    let mut group: Option<Vec<Part>> = None;
    let mut text = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") || rest.starts_with("}}") {
            text.push(c);
            rest = &rest[2..];
        } else if let Some(after) = rest.strip_prefix("{?") {
            if group.is_some() {
                return Err(None);
            }
            push_text(&mut top, &mut text);
            group = Some(Vec::new());
            rest = after;
        } else if c == '{' {
            let end = rest.find('}').ok_or(None)?;
            let name = &rest[1..end];
            if !PLACEHOLDERS.contains(&name) {
                return Err(Some(name.to_string()));
            }
            let target = group.as_mut().unwrap_or(&mut top);
            push_text(target, &mut text);
            target.push(Part::Var(name.to_string()));
            rest = &rest[end + 1..];
        } else if c == '}' {
            let mut inner = group.take().ok_or(None)?;
            push_text(&mut inner, &mut text);
            top.push(Part::Group(inner));
            rest = &rest[1..];
        } else {
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if group.is_some() {
        return Err(None);
    }
    push_text(&mut top, &mut text);
    Ok(top)
}

fn push_text(parts: &mut Vec<Part>, text: &mut String) {
    if !text.is_empty() {
        parts.push(Part::Text(std::mem::take(text)));
    }
}

/// `s` as one line of at most `max` chars (at least 1): the first non-blank line, ending with
/// `…` when anything was left out. For a message in a table row or a chat line.
pub fn first_line(s: &str, max: usize) -> String {
    let max = max.max(1);
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let more = lines.next().is_some();
    if first.chars().count() <= max && !more {
        return first.to_string();
    }
    let mut out: String = first.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// `data.<key>` as text, when it is a string.
fn data_text(data: &Value, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).map(str::to_string)
}

/// `data.<key>` as a whole number, when it is a number (rounded).
fn data_num(data: &Value, key: &str) -> Option<u64> {
    data.get(key)
        .and_then(Value::as_f64)
        .map(|n| n.round() as u64)
}

/// Where one event leaves the task in its steps: the values of `{current}`, `{done}`,
/// `{total}`, `{step}`, `{next}` and `{percent}`.
struct StepValues {
    current: Option<String>,
    done: u64,
    total: u64,
    step: Option<String>,
    next: Option<String>,
    percent: Option<u64>,
}

impl StepValues {
    fn new(task: &Task, event: &TaskEvent) -> Self {
        let data = &event.data;
        let pulse = matches!(event.kind, EventKind::Heartbeat | EventKind::Progress);
        let steps = &task.steps;
        let index = data_num(data, "index").map(|i| i as usize);
        let total =
            data_num(data, "total").unwrap_or(task.progress.total.max(steps.len() as u32) as u64);
        let done = data_num(data, "done")
            .or(index.map(|i| (i as u64).saturating_add(1)))
            .unwrap_or(task.progress.done as u64);
        let finished = index.or((done > 0).then(|| done as usize - 1));
        let step = data_text(data, "step")
            .or_else(|| index.and_then(|i| steps.get(i).cloned()))
            .or_else(|| match pulse {
                true => task
                    .progress
                    .current
                    .clone()
                    .or_else(|| steps.get(done as usize).cloned()),
                false => finished.and_then(|i| steps.get(i).cloned()),
            })
            .or_else(|| pulse.then(|| task.task_name.clone()));
        let next = match data.get("next") {
            Some(v) => v.as_str().map(str::to_string),
            None => finished.and_then(|i| steps.get(i.checked_add(1)?).cloned()),
        };
        let current = data_text(data, "current")
            .or_else(|| task.progress.current.clone())
            .or_else(|| steps.first().cloned());
        let percent = data_num(data, "percent").or_else(|| {
            pulse
                .then_some(task.progress.percent.map(u64::from))
                .flatten()
        });
        Self {
            current,
            done,
            total,
            step,
            next,
            percent,
        }
    }

    /// A count for `{done}`/`{total}`: empty when the task has no steps.
    fn count(&self, n: u64) -> Option<String> {
        Some(if self.total == 0 {
            String::new()
        } else {
            n.to_string()
        })
    }
}

/// Every placeholder's value for one event.
struct Values(HashMap<&'static str, String>);

impl Values {
    fn new(task: &Task, event: &TaskEvent) -> Self {
        let data = &event.data;
        let at = StepValues::new(task, event);
        let message = event.message.clone().or_else(|| match event.kind {
            EventKind::Output => data_text(data, "text")?
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string),
            _ => None,
        });
        let result = event.message.clone().or_else(|| {
            task.result.as_ref().map(|r| match r {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        });
        let since = (event.time - task.updated_time).num_minutes();
        let minutes = data_num(data, "minutes").unwrap_or(if since >= 1 {
            since as u64
        } else {
            STALL_MINUTES as u64
        });
        let attempt = data_num(data, "attempt").unwrap_or(u64::from(event.attempt) + 1);
        let run_at = task
            .run_at
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string());
        let values = [
            ("name", Some(task.task_name.clone())),
            ("steps", Some(task.steps.join(" → "))),
            ("done", at.count(at.done)),
            ("total", at.count(at.total)),
            ("current", at.current),
            ("step", at.step),
            ("next", at.next),
            ("percent", at.percent.map(|p| p.to_string())),
            ("info", event.message.clone()),
            ("message", message),
            ("result", result),
            (
                "error",
                event.message.clone().or_else(|| task.error.clone()),
            ),
            ("minutes", Some(minutes.to_string())),
            ("attempt", Some(attempt.to_string())),
            ("run_at", run_at),
        ];
        Self(
            values
                .into_iter()
                .map(|(k, v)| (k, first_line(&v.unwrap_or_default(), MAX_VALUE_CHARS)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    /// Whether `part` renders to something: text always does, a placeholder when its value is
    /// not empty.
    fn filled(&self, part: &Part) -> bool {
        !matches!(part, Part::Var(v) if self.get(v).is_empty())
    }

    fn write(&self, part: &Part, out: &mut String) {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Var(v) => out.push_str(self.get(v)),
            Part::Group(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewTask, TaskId};
    use serde_json::json;
    use EventKind::*;
    use Language::{En, Zh};

    fn task(name: &str, steps: &[&str]) -> Task {
        let new: NewTask = serde_json::from_value(
            json!({"task_name": name, "assigned_to": "anna", "steps": steps}),
        )
        .unwrap();
        Task::from_new(TaskId::generate(), new)
    }

    fn event(task: &Task, kind: EventKind, message: Option<&str>, data: Value) -> TaskEvent {
        let mut e = TaskEvent::new(&task.id, &task.assigned_to, kind, "test");
        e.message = message.map(str::to_string);
        e.data = data;
        e
    }

    fn render(lang: Language, t: &Task, kind: EventKind, msg: Option<&str>, data: Value) -> String {
        Templates::builtin(lang)
            .render(t, &event(t, kind, msg, data))
            .unwrap_or_else(|| panic!("{kind:?} rendered nothing"))
    }

    #[test]
    fn a_delayed_task_is_announced_once_with_its_time_and_folds_stay_quiet() {
        let mut t = task("remind", &[]);
        t.run_at = Some("2026-12-24T08:00:00Z".parse().unwrap());
        let first = render(En, &t, Scheduled, None, json!({}));
        let folded =
            Templates::builtin(En).render(&t, &event(&t, Scheduled, None, json!({"folded": true})));
        assert_eq!(first, "⏰ 【remind】 scheduled for 2026-12-24 08:00 UTC");
        assert_eq!(folded, None);
    }

    #[test]
    fn a_start_lists_the_steps_and_the_current_one() {
        let t = task("Weekly report", &["s1", "s2", "s3"]);
        let en = render(En, &t, Started, None, Value::Null);
        assert_eq!(
            en,
            "🚀 Started 【Weekly report】\n📋 s1 → s2 → s3\n🔄 now: s1"
        );
        let t = task("任务名", &["步骤1", "步骤2", "步骤3"]);
        let zh = render(Zh, &t, Started, None, Value::Null);
        assert_eq!(
            zh,
            "🚀 开始【任务名】\n📋 步骤1 → 步骤2 → 步骤3\n🔄 当前: 步骤1"
        );
    }

    #[test]
    fn a_start_without_steps_is_one_line() {
        let t = task("Backup", &[]);
        assert_eq!(
            render(En, &t, Started, None, Value::Null),
            "🚀 Started 【Backup】"
        );
        assert_eq!(
            render(Zh, &t, Started, None, Value::Null),
            "🚀 开始【Backup】"
        );
    }

    #[test]
    fn a_finished_step_shows_the_count_the_info_and_the_next_step() {
        let t = task("Weekly report", &["s1", "s2", "s3"]);
        let data = json!({"index": 0, "step": "s1", "next": "s2", "done": 1, "total": 3});
        let en = render(En, &t, Step, Some("25 items"), data);
        assert_eq!(en, "✅ [1/3] s1 done (25 items)\n🔄 → s2");
        let t = task("任务名", &["步骤1", "步骤2", "步骤3"]);
        let zh = render(Zh, &t, Step, Some("抓取了25条数据"), json!({"index": 0}));
        assert_eq!(zh, "✅ [1/3] 步骤1完成(抓取了25条数据)\n🔄 → 步骤2");
    }

    #[test]
    fn the_last_step_has_no_next_line_and_missing_info_is_left_out() {
        let t = task("Weekly report", &["s1", "s2", "s3"]);
        assert_eq!(
            render(En, &t, Step, None, json!({"index": 2})),
            "✅ [3/3] s3 done"
        );
        let zh = render(Zh, &t, Step, None, json!({"index": 1, "next": null}));
        assert_eq!(zh, "✅ [2/3] s2完成");
    }

    #[test]
    fn heartbeat_and_progress_show_the_step_and_percent() {
        let t = task("Weekly report", &["s1", "s2", "s3"]);
        let data = json!({"step": "s2", "percent": 60, "done": 1, "total": 3});
        for kind in [Heartbeat, Progress] {
            let en = render(En, &t, kind, Some("info"), data.clone());
            assert_eq!(en, "🔄 [1/3] s2: 60% (info)");
            let zh = render(Zh, &t, kind, Some("已处理"), data.clone());
            assert_eq!(zh, "🔄 [1/3] s2: 60%(已处理)");
        }
    }

    #[test]
    fn a_heartbeat_of_a_task_without_steps_names_the_task() {
        let t = task("Backup", &[]);
        let en = render(En, &t, Heartbeat, Some("still copying"), Value::Null);
        assert_eq!(en, "🔄 Backup (still copying)");
        assert_eq!(
            render(Zh, &t, Progress, None, json!({"percent": 42.4})),
            "🔄 Backup: 42%"
        );
    }

    #[test]
    fn completion_shows_the_result() {
        let t = task("任务名", &[]);
        let zh = render(Zh, &t, Completed, Some("发布成功 https://x.y"), Value::Null);
        assert_eq!(zh, "🎉 【任务名】完成!\n结果: 发布成功 https://x.y");
        let mut t = task("Weekly report", &[]);
        assert_eq!(
            render(En, &t, Completed, None, Value::Null),
            "🎉 【Weekly report】 done!"
        );
        t.result = Some(json!({"url": "https://x.y"}));
        let en = render(En, &t, Completed, None, Value::Null);
        assert_eq!(
            en,
            "🎉 【Weekly report】 done!\nResult: {\"url\":\"https://x.y\"}"
        );
    }

    #[test]
    fn failure_and_cancellation_show_the_error_or_reason() {
        let t = task("任务名", &[]);
        let zh = render(Zh, &t, Failed, Some("登录过期"), Value::Null);
        assert_eq!(zh, "❌ 【任务名】失败\n错误: 登录过期");
        assert_eq!(
            render(Zh, &t, Cancelled, None, Value::Null),
            "🚫 【任务名】已取消"
        );
        let mut t = task("Deploy", &[]);
        t.error = Some("login expired".into());
        assert_eq!(
            render(En, &t, Failed, None, Value::Null),
            "❌ 【Deploy】 failed: login expired"
        );
        let en = render(En, &t, Cancelled, Some("not needed"), Value::Null);
        assert_eq!(en, "🚫 【Deploy】 cancelled: not needed");
        let zh = render(Zh, &t, Cancelled, Some("不需要了"), Value::Null);
        assert_eq!(zh, "🚫 【Deploy】已取消\n原因: 不需要了");
    }

    #[test]
    fn a_retry_names_the_attempt_about_to_run() {
        let t = task("Deploy", &[]);
        let mut e = event(&t, Retried, None, Value::Null);
        e.attempt = 1;
        let en = Templates::builtin(En).render(&t, &e).unwrap();
        assert_eq!(en, "🔁 【Deploy】 retrying (attempt 2)");
        let zh = render(Zh, &t, Retried, None, json!({"attempt": 3}));
        assert_eq!(zh, "🔁 【Deploy】重试中(第3次尝试)");
    }

    #[test]
    fn a_stall_says_how_long_there_was_no_update() {
        let t = task("任务名", &[]);
        let zh = render(Zh, &t, Stalled, None, json!({"minutes": 3}));
        assert_eq!(zh, "⚠️ 【任务名】可能卡住了(3分钟无更新)");
        let en = render(En, &t, Stalled, None, Value::Null);
        assert_eq!(en, "⚠️ 【任务名】 may be stuck (no update for 3 min)");
        let mut e = event(&t, Stalled, None, Value::Null);
        e.time = t.updated_time + chrono::Duration::minutes(7);
        let en = Templates::builtin(En).render(&t, &e).unwrap();
        assert!(en.ends_with("(no update for 7 min)"), "{en}");
    }

    #[test]
    fn created_and_raw_output_render_nothing() {
        let t = task("Deploy", &["a"]);
        for lang in [En, Zh] {
            for kind in [Created, Output] {
                let e = event(&t, kind, None, json!({"text": "line\n"}));
                assert_eq!(Templates::builtin(lang).render(&t, &e), None, "{kind:?}");
            }
        }
    }

    #[test]
    fn first_line_keeps_a_short_line_whole_and_marks_anything_left_out() {
        assert_eq!(first_line("  done  ", 10), "done");
        assert_eq!(first_line("\n\nline 1\nline 2", 10), "line 1…");
        assert_eq!(first_line("abcdefghijkl", 5), "abcd…");
        assert_eq!(first_line("", 5), "");
        assert_eq!(first_line("ab", 0), "…", "a width of 0 counts as 1");
    }

    #[test]
    fn long_or_multiline_results_and_errors_are_cut_to_one_line_of_300_chars() {
        let t = task("Deploy", &[]);
        let long = "x".repeat(1000);
        let en = render(En, &t, Completed, Some(&long), Value::Null);
        let line = en.lines().nth(1).unwrap().strip_prefix("Result: ").unwrap();
        assert_eq!(line.chars().count(), MAX_VALUE_CHARS);
        assert!(line.ends_with('…'));
        let zh = render(
            Zh,
            &t,
            Failed,
            Some("Traceback:\n  at a\n  at b"),
            Value::Null,
        );
        assert_eq!(zh, "❌ 【Deploy】失败\n错误: Traceback:…");
    }

    #[test]
    fn nothing_renders_more_than_three_lines() {
        let t = task("a\nname\non\nlines", &["s\n1", "s2", "s3"]);
        let nasty = "one\ntwo\nthree\nfour";
        let data = json!({"step": nasty, "next": nasty, "text": nasty, "index": 0});
        let all = [
            Created, Started, Step, Heartbeat, Progress, Output, Completed, Failed, Cancelled,
            Retried, Stalled,
        ];
        for lang in [En, Zh] {
            for kind in all {
                let e = event(&t, kind, Some(nasty), data.clone());
                if let Some(m) = Templates::builtin(lang).render(&t, &e) {
                    assert!(m.lines().count() <= MAX_LINES, "{lang:?} {kind:?}: {m}");
                }
            }
        }
    }

    #[test]
    fn overrides_replace_silence_or_enable_single_kinds() {
        let t = task("Deploy", &[]);
        let templates = Templates::builtin(En)
            .with_overrides(HashMap::from([
                (Completed, "{name} finished {{ok}}: {result}"),
                (Failed, ""),
                (Created, "⏳ queued 【{name}】"),
                (Output, "{message}"),
            ]))
            .unwrap();
        let done = templates.render(&t, &event(&t, Completed, Some("42"), Value::Null));
        assert_eq!(done.as_deref(), Some("Deploy finished {ok}: 42"));
        assert_eq!(
            templates.render(&t, &event(&t, Failed, Some("x"), Value::Null)),
            None
        );
        let created = templates.render(&t, &event(&t, Created, None, Value::Null));
        assert_eq!(created.as_deref(), Some("⏳ queued 【Deploy】"));
        let out = event(&t, Output, None, json!({"text": "compiling\nlinking\n\n"}));
        assert_eq!(templates.render(&t, &out).as_deref(), Some("linking"));
        assert_eq!(templates.get(Started), Templates::builtin(En).get(Started));
    }

    #[test]
    fn bad_override_templates_are_refused() {
        let bad = |t: &str| {
            Templates::builtin(Zh)
                .with_overrides([(Step, t)])
                .unwrap_err()
        };
        let unknown = MessageError::UnknownPlaceholder {
            kind: Step,
            name: "nmae".into(),
        };
        assert_eq!(bad("{nmae} done"), unknown);
        for syntax in ["{name", "{?x", "x}", "{?{?x}}"] {
            assert_eq!(bad(syntax), MessageError::Syntax { kind: Step }, "{syntax}");
        }
        let lines = MessageError::TooManyLines {
            kind: Step,
            lines: 4,
        };
        assert_eq!(bad("a\nb{?\nc}\nd"), lines);
    }

    #[test]
    fn languages_parse_from_config_names() {
        let zh: Language = serde_json::from_str("\"zh\"").unwrap();
        assert_eq!(zh, Zh);
        assert_eq!(Language::default(), En);
        assert_ne!(Templates::builtin(En), Templates::builtin(Zh));
    }
}

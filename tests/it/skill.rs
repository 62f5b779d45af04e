//! The OpenClaw skill `skills/taskfleet/SKILL.md` works as written: every ```bash / ```sh block,
//! in order, runs with `bash -euo pipefail` against a live fleet (the API on its own
//! nats-server, the real `taskfleet` binary on `PATH`), as one shell session would run them (a
//! variable a block sets reaches the later blocks), and the fleet shows what the skill did.

use crate::harness::app::ADMIN_KEY;
use crate::harness::TestApp;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use taskfleet::domain::{Task, TaskStatus};
use tokio::process::Command;

/// The skill, as shipped.
const SKILL: &str = include_str!("../../skills/taskfleet/SKILL.md");

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_taskfleet");

/// The bot the skill runs as (`$TASKFLEET_ASSIGNEE`).
const ME: &str = "anna";

/// Seconds one block may take before `timeout` kills it and its children.
const BLOCK_TIMEOUT_S: &str = "60";

/// The fenced ```bash and ```sh blocks of `markdown`, in order.
fn command_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(info)) if matches!(info.trim(), "bash" | "sh") => {
                current = Some(String::new())
            }
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some(body), None) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block in SKILL.md");
    blocks
}

/// The variables the blocks assign (`NAME=…` at the start of a line): what a shell session keeps
/// from one block to the next.
fn assigned_variables(blocks: &[String]) -> Vec<String> {
    let mut names: Vec<String> = blocks
        .iter()
        .flat_map(|b| b.lines())
        .filter_map(|line| {
            let line = line.trim_start();
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let assigns = !name.is_empty() && line[name.len()..].starts_with('=');
            assigns.then_some(name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The front matter of `markdown` (between the leading `---` lines), parsed as YAML.
fn front_matter(markdown: &str) -> Value {
    let rest = markdown
        .strip_prefix("---\n")
        .expect("SKILL.md starts with front matter");
    let (yaml, _) = rest.split_once("\n---\n").expect("front matter ends");
    serde_norway::from_str(yaml).expect("front matter is YAML")
}

/// One bot's shell session against `app`: a work dir, a `PATH` with the binary, the skill's
/// variables, and a file that carries assigned variables from one block to the next.
struct Session {
    /// Work dir (cwd of every block; holds the state file, the pulse state and `bin/`).
    dir: tempfile::TempDir,
    /// `(name, value)` set for every block.
    env: Vec<(String, String)>,
    /// The variables carried between blocks.
    carried: Vec<String>,
}

impl Session {
    /// A session for `ME` with the admin key, carrying `carried`.
    fn new(app: &TestApp, carried: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("session dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("taskfleet")).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        let at = |p: &str| dir.path().join(p).display().to_string();
        let env = [
            ("PATH", format!("{}:{path}", bin.display())),
            ("TASKFLEET_API_URL", app.url.clone()),
            ("TASKFLEET_API_KEY", ADMIN_KEY.to_string()),
            ("TASKFLEET_ASSIGNEE", ME.to_string()),
            ("TASKFLEET_STATE_DIR", at("pulse-state")),
            ("TASKFLEET_DATA_DIR", at("no-data-dir")),
            ("NO_COLOR", "1".to_string()),
        ];
        let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Self { dir, env, carried }
    }

    /// The state file that carries variables between blocks.
    fn state(&self) -> PathBuf {
        self.dir.path().join("session-vars.sh")
    }

    /// `block` as a script: the carried variables first, then the block as written, then the
    /// carried variables saved for the next block (only reached when the block succeeded).
    fn script(&self, block: &str) -> String {
        let state = self.state().display().to_string();
        format!(
            "if [ -f '{state}' ]; then . '{state}'; fi\n{block}\n\
             for __v in {names}; do if [ -n \"${{!__v+x}}\" ]; then declare -p \"$__v\"; fi; done > '{state}'\n",
            names = self.carried.join(" ")
        )
    }

    /// Runs one block with `bash -euo pipefail`, bounded by `timeout`, in a clean environment
    /// (no `TASKFLEET_*`, `OPENCLAW_*` or `NATS_URL` from the test's own).
    async fn run(&self, block: &str) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", BLOCK_TIMEOUT_S, "bash", "-euo", "pipefail", "-c"])
            .arg(self.script(block));
        let ours = |n: &str| n.starts_with("TASKFLEET_") || n.starts_with("OPENCLAW_");
        for (k, _) in std::env::vars_os() {
            if ours(&k.to_string_lossy()) || k == "NATS_URL" {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd.output().await.expect("run bash")
    }
}

/// Asserts that block `i` exited 0, showing it and what it printed otherwise.
fn assert_block_ran(i: usize, block: &str, out: &Output) {
    let timed_out = out.status.code() == Some(124);
    assert!(
        out.status.success(),
        "block {i} of SKILL.md {} ({:?}):\n{block}\n--- stdout\n{}\n--- stderr\n{}",
        if timed_out { "timed out" } else { "failed" },
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// What other bots left in `ME`'s queue before the skill runs: a P0 task with named steps, a
/// P1 and a P2 task without. Returns their ids, in queue order.
async fn seed_my_queue(app: &TestApp) -> [String; 3] {
    let body = serde_json::json!({
        "task_name": "send the daily greeting", "assigned_to": ME, "priority": "P0",
        "created_by": "trump", "steps": ["fetch", "write", "send"],
    });
    let first = app
        .admin
        .create_task(&body)
        .await
        .unwrap()
        .id
        .as_str()
        .to_string();
    let second = app.create("tidy the notes", ME, "P1").await;
    let third = app.create("summarise the inbox", ME, "P2").await;
    [first, second, third]
}

/// The tasks assigned to `assignee` (any status).
async fn tasks_of(app: &TestApp, assignee: &str) -> Vec<Task> {
    let q = [
        ("assigned_to", assignee.to_string()),
        ("limit", "100".into()),
    ];
    app.admin.list_tasks(&q).await.unwrap()
}

/// The actions of a task's log, oldest first.
async fn actions(app: &TestApp, id: &str) -> Vec<String> {
    let rows = app.admin.logs(id).await.unwrap();
    rows.into_iter().map(|r| r.action).collect()
}

/// Asserts that task `id` was claimed, had steps reported and was completed with a result.
async fn assert_worked_and_completed(app: &TestApp, id: &str) {
    let task = app.admin.get_task(id).await.unwrap();
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    let result = task.result.as_ref().and_then(Value::as_str).unwrap_or("");
    assert!(!result.is_empty(), "a result: {task:?}");
    let log = actions(app, id).await;
    assert_eq!(log.first().map(String::as_str), Some("create"), "{log:?}");
    assert!(log.iter().any(|a| a == "start"), "{log:?}");
    assert!(log.iter().any(|a| a == "step"), "steps reported: {log:?}");
    assert_eq!(log.last().map(String::as_str), Some("complete"), "{log:?}");
}

/// Asserts that `assignee` got exactly one pending task from `ME`, with named steps.
async fn assert_handed_one_task_to(app: &TestApp, assignee: &str) {
    let tasks = tasks_of(app, assignee).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let t = &tasks[0];
    assert_eq!(t.status, TaskStatus::Pending, "{t:?}");
    assert_eq!(t.created_by.as_deref(), Some(ME), "{t:?}");
    assert!(!t.steps.is_empty(), "{t:?}");
}

/// Asserts that `ME`'s own `pulse start` tasks ended one completed (every step done) and one
/// failed with the reason.
async fn assert_pulse_started_tasks_finished(app: &TestApp) {
    let mine = tasks_of(app, ME).await;
    let pulse: Vec<&Task> = mine
        .iter()
        .filter(|t| {
            t.created_by
                .as_deref()
                .is_some_and(|c| c.starts_with("pulse:"))
        })
        .collect();
    assert_eq!(pulse.len(), 2, "{pulse:?}");
    let done = pulse.iter().find(|t| t.status == TaskStatus::Completed);
    let done = done.expect("a completed pulse task");
    assert_eq!(done.progress.done, done.progress.total, "{done:?}");
    assert!(done.progress.total > 0, "{done:?}");
    let failed = pulse.iter().find(|t| t.status == TaskStatus::Failed);
    let failed = failed.expect("a failed pulse task");
    assert!(
        failed.error.as_deref().is_some_and(|e| !e.is_empty()),
        "{failed:?}"
    );
}

#[tokio::test]
async fn every_command_block_of_the_skill_runs_as_written_against_a_live_fleet() {
    // Arrange: a live fleet with three tasks waiting for anna.
    let app = TestApp::spawn().await;
    let [greeting, notes, inbox] = seed_my_queue(&app).await;
    let blocks = command_blocks(SKILL);
    assert!(blocks.len() >= 10, "SKILL.md has {} blocks", blocks.len());
    let session = Session::new(&app, assigned_variables(&blocks));

    // Act: every block, in order.
    for (i, block) in blocks.iter().enumerate() {
        let out = session.run(block).await;
        assert_block_ran(i, block, &out);
    }

    // Assert: the CLI path worked the P0 task, the curl path the P1 task, the HEARTBEAT script
    // claimed the P2 task; two tasks were handed out; pulse's own tasks finished.
    assert_worked_and_completed(&app, &greeting).await;
    assert_worked_and_completed(&app, &notes).await;
    let claimed = app.admin.get_task(&inbox).await.unwrap();
    assert_eq!(claimed.status, TaskStatus::Running, "{claimed:?}");
    assert!(claimed.lease.is_some(), "{claimed:?}");
    assert_handed_one_task_to(&app, "trump").await;
    assert_handed_one_task_to(&app, "cc").await;
    assert_pulse_started_tasks_finished(&app).await;
}

#[test]
fn the_skill_declares_its_name_and_the_env_it_needs_in_openclaw_front_matter() {
    let meta = front_matter(SKILL);

    assert_eq!(meta["name"], "taskfleet");
    assert!(meta["description"].as_str().is_some_and(|d| d.len() > 40));
    let openclaw = &meta["metadata"]["openclaw"];
    assert_eq!(openclaw["primaryEnv"], "TASKFLEET_API_KEY");
    let env = openclaw["requires"]["env"]
        .as_array()
        .expect("requires.env");
    for name in [
        "TASKFLEET_API_URL",
        "TASKFLEET_API_KEY",
        "TASKFLEET_ASSIGNEE",
    ] {
        assert!(env.iter().any(|e| e == name), "{name} in {env:?}");
    }
    let bins = openclaw["requires"]["bins"].as_array().expect("bins");
    assert!(bins.iter().any(|b| b == "taskfleet"), "{bins:?}");
}

#[test]
fn the_skill_takes_the_api_key_from_the_environment_and_holds_none() {
    for (i, line) in SKILL.lines().enumerate() {
        if let Some((_, after)) = line.split_once("X-Bot-Key: ") {
            assert!(
                after.starts_with("$TASKFLEET_API_KEY"),
                "line {}: a key other than $TASKFLEET_API_KEY: {line}",
                i + 1
            );
        }
    }
}

#[test]
fn the_skill_shows_curl_and_the_cli_for_each_thing_a_bot_does() {
    let code = command_blocks(SKILL).join("\n");
    let wanted = [
        "/api/tasks/pending?assigned_to=",
        "taskfleet task pending",
        "-X POST",
        "taskfleet task create",
        "/start\"",
        "taskfleet task start",
        "taskfleet pulse next",
        "taskfleet pulse heartbeat",
        "taskfleet pulse start",
        "/step\"",
        "taskfleet pulse done",
        "/complete\"",
        "taskfleet pulse fail",
        "/logs\"",
        "taskfleet task logs",
        "taskfleet task get",
        "HEARTBEAT_OK",
    ];
    for w in wanted {
        assert!(code.contains(w), "no command block of SKILL.md has {w:?}");
    }
}

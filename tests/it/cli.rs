//! The `taskfleet` binary: `task` subcommands against a running API, and `up` as a user runs it.

use crate::harness::app::{worker_settings, ADMIN_KEY};
use crate::harness::ports::{self, free_port};
use crate::harness::{eventually, TestApp};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_taskfleet");

async fn taskfleet(app: &TestApp, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("TASKFLEET_API_URL", &app.url)
        .env("TASKFLEET_API_KEY", ADMIN_KEY)
        .output()
        .await
        .expect("run taskfleet")
}

/// The cursor a listing command printed on stderr for its next page (`more: add <flag> N …`).
pub(crate) fn next_page_cursor(o: &Output, flag: &str) -> String {
    let hint = String::from_utf8_lossy(&o.stderr).into_owned();
    hint.split_whitespace()
        .skip_while(|w| *w != flag)
        .nth(1)
        .unwrap_or_else(|| panic!("no {flag} in {hint:?}"))
        .to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn create_with_wait_returns_when_the_task_finishes_and_its_exit_status_says_how() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let create = |name: &'static str, command: &'static str| {
        let payload = serde_json::json!({ "command": command }).to_string();
        let app = &app;
        async move {
            let args = ["task", "create", "-n", name, "-a", "anna", "--kind", "exec"];
            let wait = ["--payload", &payload, "--wait"];
            taskfleet(app, &[&args[..], &wait[..]].concat()).await
        }
    };

    // Act: one that takes a moment and succeeds, one that fails.
    let ok = create("ok", "sleep 0.5; echo hi").await;
    let bad = create("bad", "echo oops >&2; exit 3").await;

    // Assert: the finished task on stdout, its events on stderr, the outcome as exit status.
    let (ok_err, bad_err) = (
        String::from_utf8_lossy(&ok.stderr),
        String::from_utf8_lossy(&bad.stderr),
    );
    assert_eq!(ok.status.code(), Some(0), "{ok_err}");
    assert!(
        stdout(&ok).contains("status:      completed"),
        "{}",
        stdout(&ok)
    );
    // The command's output ends with a newline; the listing shows no blank line for it.
    let ok_out = stdout(&ok);
    assert!(ok_out.contains("result:      hi\ncreated:"), "{ok_out}");
    assert!(ok_err.contains("waiting for it to finish"), "{ok_err}");
    assert!(ok_err.lines().any(|l| l.contains("completed")), "{ok_err}");
    assert_eq!(bad.status.code(), Some(1), "{bad_err}");
    assert!(
        stdout(&bad).contains("status:      failed"),
        "{}",
        stdout(&bad)
    );
    let line = bad_err.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("error: task ") && line.contains(" failed: "),
        "{bad_err}"
    );
}

#[tokio::test]
async fn watch_with_exit_status_exits_as_the_task_ended_and_without_it_always_succeeds() {
    // Arrange: a task that failed and one that completed, both over the API.
    let app = TestApp::spawn().await;
    let finish = |action: &'static str| {
        let app = &app;
        async move {
            let created = taskfleet(
                app,
                &["task", "create", "-n", action, "-a", "anna", "--json"],
            )
            .await;
            let task: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
            let id = task["id"].as_str().unwrap().to_string();
            assert!(taskfleet(app, &["task", "start", &id])
                .await
                .status
                .success());
            let done = taskfleet(
                app,
                &[
                    "task",
                    action,
                    &id,
                    if action == "fail" { "-e" } else { "-r" },
                    "x",
                ],
            )
            .await;
            assert!(done.status.success(), "{done:?}");
            id
        }
    };
    let (failed, completed) = (finish("fail").await, finish("complete").await);

    // Act
    let watch = |id: &str, flag: Option<&str>| {
        let args: Vec<String> = ["task", "watch", id]
            .into_iter()
            .chain(flag)
            .map(String::from)
            .collect();
        let app = &app;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            taskfleet(app, &args).await.status.code()
        }
    };
    let failed_strict = watch(&failed, Some("--exit-status")).await;
    let completed_strict = watch(&completed, Some("--exit-status")).await;
    let failed_plain = watch(&failed, None).await;

    // Assert
    assert_eq!(failed_strict, Some(1));
    assert_eq!(completed_strict, Some(0));
    assert_eq!(
        failed_plain,
        Some(0),
        "without the flag, watching is all it does"
    );
}

#[tokio::test]
async fn commands_against_an_api_that_is_not_there_say_why_and_where_to_point_them() {
    // Arrange: a port nothing listens on.
    let url = format!("http://127.0.0.1:{}", free_port());

    // Act
    let mut said = Vec::new();
    for args in [&["task", "list"][..], &["delivery", "list"], &["workers"]] {
        let out = Command::new(BIN)
            .args(args)
            .env("TASKFLEET_API_URL", &url)
            .env("TASKFLEET_API_KEY", ADMIN_KEY)
            .output()
            .await
            .expect("run taskfleet");
        said.push((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }

    // Assert: the cause, not reqwest's "error sending request", and the way to another API.
    for (code, stderr) in said {
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot reach the taskfleet API at {url}")),
            "{stderr}"
        );
        assert!(stderr.contains("Connection refused"), "{stderr}");
        assert!(stderr.contains("TASKFLEET_API_URL"), "{stderr}");
    }
}

#[tokio::test]
async fn a_listing_piped_into_a_reader_that_stopped_reading_ends_quietly() {
    // Arrange: a task to list, and a pipe whose reader is gone (`taskfleet task list | head -0`).
    let app = TestApp::spawn().await;
    let made = taskfleet(&app, &["task", "create", "-n", "greet", "-a", "anna"]).await;
    assert!(made.status.success(), "{made:?}");
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);

    // Act
    let out = Command::new(BIN)
        .args(["task", "list", "-a", "anna"])
        .env("TASKFLEET_API_URL", &app.url)
        .env("TASKFLEET_API_KEY", ADMIN_KEY)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run taskfleet")
        .wait_with_output()
        .await
        .expect("its exit");

    // Assert: ended by SIGPIPE, as `ls | head` ends `ls`; no panic, no backtrace.
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

#[tokio::test]
async fn task_commands_create_list_start_complete_and_show_the_log() {
    let app = TestApp::spawn().await;

    let created = taskfleet(
        &app,
        &[
            "task", "create", "-n", "greet", "-a", "anna", "-p", "P0", "--json",
        ],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    let task: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = task["id"].as_str().unwrap();
    let pending = taskfleet(&app, &["task", "pending", "-a", "anna"]).await;
    let started = taskfleet(&app, &["task", "start", id]).await;
    let completed = taskfleet(&app, &["task", "complete", id, "-r", "sent", "--json"]).await;
    let logs = taskfleet(&app, &["task", "logs", id]).await;

    assert!(stdout(&pending).contains(id), "{}", stdout(&pending));
    assert!(stdout(&pending).contains("greet"));
    assert!(started.status.success());
    assert!(stdout(&started).contains("running"));
    let done: serde_json::Value = serde_json::from_slice(&completed.stdout).unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], "sent");
    let log = stdout(&logs);
    for action in ["create", "start", "complete"] {
        assert!(log.contains(action), "{log}");
    }
}

#[tokio::test]
async fn task_list_filters_by_priority_and_pages_on_with_the_cursor_it_prints() {
    // Arrange: three P1 tasks, then a P0.
    let app = TestApp::spawn().await;
    let mut p1 = Vec::new();
    for i in 0..3 {
        p1.push(app.create(&format!("routine {i}"), "anna", "P1").await);
    }
    let p0 = app.create("urgent", "anna", "P0").await;

    // Act
    let urgent = taskfleet(&app, &["task", "list", "-a", "anna", "-p", "P0"]).await;
    let first = taskfleet(&app, &["task", "list", "-a", "anna", "--limit", "2"]).await;
    let cursor = next_page_cursor(&first, "--before");
    let args = [
        "task", "list", "-a", "anna", "--limit", "2", "--before", &cursor,
    ];
    let second = taskfleet(&app, &args).await;

    // Assert
    let listed = |o: &Output| -> Vec<String> {
        let rows = stdout(o);
        rows.lines().skip(1).map(|l| l[..26].to_string()).collect()
    };
    assert_eq!(listed(&urgent), [p0.as_str()], "{}", stdout(&urgent));
    assert_eq!(listed(&first), [p0.as_str(), &p1[2]], "newest first");
    assert_eq!(
        listed(&second),
        [p1[1].clone(), p1[0].clone()],
        "the next page"
    );
}

#[tokio::test]
async fn task_list_since_shows_only_what_finished_within_that_long_and_says_what_is_wrong() {
    // Arrange: one of anna's two tasks failed a moment ago.
    let app = TestApp::spawn().await;
    let failed = app.create("broke", "anna", "P1").await;
    app.create("waiting", "anna", "P1").await;
    app.admin.action(&failed, "start", None).await.unwrap();
    let boom = serde_json::json!({"error": "boom"});
    app.admin
        .action(&failed, "fail", Some(&boom))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let list = |since: &'static str, status: &'static str| {
        let app = &app;
        async move {
            let args = ["task", "list", "-a", "anna", "-s", status, "--since", since];
            taskfleet(app, &args).await
        }
    };

    // Act
    let hour = list("1h", "failed").await;
    let moment = list("100ms", "failed").await;
    let not_a_duration = list("soon", "failed").await;
    let not_final = list("1h", "pending").await;

    // Assert: within the hour, the failed task; within 100 ms, none (it failed 300 ms ago).
    assert!(hour.status.success(), "{hour:?}");
    let rows: Vec<String> = (stdout(&hour).lines().skip(1))
        .map(|l| l[..26].to_string())
        .collect();
    assert_eq!(rows, [failed.as_str()], "{}", stdout(&hour));
    assert!(moment.status.success(), "{moment:?}");
    assert!(
        stdout(&moment).contains("(no tasks)"),
        "{}",
        stdout(&moment)
    );
    for (out, says) in [(not_a_duration, "--since"), (not_final, "finished_after")] {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(says), "{err}");
    }
}

#[tokio::test]
async fn task_dead_pages_on_with_the_cursor_it_prints() {
    // Arrange: three dead letters, as workers leave them.
    let app = TestApp::spawn().await;
    let ids = app.seed_dead_letters(3).await;

    // Act
    let first = taskfleet(&app, &["task", "dead", "-a", "anna", "--limit", "2"]).await;
    let cursor = next_page_cursor(&first, "--after");
    let args = [
        "task", "dead", "-a", "anna", "--limit", "2", "--after", &cursor,
    ];
    let second = taskfleet(&app, &args).await;

    // Assert: oldest first, each once.
    let listed = |o: &Output| -> Vec<String> {
        let rows = stdout(o);
        rows.lines().map(|l| l[..26].to_string()).collect()
    };
    assert_eq!([listed(&first), listed(&second)].concat(), ids);
}

#[tokio::test]
async fn task_logs_print_one_row_per_entry_when_a_result_has_many_lines() {
    // Arrange: a task completed with a three-line result (a command's output, say).
    let app = TestApp::spawn().await;
    let id = app.create("multi", "anna", "P1").await;
    let id = id.as_str();
    taskfleet(&app, &["task", "start", id]).await;
    let result = "line 1\nline 2\nline 3\n";
    let done = taskfleet(&app, &["task", "complete", id, "-r", result]).await;

    // Act
    let logs = taskfleet(&app, &["task", "logs", id]).await;

    // Assert
    assert!(done.status.success(), "{done:?}");
    let log = stdout(&logs);
    let rows: Vec<&str> = log.lines().collect();
    assert_eq!(
        rows.len(),
        4,
        "a header and create, start, complete:\n{log}"
    );
    assert!(
        rows[3].contains("complete") && rows[3].ends_with("line 1…"),
        "{log}"
    );
}

#[tokio::test]
async fn task_list_and_logs_keep_their_columns_for_long_assignee_and_worker_names() {
    // Arrange: a worker-run task of an assignee with a long name; its log's operator is the
    // worker's name (`<assignee>@<host>-…`).
    let app = TestApp::spawn().await;
    let assignee = "a-bot-with-a-rather-long-name";
    let _worker = app.worker(assignee, 1, worker_settings()).await;
    let body = serde_json::json!({"task_name": "tidy up", "assigned_to": assignee, "kind": "noop"});
    let id = app.admin.create_task(&body).await.expect("create").id;
    let id = id.as_str();
    crate::workers::finished(&app, id, Duration::from_secs(15)).await;

    // Act
    let list = stdout(&taskfleet(&app, &["task", "list", "-a", assignee]).await);
    let logs = stdout(&taskfleet(&app, &["task", "logs", id]).await);

    // Assert: each row's last column starts where its heading does.
    let at = list
        .lines()
        .next()
        .and_then(|h| h.find("NAME"))
        .expect("a heading");
    assert_eq!(
        list.lines().nth(1).and_then(|r| r.get(at..)),
        Some("tidy up"),
        "{list}"
    );
    let at = logs
        .lines()
        .next()
        .and_then(|h| h.find("MESSAGE"))
        .expect("a heading");
    let complete = logs
        .lines()
        .find(|r| r.contains(" complete "))
        .unwrap_or_else(|| panic!("no complete row: {logs}"));
    assert_eq!(complete.get(at..), Some("ok"), "{logs}");
}

#[tokio::test]
async fn listing_commands_say_when_there_is_nothing_to_list() {
    // Arrange: a fleet with no tasks, deliveries, keys in use or schedules.
    let app = TestApp::spawn().await;
    let commands: [(&[&str], &str); 6] = [
        (&["task", "list", "-a", "nobody"], "(no tasks)"),
        (&["workers", "-a", "nobody"], "(no workers or relays alive)"),
        (&["task", "dead"], "(no dead letters)"),
        (&["delivery", "list"], "(no deliveries)"),
        (&["limits", "-a", "nobody"], "(no keys in use)"),
        (&["schedule", "list"], "(no schedules)"),
    ];

    for (args, said) in commands {
        // Act
        let out = taskfleet(&app, args).await;

        // Assert
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(stdout(&out).trim(), said, "{args:?}");
    }
}

#[tokio::test]
async fn task_commands_exit_non_zero_with_the_servers_message() {
    let app = TestApp::spawn().await;
    let id = app.create("x", "anna", "P1").await;

    let illegal = taskfleet(&app, &["task", "complete", &id]).await;
    let unauthorized = Command::new(BIN)
        .args([
            "task",
            "get",
            &id,
            "--api",
            &app.url,
            "--key",
            "wrong-key-0123456789",
        ])
        .output()
        .await
        .unwrap();

    assert!(!illegal.status.success());
    let err = String::from_utf8_lossy(&illegal.stderr);
    assert!(
        err.contains("cannot complete") && err.contains("409"),
        "{err}"
    );
    assert!(!unauthorized.status.success());
    assert!(String::from_utf8_lossy(&unauthorized.stderr).contains("401"));
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie is reaped by init quickly, so also look at /proc state.
    let exists = u32::try_from(pid).is_ok_and(|p| taskfleet::sys::signal_process(p, 0).is_ok());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(false);
    exists && !zombie
}

/// `up` as [`ports::up_command`] makes it, with no API key from the environment (it generates
/// one) and its output read by the test.
fn up_command(data: &Path, api_port: u16, nats_port: u16) -> Command {
    let mut cmd = ports::up_command(data, api_port, nats_port);
    cmd.env_remove("TASKFLEET_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads `up`'s stdout until the banner is complete; returns the nats-server pid it printed, or
/// what `up` said on stderr if it exited first.
async fn until_up(child: &mut tokio::process::Child) -> Result<i32, String> {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut pid = None;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("pid ").nth(1) {
                pid = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse().ok());
            }
            if line.starts_with("Press Ctrl-C") {
                return Ok(());
            }
        }
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err).await;
        }
        Err(err)
    };
    tokio::time::timeout(Duration::from_secs(90), read)
        .await
        .expect("up became ready or exited")?;
    Ok(pid.expect("banner names the nats-server pid"))
}

/// Starts `up` (as [`up_command`] makes it, then `adjust`) and waits until it is up; returns
/// the process, its nats-server's pid and the API's port. [`free_port`] hands out a port that
/// is free when asked, and another test's server may take it before `up` binds it: a start
/// that fails because a port was taken (the API's or nats-server's) is tried again on other
/// ports, three times at most.
async fn start_up(data: &Path, adjust: impl Fn(&mut Command)) -> (tokio::process::Child, i32, u16) {
    let adjust = &adjust;
    ports::start_on_free_ports("taskfleet up", || async move {
        let api_port = free_port();
        let mut cmd = up_command(data, api_port, free_port());
        adjust(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let pid = until_up(&mut child).await?;
        Ok((child, pid, api_port))
    })
    .await
}

/// Starts `up` with a worker for each of `assignees` (a TOML array) and waits until it is up:
/// the process, its nats-server's pid, and a client of its API with the generated key.
async fn up_with_workers(
    data: &Path,
    assignees: &str,
) -> (tokio::process::Child, i32, taskfleet::client::ApiClient) {
    let config = data.join("fleet.toml");
    std::fs::write(&config, format!("[fleet]\nassignees = {assignees}\n")).unwrap();
    let (child, nats_pid, api_port) = start_up(data, |cmd| {
        cmd.arg("--config").arg(&config);
    })
    .await;
    let key = std::fs::read_to_string(data.join("api-key")).unwrap();
    let url = format!("http://127.0.0.1:{api_port}");
    let client = taskfleet::client::ApiClient::new(&url, Some(key.trim().to_string()));
    (child, nats_pid, client)
}

/// Waits up to `limit` until task `id` has finished (any terminal status), and returns it.
async fn finished(
    client: &taskfleet::client::ApiClient,
    id: &str,
    limit: Duration,
) -> taskfleet::domain::Task {
    eventually("the exec task to finish", limit, || async {
        let t = client.get_task(id).await.ok()?;
        t.status.is_terminal().then_some(t)
    })
    .await
}

#[tokio::test]
async fn up_serves_the_api_with_a_generated_key_and_stops_nats_on_sigterm() {
    // Arrange
    let data = tempfile::tempdir().unwrap();

    // Act
    let (mut child, nats_pid, api_port) = start_up(data.path(), |_| {}).await;
    let key_file = data.path().join("api-key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    let pending = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{api_port}/api/tasks/pending?assigned_to=anna"
        ))
        .header("X-Bot-Key", &key)
        .send()
        .await
        .unwrap();
    taskfleet::sys::signal_process(child.id().unwrap(), libc::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("up exits after SIGTERM")
        .unwrap();

    // Assert
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(key.len() >= 32);
    assert_eq!(pending.status(), reqwest::StatusCode::OK);
    assert!(status.success(), "{status:?}");
    eventually("nats-server to exit", Duration::from_secs(10), || async {
        (!alive(nats_pid)).then_some(())
    })
    .await;
    assert!(data.path().join("nats").join("jetstream").is_dir());
}

#[tokio::test]
async fn up_with_an_empty_nats_url_starts_its_own_nats_server_as_without_one() {
    // Arrange: `--nats-url ""`, as a script passing an unset variable writes it.
    let data = tempfile::tempdir().unwrap();

    // Act
    let (mut child, nats_pid, _) = start_up(data.path(), |up| {
        up.args(["--nats-url", ""]);
    })
    .await;

    // Assert
    assert!(
        alive(nats_pid),
        "the banner names the nats-server it started"
    );
    taskfleet::sys::signal_process(child.id().unwrap(), libc::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    assert!(status.expect("up exits after SIGTERM").unwrap().success());
}

#[tokio::test]
async fn up_that_fails_halfway_leaves_no_nats_server_behind() {
    // Arrange: the API port is taken, so `up` fails after nats-server started.
    let data = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = taken.local_addr().unwrap().port();

    // Act
    let out = up_command(data.path(), api_port, free_port())
        .output()
        .await
        .unwrap();

    // Assert
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("binding the API"), "{err}");
    let pid: i32 = err
        .split("pid ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("stderr names the nats-server pid");
    eventually("nats-server to exit", Duration::from_secs(10), || async {
        (!alive(pid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn up_killed_with_sigkill_takes_its_nats_server_with_it() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, nats_pid, _) = start_up(data.path(), |_| {}).await;

    child.kill().await.unwrap();

    eventually(
        "the orphaned nats-server to exit",
        Duration::from_secs(10),
        || async { (!alive(nats_pid)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn up_runs_a_worker_per_configured_assignee_and_exec_tasks_complete() {
    // Arrange
    let data = tempfile::tempdir().unwrap();
    let (mut child, _, client) = up_with_workers(data.path(), r#"["anna", "cc"]"#).await;

    // Act: the program reports on its own task with the token it was given.
    let task = client
        .create_task(&serde_json::json!({
            "task_name": "hello", "assigned_to": "cc", "kind": "exec",
            "payload": {"command": "curl -s -o /dev/null -w '%{http_code}' -H \"X-Bot-Key: $TASKFLEET_TASK_TOKEN\" \"$TASKFLEET_API_URL/api/tasks/$TASKFLEET_TASK_ID\""}
        }))
        .await
        .unwrap();
    let done = finished(&client, task.id.as_str(), Duration::from_secs(30)).await;
    taskfleet::sys::signal_process(child.id().unwrap(), libc::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;

    // Assert
    assert_eq!(done.status.as_str(), "completed", "{done:?}");
    assert_eq!(done.result, Some(serde_json::json!("200")));
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{status:?}");
}

#[tokio::test]
async fn up_starts_its_nats_server_again_when_it_is_killed_and_keeps_what_it_stored() {
    // Arrange: a fleet with one worker, and a task it finished.
    let data = tempfile::tempdir().unwrap();
    let (mut child, nats_pid, client) = up_with_workers(data.path(), r#"["anna"]"#).await;
    let exec = serde_json::json!({
        "task_name": "echo", "assigned_to": "anna", "kind": "exec",
        "payload": {"command": "echo done"}
    });
    let before = client.create_task(&exec).await.unwrap();
    finished(&client, before.id.as_str(), Duration::from_secs(60)).await;

    // Act: kill -9 the nats-server `up` started; then a new task.
    taskfleet::sys::signal_process(nats_pid as u32, libc::SIGKILL).expect("SIGKILL");
    let after = eventually("the API after the restart", Duration::from_secs(60), || {
        let (client, exec) = (client.clone(), exec.clone());
        let create = async move { client.create_task(&exec).await.ok() };
        async move {
            tokio::time::timeout(Duration::from_secs(5), create)
                .await
                .ok()?
        }
    })
    .await;
    let done = finished(&client, after.id.as_str(), Duration::from_secs(60)).await;
    let kept = client.get_task(before.id.as_str()).await.unwrap();
    taskfleet::sys::signal_process(child.id().unwrap(), libc::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;

    // Assert
    assert!(!alive(nats_pid));
    assert_eq!(done.status.as_str(), "completed", "{done:?}");
    assert_eq!(kept.status.as_str(), "completed", "{kept:?}");
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{status:?}");
}

#[tokio::test]
async fn task_create_in_schedules_a_task_that_list_and_reschedule_show() {
    let app = TestApp::spawn().await;

    let created = taskfleet(
        &app,
        &["task", "create", "-n", "later", "-a", "anna", "--in", "2m"],
    )
    .await;
    let listed = taskfleet(&app, &["task", "list", "--status", "scheduled", "--json"]).await;
    let tasks: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = tasks[0]["id"].as_str().unwrap().to_string();
    let at = (chrono::Utc::now() + chrono::Duration::days(30)).date_naive();
    let at_text = format!("{at}T09:00:00+01:00");
    let moved = taskfleet(&app, &["task", "reschedule", &id, "--at", &at_text]).await;
    let bad = taskfleet(
        &app,
        &["task", "create", "-n", "x", "-a", "anna", "--in", "soon"],
    )
    .await;

    assert!(created.status.success(), "{created:?}");
    assert!(
        stdout(&created).contains("status:      scheduled"),
        "{}",
        stdout(&created)
    );
    assert!(
        stdout(&created).contains("runs at:"),
        "{}",
        stdout(&created)
    );
    assert_eq!(tasks.as_array().unwrap().len(), 1);
    let run_at: chrono::DateTime<chrono::Utc> =
        tasks[0]["run_at"].as_str().unwrap().parse().unwrap();
    let ahead = run_at - chrono::Utc::now();
    assert!(ahead > chrono::Duration::seconds(100) && ahead <= chrono::Duration::seconds(120));
    assert!(moved.status.success(), "{moved:?}");
    let shown = format!("runs at:     {at} 08:00:00 UTC");
    assert!(stdout(&moved).contains(&shown), "{}", stdout(&moved));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--in"));
}

#[tokio::test]
async fn limits_commands_set_list_and_remove_a_keys_override_and_create_names_the_key() {
    let app = TestApp::spawn().await;

    let set = taskfleet(
        &app,
        &[
            "limits",
            "set",
            "anna",
            "repo:acme/web",
            "--concurrency",
            "1",
        ],
    )
    .await;
    let rate = taskfleet(
        &app,
        &[
            "limits", "set", "anna", "chan:1", "--rate", "20/min", "--burst", "5",
        ],
    )
    .await;
    let bad = taskfleet(&app, &["limits", "set", "anna", "chan:2", "--rate", "soon"]).await;
    let created = taskfleet(
        &app,
        &[
            "task",
            "create",
            "-n",
            "fix",
            "-a",
            "anna",
            "--concurrency-key",
            "repo:acme/web",
            "--lane",
            "session:1",
            "--json",
        ],
    )
    .await;
    let listed = taskfleet(&app, &["limits", "--json", "-a", "anna"]).await;
    let removed = taskfleet(&app, &["limits", "rm", "anna", "repo:acme/web"]).await;
    let again = taskfleet(&app, &["limits", "rm", "anna", "repo:acme/web"]).await;

    assert!(set.status.success(), "{set:?}");
    assert!(
        stdout(&set).contains(r#""concurrency": 1"#),
        "{}",
        stdout(&set)
    );
    assert!(rate.status.success(), "{rate:?}");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("rate"),
        "{bad:?}"
    );
    let task: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(task["concurrency_key"], "repo:acme/web");
    assert_eq!(task["lane"], "session:1");
    let view: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let keys: Vec<&str> = view["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["key"].as_str())
        .collect();
    assert_eq!(keys.len(), 2, "{view}");
    assert!(
        keys.contains(&"repo:acme/web") && keys.contains(&"chan:1"),
        "{view}"
    );
    assert!(removed.status.success(), "{removed:?}");
    assert!(!again.status.success(), "a second rm finds no override");
}

//! `taskfleet pulse` and `async-task` end to end: CLI → API → NATS → relay → a chat receiver.

use crate::harness::app::{relay_settings, ADMIN_KEY};
use crate::harness::{eventually, TestApp};
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskfleet::outbound::destination::Destination;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_taskfleet");

/// A seed-000 push endpoint on 127.0.0.1:0 recording `(Authorization, body)`.
async fn push_endpoint() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/api/push",
        post(
            move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
                let s = s.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    s.lock().unwrap().push((auth, body));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// The app's relay with a `webchat` chat destination as the push destination.
async fn relay_to(app: &TestApp, url: &str) -> crate::harness::app::TestRelay {
    let mut settings = relay_settings();
    settings.destinations.insert(
        "webchat".into(),
        Destination::Chat {
            url: url.to_string(),
            session_id: "main".into(),
            token: Some("chat-token".into()),
            token_env: None,
        },
    );
    settings.push_destination = Some("webchat".into());
    settings.throttle_s = 0;
    app.relay(settings).await
}

fn cli(app: &TestApp, state: &Path, argv0: &str, args: &[&str]) -> Command {
    let mut c = Command::new(argv0);
    c.args(args)
        .env("TASKFLEET_API_URL", &app.url)
        .env("TASKFLEET_API_KEY", ADMIN_KEY)
        .env("TASKFLEET_STATE_DIR", state)
        .env("OPENCLAW_SESSION", "sess-1")
        .env_remove("TASKFLEET_TASK_ID")
        .env_remove("TASKFLEET_TASK_TOKEN");
    c
}

async fn ok(mut c: Command) -> Output {
    let out = c.output().await.expect("run the CLI");
    assert!(out.status.success(), "{out:?}");
    out
}

async fn contents(seen: &Arc<Mutex<Vec<(String, Value)>>>, n: usize) -> Vec<String> {
    eventually(&format!("{n} pushes"), Duration::from_secs(20), || async {
        let s = seen.lock().unwrap().clone();
        (s.len() >= n).then(|| {
            s.iter()
                .map(|(_, b)| b["content"].as_str().unwrap_or("").to_string())
                .collect()
        })
    })
    .await
}

#[tokio::test]
async fn seed_000_async_task_start_then_done_pushes_the_result_to_the_session() {
    // Arrange: `async-task` is a symlink to the binary, as the README installs it.
    let app = TestApp::spawn().await;
    let (url, seen) = push_endpoint().await;
    let _relay = relay_to(&app, &url).await;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("async-task");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let link = link.to_str().unwrap();

    // Act: the seed's example.
    let started = ok(cli(
        &app,
        dir.path(),
        link,
        &["start", "Counting TypeScript files..."],
    ))
    .await;
    let count = 3;
    ok(cli(
        &app,
        dir.path(),
        link,
        &["done", &format!("Found {count} TypeScript files")],
    ))
    .await;
    let pushes = contents(&seen, 1).await;

    // Assert
    let id = String::from_utf8_lossy(&started.stdout).trim().to_string();
    let task = app.admin.get_task(&id).await.unwrap();
    assert_eq!(task.status.as_str(), "completed");
    assert_eq!(task.result, Some(json!("Found 3 TypeScript files")));
    assert_eq!(pushes, ["✅ Found 3 TypeScript files"]);
    let (auth, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(auth, "Bearer chat-token");
    assert_eq!(body["sessionId"], "sess-1");
    assert_eq!(body["role"], "assistant");
}

#[tokio::test]
async fn seed_002_three_steps_push_start_each_step_and_done_in_order() {
    let app = TestApp::spawn().await;
    let (url, seen) = push_endpoint().await;
    let _relay = relay_to(&app, &url).await;
    let state = tempfile::tempdir().unwrap();

    let out = ok(cli(
        &app,
        state.path(),
        BIN,
        &[
            "pulse", "start", "Publish", "--steps", "fetch", "write", "publish",
        ],
    ))
    .await;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ok(cli(
        &app,
        state.path(),
        BIN,
        &["pulse", "next", "fetched 25 items"],
    ))
    .await;
    ok(cli(
        &app,
        state.path(),
        BIN,
        &["pulse", "next", &id, "draft ready"],
    ))
    .await;
    ok(cli(
        &app,
        state.path(),
        BIN,
        &["pulse", "done", "published https://example.com/p/1"],
    ))
    .await;
    let pushes = contents(&seen, 4).await;

    assert!(
        pushes[0].starts_with("🚀 Started 【Publish】"),
        "{pushes:?}"
    );
    assert!(pushes[0].contains("fetch → write → publish"), "{pushes:?}");
    assert!(pushes[1].starts_with("✅ [1/3] fetch"), "{pushes:?}");
    assert!(
        pushes[1].contains("fetched 25 items") && pushes[1].contains("→ write"),
        "{pushes:?}"
    );
    assert!(pushes[2].starts_with("✅ [2/3] write"), "{pushes:?}");
    assert!(pushes[3].starts_with("🎉 【Publish】"), "{pushes:?}");
    assert!(
        pushes[3].contains("published https://example.com/p/1"),
        "{pushes:?}"
    );
    let task = app.admin.get_task(&id).await.unwrap();
    assert_eq!(task.status.as_str(), "completed");
}

#[tokio::test]
async fn an_unreachable_api_spools_the_call_and_the_next_call_replays_it_once() {
    // Arrange: a started task with two steps.
    let app = TestApp::spawn().await;
    let state = tempfile::tempdir().unwrap();
    let out = ok(cli(
        &app,
        state.path(),
        BIN,
        &["pulse", "start", "offline", "--steps", "a", "b"],
    ))
    .await;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);

    // Act: the API is unreachable for this call…
    let begun = std::time::Instant::now();
    let mut offline = cli(&app, state.path(), BIN, &["pulse", "next", &id, "a done"]);
    offline.env("TASKFLEET_API_URL", &dead_url);
    let offline = offline.output().await.unwrap();
    let took = begun.elapsed();
    let spooled = std::fs::read_to_string(state.path().join("spool.jsonl")).unwrap_or_default();
    // …and reachable again for the next one, which replays the spool first.
    ok(cli(&app, state.path(), BIN, &["pulse", "status", &id])).await;

    // Assert
    assert!(offline.status.success(), "{offline:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(String::from_utf8_lossy(&offline.stderr).contains("unreachable"));
    assert_eq!(spooled.lines().count(), 1);
    let task = app.admin.get_task(&id).await.unwrap();
    assert_eq!(task.progress.done, 1, "{task:?}");
    assert!(!state.path().join("spool.jsonl").exists());
}

#[tokio::test]
async fn a_call_replayed_with_the_same_idempotency_key_applies_once() {
    // Arrange: the call reached the API, but the CLI did not see the answer and spooled it.
    let app = TestApp::spawn().await;
    let state = tempfile::tempdir().unwrap();
    let out = ok(cli(
        &app,
        state.path(),
        BIN,
        &["pulse", "start", "twice", "--steps", "a", "b", "c"],
    ))
    .await;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let key = "pulse-replayed-key";
    let first = app
        .req(reqwest::Method::POST, &format!("/api/tasks/{id}/step"))
        .header("Idempotency-Key", key)
        .json(&json!({"info": "a done"}))
        .send()
        .await
        .unwrap();
    let line = json!({"method": "POST", "path": format!("/api/tasks/{id}/step"),
        "body": {"info": "a done"}, "idempotency_key": key});
    std::fs::write(state.path().join("spool.jsonl"), format!("{line}\n")).unwrap();

    // Act
    ok(cli(&app, state.path(), BIN, &["pulse", "status", &id])).await;

    // Assert
    assert!(first.status().is_success());
    let task = app.admin.get_task(&id).await.unwrap();
    assert_eq!(task.progress.done, 1, "{task:?}");
}

#[tokio::test]
async fn status_prints_json_and_plain_lines_with_step_progress() {
    let app = TestApp::spawn().await;
    let state = tempfile::tempdir().unwrap();
    let out = ok(cli(
        &app,
        state.path(),
        BIN,
        &["pulse", "start", "Report", "--steps", "x", "y", "z"],
    ))
    .await;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ok(cli(&app, state.path(), BIN, &["pulse", "next", "x done"])).await;

    let json_out = ok(cli(&app, state.path(), BIN, &["pulse", "status", "--json"])).await;
    let plain = ok(cli(&app, state.path(), BIN, &["pulse", "status"])).await;

    let rows: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["done"], 1);
    assert_eq!(rows[0]["total"], 3);
    assert_eq!(rows[0]["current"], "y");
    assert_eq!(rows[0]["stalled"], false);
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        text.contains("【Report】") && text.contains("[1/3]") && text.contains("now: y"),
        "{text}"
    );
    assert!(
        !text.contains('█'),
        "no bar when stdout is not a terminal: {text}"
    );
}

#[tokio::test]
async fn calls_without_the_session_their_task_started_in_say_which_session_they_looked_in() {
    // Arrange: a task started in the session `sess-1`.
    let app = TestApp::spawn().await;
    let state = tempfile::tempdir().unwrap();
    ok(cli(&app, state.path(), BIN, &["pulse", "start", "Report"])).await;

    // Act: the next call names no session.
    let mut next = cli(&app, state.path(), BIN, &["pulse", "next", "x done"]);
    next.env_remove("OPENCLAW_SESSION");
    let out = next.output().await.expect("run the CLI");

    let mut status = cli(&app, state.path(), BIN, &["pulse", "status"]);
    status.env_remove("OPENCLAW_SESSION");
    let status = ok(status).await;

    // Assert
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("session `default` started none") && err.contains("--session"),
        "{err}"
    );
    let said = String::from_utf8_lossy(&status.stdout);
    assert_eq!(said.trim(), "no current tasks in session `default`");
}

#[tokio::test]
async fn status_of_a_finished_task_shows_no_progress_it_reported_while_running() {
    // Arrange: a task that reported 60 % and what it was doing, then finished.
    let app = TestApp::spawn().await;
    let state = tempfile::tempdir().unwrap();
    let args = ["pulse", "start", "Report", "--steps", "x", "y"];
    let out = ok(cli(&app, state.path(), BIN, &args)).await;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let progress = ["pulse", "progress", "60", "analysing"];
    ok(cli(&app, state.path(), BIN, &progress)).await;
    let running = ok(cli(&app, state.path(), BIN, &["pulse", "status", &id])).await;
    ok(cli(&app, state.path(), BIN, &["pulse", "done", "sent"])).await;

    // Act
    let finished = ok(cli(&app, state.path(), BIN, &["pulse", "status", &id])).await;

    // Assert
    let running = String::from_utf8_lossy(&running.stdout);
    assert!(running.contains("60% (analysing)"), "{running}");
    let finished = String::from_utf8_lossy(&finished.stdout);
    assert!(finished.contains("completed"), "{finished}");
    assert!(
        !finished.contains("60%") && !finished.contains("analysing"),
        "{finished}"
    );
}

#[tokio::test]
async fn status_flags_a_task_stalled_after_the_fleets_stall_after_s_not_after_three_minutes() {
    // Arrange: the fleet calls a running task stalled after 1 s; a bot starts two tasks.
    let app = TestApp::spawn_with(|cfg| cfg.relay.stall_after_s = 1).await;
    let state = tempfile::tempdir().unwrap();
    let start = |name: &'static str| ok(cli(&app, state.path(), BIN, &["pulse", "start", name]));
    let quiet = String::from_utf8_lossy(&start("gone quiet").await.stdout)
        .trim()
        .to_string();
    let busy = String::from_utf8_lossy(&start("still busy").await.stdout)
        .trim()
        .to_string();

    // Act: past 1 s, with a heartbeat for the busy one just before the look.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let beat = ["pulse", "heartbeat", busy.as_str(), "alive"];
    ok(cli(&app, state.path(), BIN, &beat)).await;
    let json_out = ok(cli(&app, state.path(), BIN, &["pulse", "status", "--json"])).await;
    let plain = ok(cli(&app, state.path(), BIN, &["pulse", "status"])).await;
    // The bot inside a task asks with its task-scoped token (it may not list tasks).
    let token = taskfleet::token::mint(
        crate::harness::app::TASK_TOKEN_SECRET.as_bytes(),
        &taskfleet::domain::TaskId::parse(&quiet).unwrap(),
        1,
    );
    let mut own = cli(&app, state.path(), BIN, &["pulse", "status", &quiet]);
    own.env_remove("TASKFLEET_API_KEY")
        .env("TASKFLEET_TASK_TOKEN", &token);
    let own = ok(own).await;

    // Assert
    let rows: Vec<Value> = serde_json::from_slice(&json_out.stdout).unwrap();
    let stalled = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["stalled"].clone())
    };
    assert_eq!(stalled(&quiet), Some(json!(true)), "{rows:?}");
    assert_eq!(stalled(&busy), Some(json!(false)), "{rows:?}");
    let text = String::from_utf8_lossy(&plain.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(name))
            .unwrap_or("")
            .to_string()
    };
    let stuck = "may be stuck (no update for more than 1 s)";
    assert!(line("【gone quiet】").contains(stuck), "{text}");
    assert!(!line("【still busy】").contains("may be stuck"), "{text}");
    let by_token = String::from_utf8_lossy(&own.stdout);
    assert!(by_token.contains(stuck), "{own:?}");
}

#[tokio::test]
async fn status_on_a_terminal_draws_a_progress_bar() {
    let app = TestApp::spawn().await;
    let state = tempfile::tempdir().unwrap();
    ok(cli(
        &app,
        state.path(),
        BIN,
        &["pulse", "start", "Bar", "--steps", "x", "y"],
    ))
    .await;
    ok(cli(&app, state.path(), BIN, &["pulse", "next", "x done"])).await;

    // `script` gives the command a pseudo-terminal.
    let cmdline = format!("{BIN} pulse status");
    let out = cli(
        &app,
        state.path(),
        "script",
        &["-qec", &cmdline, "/dev/null"],
    )
    .output()
    .await
    .unwrap();

    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[█████░░░░░] [1/2]"), "{text}");
}

#[tokio::test]
async fn a_task_scoped_token_cannot_report_on_another_task() {
    let app = TestApp::spawn().await;
    let state = tempfile::tempdir().unwrap();
    let mine = app.create("mine", "anna", "P1").await;
    let other = app.create("other", "anna", "P1").await;
    app.admin.action(&mine, "start", None).await.unwrap();
    app.admin.action(&other, "start", None).await.unwrap();
    let token = taskfleet::token::mint(
        crate::harness::app::TASK_TOKEN_SECRET.as_bytes(),
        &taskfleet::domain::TaskId::parse(&mine).unwrap(),
        1,
    );
    let run = |id: String| {
        let mut c = cli(
            &app,
            state.path(),
            BIN,
            &["pulse", "heartbeat", &id, "alive"],
        );
        c.env_remove("TASKFLEET_API_KEY")
            .env("TASKFLEET_TASK_TOKEN", &token);
        c
    };

    let own = run(mine.clone()).output().await.unwrap();
    let foreign = run(other.clone()).output().await.unwrap();

    assert!(own.status.success(), "{own:?}");
    assert!(!foreign.status.success());
    assert!(
        String::from_utf8_lossy(&foreign.stderr).contains("403"),
        "{foreign:?}"
    );
}

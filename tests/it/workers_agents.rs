//! Workers running agents (argv templates, fallback, sessions) and what a running task gets in
//! its environment (its id, the API URL, a token scoped to it).

use crate::harness::app::{worker_settings, ADMIN_KEY};
use crate::harness::process::{processes_with, unique_sleep};
use crate::harness::TestApp;
use crate::workers::{actions, create_kind, finished, output_line};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use taskfleet::config::{AgentTemplate, WorkerConfig};

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Test settings with two fake agents: `echoer` (shows its prompt, identity and cwd) and
/// `chat` (greets, echoes every stdin line, says bye at EOF).
fn agent_settings() -> WorkerConfig {
    let mut s = worker_settings();
    s.agents.insert(
        "echoer".into(),
        AgentTemplate {
            argv: argv(&[
                "sh",
                "-c",
                "echo agent:$0; echo as:$TASKFLEET_AGENT_ID task:$TASKFLEET_TASK_ID; pwd -P",
                "{prompt}",
            ]),
            session_argv: None,
        },
    );
    s.agents.insert(
        "chat".into(),
        AgentTemplate {
            argv: argv(&[
                "sh",
                "-c",
                "echo hello:$0; while read l; do echo re:$l; done; echo bye",
                "{prompt}",
            ]),
            session_argv: None,
        },
    );
    s
}

#[tokio::test]
async fn an_agent_task_runs_its_template_with_the_prompt_as_one_argument_in_its_cwd() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, agent_settings()).await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();

    // Act: shell syntax in the prompt must stay text.
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "agent",
        json!({
            "agent_id": "echoer", "prompt": "fix it; echo injected $HOME",
            "cwd": cwd.to_str().unwrap(), "run_timeout_s": 30, "mode": "run",
        }),
    )
    .await;
    let task = finished(&app, &id, Duration::from_secs(20)).await;

    // Assert
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(
        task.result,
        Some(json!(format!(
            "agent:fix it; echo injected $HOME\nas:echoer task:{id}\n{}\n",
            cwd.display()
        )))
    );
}

#[tokio::test]
async fn an_unknown_agent_id_fails_at_once_with_a_reason_naming_the_configured_agents() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, agent_settings()).await;

    // Act
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "agent",
        json!({"agent_id": "nosuch", "prompt": "hello"}),
    )
    .await;
    let task = finished(&app, &id, Duration::from_secs(20)).await;

    // Assert
    assert_eq!(task.status.as_str(), "failed");
    let error = task.error.clone().unwrap_or_default();
    for name in ["nosuch", "echoer", "chat", "claude", "codex"] {
        assert!(error.contains(name), "{name} missing from {error:?}");
    }
    assert_eq!(task.attempt, 1, "failed once, not retried");
    let ran = (task.finished_time.unwrap() - task.started_time.unwrap())
        .to_std()
        .unwrap();
    assert!(ran < Duration::from_secs(2), "took {ran:?}");
    assert_eq!(actions(&app, &id).await, ["create", "start", "fail"]);
}

#[tokio::test]
async fn with_a_fallback_agent_an_unknown_agent_id_runs_the_fallback_and_an_event_says_so() {
    // Arrange
    let app = TestApp::spawn().await;
    let mut settings = agent_settings();
    settings.fallback_agent = Some("echoer".into());
    let _worker = app.worker("anna", 1, settings).await;

    // Act
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "agent",
        json!({"agent_id": "nosuch", "prompt": "hello"}),
    )
    .await;
    let task = finished(&app, &id, Duration::from_secs(20)).await;

    // Assert
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    let result = task.result.as_ref().and_then(Value::as_str).unwrap();
    assert!(
        result.starts_with(&format!("agent:hello\nas:echoer task:{id}\n")),
        "{result}"
    );
    let logs = app.admin.logs(&id).await.unwrap();
    let note = logs
        .iter()
        .find(|l| l.action == "progress")
        .and_then(|l| l.message.clone())
        .unwrap_or_default();
    assert!(
        note.contains("nosuch") && note.contains("fallback") && note.contains("echoer"),
        "{logs:?}"
    );
}

#[tokio::test]
async fn an_agent_run_over_its_run_timeout_s_fails_with_the_reason_and_leaves_no_process() {
    // Arrange: an agent that sleeps for as long as its prompt says.
    let app = TestApp::spawn().await;
    let mut settings = agent_settings();
    settings.agents.insert(
        "sleeper".into(),
        AgentTemplate {
            argv: argv(&["sleep", "{prompt}"]),
            session_argv: None,
        },
    );
    let _worker = app.worker("anna", 1, settings).await;
    let marker = unique_sleep();

    // Act
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "agent",
        json!({"agent_id": "sleeper", "prompt": marker, "run_timeout_s": 1}),
    )
    .await;
    let task = finished(&app, &id, Duration::from_secs(15)).await;

    // Assert
    assert_eq!(task.status.as_str(), "failed");
    let error = task.error.clone().unwrap_or_default();
    assert!(error.contains("timed out after 1 s"), "{error}");
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
}

#[tokio::test]
async fn a_session_agent_keeps_stdin_open_for_follow_ups_while_a_run_agent_gets_none() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, agent_settings()).await;
    let session = create_kind(
        &app,
        "anna",
        "P1",
        "agent",
        json!({"agent_id": "chat", "prompt": "start", "mode": "session"}),
    )
    .await;
    output_line(&app, &session, "hello:start").await;

    // Act
    let one_shot = create_kind(
        &app,
        "anna",
        "P1",
        "agent",
        json!({"agent_id": "chat", "prompt": "once", "mode": "run"}),
    )
    .await;
    let one_shot = finished(&app, &one_shot, Duration::from_secs(20)).await;
    app.admin.input(&session, "more\n", false).await.unwrap();
    output_line(&app, &session, "re:more").await;
    app.admin.input(&session, "", true).await.unwrap();
    let session = finished(&app, &session, Duration::from_secs(20)).await;

    // Assert: the run ended by itself (stdin closed); the session only at our EOF.
    assert_eq!(one_shot.result, Some(json!("hello:once\nbye\n")));
    assert_eq!(session.status.as_str(), "completed", "{:?}", session.error);
    assert_eq!(session.result, Some(json!("hello:start\nre:more\nbye\n")));
}

#[tokio::test]
async fn a_running_task_gets_its_id_the_api_url_and_a_token_that_reaches_only_that_task() {
    // Arrange: the command prints its environment, then waits for a line on stdin.
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let other = app.create("someone else's", "anna", "P1").await;
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": "echo \"id=$TASKFLEET_TASK_ID\"; echo \"api=$TASKFLEET_API_URL\"; \
                echo \"token=$TASKFLEET_TASK_TOKEN\"; echo printed; head -n 1"}),
    )
    .await;
    output_line(&app, &id, "printed").await;
    let page = app.admin.output(&id, &[]).await.unwrap();
    let var = |name: &str| -> String {
        page["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string()
    };
    let token = var("token");
    let as_task = |method: Method, path: &str| {
        app.http
            .request(method, format!("{}{path}", app.url))
            .header("X-Bot-Key", &token)
    };

    // Act
    let (own, own_body) = app
        .call(as_task(Method::GET, &format!("/api/tasks/{id}")))
        .await;
    let (foreign, _) = app
        .call(as_task(Method::GET, &format!("/api/tasks/{other}")))
        .await;
    let (create, _) = app
        .call(
            as_task(Method::POST, "/api/tasks")
                .json(&json!({"task_name": "sneaky", "assigned_to": "anna"})),
        )
        .await;
    app.admin.input(&id, "done\n", false).await.unwrap();
    let task = finished(&app, &id, Duration::from_secs(15)).await;

    // Assert
    assert_eq!(var("id"), id);
    assert_eq!(var("api"), app.url);
    assert!(token.starts_with("tft."), "{token:?}");
    assert_ne!(token, ADMIN_KEY);
    assert_eq!(own, StatusCode::OK, "{own_body}");
    assert_eq!(own_body["id"], id.as_str());
    assert_eq!(foreign, StatusCode::FORBIDDEN);
    assert_eq!(create, StatusCode::FORBIDDEN);
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(
        app.admin.list_tasks(&[]).await.unwrap().len(),
        2,
        "nothing created"
    );
}

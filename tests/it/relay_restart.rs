//! The real `taskfleet relay` binary killed with SIGKILL mid-delivery and started again: no
//! event is lost, and duplicates carry the same `webhook-id`.

use crate::harness::receiver::{Answer, Endpoint, Hit};
use crate::harness::relay::RelayProcess;
use crate::harness::TestApp;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// A relay config with one named webhook, `hook`, and test timings (ack wait 2 + 5 s).
fn config(dir: &tempfile::TempDir, hook_url: &str) -> PathBuf {
    let path = dir.path().join("taskfleet.toml");
    let toml = format!(
        r#"[relay]
allow = ["127.0.0.1/32"]
attempt_timeout_s = 2
retry_schedule_s = [0, 1, 1, 1]

[relay.destinations.hook]
type = "webhook"
url = "{hook_url}"
"#
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// Kinds in order of first arrival, and every webhook-id seen per kind.
fn by_kind(hits: &[Hit]) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let mut firsts: Vec<String> = Vec::new();
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in hits {
        let kind = h.kind();
        if !firsts.contains(&kind) {
            firsts.push(kind.clone());
        }
        ids.entry(kind).or_default().push(h.webhook_id());
    }
    (firsts, ids)
}

/// Starts the relay binary, creates a task notifying `hook` and waits for the first (hanging)
/// request.
async fn hanging_first_delivery(
    app: &TestApp,
    hook: &Endpoint,
    config: &std::path::Path,
) -> (RelayProcess, taskfleet::domain::Task) {
    let relay = app.relay_process(config).await;
    let task = app.task_notifying("survivor", json!(["hook"])).await;
    hook.wait_for(1, Duration::from_secs(10)).await;
    (relay, task)
}

#[tokio::test]
async fn a_relay_killed_mid_delivery_and_restarted_loses_nothing_and_keeps_webhook_ids() {
    // Arrange: the receiver hangs on the first request; `started` is queued behind it.
    let app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(200).after(Duration::from_secs(30))]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, &hook.url("/hook"));
    let (mut relay, task) = hanging_first_delivery(&app, &hook, &config).await;
    app.act(&task, "start").await;
    app.wait_fanned_out(Duration::from_secs(5)).await;

    // Act: kill -9 while the first delivery hangs; `completed` happens while it is down.
    relay.kill9();
    app.act(&task, "complete").await;
    let relay = app.relay_process(&config).await;
    let hits = hook
        .wait_until(
            "task.completed after the restart",
            Duration::from_secs(20),
            |h| h.kind() == "task.completed",
        )
        .await;

    // Assert: every event, in order of first arrival, each kind under one webhook-id.
    let (firsts, ids) = by_kind(&hits);
    assert_eq!(
        firsts,
        ["task.created", "task.started", "task.completed"],
        "{}",
        relay.log()
    );
    for (kind, seen) in &ids {
        assert!(seen.iter().all(|i| i == &seen[0]), "{kind}: {seen:?}");
    }
    assert!(
        ids["task.created"].len() >= 2,
        "the hung delivery came again"
    );
    let distinct: BTreeSet<String> = hits.iter().map(Hit::webhook_id).collect();
    assert_eq!(distinct.len(), 3);
}

#[tokio::test]
async fn an_event_being_fanned_out_when_the_relay_is_killed_still_arrives_in_order() {
    // Arrange
    let app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(200).after(Duration::from_secs(30))]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, &hook.url("/hook"));
    let (mut relay, task) = hanging_first_delivery(&app, &hook, &config).await;

    // Act: kill -9 right after `start`, while the fan-out is handling its event.
    app.act(&task, "start").await;
    relay.kill9();
    app.act(&task, "complete").await;
    let relay = app.relay_process(&config).await;
    let hits = hook
        .wait_until(
            "task.started and task.completed",
            Duration::from_secs(20),
            |_| {
                let kinds: BTreeSet<String> = hook.hits().iter().map(Hit::kind).collect();
                kinds.contains("task.started") && kinds.contains("task.completed")
            },
        )
        .await;

    // Assert
    let (firsts, _) = by_kind(&hits);
    assert_eq!(
        firsts,
        ["task.created", "task.started", "task.completed"],
        "{}",
        relay.log()
    );
}

//! The worker registry (issue 16): every worker and relay announces itself with a TTL; the API
//! lists them (`GET /api/workers`, scoped like every list) and counts them in `/metrics`.

use crate::harness::app::{relay_settings, worker_settings};
use crate::harness::{eventually, TestApp};
use serde_json::json;
use std::time::{Duration, Instant};
use taskfleet::registry::Announcement;

/// The announcements `client` may see, optionally of one assignee.
async fn listed(
    client: &taskfleet::client::ApiClient,
    assignee: Option<&str>,
) -> Vec<Announcement> {
    let q: Vec<(&str, String)> = assignee
        .map(|a| ("assignee", a.to_string()))
        .into_iter()
        .collect();
    client.workers(&q).await.expect("GET /api/workers")
}

/// The `workers_online` line of `/metrics` for `assignee`, if any.
async fn online(app: &TestApp, assignee: &str) -> Option<String> {
    let text = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let label = format!("taskfleet_workers_online{{assignee=\"{assignee}\"}}");
    text.lines()
        .find(|l| l.starts_with(&label))
        .map(str::to_string)
}

/// Creates an exec task for anna that sleeps `secs` seconds; its id.
async fn sleep_for_anna(client: &taskfleet::client::ApiClient, secs: u32) -> String {
    let task = json!({"task_name": "sleep", "assigned_to": "anna", "kind": "exec",
        "payload": {"command": format!("sleep {secs}")}});
    client.create_task(&task).await.unwrap().id.to_string()
}

#[tokio::test]
async fn a_worker_is_listed_with_its_running_tasks_and_gone_once_it_stops() {
    // Arrange
    let app = TestApp::spawn().await;
    // Renewed every second, so the running task shows soon.
    let settings = taskfleet::config::WorkerConfig {
        registry_ttl_s: 3,
        ..worker_settings()
    };
    let worker = app.worker("anna", 3, settings).await;
    let _relay = app.relay(relay_settings()).await;

    // Act: a task that runs for a while.
    let id = sleep_for_anna(&app.admin, 6).await;
    let running = eventually(
        "the task among the worker's running ones",
        Duration::from_secs(15),
        || async {
            let all = listed(&app.admin, None).await;
            let w = all.iter().find(|w| w.kind == "worker")?.clone();
            w.running.contains(&id).then_some((w, all))
        },
    )
    .await;
    let gauge = online(&app, "anna").await;
    worker.stop().await;
    let stopped = Instant::now();
    eventually(
        "the stopped worker to leave the list",
        Duration::from_secs(5),
        || async {
            listed(&app.admin, Some("anna"))
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;

    // Assert: what it announced, the relay beside it, the gauge, and a prompt withdrawal.
    let (w, all) = running;
    assert_eq!(w.assignee.as_deref(), Some("anna"));
    assert_eq!(w.concurrency, 3);
    assert_eq!(w.version, env!("CARGO_PKG_VERSION"));
    assert!(w.id.starts_with("anna@"), "{}", w.id);
    assert!(all.iter().any(|w| w.kind == "relay"), "{all:?}");
    assert_eq!(
        gauge.as_deref(),
        Some("taskfleet_workers_online{assignee=\"anna\"} 1")
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "took {:?}",
        stopped.elapsed()
    );
}

/// The ids the worker of `assignee` announced as running, once it is listed.
async fn announced_running(client: &taskfleet::client::ApiClient, assignee: &str) -> Vec<String> {
    let listed = listed(client, Some(assignee)).await;
    listed
        .first()
        .map(|w| w.running.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_started_task_shows_among_the_workers_running_ones_within_seconds_not_at_the_next_renewal(
) {
    // Arrange: renewals 10 s apart (TTL 30 s); the worker listed, idle.
    let app = TestApp::spawn().await;
    let settings = taskfleet::config::WorkerConfig {
        registry_ttl_s: 30,
        ..worker_settings()
    };
    let _worker = app.worker("anna", 2, settings).await;
    eventually(
        "the worker in the list",
        Duration::from_secs(10),
        || async { (listed(&app.admin, Some("anna")).await.len() == 1).then_some(()) },
    )
    .await;

    // Act: a task that runs for 4 s.
    let id = sleep_for_anna(&app.admin, 4).await;
    let created = Instant::now();
    eventually(
        "the task among the worker's running ones",
        Duration::from_secs(15),
        || async {
            announced_running(&app.admin, "anna")
                .await
                .contains(&id)
                .then_some(())
        },
    )
    .await;
    let shown = created.elapsed();
    eventually("the task to finish", Duration::from_secs(15), || async {
        let t = app.admin.get_task(&id).await.ok()?;
        t.status.is_terminal().then_some(())
    })
    .await;
    let finished = Instant::now();
    eventually(
        "the finished task to leave the worker's running ones",
        Duration::from_secs(15),
        || async {
            announced_running(&app.admin, "anna")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;

    // Assert: both within a few seconds, long before the renewal 10 s after the first write.
    assert!(shown < Duration::from_secs(3), "shown after {shown:?}");
    let gone = finished.elapsed();
    assert!(gone < Duration::from_secs(3), "gone after {gone:?}");
}

#[tokio::test]
async fn a_killed_worker_drops_out_within_its_ttl() {
    // Arrange: a worker process announcing with a 2 s TTL.
    let app = TestApp::spawn().await;
    let mut worker = app
        .worker_process("anna", 1, &[("TASKFLEET_WORKER__REGISTRY_TTL_S", "2")])
        .await;
    eventually(
        "the worker in the list",
        Duration::from_secs(10),
        || async { (listed(&app.admin, Some("anna")).await.len() == 1).then_some(()) },
    )
    .await;

    // Act
    worker.kill9();
    let killed = Instant::now();
    eventually(
        "the killed worker to leave the list",
        Duration::from_secs(10),
        || async {
            listed(&app.admin, Some("anna"))
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;

    // Assert: gone within its TTL (plus the server's expiry tick), and from the gauge.
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "took {:?}",
        killed.elapsed()
    );
    assert_eq!(online(&app, "anna").await, None);
}

#[tokio::test]
async fn a_key_scoped_to_anna_sees_annas_workers_only() {
    // Arrange
    let app = TestApp::spawn().await;
    let _anna = app.worker("anna", 1, worker_settings()).await;
    let _bob = app.worker("bob", 1, worker_settings()).await;
    eventually("both workers listed", Duration::from_secs(10), || async {
        (listed(&app.admin, None).await.len() == 2).then_some(())
    })
    .await;

    // Act
    let seen = listed(&app.anna, None).await;
    let as_anna = app
        .http
        .get(format!("{}/api/workers?assignee=bob", app.url))
        .header("X-Bot-Key", crate::harness::app::ANNA_KEY);
    let (status, body) = app.call(as_anna).await;

    // Assert
    let assignees: Vec<_> = seen.iter().map(|w| w.assignee.clone()).collect();
    assert_eq!(assignees, [Some("anna".to_string())]);
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
}

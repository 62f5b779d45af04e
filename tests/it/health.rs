//! `/healthz` and `/readyz` of the worker and relay processes (`--health-listen`,
//! `worker.health_listen`): what they answer while running, without NATS, and while a worker
//! drains at shutdown.

use crate::harness::process::{spawn_taskfleet, unique_sleep};
use crate::harness::{eventually, TestApp};
use crate::workers::{create_kind, running};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// `GET url` → status and JSON body (`None` when nothing answers).
async fn probe(url: &str) -> Option<(StatusCode, Value)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = r.status();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

/// Polls `url` until it answers `status`, and returns the body.
async fn until_status(url: &str, status: StatusCode, limit: Duration) -> Value {
    eventually(&format!("{url} to answer {status}"), limit, || async {
        probe(url)
            .await
            .and_then(|(s, body)| (s == status).then_some(body))
    })
    .await
}

const LISTEN_ANYWHERE: (&str, &str) = ("TASKFLEET_WORKER__HEALTH_LISTEN", "127.0.0.1:0");

#[tokio::test]
async fn a_worker_is_healthy_and_ready_while_pulling_and_unhealthy_while_nats_is_down() {
    // Arrange
    let mut app = TestApp::spawn().await;
    let mut worker = app.worker_process("anna", 1, &[LISTEN_ANYWHERE]).await;
    let url = worker.health_url().await;

    // Act + Assert: running
    let (status, body) = probe(&format!("{url}/healthz")).await.expect("answers");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["component"], "worker");
    assert_eq!(body["state"], "running");
    assert_eq!(body["nats"], "connected");
    let (status, body) = probe(&format!("{url}/readyz")).await.expect("answers");
    assert_eq!(status, StatusCode::OK, "{body}");

    // NATS gone: neither alive nor ready, and the reason says why.
    app.nats.kill();
    let body = until_status(
        &format!("{url}/healthz"),
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["reason"].as_str().unwrap_or_default().contains("NATS"),
        "{body}"
    );
    let (status, _) = probe(&format!("{url}/readyz")).await.expect("answers");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // NATS back: the client reconnects and the worker is healthy again.
    app.nats.restart().await;
    let body = until_status(
        &format!("{url}/healthz"),
        StatusCode::OK,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(body["nats"], "connected", "{body}\n{}", worker.log());
}

#[tokio::test]
async fn a_worker_draining_at_shutdown_stays_live_but_is_not_ready() {
    // Arrange: a task that outlives the 3 s grace, so the worker drains, then hands it back.
    let app = TestApp::spawn().await;
    let grace = ("TASKFLEET_WORKER__SHUTDOWN_GRACE_S", "3");
    let mut worker = app
        .worker_process("anna", 1, &[LISTEN_ANYWHERE, grace])
        .await;
    let url = worker.health_url().await;
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": format!("sleep {}", unique_sleep())}),
    )
    .await;
    running(&app, &id).await;

    // Act
    worker.signal(libc::SIGTERM);

    // Assert
    let body = until_status(
        &format!("{url}/readyz"),
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(body["state"], "draining", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("draining"),
        "{body}"
    );
    let (status, body) = probe(&format!("{url}/healthz")).await.expect("answers");
    assert_eq!(status, StatusCode::OK, "alive while draining: {body}");
    assert_eq!(body["state"], "draining");
    let exit = worker.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}\n{}", worker.log());
}

#[tokio::test]
async fn a_worker_serves_no_health_endpoint_unless_asked() {
    let app = TestApp::spawn().await;

    let worker = app.worker_process("anna", 1, &[]).await;

    assert!(
        !worker.log().contains("health endpoint"),
        "{}",
        worker.log()
    );
}

#[tokio::test]
async fn the_relay_serves_healthz_and_readyz_with_health_listen_and_stops_on_sigterm() {
    // Arrange
    let app = TestApp::spawn().await;
    let nats = app.nats.url();
    let mut relay = spawn_taskfleet(
        &["relay", "--health-listen", "127.0.0.1:0"],
        &[("NATS_URL", nats.as_str())],
    );
    let url = relay.health_url().await;
    relay
        .wait_log("relay running", Duration::from_secs(20))
        .await;

    // Act
    let live = probe(&format!("{url}/healthz")).await.expect("answers");
    let ready = probe(&format!("{url}/readyz")).await.expect("answers");
    relay.signal(libc::SIGTERM);
    let exit = relay.wait_exit(Duration::from_secs(15)).await;

    // Assert
    assert_eq!(live.0, StatusCode::OK, "{}", live.1);
    assert_eq!(live.1["component"], "relay");
    assert_eq!(live.1["state"], "running");
    assert_eq!(ready.0, StatusCode::OK, "{}", ready.1);
    assert!(exit.success(), "{exit:?}\n{}", relay.log());
}

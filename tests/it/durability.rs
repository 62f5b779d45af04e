//! Nothing is lost when nats-server dies.

use crate::harness::{eventually, TestApp};
use std::time::Duration;

#[tokio::test]
async fn a_killed_and_restarted_nats_server_keeps_pending_tasks_states_and_logs() {
    // Arrange
    let mut app = TestApp::spawn().await;
    let p0 = app.create("urgent", "anna", "P0").await;
    let p2 = app.create("later", "anna", "P2").await;
    let done = app.create("finished", "anna", "P1").await;
    app.admin.action(&done, "start", None).await.unwrap();
    let body = serde_json::json!({"result": "ok"});
    app.admin
        .action(&done, "complete", Some(&body))
        .await
        .unwrap();

    // Act: SIGKILL, no graceful flush, then start it again on the same store.
    app.nats.kill();
    app.nats.restart().await;

    // Assert: the API reconnects by itself and everything is still there.
    let pending = eventually(
        "the pending list after restart",
        Duration::from_secs(30),
        || async {
            app.admin
                .pending(&[("assigned_to", "anna".into())])
                .await
                .ok()
        },
    )
    .await;
    let ids: Vec<&str> = pending.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [p0.as_str(), p2.as_str()]);
    let finished = app.admin.get_task(&done).await.unwrap();
    assert_eq!(finished.status.as_str(), "completed");
    let actions: Vec<String> = app
        .admin
        .logs(&done)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.action)
        .collect();
    assert_eq!(actions, ["create", "start", "complete"]);
    // And it still takes new work.
    let started = app.admin.action(&p0, "start", None).await.unwrap();
    assert_eq!(started.status.as_str(), "running");
}

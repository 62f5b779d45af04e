//! The relay on a 3-node cluster, every stream with three replicas: the fan-out queues a
//! window's jobs as one atomic batch there (not as a chain, see `DeliveryStore::queue_together`), and
//! a backlog of events reaches the webhook once each, in order.

use crate::harness::app::test_config;
use crate::harness::cluster::{ClusterApp, NatsCluster};
use crate::harness::receiver::Endpoint;
use crate::harness::relay::named_hook_settings;
use crate::relay_replicas::{steps, steps_in_first_arrival_order};
use serde_json::json;
use std::time::Duration;
use taskfleet::tasks::TaskService;
use tokio_util::sync::CancellationToken;

/// Step events recorded before the relay starts: several fan-out windows of up to 64.
const STEPS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_events_reaches_the_webhook_once_each_in_order_with_three_replicas() {
    // Arrange: the API and the relay's connection on all three nodes; a task notifying `hook`
    // with STEPS step events recorded before the relay starts.
    let cluster = NatsCluster::start(3).await;
    let url = cluster.urls();
    let app = ClusterApp::spawn(cluster, &url).await;
    let mut cfg = test_config(&url);
    cfg.nats.replicas = 3;
    let bus = taskfleet::serve::connect(&cfg, &url, "cluster-relay")
        .await
        .expect("the relay connects");
    let task = (app.admin)
        .create_task(&json!({"task_name": "burst", "assigned_to": "anna", "notify": ["hook"]}))
        .await
        .expect("task created");
    let service = TaskService::new(bus.clone(), Default::default());
    steps(&service, &task, STEPS).await;
    let hook = Endpoint::start().await;
    let settings = named_hook_settings("hook", hook.url("/hook"));

    // Act
    let token = CancellationToken::new();
    let relay = tokio::spawn(taskfleet::relay::run(bus, settings, token.clone()));
    let last = format!("step {}", STEPS - 1);
    let hits = hook
        .wait_until("the last step", Duration::from_secs(60), |h| {
            h.kind() == "task.step" && h.json()["data"]["event"]["message"] == last.as_str()
        })
        .await;
    token.cancel();
    relay.await.expect("relay task").expect("the relay ran");

    // Assert: in order of first arrival the steps are 0, 1, …, and none came twice.
    let order = steps_in_first_arrival_order(&hits);
    assert_eq!(order, (0..STEPS).collect::<Vec<_>>());
    let steps = hits.iter().filter(|h| h.kind() == "task.step").count();
    assert_eq!(steps as u64, STEPS, "a step was delivered twice");
}

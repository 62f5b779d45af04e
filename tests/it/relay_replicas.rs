//! Relay replicas and the jobs the delivery queue refuses (issue "Relay v2"): two relays share
//! one destination's ordered queue, a kill -9 of one loses nothing and keeps the order, a 410
//! seen by one stops the other at once, and a job too large for the DELIVERIES stream becomes a
//! dead delivery instead of stopping the fan-out.

use crate::harness::receiver::{Answer, Endpoint, Hit};
use crate::harness::relay::{hook_relay_config, webhook};
use crate::harness::TestApp;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use taskfleet::bus::subjects;
use taskfleet::domain::{EventKind, Task};
use taskfleet::tasks::TaskService;

/// The step numbers of `hits` in order of first arrival (`step N` is the event's message).
pub(crate) fn steps_in_first_arrival_order(hits: &[Hit]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for h in hits.iter().filter(|h| h.kind() == "task.step") {
        if seen.insert(h.webhook_id()) {
            let message = h.json()["data"]["event"]["message"].clone();
            let n = message.as_str().and_then(|m| m.strip_prefix("step "));
            order.push(n.and_then(|n| n.parse().ok()).expect("a numbered step"));
        }
    }
    order
}

/// Records `n` step events (`step 0` … `step n-1`) of `task` through `service`, in order.
pub(crate) async fn steps(service: &TaskService, task: &Task, n: u64) {
    for i in 0..n {
        let message = Some(format!("step {i}"));
        service
            .record(task, EventKind::Step, "test", message, json!({}))
            .await;
    }
}

#[tokio::test]
async fn two_relay_replicas_with_one_killed_mid_stream_deliver_every_event_once_in_order() {
    // Arrange: two relay processes share the named webhook `hook`.
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = hook_relay_config(&dir, &hook.url("/hook"));
    let mut first = app.relay_process(&config).await;
    let second = app.relay_process(&config).await;
    let task = app.task_notifying("shared", json!(["hook"])).await;

    // Act: 300 steps; the first replica is killed once a third of them arrived.
    let service = app.task_service().await;
    let writer = steps(&service, &task, 300);
    let killer = async {
        hook.wait_for(100, Duration::from_secs(30)).await;
        first.kill9();
    };
    tokio::join!(writer, killer);
    let hits = hook
        .wait_until(
            "the last step after the kill",
            Duration::from_secs(60),
            |h| h.kind() == "task.step" && h.json()["data"]["event"]["message"] == "step 299",
        )
        .await;

    // Assert: every step arrived, and in order of first arrival they are 0, 1, …, 299.
    let order = steps_in_first_arrival_order(&hits);
    let expected: Vec<u64> = (0..300).collect();
    assert_eq!(order, expected, "{}", second.log());
}

#[tokio::test]
async fn after_a_410_seen_by_one_of_two_replicas_the_destination_gets_no_later_request() {
    // Arrange: the receiver answers 200 ten times, then 410 Gone (then 200 again, so any later
    // request would be counted, not refused). Two in-process relays know it as `hook`.
    let app = TestApp::spawn().await;
    let mut script = vec![Answer::status(200); 10];
    script.push(Answer::status(410));
    let hook = Endpoint::scripted(script).await;
    let mut settings = crate::harness::app::relay_settings();
    settings.destinations.insert(
        "hook".into(),
        serde_json::from_value(webhook(&hook.url("/hook"))).unwrap(),
    );
    let one = app.relay(settings.clone()).await;
    let two = app.relay(settings).await;

    // Act: 40 tasks, each `created` event one delivery to `hook`.
    for i in 0..40 {
        app.task_notifying(&format!("t{i}"), json!(["hook"])).await;
    }
    let dead = crate::harness::eventually(
        "all 40 deliveries settled",
        Duration::from_secs(30),
        || async {
            let dead = app.deliveries("status=dead&destination=hook").await;
            let sent = app.deliveries("status=delivered&destination=hook").await;
            (dead.len() + sent.len() == 40).then_some(dead)
        },
    )
    .await;

    // Assert: the eleventh request (the 410) was the last one the destination saw; the 29
    // deliveries after it are dead as disabled, without a request.
    let hits = hook.hits();
    assert_eq!(
        hits.len(),
        11,
        "requests after the 410: {}",
        hits.len() - 11
    );
    let disabled = dead
        .iter()
        .filter(|d| d["reason"].as_str().is_some_and(|r| r.contains("410")))
        .count();
    assert_eq!(disabled, 30, "{dead:#?}");
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_job_over_the_delivery_streams_size_limit_is_dead_lettered_and_later_events_still_flow() {
    // Arrange: DELIVERIES takes at most 16 KiB a message; the ledger takes the default 2 MiB.
    // (Set once the relay runs: its start-up would put the configured limit back.)
    let app = TestApp::spawn().await;
    let (hook, relay) = app.relay_to_named_hook("hook", Answer::status(200)).await;
    app.task_notifying("warm-up", json!(["hook"])).await;
    hook.wait_for(1, Duration::from_secs(20)).await;
    let js = app.jetstream().await;
    let mut stream = js.get_stream(subjects::DELIVERIES_STREAM).await.unwrap();
    let mut cfg = stream.info().await.unwrap().config.clone();
    cfg.max_message_size = 16 * 1024;
    js.update_stream(cfg).await.unwrap();

    // Act: a task whose every job carries a 40 KiB payload, then a small one.
    let big = app
        .admin
        .create_task(&json!({
            "task_name": "big", "assigned_to": "anna", "notify": ["hook"],
            "payload": {"blob": "x".repeat(40 * 1024)}
        }))
        .await
        .expect("the big task is created");
    let small = app.task_notifying("small", json!(["hook"])).await;
    let hits = hook
        .wait_until("the small task's delivery", Duration::from_secs(20), |h| {
            h.json()["data"]["task"]["id"] == small.id.as_str()
        })
        .await;

    // Assert: the big one never reached the hook; it is a dead delivery that says why.
    assert!(hits
        .iter()
        .all(|h| h.json()["data"]["task"]["id"] != big.id.as_str()));
    let dead = app
        .wait_deliveries("status=dead", 1, Duration::from_secs(10))
        .await;
    let record = &dead[0];
    assert_eq!(
        record["job"]["event"]["task_id"],
        big.id.as_str(),
        "{record:#}"
    );
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("refused"), "{reason}");
    relay.stop().await;
}

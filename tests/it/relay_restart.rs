//! The real `taskfleet relay` binary killed with SIGKILL mid-delivery and started again: no
//! event is lost, and duplicates carry the same `webhook-id`.

use crate::harness::receiver::{Answer, Endpoint, Hit};
use crate::harness::relay::{hook_relay_config, RelayProcess};
use crate::harness::TestApp;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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

/// Waits until `task.completed` reaches `hook` after a restart, asserts that the task's
/// events first arrived in order (created, started, completed), and answers every request.
async fn completed_in_order(hook: &Endpoint, relay: &RelayProcess) -> Vec<Hit> {
    let limit = Duration::from_secs(30);
    let hits = hook
        .wait_until("task.completed after the restart", limit, |h| {
            h.kind() == "task.completed"
        })
        .await;
    let (firsts, _) = by_kind(&hits);
    let expected = ["task.created", "task.started", "task.completed"];
    assert_eq!(firsts, expected, "{}", relay.log());
    hits
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
    let config = hook_relay_config(&dir, &hook.url("/hook"));
    let (mut relay, task) = hanging_first_delivery(&app, &hook, &config).await;
    app.act(&task, "start").await;
    app.wait_fanned_out(Duration::from_secs(5)).await;

    // Act: kill -9 while the first delivery hangs; `completed` happens while it is down.
    relay.kill9();
    app.act(&task, "complete").await;
    let relay = app.relay_process(&config).await;
    let hits = completed_in_order(&hook, &relay).await;

    // Assert: every event, in order of first arrival, each kind under one webhook-id.
    let (_, ids) = by_kind(&hits);
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
    let config = hook_relay_config(&dir, &hook.url("/hook"));
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

#[tokio::test]
async fn a_delivery_back_after_a_lost_ack_whose_record_says_delivered_is_not_sent_again() {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
    use async_nats::jetstream::AckKind;
    use futures::StreamExt;
    use taskfleet::bus::subjects;
    use taskfleet::relay::job::{DeliveryJob, DeliveryRecord, DeliveryStatus};

    // Arrange: two jobs queued for the named webhook `hook`; the first one's record already
    // says delivered, but its ack never arrived (taken, then handed back: delivered twice).
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    let js = app.jetstream().await;
    let key = "n_hook";
    let job = |id: &str| DeliveryJob {
        id: format!("{id}.{key}"),
        key: key.into(),
        name: Some("hook".into()),
        destination: None,
        event: None,
        task: None,
        text: "hi".into(),
        session_id: None,
        created_time: chrono::Utc::now(),
    };
    let (done, fresh) = (job("evt_done"), job("evt_fresh"));
    for j in [&done, &fresh] {
        let body = serde_json::to_vec(j).unwrap().into();
        let stored = js.publish(subjects::delivery(key), body).await.unwrap();
        stored.await.unwrap();
    }
    let records = js.get_key_value(subjects::DELIVERY_BUCKET).await.unwrap();
    let record = DeliveryRecord {
        job: done.clone(),
        status: DeliveryStatus::Delivered,
        attempts: Vec::new(),
        reason: None,
        updated_time: chrono::Utc::now(),
    };
    let value = serde_json::to_vec(&record).unwrap().into();
    let stored_at = taskfleet::relay::store::record_key(DeliveryStatus::Delivered, &done).unwrap();
    records.put(&stored_at, value).await.unwrap();
    let stream = js.get_stream(subjects::DELIVERIES_STREAM).await.unwrap();
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(subjects::delivery_consumer(key)),
            filter_subject: subjects::delivery(key),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            max_deliver: -1,
            max_ack_pending: 1,
            deliver_policy: DeliverPolicy::All,
            // As the relay keeps it (a consumer on disk would be replaced, and its count lost).
            memory_storage: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut taken = consumer.fetch().max_messages(1).messages().await.unwrap();
    let first = taken.next().await.unwrap().unwrap();
    assert_eq!(first.info().unwrap().delivered, 1);
    first.ack_with(AckKind::Nak(None)).await.unwrap();

    // Act
    let mut settings = crate::harness::app::relay_settings();
    settings.destinations.insert(
        "hook".into(),
        taskfleet::outbound::destination::Destination::Webhook {
            url: hook.url("/hook"),
            secret: None,
            secret_env: None,
            events: vec![],
            headers: Default::default(),
            headers_env: Default::default(),
        },
    );
    let _relay = app.relay(settings).await;
    hook.wait_for(1, Duration::from_secs(10)).await;

    // Assert: only the fresh job was sent; the delivered one was settled without a request
    // (it was first in the queue) and its record is untouched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = hook.hits();
    assert_eq!(
        hits.len(),
        1,
        "{:?}",
        hits.iter().map(Hit::webhook_id).collect::<Vec<_>>()
    );
    assert_eq!(hits[0].webhook_id(), fresh.id);
    let kept = records.get(&stored_at).await.unwrap().unwrap();
    let kept: DeliveryRecord = serde_json::from_slice(&kept).unwrap();
    assert_eq!(kept, record);
}

#[tokio::test]
async fn a_retry_interrupted_by_a_kill_resumes_at_its_next_attempt_and_gives_up_on_schedule() {
    // Arrange: two attempts in all, 3 s apart; the receiver always answers 503.
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    hook.answer_from_now_on(Answer::status(503));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("taskfleet.toml");
    let toml = format!(
        "[relay]\nallow = [\"127.0.0.1/32\"]\nattempt_timeout_s = 2\nretry_schedule_s = [0, 3]\n\n\
         [relay.destinations.hook]\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url("/hook")
    );
    std::fs::write(&config, toml).unwrap();
    let (mut relay, _task) = hanging_first_delivery(&app, &hook, &config).await;
    app.wait_deliveries("status=pending", 1, Duration::from_secs(10))
        .await;

    // Act: kill -9 while the relay waits for the second attempt, and start it again.
    relay.kill9();
    let relay = app.relay_process(&config).await;
    let dead = app
        .wait_deliveries("status=dead", 1, Duration::from_secs(30))
        .await;

    // Assert: the restarted relay made the second attempt, not a new first one: two requests
    // with one webhook-id, and the record gave up after two.
    let record = &dead[0];
    assert_eq!(
        record["reason"],
        "gave up after 2 attempts",
        "{}",
        relay.log()
    );
    assert_eq!(record["attempts"].as_array().unwrap().len(), 2, "{record}");
    let hits = hook.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].webhook_id(), hits[1].webhook_id());
}

/// Waits until the API answers for `task` again (after nats-server came back).
async fn api_back(app: &TestApp, task: &taskfleet::domain::Task) {
    let id = task.id.as_str();
    crate::harness::eventually(
        "the API after the restart",
        Duration::from_secs(30),
        || async { app.admin.get_task(id).await.ok() },
    )
    .await;
}

#[tokio::test]
async fn a_relay_running_through_a_nats_server_kill_delivers_what_is_queued_after_the_restart() {
    // Arrange: `task.created` delivered, so the destination's loop and consumer exist.
    let mut app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = hook_relay_config(&dir, &hook.url("/hook"));
    let relay = app.relay_process(&config).await;
    let task = app.task_notifying("through", json!(["hook"])).await;
    hook.wait_for(1, Duration::from_secs(10)).await;

    // Act: SIGKILL nats-server (the consumer, kept in memory, is gone with it), start it
    // again, and make two more events.
    app.nats.kill();
    app.nats.restart().await;
    api_back(&app, &task).await;
    app.act(&task, "start").await;
    app.act(&task, "complete").await;

    // Assert: and a consumer gone with the server is no cause for a warning.
    completed_in_order(&hook, &relay).await;
    let log = relay.log();
    assert!(!log.contains("cannot check the delivered jobs"), "{log}");
    assert!(!log.contains("delivery loop failed"), "{log}");
}

#[tokio::test]
async fn jobs_queued_when_relay_and_nats_server_are_killed_are_delivered_after_both_restart() {
    use crate::harness::relay::webhook;
    use futures::TryStreamExt;

    // Arrange: an inline webhook (no loop is started for it by name) that hangs on
    // `task.created`; `task.started` is queued behind it.
    let mut app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(200).after(Duration::from_secs(30))]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = hook_relay_config(&dir, &hook.url("/hook"));
    let mut relay = app.relay_process(&config).await;
    let notify = json!([webhook(&hook.url("/inline"))]);
    let task = app.task_notifying("queued", notify).await;
    hook.wait_for(1, Duration::from_secs(10)).await;
    app.act(&task, "start").await;
    app.wait_fanned_out(Duration::from_secs(5)).await;
    // The server writes a consumer's state to disk within 100 ms: the fan-out's cursor must be
    // there, or `task.started` would be fanned out again after the restart.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Act: kill -9 both; no new event afterwards, so only the queue says there is work.
    relay.kill9();
    app.nats.kill();
    app.nats.restart().await;
    api_back(&app, &task).await;
    let deliveries = app
        .jetstream()
        .await
        .get_stream("DELIVERIES")
        .await
        .unwrap();
    let names: Vec<String> = deliveries.consumer_names().try_collect().await.unwrap();
    assert!(
        names.is_empty(),
        "consumers kept in memory went with the server: {names:?}"
    );
    let relay = app.relay_process(&config).await;
    let hits = hook
        .wait_until(
            "task.started after the restart",
            Duration::from_secs(30),
            |h| h.kind() == "task.started",
        )
        .await;

    // Assert: both queued jobs came, in order.
    let (firsts, _) = by_kind(&hits);
    assert_eq!(firsts, ["task.created", "task.started"], "{}", relay.log());
}

#[tokio::test]
async fn a_delivery_consumer_an_older_relay_kept_on_disk_is_replaced_and_its_queue_delivered() {
    use taskfleet::bus::{relay_consumer_config, subjects};

    // Arrange: destination `hook`'s consumer as relays before 2026-12 made it (state on disk).
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    let js = app.jetstream().await;
    let key = "n_hook";
    let name = subjects::delivery_consumer(key);
    let old = relay_consumer_config(&name, &subjects::delivery(key), Duration::from_secs(15), 8);
    let deliveries = js.get_stream(subjects::DELIVERIES_STREAM).await.unwrap();
    deliveries.create_consumer(old).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = hook_relay_config(&dir, &hook.url("/hook"));

    // Act
    let relay = app.relay_process(&config).await;
    app.task_notifying("upgraded", json!(["hook"])).await;
    let hits = hook.wait_for(1, Duration::from_secs(20)).await;

    // Assert: delivered, by a consumer that now keeps its state in memory.
    assert_eq!(hits[0].kind(), "task.created", "{}", relay.log());
    let info = deliveries.consumer_info(&name).await.unwrap();
    assert!(info.config.memory_storage, "{}", relay.log());
}

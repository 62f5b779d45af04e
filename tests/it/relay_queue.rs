//! How the fan-out queues a window's jobs (`DeliveryStore::queue_chained`): pipelined, each job
//! stored only if the one before it is the stream's last message, so a job is never stored
//! after one that was not, and queueing again (a re-fanned window) stores nothing twice.
//! And how a destination's jobs travel bundled: fewer queue messages, each job delivered once,
//! in order, also when a window fanned out again bundles them differently.

use crate::harness::app::test_config;
use crate::harness::receiver::Answer;
use crate::harness::TestApp;
use serde_json::json;
use std::time::Duration;
use taskfleet::bus::subjects;
use taskfleet::relay::job::{Bundle, DeliveryJob, DeliveryStatus, Parcel};
use taskfleet::relay::store::DeliveryStore;

/// The destination key every job here is queued for.
const KEY: &str = "h_chain";

/// A delivery store over its own connection to the test's server.
async fn store(app: &TestApp) -> DeliveryStore {
    let url = app.nats.url();
    let bus = taskfleet::serve::connect(&test_config(&url), &url, "queue-test")
        .await
        .expect("connected");
    DeliveryStore::new(bus)
}

/// A job for [`KEY`] whose text is `name`.
fn job(name: &str) -> (DeliveryJob, tracing::Span) {
    let job = serde_json::from_value(json!({
        "id": format!("{name}.{KEY}"), "key": KEY, "text": name,
        "created_time": "2026-12-04T00:00:00Z"
    }))
    .expect("a job");
    (job, tracing::Span::none())
}

/// `jobs` as the fan-out queues them, one job a message.
fn parcels(jobs: &[(DeliveryJob, tracing::Span)]) -> Vec<(Parcel, tracing::Span)> {
    jobs.iter()
        .map(|(j, s)| (Parcel::One(Box::new(j.clone())), s.clone()))
        .collect()
}

/// The texts of the jobs queued for [`KEY`], in stream order.
async fn queued(app: &TestApp) -> Vec<String> {
    let js = app.jetstream().await;
    let stream = js.get_stream(subjects::DELIVERIES_STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut texts = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        if m.subject.as_str() == subjects::delivery(KEY) {
            let job: DeliveryJob = serde_json::from_slice(&m.payload).unwrap();
            texts.push(job.text);
        }
    }
    texts
}

#[tokio::test]
async fn a_chain_of_jobs_is_stored_in_order_and_queueing_it_again_stores_nothing_twice() {
    let app = TestApp::spawn().await;
    let store = store(&app).await;
    let jobs = [job("a"), job("b"), job("c")];

    store.queue_chained(&parcels(&jobs)).await.expect("queued");
    let again = store.queue_chained(&parcels(&jobs)).await;
    again.expect("queued again");

    assert_eq!(queued(&app).await, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_chain_broken_by_a_job_stored_out_of_turn_stores_nothing_after_the_break() {
    // Arrange: `b` was stored before `a` (so the chain's `c`, which expects `b` last, meets `a`).
    let app = TestApp::spawn().await;
    let store = store(&app).await;
    let (b, _) = job("b");
    store.queue(&b, &b.id).await.expect("b queued");
    let jobs = [job("a"), job("b"), job("c")];

    // Act: the chain fails; then the jobs one at a time, as the fan-out does after a failure.
    let chained = store.queue_chained(&parcels(&jobs)).await;
    let after_the_break = queued(&app).await;
    for (j, _) in &jobs {
        store.queue(j, &j.id).await.expect("queued alone");
    }

    // Assert: nothing was stored behind the break, and the retry stored each job once.
    assert!(chained.is_err(), "the chain broke at c");
    assert_eq!(after_the_break, ["b", "a"]);
    assert_eq!(queued(&app).await, ["b", "a", "c"]);
}

#[tokio::test]
async fn a_bundle_fanned_out_again_skips_the_job_already_delivered_and_delivers_the_rest() {
    // Arrange: a task's first event delivered to the hook.
    let app = TestApp::spawn().await;
    let (hook, _relay) = app.relay_to_named_hook("hook", Answer::status(200)).await;
    app.task_notifying("first", json!(["hook"])).await;
    let first = hook.wait_for(1, Duration::from_secs(20)).await.remove(0);
    let store = store(&app).await;
    let delivered = store.get(&first.webhook_id()).await.expect("its record");

    // Act: that job again and a new one behind it, in a bundle that says its jobs may have been
    // queued before (as the fan-out queues a window of events handed out again).
    let mut new = delivered.job.clone();
    new.id = format!("evt_again.{}", new.key);
    let jobs = vec![delivered.job.clone(), new.clone()];
    let bundle = Parcel::Bundle(Bundle {
        jobs,
        recheck: true,
        ..Bundle::default()
    });
    let queued = store
        .queue_chained(&[(bundle, tracing::Span::none())])
        .await;
    queued.expect("queued");

    // Assert: the new job arrives, after the first was skipped (jobs go in order).
    let hits = hook
        .wait_until("the new job's delivery", Duration::from_secs(20), |h| {
            h.webhook_id() == new.id
        })
        .await;
    let ids: Vec<String> = hits.iter().map(|h| h.webhook_id()).collect();
    assert_eq!(ids, [first.webhook_id(), new.id.clone()]);
    let record = store.get(&new.id).await.expect("the new job's record");
    assert_eq!(record.status, DeliveryStatus::Delivered);
}

#[tokio::test]
async fn events_waiting_for_the_relay_reach_the_hook_once_each_in_order_in_fewer_queue_messages() {
    // Arrange: 40 tasks created while no relay runs.
    let app = TestApp::spawn().await;
    let mut names = Vec::new();
    for i in 0..40 {
        let task = app
            .task_notifying(&format!("t{i:02}"), json!(["hook"]))
            .await;
        names.push(task.task_name);
    }

    // Act: the relay starts and finds them.
    let (hook, _relay) = app.relay_to_named_hook("hook", Answer::status(200)).await;

    // Assert: each task's event once, in the order they were created, from bundles (the
    // queue stored fewer messages than it delivered jobs).
    let hits = hook.wait_for(40, Duration::from_secs(30)).await;
    let got: Vec<String> = hits
        .iter()
        .map(|h| {
            h.json()["data"]["task"]["task_name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(got, names);
    let listed = app.wait_deliveries("status=delivered", 40, Duration::from_secs(20));
    assert_eq!(listed.await.len(), 40);
    let js = app.jetstream().await;
    let mut stream = js.get_stream(subjects::DELIVERIES_STREAM).await.unwrap();
    let stored = stream.info().await.unwrap().state.last_sequence;
    assert!(stored < 40, "{stored} queue messages for 40 jobs");
}

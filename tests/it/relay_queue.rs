//! How the fan-out queues a window's jobs (`DeliveryStore::queue_chained`): pipelined, each job
//! stored only if the one before it is the stream's last message, so a job is never stored
//! after one that was not, and queueing again (a re-fanned window) stores nothing twice.

use crate::harness::app::test_config;
use crate::harness::TestApp;
use serde_json::json;
use taskfleet::bus::subjects;
use taskfleet::relay::job::DeliveryJob;
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

    store.queue_chained(&jobs).await.expect("queued");
    store.queue_chained(&jobs).await.expect("queued again");

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
    let chained = store.queue_chained(&jobs).await;
    let after_the_break = queued(&app).await;
    for (j, _) in &jobs {
        store.queue(j, &j.id).await.expect("queued alone");
    }

    // Assert: nothing was stored behind the break, and the retry stored each job once.
    assert!(chained.is_err(), "the chain broke at c");
    assert_eq!(after_the_break, ["b", "a"]);
    assert_eq!(queued(&app).await, ["b", "a", "c"]);
}

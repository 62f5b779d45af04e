//! Reading the EVENTS stream directly: every event whose subject matches a filter, in order.

use super::app::TestApp;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use std::time::Duration;
use taskfleet::domain::TaskEvent;

/// How many events match `filter` (e.g. `events.anna.*.started`) right now.
pub async fn count_events(app: &TestApp, filter: &str) -> usize {
    let js = app.jetstream().await;
    let stream = js.get_stream("EVENTS").await.expect("EVENTS stream");
    let mut subjects = stream
        .info_with_subjects(filter)
        .await
        .expect("stream info");
    let mut n = 0;
    while let Some(s) = subjects.next().await {
        n += s.expect("subject count").1;
    }
    n
}

/// Every event matching `filter`, in stream order.
pub async fn events(app: &TestApp, filter: &str) -> Vec<TaskEvent> {
    let total = count_events(app, filter).await;
    if total == 0 {
        return Vec::new();
    }
    let js = app.jetstream().await;
    let stream = js.get_stream("EVENTS").await.expect("EVENTS stream");
    let mut messages = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer")
        .messages()
        .await
        .expect("consumer messages");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("events arrive")
            .expect("stream open")
            .expect("event message");
        out.push(serde_json::from_slice(&m.payload).expect("a task event"));
    }
    out
}

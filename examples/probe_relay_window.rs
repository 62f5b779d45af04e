//! Probe for the relay's next step (issue "Relay v2", target 5,000 signed deliveries/s to one
//! destination, in order): how fast can one ordered delivery loop go on this machine when the
//! server hands it several jobs at once, compared with one job in flight as the relay does today?
//!
//! Raw async-nats, no taskfleet code on the data path: N jobs (~1 KiB each) are queued on a
//! work-queue stream; one loop takes them in stream order through a durable pull consumer with
//! `max_ack_pending = W` and the pinned-client priority policy (one holder at a time), POSTs each
//! to a local HTTP receiver (awaited, so the receiver sees them in order), stores a record (one
//! message on a records stream) and acks the job once its record is stored. With `W = 1` the
//! record is awaited before the ack (today's relay); with `W > 1` records and acks are pipelined,
//! in order, beside the next POSTs.
//!
//! It also reports whether an existing consumer can be switched to the pinned-client policy by
//! an update (the relay's consumers exist in deployed fleets).
//!
//! Run: `cargo run --release --example probe_relay_window -- [--jobs 5000]`

#![deny(unsafe_code)]

use async_nats::jetstream::consumer::{pull, AckPolicy, PriorityPolicy};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskfleet::natsd::{LocalNats, LocalNatsOptions};

/// A local receiver counting POSTs; answers its URL.
async fn receiver(count: Arc<AtomicUsize>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The consumer config of one destination's queue with `window` jobs in flight.
fn consumer_config(name: &str, window: i64) -> pull::Config {
    pull::Config {
        durable_name: Some(name.into()),
        filter_subject: format!("probe.jobs.{name}"),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: window,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec!["relay".into()],
        priority_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Queues `jobs` jobs for destination `name`, then delivers them with `window` in flight;
/// answers deliveries/s.
async fn run(
    js: &jetstream::Context,
    url: &str,
    count: &AtomicUsize,
    name: &str,
    jobs: usize,
    window: i64,
) -> anyhow::Result<f64> {
    let body = serde_json::json!({"type": "task.step", "data": {"text": "x".repeat(900)}});
    let body = bytes::Bytes::from(serde_json::to_vec(&body)?);
    for _ in 0..jobs {
        js.publish(format!("probe.jobs.{name}"), body.clone())
            .await?;
    }
    js.publish(format!("probe.jobs.{name}"), body.clone())
        .await?
        .await?;
    let jobs = jobs + 1;
    let stream = js.get_stream("PROBE_JOBS").await?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(consumer_config(name, window))
        .await?;
    let mut messages = consumer.stream().group("relay").messages().await?;
    let http = reqwest::Client::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(window.max(1) as usize);
    let settler = tokio::spawn(async move {
        while let Some((msg, stored)) = rx.recv().await {
            let stored: async_nats::jetstream::context::PublishAckFuture = stored;
            stored.await.expect("record stored");
            let msg: async_nats::jetstream::Message = msg;
            msg.ack().await.expect("ack");
        }
    });
    let before = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for _ in 0..jobs {
        let msg = messages.next().await.expect("a job")?;
        http.post(url).body(msg.payload.clone()).send().await?;
        let record = js
            .publish(format!("probe.records.{name}"), body.clone())
            .await?;
        if window == 1 {
            record.await?;
            msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        } else {
            tx.send((msg, record)).await?;
        }
    }
    drop(tx);
    settler.await?;
    let rate = (count.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    Ok(rate)
}

/// Whether a consumer created without a priority policy can be updated to the pinned one.
async fn pinned_by_update(js: &jetstream::Context) -> String {
    let Ok(stream) = js.get_stream("PROBE_JOBS").await else {
        return "no stream".into();
    };
    let plain = pull::Config {
        durable_name: Some("upd".into()),
        filter_subject: "probe.jobs.upd".into(),
        max_ack_pending: 1,
        ..Default::default()
    };
    if let Err(e) = stream.create_consumer(plain).await {
        return format!("could not create: {e}");
    }
    match js
        .update_consumer_on_stream(consumer_config("upd", 64), "PROBE_JOBS")
        .await
    {
        Ok(mut c) => match c.info().await {
            Ok(info) => format!(
                "yes (policy now {:?}, max_ack_pending {})",
                info.config.priority_policy, info.config.max_ack_pending
            ),
            Err(e) => format!("updated, but no info: {e}"),
        },
        Err(e) => format!("no: {e}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = args
        .iter()
        .position(|a| a == "--jobs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir()?;
    let conf = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf"));
    let nats = LocalNats::start(&LocalNatsOptions::scratch(conf, dir.path())?).await?;
    let js = jetstream::new(async_nats::connect(&nats.url).await?);
    js.create_stream(stream::Config {
        name: "PROBE_JOBS".into(),
        subjects: vec!["probe.jobs.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    js.create_stream(stream::Config {
        name: "PROBE_RECORDS".into(),
        subjects: vec!["probe.records.>".into()],
        ..Default::default()
    })
    .await?;
    let count = Arc::new(AtomicUsize::new(0));
    let url = receiver(count.clone()).await?;
    println!("| jobs in flight (W) | deliveries/s, one destination, in order, record stored |");
    println!("|---:|---:|");
    for (i, window) in [1, 8, 64, 1].into_iter().enumerate() {
        let rate = run(&js, &url, &count, &format!("d{i}"), jobs, window).await?;
        println!("| {window} | {rate:.0} |");
    }
    println!(
        "\nan existing consumer switched to pinned_client by an update: {}",
        pinned_by_update(&js).await
    );
    nats.stop().await;
    Ok(())
}

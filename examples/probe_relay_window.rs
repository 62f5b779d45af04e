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
//! With `--destinations D` it measures instead what the relay's 100-destination target would
//! gain from jobs that carry several events for one destination (a *bundle*): `--events E`
//! deliveries per destination are queued as jobs of `B` events each (`--bundles 1,8,32`), then
//! D ordered loops (one per destination, 32 jobs in flight each) POST every event, store one
//! record per event and ack a job once all its records are stored. It prints the time the jobs
//! took to queue and the deliveries/s of the drain.
//!
//! Run: `cargo run --release --example probe_relay_window -- [--jobs 5000]`, or
//! `… -- --destinations 100 --events 200 --bundles 1,8,32`

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

/// The value after `--name` on the command line, if any.
fn arg(args: &[String], name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

/// One bundle run: where the probe sends, and how many destinations, events and events per job.
struct Fan<'a> {
    js: &'a jetstream::Context,
    url: &'a str,
    count: &'a AtomicUsize,
    destinations: usize,
    events: usize,
    bundle: usize,
}

impl Fan<'_> {
    /// Queues every destination's jobs (`bundle` events of ~1 KiB each, one per line) on
    /// `probe.jobs.fan.b<bundle>.d<n>`; answers how long that took.
    async fn queue(&self) -> anyhow::Result<Duration> {
        let event = format!(
            r#"{{"type":"task.step","data":{{"text":"{}"}}}}"#,
            "x".repeat(900)
        );
        let t0 = Instant::now();
        let mut acks = Vec::new();
        for first in (0..self.events).step_by(self.bundle) {
            let n = self.bundle.min(self.events - first);
            let body = bytes::Bytes::from(vec![event.as_str(); n].join("\n"));
            for d in 0..self.destinations {
                let subject = format!("probe.jobs.fan.b{}.d{d}", self.bundle);
                acks.push(self.js.publish(subject, body.clone()).await?);
            }
            // async-nats holds a slot per answer not yet awaited (5,000 at most).
            if acks.len() >= 1_000 {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        Ok(t0.elapsed())
    }

    /// Drains destination `d`'s jobs in order: each event POSTed, its record stored behind the
    /// loop, the job acked once its records are stored.
    async fn drain(&self, d: usize, http: reqwest::Client) -> anyhow::Result<()> {
        let stream = self.js.get_stream("PROBE_JOBS").await?;
        let mut config = consumer_config(&format!("b{}_d{d}", self.bundle), 32);
        config.filter_subject = format!("probe.jobs.fan.b{}.d{d}", self.bundle);
        let consumer: jetstream::consumer::PullConsumer = stream.create_consumer(config).await?;
        let mut messages = consumer.stream().group("relay").messages().await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(jetstream::Message, Vec<_>)>(32);
        let settler = tokio::spawn(async move {
            while let Some((msg, records)) = rx.recv().await {
                for record in records {
                    let record: jetstream::context::PublishAckFuture = record;
                    record.await.expect("record stored");
                }
                msg.ack().await.expect("ack");
            }
        });
        let mut left = self.events;
        while left > 0 {
            let msg = messages.next().await.expect("a job")?;
            let mut records = Vec::new();
            for event in msg.payload.split(|b| *b == b'\n') {
                let body = bytes::Bytes::copy_from_slice(event);
                http.post(self.url).body(body.clone()).send().await?;
                let subject = format!("probe.records.b{}.d{d}", self.bundle);
                records.push(self.js.publish(subject, body).await?);
                left -= 1;
            }
            tx.send((msg, records)).await?;
        }
        drop(tx);
        settler.await?;
        Ok(())
    }

    /// Queues the jobs, then drains every destination at once; answers the queueing time and
    /// the drain's deliveries/s.
    async fn run(&self) -> anyhow::Result<(Duration, f64)> {
        let queued = self.queue().await?;
        let http = reqwest::Client::new();
        let before = self.count.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let loops = (0..self.destinations).map(|d| self.drain(d, http.clone()));
        for done in futures::future::join_all(loops).await {
            done?;
        }
        let delivered = self.count.load(Ordering::Relaxed) - before;
        Ok((queued, delivered as f64 / t0.elapsed().as_secs_f64()))
    }
}

/// Runs the bundle comparison (see the file's docs) and prints its table.
async fn bundles(
    js: &jetstream::Context,
    url: &str,
    count: &AtomicUsize,
    args: &[String],
) -> anyhow::Result<()> {
    let num = |name: &str, default: usize| {
        arg(args, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (destinations, events) = (num("--destinations", 100), num("--events", 200));
    let sizes = arg(args, "--bundles").unwrap_or_else(|| "1,8,32".into());
    println!("| events per job | jobs queued in | deliveries/s, {destinations} destinations × {events} events, records stored |");
    println!("|---:|---:|---:|");
    for bundle in sizes
        .split(',')
        .filter_map(|b| b.trim().parse::<usize>().ok())
    {
        let bundle = bundle.max(1);
        let fan = Fan {
            js,
            url,
            count,
            destinations,
            events,
            bundle,
        };
        let (queued, rate) = fan.run().await?;
        println!("| {bundle} | {:.2} s | {rate:.0} |", queued.as_secs_f64());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = arg(&args, "--jobs")
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
    if arg(&args, "--destinations").is_some() {
        bundles(&js, &url, &count, &args).await?;
        nats.stop().await;
        return Ok(());
    }
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

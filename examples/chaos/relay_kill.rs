//! Scenario 4: `kill -9` of the relay while 1,500 webhooks go to a local HTTP receiver (one per
//! task created: a route sends every `created` event of the assignee to the webhook `hook`).
//! After a restart every event must arrive at least once; duplicates are counted by
//! `webhook-id` and compared with the deliveries in flight at the kill.

use super::fleet::Fleet;
use super::load::{progress, wait_count, Creator, CreatorOptions};
use super::observe::consumer_pending;
use super::report::Outcome;
use super::verify::created_ids;
use super::Scale;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The assignee of this scenario.
const A: &str = "chaos4";

/// Every request the receiver got: `(webhook-id, task id)`.
type Hits = Arc<Mutex<Vec<(String, String)>>>;

/// A local webhook receiver that answers 200 after `delay` (so delivery takes a few seconds).
struct Receiver {
    url: String,
    hits: Hits,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(delay: Duration) -> anyhow::Result<Self> {
        let hits: Hits = Arc::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state((hits.clone(), delay));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, hits, server })
    }

    /// Requests received, and distinct webhook ids among them.
    fn counts(&self) -> (usize, usize) {
        let hits = self.hits.lock().expect("hits");
        let ids: BTreeSet<&str> = hits.iter().map(|(w, _)| w.as_str()).collect();
        (hits.len(), ids.len())
    }

    /// Distinct task ids whose `created` event arrived.
    fn tasks(&self) -> BTreeSet<String> {
        self.hits
            .lock()
            .expect("hits")
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Records the request (on arrival), then answers 200 after the delay.
async fn receive(
    State((hits, delay)): State<(Hits, Duration)>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = headers
        .get("webhook-id")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let task = v["data"]["event"]["task_id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    hits.lock().expect("hits").push((id, task));
    tokio::time::sleep(delay).await;
    "ok"
}

/// The relay's config: the webhook, a route for the assignee's `created` events, short timings.
fn config(dir: &Path, url: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("relay.toml");
    let toml = format!(
        "[relay]\nallow = [\"127.0.0.1/32\"]\nattempt_timeout_s = 2\nretry_schedule_s = [0, 1, 1, 1, 1, 1, 1, 1]\n\n\
         [relay.destinations.hook]\ntype = \"webhook\"\nurl = \"{url}\"\n\n\
         [[relay.routes]]\nassignees = [\"{A}\"]\nevents = [\"created\"]\ndestinations = [\"hook\"]\n"
    );
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// Runs the scenario in `dir`.
pub async fn run(dir: &Path, scale: Scale, out: &mut Outcome) -> anyhow::Result<()> {
    let n = scale.of(1500);
    let mut f = Fleet::single(dir).await?;
    let rx = Receiver::start(Duration::from_millis(3)).await?;
    let conf = config(dir, &rx.url)?;
    f.spawn_relay(&conf).await?;
    let bodies: Vec<Value> = (0..n)
        .map(|i| json!({"task_name": format!("s4 {i}"), "assigned_to": A, "idempotency_key": format!("s4-{i}")}))
        .collect();
    let opts = CreatorOptions {
        parallel: 8,
        give_up: Duration::from_secs(60),
        repeat_every: None,
        pace: Duration::ZERO,
    };
    let creator = Creator::spawn(f.http.clone(), bodies, opts);
    let r = &rx;
    wait_count(
        "webhooks received before the kill",
        n / 3,
        Duration::from_secs(120),
        || async { Ok(r.counts().1) },
    )
    .await?;
    let pid = f.relay.as_ref().map_or(0, |p| p.pid());
    if let Some(relay) = f.relay.as_mut() {
        relay.kill9();
    }
    let killed = Instant::now();
    let (jobs, _) = consumer_pending(&f.nc, "DELIVERIES", "relay_n_hook").await?;
    let (events, _) = consumer_pending(&f.nc, "EVENTS", "relay_events").await?;
    let at_kill = rx.counts();
    progress(format!("kill -9 of the relay pid {pid} after {} webhooks; {jobs} delivery and {events} fan-out message(s) unacknowledged", at_kill.1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.spawn_relay(&conf).await?;
    let first = wait_count(
        "the first new webhook after the restart",
        at_kill.1 + 1,
        Duration::from_secs(60),
        || async { Ok(r.counts().1) },
    )
    .await?;
    out.recovered("restart → first new webhook", first);
    let ids = created_ids(&creator.finish().await?, out);
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    let what = format!("{} webhooks (one per task) to arrive", want.len());
    wait_count(&what, want.len(), Duration::from_secs(180), || async {
        Ok(r.tasks().intersection(&want).count())
    })
    .await?;
    out.recovered("kill -9 → every event delivered", killed.elapsed());
    judge(&f, &rx, &want, jobs, events, out).await
}

/// Lost events, duplicates against the deliveries in flight at the kill, dead deliveries.
async fn judge(
    f: &Fleet,
    rx: &Receiver,
    want: &BTreeSet<String>,
    jobs: u64,
    events: u64,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (total, distinct) = rx.counts();
    let got = rx.tasks();
    out.lost = want.difference(&got).count();
    out.duplicates = total - distinct;
    out.in_flight = format!(
        "{jobs} deliveries unacknowledged on relay_n_hook (its window), {events} event(s) \
         being fanned out"
    );
    out.figure(
        "webhooks",
        format!(
            "{total} requests, {distinct} distinct webhook-ids, {} distinct tasks of {}",
            got.len(),
            want.len()
        ),
    );
    if out.duplicates as u64 > jobs + events {
        out.fault(format!(
            "{} duplicate webhooks, more than the {} deliveries in flight at the kill",
            out.duplicates,
            jobs + events
        ));
    }
    if distinct != got.len() {
        out.fault(format!(
            "{distinct} webhook-ids for {} tasks: one event went out under two ids",
            got.len()
        ));
    }
    let dead = f
        .http
        .get_ok("/api/deliveries?status=dead&limit=100")
        .await?;
    let dead = dead.as_array().map_or(0, Vec::len);
    if dead > 0 {
        out.fault(format!("{dead} dead deliveries after the restart"));
    }
    Ok(())
}

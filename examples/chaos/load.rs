//! Load and waiting: a client that keeps creating tasks over HTTP with idempotency keys
//! (retrying each key until it gets a 2xx), and bounded waits that print their progress.

use super::fleet::Http;
use anyhow::bail;
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The last progress line printed (quoted when a scenario passes its deadline).
static LAST_PROGRESS: Mutex<String> = Mutex::new(String::new());

/// Prints a progress line (stderr) and remembers it.
pub fn progress(line: String) {
    eprintln!("    {line}");
    *LAST_PROGRESS.lock().unwrap_or_else(|p| p.into_inner()) = line;
}

/// The last progress line printed.
pub fn last_progress() -> String {
    LAST_PROGRESS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Waits until `probe` reports at least `want`, printing "waiting for <what>: n/want" when the
/// count moves (at most every 2 s); fails past `limit`. A failing probe (NATS or the API down
/// for a moment) counts as no progress. Returns how long it took.
pub async fn wait_count<F, Fut>(
    what: &str,
    want: usize,
    limit: Duration,
    mut probe: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    let started = Instant::now();
    let mut shown = (usize::MAX, Instant::now() - Duration::from_secs(60));
    let mut last_err = String::new();
    loop {
        let n = match probe().await {
            Ok(n) => n,
            Err(e) => {
                last_err = format!("{e:#}");
                0
            }
        };
        if n >= want {
            progress(format!(
                "waiting for {what}: {n}/{want} — done in {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(started.elapsed());
        }
        if shown.1.elapsed() >= Duration::from_secs(2)
            && (n != shown.0 || shown.1.elapsed() >= Duration::from_secs(10))
        {
            let err = if n == 0 && !last_err.is_empty() {
                format!(" (last error: {last_err})")
            } else {
                String::new()
            };
            progress(format!("waiting for {what}: {n}/{want}{err}"));
            shown = (n, Instant::now());
        }
        if started.elapsed() > limit {
            bail!(
                "waiting for {what}: only {n}/{want} after {limit:?}{}",
                if last_err.is_empty() {
                    String::new()
                } else {
                    format!(" (last error: {last_err})")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What came of one key's creates.
#[derive(Debug, Clone, Default)]
pub struct Create {
    /// The idempotency key.
    pub key: String,
    /// The task id of the first 2xx (none if no 2xx came before the client gave up).
    pub id: Option<String>,
    /// Every answer in order: the HTTP status, or 0 when no answer came (refused, timed out).
    pub answers: Vec<u16>,
    /// A deliberate repeat after the 2xx: its status and the id it named.
    pub repeat: Option<(u16, Option<String>)>,
    /// An id other than the first that a later 2xx of this key named.
    pub other_id: Option<String>,
    /// The body of a final answer that was no 2xx (a 4xx), shortened, and when it came (UTC).
    pub refusal: Option<String>,
}

/// Creates bodies over HTTP in the background, `parallel` at a time; each body carries an
/// `idempotency_key` and is sent again with the same key after every 5xx or missing answer.
pub struct Creator {
    done: Arc<AtomicUsize>,
    handle: tokio::task::JoinHandle<Vec<Create>>,
}

/// How a creator behaves.
#[derive(Clone, Copy)]
pub struct CreatorOptions {
    /// Creates in flight.
    pub parallel: usize,
    /// A key with no 2xx after this long is given up (and reported).
    pub give_up: Duration,
    /// Every n-th key is sent once more after its 2xx (must answer 200 with the same id).
    pub repeat_every: Option<usize>,
    /// Pause of each sender between two keys (spreads the creates over time).
    pub pace: Duration,
}

impl Creator {
    /// Starts creating `bodies` (each with an `idempotency_key`).
    pub fn spawn(http: Http, bodies: Vec<Value>, o: CreatorOptions) -> Self {
        let done = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(bodies);
        let next = Arc::new(AtomicUsize::new(0));
        let results = Arc::new(Mutex::new(Vec::new()));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..o.parallel {
            let (http, bodies, next, done, results) = (
                http.clone(),
                bodies.clone(),
                next.clone(),
                done.clone(),
                results.clone(),
            );
            set.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(body) = bodies.get(i) else { break };
                    let repeat = o.repeat_every.is_some_and(|n| i % n == 0);
                    let c = create_one(&http, body, o.give_up, repeat).await;
                    tokio::time::sleep(o.pace).await;
                    if c.id.is_some() {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    results.lock().expect("results").push(c);
                }
            });
        }
        let handle = tokio::spawn(async move {
            while set.join_next().await.is_some() {}
            let mut all = std::mem::take(&mut *results.lock().expect("results"));
            all.sort_by(|a: &Create, b| a.key.cmp(&b.key));
            all
        });
        Self { done, handle }
    }

    /// Keys that got a 2xx so far.
    pub fn created(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits for every key to be answered or given up.
    pub async fn finish(self) -> anyhow::Result<Vec<Create>> {
        Ok(self.handle.await?)
    }
}

/// Sends one body until a 2xx (or a 4xx, which is final), then, with `repeat`, sends it again
/// the same way: the repeat must answer 200 with the same task.
async fn create_one(http: &Http, body: &Value, give_up: Duration, repeat: bool) -> Create {
    let mut c = Create {
        key: body["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ..Create::default()
    };
    let (answers, last) = send_until_final(http, body, give_up).await;
    c.answers = answers;
    match last {
        Some((s, reply)) if (200..300).contains(&s) => {
            c.id = reply["id"].as_str().map(str::to_string);
        }
        Some((_, reply)) => {
            let at = chrono::Utc::now().format("%H:%M:%S%.3f");
            let text: String = reply.to_string().chars().take(200).collect();
            c.refusal = Some(format!("{text} at {at} UTC"));
        }
        None => {}
    }
    if repeat && c.id.is_some() {
        let (answers, last) = send_until_final(http, body, give_up).await;
        c.answers.extend(answers);
        let (status, reply) = last.unwrap_or((0, Value::Null));
        let id = reply["id"].as_str().map(str::to_string);
        if id.is_some() && id != c.id && (200..300).contains(&status) {
            c.other_id = id.clone();
        }
        c.repeat = Some((status, id));
    }
    c
}

/// POSTs `body` to `/api/tasks` until an answer below 500 (or `give_up`): every status seen
/// (0 for no answer) and the final answer.
async fn send_until_final(
    http: &Http,
    body: &Value,
    give_up: Duration,
) -> (Vec<u16>, Option<(u16, Value)>) {
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < give_up {
        let answer = http
            .call(http.req(Method::POST, "/api/tasks").json(body))
            .await;
        let (status, reply) = answer.unwrap_or((0, Value::Null));
        seen.push(status);
        if (200..500).contains(&status) {
            return (seen, Some((status, reply)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (seen, None)
}

/// How often each answer came, over every key: `{201: 1490, 200: 10, 503: 4, 0: 12}`.
pub fn answer_counts(creates: &[Create]) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for c in creates {
        for a in &c.answers {
            *out.entry(*a).or_default() += 1;
        }
    }
    out
}

/// The answers as text: `201×1490 200×10 503×4 no-answer×12`.
pub fn answers_text(counts: &BTreeMap<u16, usize>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| match s {
            0 => format!("no-answer×{n}"),
            s => format!("{s}×{n}"),
        })
        .collect();
    parts.join(" ")
}

/// The priorities, in the order bodies take them.
const PRIORITIES: [&str; 3] = ["P0", "P1", "P2"];

/// `n` create bodies of exec tasks for `assignee` running `command`, priorities P0, P1, P2 in
/// turn, each with the idempotency key `<tag>-<i>`.
pub fn exec_bodies(assignee: &str, n: usize, command: &str, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "task_name": format!("{tag} {i}"), "assigned_to": assignee,
                "priority": PRIORITIES[i % 3], "kind": "exec",
                "payload": {"command": command, "timeout_s": 120},
                "idempotency_key": format!("{tag}-{i}"),
            })
        })
        .collect()
}

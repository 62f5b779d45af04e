//! Scenario 5: junk on every queue subject (`tasks.<a>.p0|p1|p2[.kind]`) and on every HTTP route.
//! Afterwards valid tasks published after the junk still run on every priority, no request got
//! a 5xx, and every junk message is a dead letter (or was refused when published). The header
//! that is not UTF-8 is scenario 5b ([`super::bad_header`]).

use super::fleet::Fleet;
use super::junk_http;
use super::load::{progress, wait_count};
use super::observe::{count, js, subjects, tasks_with};
use super::report::Outcome;
use super::worker_kill::WORKER_ENV;
use anyhow::Context;
use async_nats::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The assignee of this scenario.
const A: &str = "chaos5";

/// A queue subject junk goes to.
pub struct Target {
    /// `tasks.chaos5.p1.noop`.
    pub subject: String,
    /// `p1-noop`, for message ids.
    pub tag: String,
    /// Whether workers pull it (a kind subject); manual subjects are only read by the API.
    pub pulled: bool,
    /// `P0`, `P1`, `P2`.
    pub priority: &'static str,
}

/// Every queue subject of `a`: manual, `noop` and `exec` at each priority, and an unknown kind.
pub fn targets(a: &str) -> Vec<Target> {
    let mut out = Vec::new();
    for (p, prio) in [("p0", "P0"), ("p1", "P1"), ("p2", "P2")] {
        for kind in ["", ".noop", ".exec"] {
            out.push(Target {
                subject: format!("tasks.{a}.{p}{kind}"),
                tag: format!("{p}{}", kind.replace('.', "-")),
                pulled: !kind.is_empty(),
                priority: prio,
            });
        }
    }
    out.push(Target {
        subject: format!("tasks.{a}.p1.bogus"),
        tag: "p1-bogus".into(),
        pulled: true,
        priority: "P1",
    });
    out
}

/// Junk bodies for `t`; `limit` is the largest message the queue takes.
fn bodies(t: &Target, limit: usize) -> Vec<(&'static str, Vec<u8>)> {
    let other_prio = if t.priority == "P0" { "P2" } else { "P0" };
    let other_kind = if t.pulled { "manual" } else { "noop" };
    let j = |v: Value| v.to_string().into_bytes();
    vec![
        ("not-json", b"{\"task_name\": ".to_vec()),
        ("empty", Vec::new()),
        ("array", b"[1,2,3]".to_vec()),
        ("string", b"\"hello\"".to_vec()),
        ("null", b"null".to_vec()),
        ("name-number", j(json!({"task_name": 42}))),
        ("prio-number", j(json!({"task_name": "x", "priority": 7}))),
        (
            "attempts-text",
            j(json!({"task_name": "x", "max_attempts": "three"})),
        ),
        (
            "payload-text",
            j(json!({"task_name": "x", "payload": "not an object"})),
        ),
        (
            "steps-object",
            j(json!({"task_name": "x", "steps": {"a": 1}})),
        ),
        (
            "timeout-negative",
            j(json!({"task_name": "x", "timeout_s": -5})),
        ),
        ("body-not-utf8", b"{\"task_name\": \"\xff\xfe\"}".to_vec()),
        (
            "nested-5000",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
        (
            "other-assignee",
            j(json!({"task_name": "x", "assigned_to": "someone_else"})),
        ),
        (
            "other-priority",
            j(json!({"task_name": "x", "priority": other_prio})),
        ),
        (
            "other-kind",
            j(json!({"task_name": "x", "kind": other_kind})),
        ),
        ("huge-not-json", vec![b'x'; limit]),
        (
            "huge-invalid",
            j(json!({"task_name": "huge", "description": "d".repeat(limit - 64)})),
        ),
        (
            "huge-valid",
            j(json!({"task_name": "huge but valid", "payload": {"blob": "b".repeat(limit - 96)}})),
        ),
    ]
}

/// One junk message and what JetStream said.
pub struct Sent {
    /// Its `Nats-Msg-Id` (a valid task id, so its dead letter has this id).
    pub id: String,
    /// Whether a worker pulls its subject.
    pub pulled: bool,
    /// Whether it is a valid task that merely is huge (may run instead of being dead-lettered).
    pub valid: bool,
    /// The publish error, when JetStream refused it.
    pub refused: Option<String>,
}

/// The largest body the queue takes: the smaller of the server's `max_payload` and `TASKS`'s
/// `max_msg_size`, less room for headers.
async fn body_limit(f: &Fleet) -> anyhow::Result<usize> {
    let server = f.nc.server_info().max_payload;
    let info = js(&f.nc, "$JS.API.STREAM.INFO.TASKS", json!({})).await?;
    let stream = info["config"]["max_msg_size"].as_i64().unwrap_or(-1);
    let stream = if stream > 0 {
        stream as usize
    } else {
        usize::MAX
    };
    Ok(server.min(stream) - 512)
}

/// Publishes `payload` to `subject` with `Nats-Msg-Id: id` and waits for JetStream's ack.
pub async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    id: &str,
    payload: Vec<u8>,
) -> Result<u64, String> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    let ack = js
        .publish_with_headers(subject.to_string(), headers, payload.into())
        .await;
    match ack.map_err(|e| e.to_string())?.await {
        Ok(a) => Ok(a.sequence),
        Err(e) => Err(e.to_string()),
    }
}

/// Publishes every junk body to every queue subject, plus one body over the limit.
async fn publish_junk(f: &Fleet, limit: usize) -> Vec<Sent> {
    let js = async_nats::jetstream::new(f.nc.clone());
    let mut sent = Vec::new();
    for t in targets(A) {
        for (case, body) in bodies(&t, limit) {
            let id = format!("junk-{}-{case}", t.tag);
            let refused = publish(&js, &t.subject, &id, body).await.err();
            sent.push(Sent {
                id,
                pulled: t.pulled,
                valid: case == "huge-valid",
                refused,
            });
        }
    }
    let over = vec![b'o'; limit + 4096];
    let refused = publish(&js, &format!("tasks.{A}.p1.noop"), "junk-over-limit", over)
        .await
        .err();
    sent.push(Sent {
        id: "junk-over-limit".into(),
        pulled: true,
        valid: false,
        refused,
    });
    sent
}

/// Runs the scenario in `dir`: HTTP junk first (so its answers do not depend on the queue
/// junk), then the queue junk, then valid tasks on every priority.
pub async fn run(dir: &Path, out: &mut Outcome) -> anyhow::Result<()> {
    let mut f = Fleet::single(dir).await?;
    f.spawn_worker(A, 4, &WORKER_ENV).await?;
    http_junk(&f, out).await?;
    huge_records(&f, out).await;
    let limit = body_limit(&f).await?;
    let sent = publish_junk(&f, limit).await;
    let refused: Vec<&str> = sent
        .iter()
        .filter(|s| s.refused.is_some())
        .map(|s| s.id.as_str())
        .collect();
    let what = format!(
        "{} on {} subjects, the largest {limit} bytes ({} refused at publish: {})",
        sent.len(),
        targets(A).len(),
        refused.len(),
        refused.join(", ")
    );
    out.figure("junk messages published to queue subjects", what);
    let junk_done = Instant::now();
    let (ran, manual) = publish_valid(&f).await?;
    let nc = f.nc.clone();
    let probe = || async {
        Ok(tasks_with(&nc, A, "completed")
            .await?
            .intersection(&ran)
            .count())
    };
    match wait_count(
        "valid tasks published after the junk to finish",
        ran.len(),
        Duration::from_secs(60),
        probe,
    )
    .await
    {
        Ok(_) => out.recovered(
            "queue junk published → every valid task after it finished (P0, P1, P2)",
            junk_done.elapsed(),
        ),
        Err(e) => out.fault(format!("{e:#}")),
    }
    let done = tasks_with(&f.nc, A, "completed").await?;
    out.lost = ran.difference(&done).count();
    out.lost += manual_tasks(&f, &manual, out).await;
    drained(&f, out).await?;
    dead_letters(&f, &sent, &done, out).await?;
    if !f.api_alive() {
        out.fault("the API process died".into());
    }
    Ok(())
}

/// Junk on every HTTP route (see [`junk_http`]); every 5xx or missing answer is a fault.
async fn http_junk(f: &Fleet, out: &mut Outcome) -> anyhow::Result<()> {
    let victim = f
        .http
        .send_ok(
            Method::POST,
            "/api/tasks",
            &json!({"task_name": "junk victim", "assigned_to": A}),
        )
        .await?;
    let id = victim["id"].as_str().context("victim id")?.to_string();
    let junk = junk_http::run(&f.http, A, &id).await;
    let statuses: Vec<String> = junk
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect();
    out.figure(
        "junk HTTP requests",
        format!("{} sent; answers {}", junk.sent, statuses.join(" ")),
    );
    if !junk.retried.is_empty() {
        out.figure(
            "junk HTTP requests sent twice (no answer the first time)",
            junk.retried.join("; "),
        );
    }
    for failure in junk.failures {
        out.fault(format!("HTTP junk got a 5xx or no answer: {failure}"));
    }
    Ok(())
}

/// A task whose payload and result are each just under the body limit: the state after
/// `complete` holds both (over 2 MiB with the event). Each call must answer a 2xx or a 4xx, and
/// within the API's 30 s request timeout.
async fn huge_records(f: &Fleet, out: &mut Outcome) {
    let blob = "p".repeat(1024 * 1024 - 400);
    let body = json!({"task_name": "huge payload", "assigned_to": A, "payload": {"blob": blob}});
    let create = slow_call(f, Method::POST, "/api/tasks", Some(body)).await;
    let Some(id) = create.1["id"].as_str().map(str::to_string) else {
        out.fault(format!(
            "create with a payload just under 1 MiB: {}",
            create.0
        ));
        return;
    };
    let start = slow_call(f, Method::PUT, &format!("/api/tasks/{id}/start"), None).await;
    let result = json!({"result": "r".repeat(1024 * 1024 - 400)});
    let done = slow_call(
        f,
        Method::PUT,
        &format!("/api/tasks/{id}/complete"),
        Some(result),
    )
    .await;
    let answers = format!(
        "create {}, start {}, complete {}",
        create.0, start.0, done.0
    );
    out.figure(
        "a task with a payload just under 1 MiB completed with a result just under 1 MiB",
        &answers,
    );
    if [&create.0, &start.0, &done.0]
        .iter()
        .any(|a| !a.starts_with(['2', '4']))
    {
        let why: String = done.1.to_string().chars().take(160).collect();
        out.fault(format!(
            "task {id} with a payload just under 1 MiB: {answers} {why}"
        ));
    }
}

/// `method path` with an optional JSON body and a 35 s limit (longer than the API's own 30 s):
/// the status as text (`503 after 30.0 s`, or `no answer within 35 s`) and the body.
async fn slow_call(f: &Fleet, method: Method, path: &str, body: Option<Value>) -> (String, Value) {
    let mut r = f.http.req(method, path).timeout(Duration::from_secs(35));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let t = Instant::now();
    match f.http.call(r).await {
        Ok((s, v)) if s < 500 && t.elapsed() < Duration::from_secs(5) => (s.to_string(), v),
        Ok((s, v)) => (format!("{s} after {:.1} s", t.elapsed().as_secs_f64()), v),
        Err(e) => (format!("no answer within 35 s ({e})"), Value::Null),
    }
}

/// Valid tasks after the junk, on every priority: a noop published to NATS and an exec created
/// over HTTP (both run by the worker), and a manual task created over HTTP. Returns the ids of
/// the worker-run ones and of the manual ones.
async fn publish_valid(f: &Fleet) -> anyhow::Result<(BTreeSet<String>, Vec<String>)> {
    let js = async_nats::jetstream::new(f.nc.clone());
    let (mut ran, mut manual) = (BTreeSet::new(), Vec::new());
    for (p, prio) in [("p0", "P0"), ("p1", "P1"), ("p2", "P2")] {
        let id = format!("valid-{p}-noop");
        let body = json!({"task_name": format!("valid {prio} noop")})
            .to_string()
            .into_bytes();
        publish(&js, &format!("tasks.{A}.{p}.noop"), &id, body)
            .await
            .map_err(anyhow::Error::msg)?;
        ran.insert(id);
        let exec = json!({"task_name": format!("valid {prio} exec"), "assigned_to": A, "priority": prio,
            "kind": "exec", "payload": {"command": "true"}});
        let t = f.http.send_ok(Method::POST, "/api/tasks", &exec).await?;
        ran.insert(t["id"].as_str().context("id")?.to_string());
        let m = json!({"task_name": format!("valid {prio} manual"), "assigned_to": A, "priority": prio});
        let t = f.http.send_ok(Method::POST, "/api/tasks", &m).await?;
        manual.push(t["id"].as_str().context("id")?.to_string());
    }
    progress(format!(
        "published {} valid worker tasks and {} manual ones after the junk",
        ran.len(),
        manual.len()
    ));
    Ok((ran, manual))
}

/// The manual tasks are listed by `GET /pending` (which reads the manual junk too) and can be
/// started and completed; returns how many could not.
async fn manual_tasks(f: &Fleet, ids: &[String], out: &mut Outcome) -> usize {
    let path = format!("/api/tasks/pending?assigned_to={A}&limit=1000");
    let (status, list) = slow_call(f, Method::GET, &path, None).await;
    if status == "200" {
        let listed: BTreeSet<&str> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_str())
            .collect();
        let missing = ids
            .iter()
            .filter(|id| !listed.contains(id.as_str()))
            .count();
        if missing > 0 {
            out.fault(format!(
                "GET {path} does not list {missing} of the {} valid manual tasks",
                ids.len()
            ));
        }
    } else {
        let body: String = list.to_string().chars().take(160).collect();
        out.fault(format!(
            "GET {path} after the queue junk answered {status}: {body}"
        ));
    }
    let mut lost = 0;
    for id in ids {
        let start = f
            .http
            .call(f.http.req(Method::PUT, &format!("/api/tasks/{id}/start")))
            .await;
        let done = f
            .http
            .call(
                f.http
                    .req(Method::PUT, &format!("/api/tasks/{id}/complete"))
                    .json(&json!({"result": "ok"})),
            )
            .await;
        if !matches!((&start, &done), (Ok((200, _)), Ok((200, _)))) {
            out.fault(format!(
                "valid manual task {id}: start {:?}, complete {:?}",
                start.map(|r| r.0),
                done.map(|r| r.0)
            ));
            lost += 1;
        }
    }
    lost
}

/// Every worker-run queue subject drains (no junk stuck in the queue); junk left on manual
/// subjects is reported too (nothing takes it out of the queue).
async fn drained(f: &Fleet, out: &mut Outcome) -> anyhow::Result<()> {
    let nc = f.nc.clone();
    let filter = format!("tasks.{A}.*.*");
    let left = || async { Ok(usize::from(count(&nc, "TASKS", &filter).await? == 0)) };
    if wait_count(
        "the worker queues to drain",
        1,
        Duration::from_secs(45),
        left,
    )
    .await
    .is_err()
    {
        let stuck = subjects(&f.nc, "TASKS", &filter).await?;
        out.fault(format!(
            "messages stuck on worker queue subjects 45 s after the valid tasks: {stuck:?}"
        ));
    }
    let filter = format!("tasks.{A}.*");
    let msgs = taskfleet::bus::direct::batch(&f.nc, "TASKS", &filter, 1, 1000).await?;
    let junk: Vec<String> = msgs
        .iter()
        .filter_map(|m| m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string()))
        .filter(|id| id.starts_with("junk-"))
        .collect();
    out.figure(
        "junk left on manual subjects",
        format!("{} of {} messages there", junk.len(), msgs.len()),
    );
    if !junk.is_empty() {
        out.fault(format!(
            "{} junk messages on manual subjects (tasks.{A}.p0|p1|p2) are neither dead-lettered nor refused: \
             they stay in TASKS and GET /pending skips them on every call, e.g. {:?}",
            junk.len(),
            &junk[..junk.len().min(4)]
        ));
    }
    Ok(())
}

/// Every junk message on a worker-run subject is a dead letter (a valid huge one may have run).
async fn dead_letters(
    f: &Fleet,
    sent: &[Sent],
    done: &BTreeSet<String>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let list = f
        .http
        .get_ok(&format!("/api/dead-letters?assigned_to={A}&limit=1000"))
        .await?;
    let dead: BTreeSet<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str())
        .collect();
    let expected: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.pulled && s.refused.is_none())
        .collect();
    let missing: Vec<&str> = expected
        .iter()
        .filter(|s| !(dead.contains(s.id.as_str()) || s.valid && done.contains(&s.id)))
        .map(|s| s.id.as_str())
        .collect();
    out.figure(
        "dead letters of the junk on worker subjects",
        format!("{} of {}", expected.len() - missing.len(), expected.len()),
    );
    if !missing.is_empty() {
        out.fault(format!(
            "{} junk message(s) on worker subjects neither dead-lettered nor run: {:?}",
            missing.len(),
            &missing[..missing.len().min(12)]
        ));
    }
    Ok(())
}

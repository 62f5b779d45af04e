//! Traces that reach a collector: the real `api`, `worker` and `relay` binaries, configured only
//! by the standard `OTEL_*` variables, export their spans over OTLP/HTTP to a real receiver
//! (`harness::otlp`); one task's create, claim, run and deliveries are one trace that continues
//! the caller's `traceparent`, and each webhook request carries its delivery span's context.

use crate::harness::app::ADMIN_KEY;
use crate::harness::otlp::{Collector, ReceivedSpan};
use crate::harness::process::{spawn_taskfleet, WorkerProcess};
use crate::harness::receiver::{Endpoint, Hit};
use crate::harness::relay::webhook;
use crate::harness::TestApp;
use serde_json::{json, Value};
use std::time::Duration;

/// The caller's trace: W3C `traceparent` ids of a span that is not ours.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Export every 100 ms, so spans arrive within the test's waits.
const FAST_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

/// A relay config that may post to loopback, with quick retries.
fn relay_config(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("relay.toml");
    let toml = "[relay]\nallow = [\"127.0.0.1/32\"]\nattempt_timeout_s = 2\n\
                retry_schedule_s = [0, 1, 1, 1]\n";
    std::fs::write(&path, toml).unwrap();
    path.to_string_lossy().into_owned()
}

/// `taskfleet api` on a free port with `env`; returns it and its base URL.
async fn api_process(app: &TestApp, env: &[(&str, &str)]) -> (WorkerProcess, String) {
    let nats = app.nats.url();
    let mut all = vec![
        ("NATS_URL", nats.as_str()),
        ("TASKFLEET_API_KEY", ADMIN_KEY),
    ];
    all.extend_from_slice(env);
    let mut api = spawn_taskfleet(&["api", "--api-addr", "127.0.0.1:0"], &all);
    api.wait_log("API listening", Duration::from_secs(20)).await;
    let log = api.log();
    let addr = log
        .lines()
        .find(|l| l.contains("API listening"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .unwrap_or_else(|| panic!("no addr= in the API's log:\n{log}"))
        .to_string();
    (api, format!("http://{addr}"))
}

/// Creates an exec task (`true`) for anna notifying `hook`, with the caller's `traceparent`.
async fn create_traced(api: &str, hook: &Endpoint) -> String {
    let response = reqwest::Client::new()
        .post(format!("{api}/api/tasks"))
        .header("X-Bot-Key", ADMIN_KEY)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({
            "task_name": "traced", "assigned_to": "anna", "kind": "exec",
            "payload": {"command": "true"}, "notify": [webhook(&hook.url("/hook"))],
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().expect("an id").to_string()
}

/// The one span of the trace named `name`.
fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name:?}: {found:#?}");
    found[0]
}

/// The span id a webhook request's `traceparent` names, after checking its trace.
fn delivery_parent(hit: &Hit) -> String {
    let header = hit
        .header("traceparent")
        .unwrap_or_else(|| panic!("a {} webhook without traceparent", hit.kind()));
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE_ID, "01"),
        "{header}"
    );
    parts[2].to_string()
}

/// Whether the trace is complete: every stage exported, and the span of every webhook so far.
fn complete(spans: &[ReceivedSpan], hits: &[Hit]) -> bool {
    let ours: Vec<_> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let names = [
        "POST /api/tasks",
        "task.create",
        "task",
        "task.claim",
        "task.run",
        "relay.fanout",
        "relay.deliver",
    ];
    names.iter().all(|n| ours.iter().any(|s| s.name == *n))
        && hits.iter().all(|h| {
            let parent = h.header("traceparent").and_then(|t| t.split('-').nth(2));
            ours.iter().any(|s| Some(s.span_id.as_str()) == parent)
        })
}

/// SIGTERM, then a clean exit whose log shows no panic and no failed exporter shutdown.
async fn stops_cleanly(process: &mut WorkerProcess, what: &str) {
    process.signal(libc::SIGTERM);
    let exit = process.wait_exit(Duration::from_secs(15)).await;
    let log = process.log();
    assert!(exit.success(), "{what}: {exit:?}\n{log}");
    assert!(!log.contains("panicked"), "{what}:\n{log}");
    assert!(!log.contains("trace exporter shutdown"), "{what}:\n{log}");
    assert!(
        log.contains("exporting traces over OTLP/HTTP"),
        "{what}:\n{log}"
    );
}

#[tokio::test]
async fn one_tasks_create_claim_run_and_deliveries_reach_a_collector_as_one_trace_continuing_the_callers_traceparent(
) {
    // Arrange: a collector, a webhook receiver, and the three binaries configured by the
    // standard variables only (each names its service another way).
    let app = TestApp::spawn().await;
    let (collector, hook) = (Collector::start().await, Endpoint::start().await);
    let traces = collector.traces_url();
    let signal_endpoint = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str());
    let (mut api, api_url) = api_process(
        &app,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base()),
            FAST_EXPORT,
        ],
    )
    .await;
    let worker_env = [
        signal_endpoint,
        FAST_EXPORT,
        ("OTEL_SERVICE_NAME", "taskfleet-worker"),
    ];
    let mut worker = app.worker_process("anna", 1, &worker_env).await;
    let (dir, nats) = (tempfile::tempdir().unwrap(), app.nats.url());
    let config = relay_config(&dir);
    let relay_env = [
        ("NATS_URL", nats.as_str()),
        signal_endpoint,
        FAST_EXPORT,
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=taskfleet-relay"),
    ];
    let mut relay = spawn_taskfleet(&["relay", "--config", &config], &relay_env);
    relay
        .wait_log("relay running", Duration::from_secs(20))
        .await;

    // Act
    let id = create_traced(&api_url, &hook).await;
    hook.wait_until("the completed webhook", Duration::from_secs(20), |h| {
        h.kind() == "task.completed"
    })
    .await;
    let hits = hook.hits();
    let spans = collector
        .wait_until("the whole trace", Duration::from_secs(20), |s| {
            complete(s, &hits)
        })
        .await;

    // Assert: create, claim and run, each a child of the one before, in the caller's trace.
    let ours: Vec<ReceivedSpan> = spans
        .into_iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .collect();
    eprintln!(
        "{} spans in the trace, {} webhooks: {:?}",
        ours.len(),
        hits.len(),
        ours.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
    );
    let request = one(&ours, "POST /api/tasks");
    assert_eq!(request.parent_span_id.as_deref(), Some(CALLER_SPAN));
    assert_eq!(request.service, "taskfleet", "the default service name");
    assert_eq!(request.attributes["http.route"], "/api/tasks");
    assert_eq!(request.attributes["http.response.status_code"], "201");
    let create = one(&ours, "task.create");
    assert_eq!(create.parent_span_id.as_ref(), Some(&request.span_id));
    assert_eq!(create.attributes["task_id"], id);
    let task = one(&ours, "task");
    assert_eq!(
        task.parent_span_id.as_ref(),
        Some(&create.span_id),
        "queued in the create"
    );
    assert_eq!(task.service, "taskfleet-worker");
    for name in ["task.claim", "task.run"] {
        let s = one(&ours, name);
        assert_eq!(s.parent_span_id.as_ref(), Some(&task.span_id), "{name}");
    }
    assert_eq!(one(&ours, "task.run").attributes["task_id"], id);

    // Assert: every fan-out continues a span of the trace, every delivery a fan-out, and each
    // webhook request names its delivery's span.
    let ids: Vec<&String> = ours.iter().map(|s| &s.span_id).collect();
    let fanouts: Vec<_> = ours.iter().filter(|s| s.name == "relay.fanout").collect();
    for f in &fanouts {
        assert!(ids.contains(&f.parent_span_id.as_ref().unwrap()), "{f:#?}");
        assert_eq!(f.service, "taskfleet-relay");
    }
    let deliveries: Vec<_> = ours.iter().filter(|s| s.name == "relay.deliver").collect();
    for d in &deliveries {
        let parent = d.parent_span_id.as_ref().unwrap();
        assert!(fanouts.iter().any(|f| &f.span_id == parent), "{d:#?}");
    }
    assert!(
        hits.len() >= 3,
        "created, started, completed at least: {}",
        hits.len()
    );
    for hit in &hits {
        let parent = delivery_parent(hit);
        let d = deliveries.iter().find(|d| d.span_id == parent);
        let d = d.unwrap_or_else(|| panic!("no delivery span {parent} for {}", hit.kind()));
        assert_eq!(d.attributes["http.response.status_code"], "200");
        assert_eq!(d.attributes["delivery"], hit.webhook_id());
    }
    assert_eq!(collector.undecodable(), 0);
    assert!(collector
        .content_types()
        .iter()
        .all(|c| c == "application/x-protobuf"));

    // Assert: each process flushes and stops its exporter without an error.
    stops_cleanly(&mut api, "api").await;
    stops_cleanly(&mut worker, "worker").await;
    stops_cleanly(&mut relay, "relay").await;
}

#[tokio::test]
async fn with_otel_traces_exporter_none_nothing_is_exported_and_webhooks_carry_no_traceparent() {
    // Arrange: an endpoint is set, but the exporter variable says none.
    let app = TestApp::spawn().await;
    let (collector, hook) = (Collector::start().await, Endpoint::start().await);
    let off = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base()),
        ("OTEL_TRACES_EXPORTER", "none"),
        FAST_EXPORT,
    ];
    let (api, api_url) = api_process(&app, &off).await;
    let worker = app.worker_process("anna", 1, &off).await;
    let (dir, nats) = (tempfile::tempdir().unwrap(), app.nats.url());
    let config = relay_config(&dir);
    let mut relay_env = vec![("NATS_URL", nats.as_str())];
    relay_env.extend_from_slice(&off);
    let mut relay = spawn_taskfleet(&["relay", "--config", &config], &relay_env);
    relay
        .wait_log("relay running", Duration::from_secs(20))
        .await;

    // Act
    create_traced(&api_url, &hook).await;
    let hits = hook
        .wait_until("the completed webhook", Duration::from_secs(20), |h| {
            h.kind() == "task.completed"
        })
        .await;

    // Assert: by the last webhook, many export periods (100 ms) went by; none sent anything.
    assert!(hits.iter().all(|h| h.header("traceparent").is_none()));
    for (what, log) in [
        ("api", api.log()),
        ("worker", worker.log()),
        ("relay", relay.log()),
    ] {
        assert!(!log.contains("exporting traces"), "{what}:\n{log}");
    }
    assert!(collector.spans().is_empty(), "{:#?}", collector.spans());
    assert!(collector.content_types().is_empty());
}

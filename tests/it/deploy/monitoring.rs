//! `deploy/grafana/taskfleet.json` and `deploy/prometheus/alerts.yaml` against a live API: every
//! metric they query is one `GET /metrics` exports (with the right type for `_total` and
//! `_bucket`), and the backlog gauges the alerts read (oldest pending age, stalled tasks, dead
//! deliveries) show what the fleet holds. promtool checks the rules themselves
//! (`make alerts-check`).

use super::support::{deploy, read};
use crate::harness::app::{relay_settings, worker_settings};
use crate::harness::receiver::{Answer, Endpoint};
use crate::harness::relay::webhook;
use crate::harness::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// Every `taskfleet_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("taskfleet_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The PromQL of every dashboard panel and variable.
fn dashboard_queries() -> Vec<String> {
    let dash: Value = serde_json::from_str(&read(&deploy("grafana/taskfleet.json"))).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("an expr").to_string());
        }
    }
    for var in dash["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = var["definition"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The expression of every alerting rule.
fn alert_exprs() -> Vec<String> {
    let rules: serde_norway::Value =
        serde_norway::from_str(&read(&deploy("prometheus/alerts.yaml"))).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            assert!(rule["alert"].as_str().is_some(), "{rule:?}");
            out.push(rule["expr"].as_str().expect("an expr").to_string());
        }
    }
    out
}

/// `GET /metrics` of the app.
async fn scrape(app: &TestApp) -> String {
    let r = app.http.get(format!("{}/metrics", app.url)).send().await;
    let r = r.expect("scrape");
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

/// The type a metric family is declared with (`# TYPE <family> <type>`).
fn declared_type<'a>(metrics: &'a str, family: &str) -> Option<&'a str> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("# TYPE ")?;
        let (name, kind) = rest.split_once(' ')?;
        (name == family).then_some(kind)
    })
}

/// The value of the sample `line_start` (`name{labels}`), if the scrape has it.
fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

/// Whether `src/metrics.rs` registers `family` (`taskfleet_<name>`): for the families a short
/// test leaves without samples (prometheus-client leaves those out of `/metrics`).
fn registered(family: &str) -> bool {
    let source = read(&super::support::root().join("src/metrics.rs"));
    let name = family.trim_start_matches("taskfleet_");
    source.contains(&format!("\"{name}\""))
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_metrics_the_api_exports() {
    // Arrange: a worker online, a task pending, one finished through the API, a dead delivery.
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let pending = json!({"task_name": "waits", "assigned_to": "cc"});
    app.admin.create_task(&pending).await.expect("created");
    let done = json!({"task_name": "done", "assigned_to": "trump"});
    let done = app.admin.create_task(&done).await.expect("created");
    app.act(&done, "start").await;
    app.act(&done, "complete").await;
    let metrics = eventually("a worker online", Duration::from_secs(15), || async {
        let m = scrape(&app).await;
        m.contains("taskfleet_workers_online{").then_some(m)
    })
    .await;
    let queries: Vec<String> = dashboard_queries()
        .into_iter()
        .chain(alert_exprs())
        .collect();

    // Act
    let names: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();

    // Assert
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let (family, kind) = if let Some(f) = name.strip_suffix("_total") {
            (f, Some("counter"))
        } else if let Some(f) = name.strip_suffix("_bucket") {
            (f, Some("histogram"))
        } else if let Some(f) = name.strip_suffix("_count") {
            (f, Some("histogram"))
        } else {
            (name.as_str(), None)
        };
        match (declared_type(&metrics, family), kind) {
            (Some(declared), Some(kind)) => assert_eq!(declared, kind, "{name}"),
            (Some(_), None) => {}
            (None, _) => assert!(
                registered(family),
                "{name} is queried but no metric {family} exists:\n{metrics}"
            ),
        }
    }
}

#[tokio::test]
async fn the_dashboard_has_unique_panel_ids_within_24_columns_and_a_data_source_variable() {
    // Arrange
    let dash: Value = serde_json::from_str(&read(&deploy("grafana/taskfleet.json"))).unwrap();

    // Act
    let panels = dash["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();

    // Assert
    assert_eq!(dash["uid"], "taskfleet");
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        let g = &p["gridPos"];
        let right = g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap();
        assert!(right <= 24, "{} overflows: {g}", p["title"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
}

#[tokio::test]
async fn the_backlog_gauges_show_the_oldest_pending_age_stalled_tasks_and_dead_deliveries() {
    // Arrange: running tasks count as stalled after 1 s; a webhook that refuses (400: dead).
    let app = TestApp::spawn_with(|cfg| cfg.relay.stall_after_s = 1).await;
    let hook = Endpoint::start().await;
    hook.answer_from_now_on(Answer::status(400));
    let _relay = app.relay(relay_settings()).await;
    let url = hook.url("/hook");

    // Act: one task waiting (P2), one started and then silent (P1), one with a dead webhook.
    let waiting = json!({"task_name": "waits", "assigned_to": "cc", "priority": "P2"});
    app.admin.create_task(&waiting).await.expect("created");
    let silent = json!({"task_name": "silent", "assigned_to": "anna", "priority": "P1"});
    let silent = app.admin.create_task(&silent).await.expect("created");
    app.act(&silent, "start").await;
    let dead = json!({"task_name": "dead", "assigned_to": "trump", "notify": [webhook(&url)]});
    app.admin.create_task(&dead).await.expect("created");
    let metrics = eventually("the backlog gauges", Duration::from_secs(15), || async {
        let m = scrape(&app).await;
        let stalled = r#"taskfleet_tasks_stalled{assignee="anna",priority="P1"}"#;
        let dead = r#"taskfleet_delivery_records{status="dead"}"#;
        let ok = sample(&m, stalled) == Some(1.0) && sample(&m, dead).is_some_and(|n| n >= 1.0);
        ok.then_some(m)
    })
    .await;

    // Assert
    let age = r#"taskfleet_oldest_pending_age_seconds{assignee="cc",priority="P2"}"#;
    let age = sample(&metrics, age).unwrap_or_else(|| panic!("no {age}:\n{metrics}"));
    assert!(age > 0.5 && age < 60.0, "{age}");
    let started = r#"taskfleet_oldest_pending_age_seconds{assignee="anna",priority="P1"}"#;
    assert_eq!(
        sample(&metrics, started),
        None,
        "a running task is not pending"
    );
    let cc = r#"taskfleet_tasks_stalled{assignee="cc",priority="P2"}"#;
    assert_eq!(
        sample(&metrics, cc),
        Some(0.0),
        "a pending task is not stalled"
    );
}

//! Cron schedules (issue 12, item 2) against a real nats-server: the API round trip, bad input,
//! ticks held by the broker and created once per tick by however many API replicas, overlap,
//! pause, the config's `[[schedules]]`, and a tick missed while every API was down.

use crate::harness::app::test_config;
use crate::harness::{eventually, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A schedule body creating a manual task for `assignee` on `cron`.
fn body(name: &str, cron: &str, assignee: &str) -> Value {
    json!({
        "name": name,
        "cron": cron,
        "timezone": "UTC",
        "task": {"task_name": format!("tick of {name}"), "assigned_to": assignee},
    })
}

/// The ids of `assignee`'s tasks.
async fn task_ids(app: &TestApp, assignee: &str) -> Vec<String> {
    let q = [
        ("assigned_to", assignee.to_string()),
        ("limit", "1000".into()),
    ];
    let tasks = app.admin.list_tasks(&q).await.expect("list tasks");
    tasks.into_iter().map(|t| t.id.to_string()).collect()
}

#[tokio::test]
async fn a_schedule_round_trips_through_create_list_get_pause_resume_and_trigger() {
    let app = TestApp::spawn().await;
    let mut daily = body("berlin-morning", "0 9 * * *", "anna");
    daily["timezone"] = json!("Europe/Berlin");

    let (status, created) = app
        .call(app.req(Method::POST, "/api/schedules").json(&daily))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["generation"], 1);
    assert_eq!(created["paused"], false);
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(created["next_fire_time"].clone()).expect("a next fire time");
    let berlin = next.with_timezone(&chrono_tz::Europe::Berlin);
    assert_eq!(berlin.format("%H:%M:%S").to_string(), "09:00:00");
    let (again, _) = app
        .call(app.req(Method::POST, "/api/schedules").json(&daily))
        .await;
    assert_eq!(again, StatusCode::CONFLICT);

    let listed = app.admin.schedules().await.expect("list");
    assert_eq!(listed.len(), 1);
    let paused = app
        .admin
        .schedule_action("berlin-morning", "pause")
        .await
        .unwrap();
    assert!(paused.schedule.paused && paused.schedule.next_fire_time.is_none());
    let resumed = app
        .admin
        .schedule_action("berlin-morning", "resume")
        .await
        .unwrap();
    assert_eq!(resumed.schedule.generation, 2);
    assert_eq!(resumed.schedule.next_fire_time, Some(next));

    let task = app
        .admin
        .trigger_schedule("berlin-morning")
        .await
        .expect("trigger");
    assert_eq!(task.task_name, "tick of berlin-morning");
    let after = app
        .admin
        .schedule(Method::GET, "berlin-morning", None)
        .await
        .unwrap();
    assert_eq!(
        after.schedule.next_fire_time,
        Some(next),
        "a trigger moves no tick"
    );
    assert_eq!(after.schedule.last_task_id.as_ref(), Some(&task.id));
}

#[tokio::test]
async fn a_schedule_is_replaced_and_deleted_and_unknown_names_are_404s() {
    let app = TestApp::spawn().await;
    let mut daily = body("berlin-morning", "0 9 * * *", "anna");
    daily["timezone"] = json!("Europe/Berlin");
    app.admin.create_schedule(&daily).await.expect("create");

    let mut changed = daily.clone();
    changed["cron"] = json!("30 9 * * 1-5");
    let replaced = app
        .admin
        .schedule(Method::PUT, "berlin-morning", Some(&changed))
        .await
        .unwrap();
    assert_eq!(replaced.schedule.cron, "30 9 * * 1-5");
    assert_eq!(replaced.schedule.generation, 2);
    // The broker holds one tick per schedule: arming again replaced the earlier one.
    let js = app.jetstream().await;
    let tasks = js.get_stream("TASKS").await.unwrap();
    let held = tasks.info_with_subjects("schedules.>").await.unwrap();
    let held: Vec<_> = futures::TryStreamExt::try_collect(held).await.unwrap();
    assert_eq!(held, vec![("schedules.berlin-morning.next".to_string(), 1)]);

    app.admin
        .schedule(Method::DELETE, "berlin-morning", None)
        .await
        .expect("delete");
    let (gone, err) = app
        .call(app.req(Method::GET, "/api/schedules/berlin-morning"))
        .await;
    assert_eq!(gone, StatusCode::NOT_FOUND, "{err}");
    for path in [
        "/api/schedules/nope/pause",
        "/api/schedules/Not%20A%20Name/trigger",
    ] {
        let (status, _) = app.call(app.req(Method::POST, path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let mut unnamed = daily.clone();
    unnamed.as_object_mut().unwrap().remove("name");
    let (status, _) = app
        .call(app.req(Method::PUT, "/api/schedules/nope").json(&unnamed))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_schedules_are_422s_naming_the_field_and_write_nothing() {
    let app = TestApp::spawn().await;
    let good = body("good", "@every 1h", "anna");
    let mut cases = Vec::new();
    for (field, value, named) in [
        ("cron", json!("61 * * * *"), "cron"),
        ("cron", json!("@every 0s"), "cron"),
        ("timezone", json!("Mars/Olympus"), "timezone"),
        ("name", json!("Not A Name"), "name"),
        ("name", json!("x".repeat(65)), "name"),
        ("task", json!({"assigned_to": "anna"}), "task"),
        (
            "task",
            json!({"task_name": " ", "assigned_to": "anna"}),
            "task",
        ),
        (
            "task",
            json!({"task_name": "x", "assigned_to": "Anna"}),
            "task",
        ),
        (
            "task",
            json!({"task_name": "x", "assigned_to": "anna", "type": "exec"}),
            "task.type",
        ),
        ("overlap", json!("sometimes"), "overlap"),
    ] {
        let mut b = good.clone();
        b[field] = value;
        cases.push((b, named));
    }
    let mut unknown = good.clone();
    unknown["every"] = json!("1h");
    cases.push((unknown, "every"));

    for (b, named) in cases {
        let (status, answer) = app
            .call(app.req(Method::POST, "/api/schedules").json(&b))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{b} → {answer}");
        assert_eq!(answer["error"]["code"], "validation_failed");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{message:?} should name {named}");
    }
    assert!(app.admin.schedules().await.unwrap().is_empty());
    let js = app.jetstream().await;
    let mut tasks = js.get_stream("TASKS").await.unwrap();
    assert_eq!(
        tasks.info().await.unwrap().state.messages,
        0,
        "no tick armed"
    );
}

#[tokio::test]
async fn a_put_naming_another_schedule_and_a_scoped_key_are_refused() {
    let app = TestApp::spawn().await;
    let good = body("good", "@every 1h", "anna");
    let (status, _) = app
        .call(app.req(Method::POST, "/api/schedules").json(&good))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut renamed = good.clone();
    renamed["name"] = json!("other");
    let (status, answer) = app
        .call(app.req(Method::PUT, "/api/schedules/good").json(&renamed))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let (status, _) = app
        .call(
            app.http
                .post(format!("{}/api/schedules", app.url))
                .header("X-Bot-Key", crate::harness::app::ANNA_KEY)
                .json(&body("scoped", "@every 1h", "anna")),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "schedules need the admin key"
    );
}

#[tokio::test]
async fn every_2s_on_two_api_processes_for_20s_creates_10_tasks_once_per_tick() {
    let app = TestApp::spawn().await;
    let (second, stop_second) = app.another_api(|_| {}).await;
    let created = second
        .create_schedule(&body("pulse", "@every 2s", "ticks"))
        .await
        .expect("create");
    let started = created.schedule.created_time;

    tokio::time::sleep(Duration::from_secs(20)).await;
    app.admin.schedule_action("pulse", "pause").await.unwrap();
    let window_end = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_second.cancel();

    let ids = task_ids(&app, "ticks").await;
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "duplicates in {ids:?}");
    let expected = (window_end - started).num_seconds() / 2;
    let n = ids.len() as i64;
    assert!(
        (expected - 1..=expected + 1).contains(&n),
        "{n} tasks for {expected} ticks: {ids:?}"
    );
    for id in &ids {
        assert!(
            id.starts_with("pulse-") && id.ends_with('Z'),
            "{id} is a tick id"
        );
    }
    let s = app
        .admin
        .schedule(Method::GET, "pulse", None)
        .await
        .unwrap();
    assert_eq!(s.schedule.created as i64, n);
    assert_eq!(s.schedule.missed + s.schedule.skipped, 0);
}

#[tokio::test]
async fn overlap_skip_creates_no_task_while_the_previous_one_is_pending() {
    let app = TestApp::spawn().await;
    let mut b = body("one-at-a-time", "@every 1s", "skipper");
    b["overlap"] = json!("skip");
    app.admin.create_schedule(&b).await.expect("create");

    let s = eventually("two ticks skipped", Duration::from_secs(10), || async {
        let s = app
            .admin
            .schedule(Method::GET, "one-at-a-time", None)
            .await
            .ok()?;
        (s.schedule.skipped >= 2).then_some(s)
    })
    .await;
    app.admin
        .schedule_action("one-at-a-time", "pause")
        .await
        .unwrap();
    assert_eq!(s.schedule.created, 1);
    assert_eq!(
        s.last_task_status,
        Some(taskfleet::domain::TaskStatus::Pending)
    );
    assert_eq!(task_ids(&app, "skipper").await.len(), 1);

    // Once the task finished, the next tick creates one again.
    let first = s.schedule.last_task_id.clone().unwrap().to_string();
    app.admin.action(&first, "cancel", None).await.unwrap();
    app.admin
        .schedule_action("one-at-a-time", "resume")
        .await
        .unwrap();
    eventually("a second task", Duration::from_secs(10), || async {
        (task_ids(&app, "skipper").await.len() >= 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_paused_schedule_creates_nothing() {
    let app = TestApp::spawn().await;
    let mut b = body("quiet", "@every 1s", "nobody");
    b["paused"] = json!(true);
    let created = app.admin.create_schedule(&b).await.expect("create");
    assert!(created.schedule.next_fire_time.is_none());
    app.admin
        .create_schedule(&body("loud", "@every 1s", "somebody"))
        .await
        .unwrap();
    eventually(
        "the active schedule to tick twice",
        Duration::from_secs(10),
        || async { (task_ids(&app, "somebody").await.len() >= 2).then_some(()) },
    )
    .await;
    app.admin.schedule_action("loud", "pause").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_pause = task_ids(&app, "somebody").await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(task_ids(&app, "nobody").await.is_empty());
    assert_eq!(task_ids(&app, "somebody").await.len(), after_pause);
}

#[tokio::test]
async fn a_config_schedule_appears_at_start_up_and_is_applied_idempotently() {
    let spec: taskfleet::config::ScheduleConfig = serde_json::from_value(json!({
        "name": "nightly-report",
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "task": {"task_name": "write the report", "assigned_to": "anna", "priority": "P2"},
        "overlap": "skip",
    }))
    .unwrap();
    let configured = spec.clone();
    let app = TestApp::spawn_with(move |cfg| cfg.schedules = vec![configured]).await;
    let s = eventually("the config's schedule", Duration::from_secs(10), || async {
        app.admin
            .schedule(Method::GET, "nightly-report", None)
            .await
            .ok()
    })
    .await;
    assert_eq!(s.schedule.generation, 1);
    assert!(s.schedule.next_fire_time.is_some());

    // A second API with the same config changes nothing; one with a changed entry replaces it.
    let same = spec.clone();
    let (_, stop) = app.another_api(move |cfg| cfg.schedules = vec![same]).await;
    stop.cancel();
    let unchanged = app
        .admin
        .schedule(Method::GET, "nightly-report", None)
        .await
        .unwrap();
    assert_eq!(unchanged.schedule.generation, 1);
    let mut changed = spec;
    changed.cron = "0 3 * * *".into();
    let (_, stop) = app
        .another_api(move |cfg| cfg.schedules = vec![changed])
        .await;
    let s = eventually("the changed entry", Duration::from_secs(10), || async {
        let s = app
            .admin
            .schedule(Method::GET, "nightly-report", None)
            .await
            .ok()?;
        (s.schedule.cron == "0 3 * * *").then_some(s)
    })
    .await;
    stop.cancel();
    assert_eq!(s.schedule.generation, 2);
}

#[tokio::test]
async fn a_tick_missed_while_every_api_was_down_is_created_once_at_start_up() {
    let app = TestApp::spawn().await;
    app.admin
        .create_schedule(&body("hourly", "@every 1h", "late"))
        .await
        .unwrap();
    // As if the fleet was down when the tick fired and the tick was lost: the record says a
    // tick was due 10 s ago and the broker holds none.
    let js = app.jetstream().await;
    let kv = js.get_key_value("taskfleet_schedules").await.unwrap();
    let entry = kv.entry("hourly").await.unwrap().unwrap();
    let mut record: Value = serde_json::from_slice(&entry.value).unwrap();
    let due = chrono::Utc::now() - chrono::TimeDelta::seconds(10);
    let due = chrono::DateTime::from_timestamp(due.timestamp(), 0).unwrap();
    record["next_fire_time"] = json!(due);
    kv.update(
        "hourly",
        serde_json::to_vec(&record).unwrap().into(),
        entry.revision,
    )
    .await
    .unwrap();
    let tasks = js.get_stream("TASKS").await.unwrap();
    tasks.purge().filter("schedules.hourly.next").await.unwrap();

    // A new API process checks every schedule at start.
    let (_, stop) = app.another_api(|_| {}).await;
    let expected = taskfleet::domain::cron::tick_task_id("hourly", due).to_string();
    eventually(
        "the missed tick's task",
        Duration::from_secs(10),
        || async {
            task_ids(&app, "late")
                .await
                .contains(&expected)
                .then_some(())
        },
    )
    .await;
    stop.cancel();
    let s = app
        .admin
        .schedule(Method::GET, "hourly", None)
        .await
        .unwrap();
    assert_eq!(s.schedule.created, 1);
    assert_eq!(task_ids(&app, "late").await, vec![expected]);
    assert!(s.schedule.next_fire_time.unwrap() > chrono::Utc::now());
}

#[tokio::test]
async fn a_three_node_cluster_with_an_api_on_two_nodes_creates_one_task_per_tick() {
    use crate::harness::cluster::{ClusterApp, NatsCluster};
    let cluster = NatsCluster::start(3).await;
    let first_url = cluster.url(2);
    let app = ClusterApp::spawn(cluster, &first_url).await;
    let mut cfg = test_config(&app.cluster.url(0));
    cfg.nats.replicas = 3;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = CancellationToken::new();
    let (t, nats_url) = (token.clone(), app.cluster.url(0));
    tokio::spawn(async move {
        let key = cfg.api.admin_key.clone();
        taskfleet::serve::run_api(&cfg, &nats_url, listener, key.as_ref(), t).await
    });
    let created = app
        .admin
        .create_schedule(&body("cluster-pulse", "@every 2s", "clustered"))
        .await
        .expect("create");

    tokio::time::sleep(Duration::from_secs(10)).await;
    app.admin
        .schedule_action("cluster-pulse", "pause")
        .await
        .unwrap();
    let window = (chrono::Utc::now() - created.schedule.created_time).num_seconds() / 2;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();

    let q = [
        ("assigned_to", "clustered".to_string()),
        ("limit", "1000".into()),
    ];
    let ids: Vec<String> = app
        .admin
        .list_tasks(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "duplicates in {ids:?}");
    let n = ids.len() as i64;
    assert!(
        (window - 1..=window + 1).contains(&n),
        "{n} tasks for {window} ticks: {ids:?}"
    );
}

#[tokio::test]
async fn a_schedule_deleted_and_created_again_ticks_again() {
    let app = TestApp::spawn().await;
    let b = body("again", "@every 1s", "again");
    app.admin.create_schedule(&b).await.unwrap();
    eventually("a first tick", Duration::from_secs(10), || async {
        (!task_ids(&app, "again").await.is_empty()).then_some(())
    })
    .await;
    app.admin
        .schedule(Method::DELETE, "again", None)
        .await
        .unwrap();
    let before = task_ids(&app, "again").await.len();
    app.admin.create_schedule(&b).await.unwrap();
    eventually(
        "a tick of the new schedule",
        Duration::from_secs(10),
        || async { (task_ids(&app, "again").await.len() > before + 1).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn after_a_long_outage_only_the_latest_due_tick_is_created_and_the_rest_are_missed() {
    let app = TestApp::spawn().await;
    app.admin
        .create_schedule(&body("minutely", "* * * * *", "outage"))
        .await
        .unwrap();
    // As if every API was down for five minutes: the record's next tick is 5 min old and the
    // broker holds none.
    let js = app.jetstream().await;
    let kv = js.get_key_value("taskfleet_schedules").await.unwrap();
    let entry = kv.entry("minutely").await.unwrap().unwrap();
    let mut record: Value = serde_json::from_slice(&entry.value).unwrap();
    let now = chrono::Utc::now();
    let minute = chrono::DateTime::from_timestamp(now.timestamp() / 60 * 60, 0).unwrap();
    let old = minute - chrono::TimeDelta::minutes(5);
    record["next_fire_time"] = json!(old);
    let value = serde_json::to_vec(&record).unwrap().into();
    kv.update("minutely", value, entry.revision).await.unwrap();
    let tasks = js.get_stream("TASKS").await.unwrap();
    tasks
        .purge()
        .filter("schedules.minutely.next")
        .await
        .unwrap();

    let (_, stop) = app.another_api(|_| {}).await;
    let created = eventually(
        "one task for the outage",
        Duration::from_secs(10),
        || async {
            let ids = task_ids(&app, "outage").await;
            (!ids.is_empty()).then_some(ids)
        },
    )
    .await;
    stop.cancel();
    let s = app
        .admin
        .schedule(Method::GET, "minutely", None)
        .await
        .unwrap();

    // The latest minute that was due (or the next, if the minute turned meanwhile), not the
    // five-minute-old one; the four or five in between counted as missed.
    let latest: Vec<String> = [minute, minute + chrono::TimeDelta::minutes(1)]
        .iter()
        .map(|t| taskfleet::domain::cron::tick_task_id("minutely", *t).to_string())
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(
        latest.contains(&created[0]),
        "{created:?} not in {latest:?}"
    );
    assert!((4..=6).contains(&s.schedule.missed), "{:?}", s.schedule);
    assert_eq!(s.schedule.created, 1);
}

//! The relay's fan-out: throttled heartbeats, stall detection, messages in both languages,
//! routes by assignee/priority/event, and push ingest to the chat destination.

use crate::harness::app::relay_settings;
use crate::harness::receiver::{Endpoint, Hit};
use crate::harness::relay::webhook;
use crate::harness::{eventually, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};
use taskfleet::config::{RelayConfig, RouteConfig};
use taskfleet::domain::{Assignee, EventKind, Priority};
use taskfleet::outbound::destination::Destination;
use taskfleet::text::message::Language;

fn chat(ep: &Endpoint) -> serde_json::Value {
    json!({"type": "chat", "url": ep.url("/api/push"), "session_id": "sess-1", "token": "tok-1"})
}

fn named_webhook(ep: &Endpoint) -> Destination {
    Destination::Webhook {
        url: ep.url("/hook"),
        secret: None,
        secret_env: None,
        events: vec![],
        headers: Default::default(),
        headers_env: Default::default(),
    }
}

fn message(h: &Hit) -> String {
    h.json()["data"]["event"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_burst_of_heartbeats_is_coalesced_to_the_first_and_the_latest_and_transitions_still_go() {
    // Arrange
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    let _relay = app
        .relay(RelayConfig {
            throttle_s: 2,
            ..relay_settings()
        })
        .await;
    let task = app
        .task_notifying("pulse", json!([webhook(&hook.url("/hook"))]))
        .await;
    let task = app.act(&task, "start").await;
    hook.wait_until("task.started", Duration::from_secs(10), |h| {
        h.kind() == "task.started"
    })
    .await;
    let service = app.task_service().await;

    // Act: ten heartbeats at once.
    let burst = Instant::now();
    for i in 1..=10 {
        app.heartbeat(&service, &task, &format!("beat {i}")).await;
    }
    hook.wait_until("the latest heartbeat", Duration::from_secs(10), |h| {
        message(h) == "beat 10"
    })
    .await;
    // More heartbeats inside the next window, then a transition right away.
    for i in 11..=13 {
        app.heartbeat(&service, &task, &format!("beat {i}")).await;
    }
    app.act(&task, "complete").await;
    hook.wait_until("task.completed", Duration::from_secs(10), |h| {
        h.kind() == "task.completed"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the window: nothing stale

    // Assert
    let hits = hook.hits();
    let beats: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.kind() == "task.heartbeat")
        .collect();
    assert_eq!(message(beats[0]), "beat 1");
    assert!(
        beats[0].at.duration_since(burst) < Duration::from_secs(1),
        "at once"
    );
    assert_eq!(message(beats[1]), "beat 10", "only the latest of the rest");
    let waited = beats[1].at.duration_since(beats[0].at);
    assert!(
        waited >= Duration::from_millis(1500),
        "after the window: {waited:?}"
    );
    assert!(
        beats.len() <= 3,
        "{:?}",
        beats.iter().map(|h| message(h)).collect::<Vec<_>>()
    );
    assert_eq!(
        hits.last().unwrap().kind(),
        "task.completed",
        "no heartbeat after it"
    );
}

#[tokio::test]
async fn a_quiet_running_task_gets_exactly_one_stalled_message_until_its_next_event() {
    // Arrange
    let app = TestApp::spawn().await;
    let ep = Endpoint::start().await;
    let _relay = app
        .relay(RelayConfig {
            stall_after_s: 1,
            ..relay_settings()
        })
        .await;
    let task = app.task_notifying("quiet", json!([chat(&ep)])).await;
    let task = app.act(&task, "start").await;
    let stuck = |h: &Hit| h.content().contains("may be stuck");

    // Act
    ep.wait_until("a stalled message", Duration::from_secs(10), stuck)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // still quiet: no second one
    let quiet = ep.hits();
    let service = app.task_service().await;
    app.heartbeat(&service, &task, "alive").await;
    let after = ep
        .wait_until("the heartbeat", Duration::from_secs(10), |h| {
            h.content().contains("alive")
        })
        .await;

    // Assert
    let contents: Vec<String> = quiet.iter().map(|h| h.content()).collect();
    assert_eq!(contents.len(), 2, "{contents:?}");
    assert_eq!(contents[0], "🚀 Started 【quiet】");
    assert_eq!(
        contents[1],
        "⚠️ 【quiet】 may be stuck (no update for 1 min)"
    );
    assert_eq!(after.last().unwrap().content(), "🔄 quiet (alive)");
}

#[tokio::test]
async fn after_the_next_event_a_new_silence_is_reported_again() {
    // Arrange
    let app = TestApp::spawn().await;
    let ep = Endpoint::start().await;
    let _relay = app
        .relay(RelayConfig {
            stall_after_s: 1,
            ..relay_settings()
        })
        .await;
    let task = app.task_notifying("quiet", json!([chat(&ep)])).await;
    let task = app.act(&task, "start").await;
    let stuck = |h: &Hit| h.content().contains("may be stuck");
    ep.wait_until("a first stalled message", Duration::from_secs(10), stuck)
        .await;

    // Act: one heartbeat clears it; then silence again.
    let service = app.task_service().await;
    app.heartbeat(&service, &task, "alive").await;
    let hits = eventually(
        "a second stalled message",
        Duration::from_secs(8),
        || async {
            let hits = ep.hits();
            (hits.iter().filter(|h| stuck(h)).count() >= 2).then_some(hits)
        },
    )
    .await;

    // Assert
    let contents: Vec<String> = hits.iter().map(|h| h.content()).collect();
    assert_eq!(contents.len(), 4, "{contents:?}");
    assert!(contents[2].contains("alive"), "{contents:?}");
}

async fn started_message(language: Language) -> Vec<String> {
    let app = TestApp::spawn().await;
    let ep = Endpoint::start().await;
    let _relay = app
        .relay(RelayConfig {
            language,
            ..relay_settings()
        })
        .await;
    let task = app.task_notifying("周报 weekly", json!([chat(&ep)])).await;
    app.act(&task, "start").await;
    app.admin
        .action(task.id.as_str(), "complete", Some(&json!({"result": "ok"})))
        .await
        .unwrap();
    let hits = ep.wait_for(2, Duration::from_secs(10)).await;
    hits.iter().map(|h| h.content()).collect()
}

#[tokio::test]
async fn messages_are_in_chinese_with_language_zh() {
    // Arrange, Act
    let contents = started_message(Language::Zh).await;

    // Assert
    assert_eq!(contents[0], "🚀 开始【周报 weekly】");
    assert!(
        contents[1].starts_with("🎉 【周报 weekly】完成!"),
        "{}",
        contents[1]
    );
}

#[tokio::test]
async fn messages_are_in_english_by_default() {
    // Arrange, Act
    let contents = started_message(RelayConfig::default().language).await;

    // Assert
    assert_eq!(contents[0], "🚀 Started 【周报 weekly】");
    assert!(
        contents[1].starts_with("🎉 【周报 weekly】 done!"),
        "{}",
        contents[1]
    );
}

#[tokio::test]
async fn routes_send_events_by_assignee_priority_and_event_type_each_once() {
    // Arrange
    let app = TestApp::spawn().await;
    let (ops, urgent, ends) = (
        Endpoint::start().await,
        Endpoint::start().await,
        Endpoint::start().await,
    );
    let mut settings = relay_settings();
    for (name, ep) in [("ops", &ops), ("urgent", &urgent), ("ends", &ends)] {
        settings.destinations.insert(name.into(), named_webhook(ep));
    }
    let route = |f: fn(&mut RouteConfig), dest: &str| {
        let mut r = RouteConfig {
            destinations: vec![dest.into()],
            ..Default::default()
        };
        f(&mut r);
        r
    };
    settings.routes = vec![
        route(
            |r| r.assignees = vec![Assignee::parse("anna").unwrap()],
            "ops",
        ),
        route(|r| r.priorities = vec![Priority::P0], "urgent"),
        route(
            |r| r.events = vec![EventKind::Completed, EventKind::Cancelled],
            "ends",
        ),
    ];
    let _relay = app.relay(settings).await;

    // Act: anna's P2 task (also notifying "ops" itself) completes; trump's P0 is cancelled.
    let anna = app
        .admin
        .create_task(
            &json!({"task_name": "a", "assigned_to": "anna", "priority": "P2",
            "notify": ["ops"]}),
        )
        .await
        .unwrap();
    let trump = app
        .admin
        .create_task(&json!({"task_name": "t", "assigned_to": "trump", "priority": "P0"}))
        .await
        .unwrap();
    app.act(&anna, "start").await;
    app.act(&anna, "complete").await;
    app.act(&trump, "cancel").await;
    ops.wait_for(3, Duration::from_secs(10)).await;
    urgent.wait_for(2, Duration::from_secs(10)).await;
    ends.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // nothing more arrives

    // Assert
    let seen = |ep: &Endpoint| -> Vec<(String, String)> {
        ep.hits()
            .iter()
            .map(|h| {
                let j = h.json();
                let name = j["data"]["task"]["task_name"].as_str().unwrap().to_string();
                (name, h.kind())
            })
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        seen(&ops),
        pairs(&[
            ("a", "task.created"),
            ("a", "task.started"),
            ("a", "task.completed")
        ])
    );
    assert_eq!(
        seen(&urgent),
        pairs(&[("t", "task.created"), ("t", "task.cancelled")])
    );
    let mut end_events = seen(&ends);
    end_events.sort();
    assert_eq!(
        end_events,
        pairs(&[("a", "task.completed"), ("t", "task.cancelled")])
    );
}

#[tokio::test]
async fn a_push_reaches_the_chat_destination_in_the_seed_000_shape() {
    // Arrange
    let ep = Endpoint::start().await;
    let app = TestApp::spawn_with(|cfg| cfg.relay.push_destination = Some("chat".into())).await;
    let mut settings = relay_settings();
    settings.destinations.insert(
        "chat".into(),
        Destination::Chat {
            url: ep.url("/api/push"),
            session_id: "sess-config".into(),
            token: Some("tok-push".into()),
            token_env: None,
        },
    );
    settings.push_destination = Some("chat".into());
    let _relay = app.relay(settings).await;

    // Act
    let (status, body) = app
        .call(app.req(Method::POST, "/api/push").json(&json!({
            "sessionId": "sess-42", "content": "hello from the bot 👋", "role": "assistant"
        })))
        .await;
    let hits = ep.wait_for(1, Duration::from_secs(10)).await;

    // Assert
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let hit = &hits[0];
    assert_eq!(hit.path, "/api/push");
    assert_eq!(hit.header("authorization"), Some("Bearer tok-push"));
    assert_eq!(
        hit.json(),
        json!({"sessionId": "sess-42", "content": "hello from the bot 👋", "role": "assistant"})
    );
    let id = body["id"].as_str().unwrap();
    let record = app.wait_delivered(id, Duration::from_secs(5)).await;
    assert_eq!(record["attempts"][0]["status"], 200);
}

#[tokio::test]
async fn a_notify_naming_a_destination_the_relay_lacks_leaves_a_dead_delivery_saying_so() {
    // Arrange: a relay with one named webhook, `hook`.
    let app = TestApp::spawn().await;
    let (hook, _relay) = app
        .relay_to_named_hook("hook", crate::harness::receiver::Answer::status(200))
        .await;

    // Act: a task notifying `hook` and a misspelt `hookk`.
    let task = app.task_notifying("typo", json!(["hook", "hookk"])).await;

    // Assert: `hook` gets the event; `hookk`'s delivery is listed dead with the reason, with no
    // request made for it.
    hook.wait_for(1, Duration::from_secs(20)).await;
    let dead = app
        .wait_deliveries("status=dead", 1, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record = &dead[0];
    assert_eq!(record["job"]["name"], "hookk");
    assert_eq!(record["job"]["event"]["task_id"], task.id.as_str());
    assert_eq!(record["job"]["event"]["type"], "created");
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no destination named \"hookk\""),
        "{reason}"
    );
    assert_eq!(record["attempts"].as_array().map(Vec::len), Some(0));
    assert_eq!(hook.hits().len(), 1);
}

#[tokio::test]
async fn a_dead_delivery_to_an_unknown_name_is_delivered_when_replayed_once_the_name_is_configured()
{
    // Arrange: a relay with `hook` only; a task notifying the misspelt `hookk` leaves a dead
    // delivery. Then that relay stops and one that has `hookk` starts.
    let app = TestApp::spawn().await;
    let (hook, first) = app
        .relay_to_named_hook("hook", crate::harness::receiver::Answer::status(200))
        .await;
    let task = app
        .task_notifying("late name", json!(["hook", "hookk"]))
        .await;
    hook.wait_for(1, Duration::from_secs(20)).await;
    let dead = app
        .wait_deliveries("status=dead", 1, Duration::from_secs(20))
        .await;
    let id = dead[0]["job"]["id"]
        .as_str()
        .expect("a delivery id")
        .to_string();
    first.stop().await;
    let hookk = Endpoint::start().await;
    let mut settings = crate::harness::relay::named_hook_settings("hook", hook.url("/hook"));
    let named = crate::harness::relay::named_hook_settings("hookk", hookk.url("/hookk"));
    settings.destinations.extend(named.destinations);
    let _second = app.relay(settings).await;

    // Act
    let (status, body) = app
        .call(app.req(Method::POST, &format!("/api/deliveries/{id}/replay")))
        .await;

    // Assert: `hookk` gets the task's `created` event under the delivery's id, and the record
    // says delivered.
    assert!(status.is_success(), "{status} {body}");
    let hits = hookk.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(hits[0].path, "/hookk");
    assert_eq!(hits[0].header("webhook-id"), Some(id.as_str()));
    assert_eq!(hits[0].json()["data"]["event"]["task_id"], task.id.as_str());
    assert_eq!(hits[0].json()["data"]["event"]["type"], "created");
    let record = app.wait_delivered(&id, Duration::from_secs(10)).await;
    assert_eq!(record["job"]["name"], "hookk");
}

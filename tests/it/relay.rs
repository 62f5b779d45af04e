//! The relay: task events delivered to webhooks and chat sessions.

use crate::harness::app::relay_settings;
use crate::harness::receiver::{Answer, Endpoint};
use crate::harness::relay::webhook;
use crate::harness::{eventually, TestApp};
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskfleet::outbound::signature::Signer;

/// A local HTTP receiver recording every request (headers, JSON body).
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    pub(crate) seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    /// Raw bodies, byte for byte, for signature checks.
    pub(crate) raw: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    pub(crate) async fn start() -> (String, Receiver) {
        let r = Receiver::default();
        let (seen, raw) = (r.seen.clone(), r.raw.clone());
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let (seen, raw) = (seen.clone(), raw.clone());
                async move {
                    raw.lock().unwrap().push(body.clone());
                    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    seen.lock().unwrap().push((headers, v));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, r)
    }

    /// Waits until at least `n` deliveries arrived; the `type` of each, in arrival order.
    pub(crate) async fn wait_types(&self, n: usize) -> Vec<String> {
        let what = format!("{n} deliveries");
        let seen = eventually(&what, Duration::from_secs(30), || async {
            let s = self.seen.lock().unwrap().clone();
            (s.len() >= n).then_some(s)
        })
        .await;
        seen.iter()
            .map(|(_, b)| b["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn a_tasks_webhook_gets_its_transitions_signed_and_in_order() {
    // Arrange
    let app = TestApp::spawn().await;
    let (url, receiver) = Receiver::start().await;
    let _relay = app.relay(relay_settings()).await;

    // Act
    let task = app
        .admin
        .create_task(&json!({
            "task_name": "deploy", "assigned_to": "anna",
            "notify": [{"type": "webhook", "url": url, "secret": SECRET}]
        }))
        .await
        .unwrap();
    let id = task.id.to_string();
    app.admin.action(&id, "start", None).await.unwrap();
    app.admin
        .action(&id, "complete", Some(&json!({"result": "done"})))
        .await
        .unwrap();
    let seen = eventually("three deliveries", Duration::from_secs(20), || async {
        let s = receiver.seen.lock().unwrap().clone();
        (s.len() >= 3).then_some(s)
    })
    .await;

    // Assert
    let types: Vec<&str> = seen
        .iter()
        .map(|(_, b)| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["task.created", "task.started", "task.completed"]);
    let signer = Signer::from_secret(SECRET).unwrap();
    let raw = receiver.raw.lock().unwrap().clone();
    for ((headers, body), raw) in seen.iter().zip(&raw) {
        let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_string();
        assert!(h("webhook-id").starts_with(body["data"]["event"]["id"].as_str().unwrap()));
        signer
            .verify(
                &h("webhook-id"),
                &h("webhook-timestamp"),
                raw.as_bytes(),
                &h("webhook-signature"),
            )
            .expect("the Standard Webhooks signature verifies");
    }
    assert_eq!(seen[2].1["data"]["task"]["result"], "done");
}

/// Standard Webhooks verification written from the spec, independent of the crate's `Signer`:
/// `v1,` + base64(HMAC-SHA256(base64decode(secret after `whsec_`), "id.timestamp.body")), any
/// one of the space-separated signatures matching.
fn standard_webhooks_verifies(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hmac::Mac as _;
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header.split(' ').any(|s| s == expected)
}

#[tokio::test]
async fn the_signature_verifies_with_the_standard_webhooks_algorithm() {
    // Arrange: the verifier reproduces the reference library's vectors first.
    let vectors: Value =
        serde_json::from_str(include_str!("../data/standard-webhooks-vectors.json")).unwrap();
    for v in vectors["vectors"].as_array().unwrap() {
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        let ts = v["webhook_timestamp"].to_string();
        assert!(standard_webhooks_verifies(
            &s("secret"),
            &s("webhook_id"),
            &ts,
            s("body").as_bytes(),
            &s("webhook_signature")
        ));
    }
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    let _relay = app.relay(relay_settings()).await;

    // Act
    let task = app
        .task_notifying(
            "sign me ✅",
            json!([{"type": "webhook", "url": hook.url("/hook"), "secret": SECRET}]),
        )
        .await;
    app.act(&task, "start").await;
    let hits = hook.wait_for(2, Duration::from_secs(15)).await;

    // Assert
    let now = chrono::Utc::now().timestamp();
    for hit in &hits {
        let (id, ts) = (hit.webhook_id(), hit.header("webhook-timestamp").unwrap());
        let sig = hit.header("webhook-signature").expect("signed");
        assert!(standard_webhooks_verifies(SECRET, &id, ts, &hit.raw, sig));
        assert!(
            (now - ts.parse::<i64>().unwrap()).abs() < 300,
            "fresh timestamp"
        );
        let mut tampered = hit.raw.to_vec();
        tampered.push(b' ');
        assert!(!standard_webhooks_verifies(SECRET, &id, ts, &tampered, sig));
        assert_eq!(
            hit.json()["id"],
            id.as_str(),
            "envelope id is the webhook-id"
        );
    }
    assert_ne!(hits[0].webhook_id(), hits[1].webhook_id());
}

#[tokio::test]
async fn a_webhook_answering_500_twice_then_200_gets_the_event_once_more_per_retry() {
    // Arrange
    let app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(500), Answer::status(500)]).await;
    let _relay = app.relay(relay_settings()).await;

    // Act
    let task = app
        .task_notifying("flaky", json!([webhook(&hook.url("/hook"))]))
        .await;
    let hits = hook.wait_for(3, Duration::from_secs(15)).await;
    let record = eventually(
        "the delivery to be delivered",
        Duration::from_secs(10),
        || async {
            let list = app.deliveries(&format!("task_id={}", task.id)).await;
            list.into_iter().find(|r| r["status"] == "delivered")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // no further attempt

    // Assert
    assert_eq!(
        hook.hits().len(),
        3,
        "one request per attempt, none after the 200"
    );
    let ids: Vec<String> = hits.iter().map(|h| h.webhook_id()).collect();
    assert!(ids.iter().all(|i| *i == ids[0] && !i.is_empty()), "{ids:?}");
    assert!(hits.iter().all(|h| h.kind() == "task.created"));
    let statuses: Vec<&Value> = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [&json!(500), &json!(500), &json!(200)]);
    assert_eq!(record["job"]["id"], ids[0].as_str());
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner_than_asked() {
    // Arrange: the schedule alone would retry after about 1 s.
    let app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(429).retry_after("3")]).await;
    let _relay = app.relay(relay_settings()).await;

    // Act
    let task = app
        .task_notifying("rate limited", json!([webhook(&hook.url("/hook"))]))
        .await;
    let hits = hook.wait_for(2, Duration::from_secs(15)).await;
    let record = eventually(
        "the delivery to be delivered",
        Duration::from_secs(10),
        || async {
            let list = app.deliveries(&format!("task_id={}", task.id)).await;
            list.into_iter().find(|r| r["status"] == "delivered")
        },
    )
    .await;

    // Assert
    let gap = hits[1].at.duration_since(hits[0].at);
    assert!(gap >= Duration::from_millis(2900), "retried after {gap:?}");
    assert_eq!(hits[0].webhook_id(), hits[1].webhook_id());
    let first = &record["attempts"][0];
    assert_eq!(first["status"], 429);
    let at = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    let planned = at(&first["next_attempt_time"]) - at(&first["time"]);
    assert!(planned >= chrono::Duration::seconds(3), "{planned:?}");
}

#[tokio::test]
async fn a_410_disables_the_destination_and_later_events_die_without_a_request() {
    // Arrange
    let app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(410).body("gone")]).await;
    let _relay = app.relay(relay_settings()).await;

    // Act
    let task = app
        .task_notifying("gone", json!([webhook(&hook.url("/hook"))]))
        .await;
    app.act(&task, "start").await;
    app.act(&task, "cancel").await;
    let query = format!("task_id={}&status=dead", task.id);
    let dead = app
        .wait_deliveries(&query, 3, Duration::from_secs(15))
        .await;

    // Assert
    assert_eq!(
        hook.hits().len(),
        1,
        "only the first event reached the receiver"
    );
    let key = dead[0]["job"]["key"].as_str().unwrap().to_string();
    let kv = app
        .jetstream()
        .await
        .get_key_value("relay_destinations")
        .await
        .unwrap();
    let state: Value = serde_json::from_slice(&kv.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(state["disabled"], true, "{state}");
    let by_kind = |k: &str| {
        dead.iter()
            .find(|r| r["job"]["event"]["type"] == k)
            .unwrap_or_else(|| panic!("no dead {k}: {dead:?}"))
    };
    let first = by_kind("created");
    assert_eq!(first["attempts"][0]["status"], 410);
    assert!(first["reason"].as_str().unwrap().contains("410"));
    for later in [by_kind("started"), by_kind("cancelled")] {
        assert_eq!(later["attempts"].as_array().unwrap().len(), 0, "{later}");
        assert!(later["reason"].as_str().unwrap().contains("disabled"));
    }
}

#[tokio::test]
async fn events_keep_their_order_while_an_earlier_one_is_retried() {
    // Arrange
    let app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(500), Answer::status(503)]).await;
    let _relay = app.relay(relay_settings()).await;

    // Act: started and completed happen while created is still failing.
    let task = app
        .task_notifying("ordered", json!([webhook(&hook.url("/hook"))]))
        .await;
    app.act(&task, "start").await;
    app.act(&task, "complete").await;
    let hits = hook
        .wait_until("task.completed", Duration::from_secs(15), |h| {
            h.kind() == "task.completed"
        })
        .await;

    // Assert
    let kinds: Vec<String> = hits.iter().map(|h| h.kind()).collect();
    assert_eq!(
        kinds,
        [
            "task.created",
            "task.created",
            "task.created",
            "task.started",
            "task.completed"
        ]
    );
}

#[tokio::test]
async fn replaying_a_delivery_to_a_disabled_destination_enables_it_and_delivers_it() {
    // Arrange: a 410 disables the destination; `started` then dies without a request.
    let app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(410).body("gone")]).await;
    let _relay = app.relay(relay_settings()).await;
    let task = app
        .task_notifying("back", json!([webhook(&hook.url("/hook"))]))
        .await;
    app.act(&task, "start").await;
    let query = format!("task_id={}&status=dead", task.id);
    let dead = app
        .wait_deliveries(&query, 2, Duration::from_secs(15))
        .await;
    let started = dead
        .iter()
        .find(|r| r["job"]["event"]["type"] == "started")
        .expect("a dead started delivery");
    let id = started["job"]["id"].as_str().unwrap().to_string();

    // Act: the receiver is back (it answers 200 now); replay the dead `started`.
    let replay = format!("/api/deliveries/{id}/replay");
    let (status, body) = app.call(app.req(reqwest::Method::POST, &replay)).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let hits = hook.wait_for(2, Duration::from_secs(10)).await;

    // Assert
    assert_eq!(hits[1].webhook_id(), id);
    let record = app.wait_delivered(&id, Duration::from_secs(10)).await;
    assert_eq!(record["attempts"].as_array().unwrap().len(), 1, "{record}");
    assert_eq!(record["attempts"][0]["status"], 200);
}

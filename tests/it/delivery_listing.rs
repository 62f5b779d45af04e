//! Delivery listings at the cost of a page: records keyed by status, destination and event, read
//! newest first with a cursor; a status change moves a record; a task's deliveries are read by
//! its events. Plus an opt-in measurement with a million records (`--ignored`).

use crate::harness::app::relay_settings;
use crate::harness::receiver::{Answer, Endpoint};
use crate::harness::relay::webhook;
use crate::harness::{eventually, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use taskfleet::bus::subjects;
use taskfleet::relay::job::{DeliveryJob, DeliveryRecord, DeliveryStatus};
use taskfleet::relay::store::{record_key, store_record};

/// A record of a delivery to the named webhook `name` (queue key `n_<name>`).
fn record(name: &str, status: DeliveryStatus, text: &str) -> DeliveryRecord {
    let key = format!("n_{name}");
    DeliveryRecord {
        job: DeliveryJob {
            id: format!("evt_{}.{key}", ulid::Ulid::new()),
            key,
            name: Some(name.into()),
            destination: None,
            event: None,
            task: None,
            text: text.into(),
            session_id: None,
            created_time: chrono::Utc::now(),
        },
        status,
        attempts: Vec::new(),
        reason: None,
        updated_time: chrono::Utc::now(),
    }
}

/// `GET /api/deliveries?<query>`: status, the records' ids, and the next cursor if any.
async fn page(app: &TestApp, query: &str) -> (StatusCode, Vec<String>, Option<String>, Value) {
    let r = app
        .req(Method::GET, &format!("/api/deliveries?{query}"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let header = |h: &str| r.headers().get(h).map(|v| v.to_str().unwrap().to_string());
    let (cursor, link) = (header("x-next-cursor"), header("link"));
    let body: Value = r.json().await.unwrap();
    let ids = body
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["job"]["id"].as_str().unwrap().into())
                .collect()
        })
        .unwrap_or_default();
    if let (Some(c), Some(l)) = (&cursor, &link) {
        assert!(l.contains(&format!("before={c}")), "{l}");
        assert!(l.ends_with("rel=\"next\""), "{l}");
    }
    (status, ids, cursor, body)
}

#[tokio::test]
async fn a_page_of_dead_records_among_many_delivered_comes_newest_first_and_pages_with_the_cursor()
{
    // Arrange: 150 dead records and 5 delivered ones to a rarely used webhook written first,
    // then 3,020 delivered ones with 20 more dead among them.
    let app = TestApp::spawn().await;
    let js = app.jetstream().await;
    let (mut dead, mut delivered, mut rare) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..3_175usize {
        let (name, status) = match n {
            0..150 => ("hook", DeliveryStatus::Dead),
            150..155 => ("rare", DeliveryStatus::Delivered),
            _ if n % 150 == 0 => ("hook", DeliveryStatus::Dead),
            _ => ("hook", DeliveryStatus::Delivered),
        };
        let r = record(name, status, "hello");
        store_record(&js, &r, None).await.unwrap();
        match (name, status) {
            (_, DeliveryStatus::Dead) => dead.push(r.job.id),
            ("rare", _) => rare.push(r.job.id),
            _ => delivered.push(r.job.id),
        }
    }
    let newest_first = |ids: &[String]| ids.iter().rev().cloned().collect::<Vec<String>>();
    let (dead, delivered, rare) = (
        newest_first(&dead),
        newest_first(&delivered),
        newest_first(&rare),
    );
    assert_eq!(dead.len(), 170);
    // The dead ones are listed from their copy, which follows the bucket within moments.
    eventually(
        "the dead copy to catch up",
        Duration::from_secs(5),
        || async {
            let (_, ids, _, _) = page(&app, "status=dead&limit=1").await;
            (ids == dead[..1]).then_some(())
        },
    )
    .await;

    // Act
    let (status, first, cursor, _) = page(&app, "status=dead&limit=100").await;
    let cursor = cursor.expect("a full page carries a cursor");
    let (_, second, last_cursor, _) =
        page(&app, &format!("status=dead&limit=100&before={cursor}")).await;
    let (_, by_name, _, _) = page(&app, "status=dead&destination=hook&limit=100").await;
    let (_, by_key, _, _) = page(&app, "status=dead&destination=n_hook&limit=100").await;
    let (_, ok, ok_cursor, _) = page(&app, "status=delivered&limit=100").await;
    let (_, ok_next, _, _) = page(
        &app,
        &format!("status=delivered&limit=100&before={}", ok_cursor.unwrap()),
    )
    .await;
    let (_, few, few_cursor, _) = page(&app, "status=delivered&destination=rare").await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first, dead[..100]);
    assert_eq!(second, dead[100..]);
    assert_eq!(last_cursor, None, "the last page has no cursor");
    assert_eq!(by_name, first);
    assert_eq!(by_key, first);
    assert_eq!(ok, delivered[..100]);
    assert_eq!(ok_next, delivered[100..200]);
    assert_eq!(few, rare, "found far back among the others");
    assert_eq!(few_cursor, None);
}

#[tokio::test]
async fn bad_cursors_statuses_destinations_and_task_ids_are_answered_400() {
    // Arrange
    let app = TestApp::spawn().await;

    for query in [
        "before=abc",
        "before=-1",
        "status=lost",
        "status=Dead",
        "destination=a.b",
        "destination=*",
        "task_id=a%20b",
    ] {
        // Act
        let (status, _, _, body) = page(&app, query).await;

        // Assert
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
    }
    let (status, body) = app
        .call(app.req(Method::POST, "/api/destinations/a.b/replay"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app
        .call(app.req(Method::GET, "/api/deliveries/evt_x.>"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_record_moved_from_pending_to_delivered_is_listed_under_delivered_only() {
    // Arrange: the webhook fails once, then accepts.
    let app = TestApp::spawn().await;
    let hook = Endpoint::scripted(vec![Answer::status(500)]).await;
    let _relay = app.relay(relay_settings()).await;
    let task = app
        .task_notifying("twice", json!([webhook(&hook.url("/hook"))]))
        .await;
    let of_task = format!("task_id={}", task.id);
    let pending = app
        .wait_deliveries(
            &format!("status=pending&{of_task}"),
            1,
            Duration::from_secs(10),
        )
        .await;
    let id = pending[0]["job"]["id"].as_str().unwrap().to_string();

    // Act: the retry succeeds.
    let delivered = app
        .wait_deliveries(
            &format!("status=delivered&{of_task}"),
            1,
            Duration::from_secs(10),
        )
        .await;

    // Assert
    assert_eq!(delivered[0]["job"]["id"], id.as_str());
    assert_eq!(delivered[0]["attempts"].as_array().unwrap().len(), 2);
    let listed = |list: &[Value]| list.iter().any(|r| r["job"]["id"] == id.as_str());
    assert!(listed(&app.deliveries("status=delivered").await));
    assert!(!listed(
        &app.deliveries(&format!("status=pending&{of_task}")).await
    ));
    // The copy of the pending records follows the bucket within moments.
    eventually(
        "the pending copy to drop it",
        Duration::from_secs(5),
        || async { (!listed(&app.deliveries("status=pending").await)).then_some(()) },
    )
    .await;
    assert_eq!(
        app.deliveries(&of_task)
            .await
            .iter()
            .filter(|r| r["job"]["id"] == id.as_str())
            .count(),
        1,
        "one live record"
    );
    let (_, one) = app
        .call(app.req(Method::GET, &format!("/api/deliveries/{id}")))
        .await;
    assert_eq!(one["status"], "delivered");
    let job: DeliveryJob = serde_json::from_value(one["job"].clone()).unwrap();
    let records = app
        .jetstream()
        .await
        .get_key_value(subjects::DELIVERY_BUCKET)
        .await
        .unwrap();
    let old = record_key(DeliveryStatus::Pending, &job).unwrap();
    let new = record_key(DeliveryStatus::Delivered, &job).unwrap();
    assert_eq!(records.get(&old).await.unwrap(), None, "moved away");
    assert!(records.get(&new).await.unwrap().is_some());
}

#[tokio::test]
async fn listing_by_task_returns_exactly_that_tasks_deliveries() {
    // Arrange: two tasks notifying the same two webhooks; one webhook refuses (dead).
    let app = TestApp::spawn().await;
    let good = Endpoint::start().await;
    let bad = Endpoint::start().await;
    bad.answer_from_now_on(Answer::status(400));
    let _relay = app.relay(relay_settings()).await;
    let notify = json!([webhook(&good.url("/good")), webhook(&bad.url("/bad"))]);
    let mine = app.task_notifying("mine", notify.clone()).await;
    let other = app.task_notifying("other", notify).await;
    app.act(&mine, "start").await;
    app.act(&other, "start").await;
    let expected = |t: &taskfleet::domain::Task| {
        let mut ids: Vec<String> = good
            .hits()
            .iter()
            .chain(bad.hits().iter())
            .filter(|h| h.json()["data"]["task"]["id"] == t.id.as_str())
            .map(|h| h.webhook_id())
            .collect();
        ids.sort();
        ids
    };
    app.wait_deliveries("", 8, Duration::from_secs(10)).await;

    // Act
    let (status, mut ids, cursor, _) = page(&app, &format!("task_id={}", mine.id)).await;
    let (_, dead, _, body) = page(&app, &format!("task_id={}&status=dead", mine.id)).await;
    let (_, two, next, _) = page(&app, &format!("task_id={}&limit=2", mine.id)).await;
    let (_, rest, rest_next, _) = page(
        &app,
        &format!(
            "task_id={}&limit=2&before={}",
            mine.id,
            next.clone().unwrap()
        ),
    )
    .await;
    let (_, nobody, _, _) = page(&app, "task_id=nobody").await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    ids.sort();
    assert_eq!(ids.len(), 4, "created and started, two webhooks each");
    assert_eq!(ids, expected(&mine));
    assert_eq!(cursor, None);
    assert_eq!(dead.len(), 2, "{body}");
    assert!(body
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "dead" && r["job"]["event"]["task_id"] == mine.id.as_str()));
    let mut paged: Vec<String> = two.iter().chain(rest.iter()).cloned().collect();
    paged.sort();
    assert_eq!(paged, ids, "two pages of two");
    assert_eq!(rest_next, None, "the last page, full, names no next one");
    assert!(nobody.is_empty());
}

#[tokio::test]
async fn replaying_a_destination_nobody_configured_or_delivered_to_is_a_404() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let (status, body) = app
        .call(app.req(Method::POST, "/api/destinations/nobody/replay"))
        .await;

    // Assert
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

//! A listing of every status shows the tasks published straight to NATS that no one recorded
//! yet, at their place among the recorded ones, on exactly one page of a walk through it.

use crate::harness::app::worker_settings;
use crate::harness::{eventually, TestApp};
use crate::ledger::{page, pages};
use serde_json::json;
use std::time::Duration;
use taskfleet::domain::{Task, TaskStatus};

/// Publishes a create body to `subject` as a producer in another language would; returns the
/// task's id (given in the body).
async fn publish(app: &TestApp, subject: &str, id: &str) -> String {
    let body = json!({"id": id, "task_name": format!("published {id}")});
    app.jetstream()
        .await
        .publish(
            subject.to_string(),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    id.to_string()
}

fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.to_string()).collect()
}

#[tokio::test]
async fn a_listing_of_every_status_shows_a_task_published_to_nats_at_its_place_and_records_it() {
    // Arrange: one task over HTTP, one published straight to NATS (no worker, no pending
    // list), one more over HTTP.
    let app = TestApp::spawn().await;
    let first = app.create("first", "anna", "P1").await;
    let published = publish(&app, "tasks.anna.p1", "pub-1").await;
    let last = app.create("last", "anna", "P1").await;

    // Act
    let (all, next) = page(&app, "limit=10").await;

    // Assert: newest first, the published task between the two, pending, and readable by id
    // now that the listing showed it.
    assert_eq!(ids(&all), [last, published.clone(), first]);
    assert_eq!(all[1].status, TaskStatus::Pending);
    assert_eq!(all[1].task_name, "published pub-1");
    assert_eq!(next, None, "a short page is the end");
    let read = app.admin.get_task(&published).await.unwrap();
    assert_eq!(read.status, TaskStatus::Pending);
    let (again, _) = page(&app, "limit=10").await;
    assert_eq!(
        again.iter().filter(|t| t.id.as_str() == published).count(),
        1,
        "shown once, recorded or not"
    );
}

#[tokio::test]
async fn paging_a_listing_of_every_status_shows_every_task_once_whichever_stream_holds_it() {
    // At page sizes that end pages on either stream, each on a store no listing recorded yet.
    for limit in [1, 2, 3, 5] {
        // Arrange: tasks over HTTP and published to NATS, interleaved, for anna and bob.
        let app = TestApp::spawn().await;
        let mut created = Vec::new();
        for i in 0..4 {
            created.push(app.create(&format!("h{i}"), "anna", "P1").await);
            created.push(publish(&app, "tasks.anna.p2", &format!("a-{i}")).await);
            created.push(publish(&app, "tasks.bob.p0.noop", &format!("b-{i}")).await);
        }
        created.reverse();

        // Act: every page, following the cursors.
        let walked = ids(&pages(&app, &format!("limit={limit}")).await.concat());

        // Assert: each task once, newest first.
        assert_eq!(walked, created, "pages of {limit}");
    }
}

#[tokio::test]
async fn published_tasks_a_listing_recorded_keep_their_order_among_themselves() {
    // Arrange: three tasks published to NATS, shown (and so recorded) by one listing.
    let app = TestApp::spawn().await;
    let mut published = Vec::new();
    for i in 0..3 {
        published.push(publish(&app, "tasks.anna.p1", &format!("p-{i}")).await);
    }
    published.reverse();
    let (shown, _) = page(&app, "limit=10").await;

    // Act: the same listing again, now from their records.
    let (again, _) = page(&app, "limit=10").await;

    // Assert
    assert_eq!(ids(&shown), published);
    assert_eq!(ids(&again), published);
}

#[tokio::test]
async fn an_assignees_key_lists_its_own_unrecorded_tasks_and_no_one_elses() {
    // Arrange
    let app = TestApp::spawn().await;
    let mine = publish(&app, "tasks.anna.p1", "anna-pub").await;
    let _theirs = publish(&app, "tasks.bob.p1", "bob-pub").await;

    // Act
    let listed = app.anna.list_tasks(&[]).await.unwrap();

    // Assert
    assert_eq!(ids(&listed), [mine]);
}

#[tokio::test]
async fn a_full_page_of_every_status_that_holds_the_oldest_task_has_no_cursor() {
    // Arrange: two tasks over HTTP (their queue messages stored around their records).
    let app = TestApp::spawn().await;
    let older = app.create("older", "anna", "P1").await;
    let newer = app.create("newer", "anna", "P1").await;

    // Act
    let (all, next) = page(&app, "limit=2").await;

    // Assert
    assert_eq!(ids(&all), [newer, older]);
    assert_eq!(next, None, "nothing is left for a next page");
}

#[tokio::test]
async fn a_published_task_recorded_while_a_client_pages_is_on_the_next_page() {
    // On an empty ledger, and on one with a task recorded before the first page.
    for older_record in [false, true] {
        // Arrange: six tasks published to NATS; the first page shows the two newest.
        let app = TestApp::spawn().await;
        let older = match older_record {
            true => vec![app.create("older", "anna", "P1").await],
            false => Vec::new(),
        };
        let mut published = Vec::new();
        for i in 0..6 {
            published.push(publish(&app, "tasks.anna.p1", &format!("p-{i}")).await);
        }
        published.reverse();
        let (first, next) = page(&app, "assigned_to=anna&limit=2").await;
        let next = next.expect("a cursor to the rest");

        // Act: a pending list records the other four (their records are newer than the first
        // page), then the next page.
        let pending = app.anna.pending(&[]).await.unwrap();
        let query = format!("assigned_to=anna&limit=10&before={next}");
        let (rest, after) = page(&app, &query).await;

        // Assert: every task on exactly one page, newest first, as if no one else was at work.
        assert_eq!(pending.len(), 6 + older.len());
        assert_eq!(ids(&first), published[..2]);
        assert_eq!(
            ids(&rest),
            [&published[2..], &older[..]].concat(),
            "{older_record}"
        );
        assert_eq!(after, None);
    }
}

#[tokio::test]
async fn a_published_task_a_worker_claims_while_a_client_pages_is_on_the_next_page_running() {
    // Arrange: five long noop tasks published to NATS, no worker yet; the first page shows
    // the two newest.
    let app = TestApp::spawn().await;
    let mut published = Vec::new();
    for i in 0..5 {
        let body =
            json!({"id": format!("n-{i}"), "task_name": "long", "payload": {"sleep_ms": 30_000}});
        app.jetstream()
            .await
            .publish(
                "tasks.anna.p1.noop",
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        published.push(format!("n-{i}"));
    }
    published.reverse();
    let (first, next) = page(&app, "assigned_to=anna&limit=2").await;
    let next = next.expect("a cursor to the rest");

    // Act: a worker claims all five (the three not shown get their first record, `started`,
    // now), then the next page.
    let _worker = app.worker("anna", 5, worker_settings()).await;
    for id in &published {
        let what = format!("{id} to run");
        eventually(&what, Duration::from_secs(10), || async {
            let t = app.admin.get_task(id).await.ok()?;
            (t.status == TaskStatus::Running).then_some(())
        })
        .await;
    }
    let query = format!("assigned_to=anna&limit=10&before={next}");
    let (rest, after) = page(&app, &query).await;

    // Assert
    assert_eq!(ids(&first), published[..2]);
    assert_eq!(ids(&rest), published[2..]);
    assert!(
        rest.iter().all(|t| t.status == TaskStatus::Running),
        "{rest:?}"
    );
    assert_eq!(after, None);
}

//! Task storage v2: the ledger is at once the state and the log, so they agree whatever dies;
//! writes it refuses never reach subscribers; listings page newest first; finished tasks age
//! out and active ones never do.

use crate::harness::process::WorkerProcess;
use crate::harness::{eventually, TestApp};
use async_nats::jetstream::message::StreamMessage;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use taskfleet::bus::{direct, subjects};
use taskfleet::domain::{EventKind, Task, TaskEvent, TaskStatus};

/// Every stored message of a task, oldest first.
async fn records(app: &TestApp, id: &str) -> Vec<StreamMessage> {
    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let filter = format!("events.*.{id}.*");
    direct::batch(&client, subjects::EVENTS_STREAM, &filter, 1, 1000)
        .await
        .unwrap()
}

/// The status a task is in right after an event of `kind` (`None`: the event does not say).
fn status_after(kind: EventKind) -> Option<TaskStatus> {
    match kind {
        EventKind::Created | EventKind::Retried => Some(TaskStatus::Pending),
        EventKind::Started | EventKind::Step => Some(TaskStatus::Running),
        EventKind::Completed => Some(TaskStatus::Completed),
        EventKind::Failed => Some(TaskStatus::Failed),
        EventKind::Cancelled => Some(TaskStatus::Cancelled),
        _ => None,
    }
}

/// Checks that the task's log and state agree: every record carries the state its event left,
/// the last one is what the API answers, and every attempt has exactly one `started`.
async fn assert_state_and_log_agree(app: &TestApp, id: &str) -> Task {
    let msgs = records(app, id).await;
    assert!(!msgs.is_empty(), "{id} has no records");
    let mut starts = 0;
    let mut last: Option<Task> = None;
    for m in &msgs {
        let event: TaskEvent = serde_json::from_slice(&m.payload).unwrap();
        let record: Value = serde_json::from_slice(&m.payload).unwrap();
        let state: Task = serde_json::from_value(record["task"].clone())
            .unwrap_or_else(|e| panic!("{id}: a record without its state ({e}): {record}"));
        if let Some(expected) = status_after(event.kind) {
            assert_eq!(state.status, expected, "{id}: {record}");
        }
        assert_eq!(state.attempt, event.attempt, "{id}: {record}");
        if event.kind == EventKind::Started {
            starts += 1;
            assert_eq!(state.attempt, starts, "{id}: one started per attempt");
        }
        last = Some(state);
    }
    let api = app.admin.get_task(id).await.unwrap();
    let last = last.unwrap();
    assert_eq!(
        (api.status, api.attempt, &api.lease),
        (last.status, last.attempt, &last.lease)
    );
    assert_eq!(api.revision, msgs.last().unwrap().sequence);
    api
}

async fn create(app: &TestApp, body: Value) -> String {
    let (status, task) = app
        .call(app.req(Method::POST, "/api/tasks").json(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    task["id"].as_str().unwrap().to_string()
}

/// Starts and completes `ids` over the API, riding out an outage (503s are retried).
async fn drive_manual_tasks(app: &TestApp, ids: &[String]) {
    for id in ids {
        for verb in ["start", "complete"] {
            eventually(&format!("{verb} {id}"), Duration::from_secs(30), || async {
                let path = format!("/api/tasks/{id}/{verb}");
                let (status, _) = app.call(app.req(Method::PUT, &path)).await;
                // 409: an earlier try went through but its answer was lost.
                (status.is_success() || status == StatusCode::CONFLICT).then_some(())
            })
            .await;
        }
    }
}

/// Kills `worker` with SIGKILL once it runs tasks. A kill can land between two tasks, with none
/// of `ids` running (a slow machine makes that possible), and then there is nothing to take over:
/// a new worker is started and killed in turn, up to 5 times. Returns the tasks running at the
/// kill, and how many of `ids` were unfinished then.
async fn kill_worker_mid_task(
    app: &TestApp,
    ids: &[String],
    worker: &mut WorkerProcess,
) -> (Vec<Task>, usize) {
    for _ in 0..5 {
        eventually(
            "the worker to run a task",
            Duration::from_secs(30),
            || async {
                let running = [("assigned_to", "anna".into()), ("status", "running".into())];
                let tasks = app.admin.list_tasks(&running).await.ok()?;
                (!tasks.is_empty()).then_some(())
            },
        )
        .await;
        worker.kill9();
        let at_kill = futures::future::join_all(ids.iter().map(|id| app.admin.get_task(id))).await;
        let at_kill: Vec<Task> = at_kill.into_iter().flatten().collect();
        let unfinished = at_kill.iter().filter(|t| !t.status.is_terminal()).count();
        let running: Vec<Task> = at_kill
            .into_iter()
            .filter(|t| t.status == TaskStatus::Running)
            .collect();
        if !running.is_empty() {
            return (running, unfinished);
        }
        eprintln!("the kill landed between two tasks; killing a new worker");
        *worker = app.worker_process("anna", 8, &[]).await;
    }
    panic!("no task was running at any of 5 kills of the worker");
}

#[tokio::test]
async fn state_and_log_agree_for_every_task_after_the_server_and_a_worker_are_killed_mid_load() {
    // Arrange: 160 worker tasks of 3 steps (~1 s of work for 8 slots), and 20 manual tasks
    // driven over the API.
    let mut app = TestApp::spawn().await;
    let mut worker = app.worker_process("anna", 8, &[]).await;
    let mut noops = Vec::new();
    for i in 0..160 {
        let payload = json!({"steps": 3, "sleep_ms": 50});
        let body = json!({"task_name": format!("n{i}"), "assigned_to": "anna", "kind": "noop",
            "payload": payload});
        noops.push(create(&app, body).await);
    }
    let mut manual = Vec::new();
    for i in 0..20 {
        manual.push(
            create(
                &app,
                json!({"task_name": format!("m{i}"), "assigned_to": "anna"}),
            )
            .await,
        );
    }

    // Act: kill -9 the worker while it runs tasks, and the server; restart the server, start a
    // new worker.
    let (running_at_kill, unfinished_at_kill) =
        kill_worker_mid_task(&app, &noops, &mut worker).await;
    app.nats.kill();
    app.nats.restart().await;
    let _worker = app.worker_process("anna", 8, &[]).await;
    drive_manual_tasks(&app, &manual).await;
    for id in &noops {
        eventually(
            &format!("{id} to finish"),
            Duration::from_secs(60),
            || async {
                let t = app.admin.get_task(id).await.ok()?;
                t.status.is_terminal().then_some(())
            },
        )
        .await;
    }

    // Assert: every task's state is its last record, and its log agrees with it; the kills
    // landed mid-load (tasks were left unfinished), and each task the killed worker was running
    // was taken over: run again under a new attempt.
    let mut finished = std::collections::HashMap::new();
    for id in noops.iter().chain(&manual) {
        let t = assert_state_and_log_agree(&app, id).await;
        assert_eq!(t.status, TaskStatus::Completed, "{id}");
        finished.insert(id.clone(), t);
    }
    assert!(
        unfinished_at_kill > 0,
        "every task finished before the kill"
    );
    for t in &running_at_kill {
        let after = &finished[t.id.as_str()];
        assert!(
            after.attempt > t.attempt,
            "{} was running (attempt {}) when its worker was killed, and finished under \
             attempt {}: it was not taken over",
            t.id,
            t.attempt,
            after.attempt
        );
    }
}

#[tokio::test]
async fn a_start_the_ledger_refuses_never_reaches_core_subscribers() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("contended", "anna", "P1").await;
    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let mut seen = client
        .subscribe(format!("events.anna.{id}.started"))
        .await
        .unwrap();
    client.flush().await.unwrap();

    // Act: 20 concurrent starts through 20 API calls.
    let path = format!("/api/tasks/{id}/start");
    let calls = (0..20).map(|_| app.call(app.req(Method::PUT, &path)));
    let answers = futures::future::join_all(calls).await;

    // Assert: one won, and subscribers saw exactly one `started`.
    let won = answers.iter().filter(|(s, _)| s.is_success()).count();
    assert_eq!(won, 1, "{answers:?}");
    let mut received = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), seen.next()).await {
        received += 1;
    }
    assert_eq!(received, 1);
}

/// One page of `GET /api/tasks` and its next-page cursor.
pub(crate) async fn page(app: &TestApp, query: &str) -> (Vec<Task>, Option<String>) {
    let r = app
        .req(Method::GET, &format!("/api/tasks?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let next = r
        .headers()
        .get("x-next-cursor")
        .map(|v| v.to_str().unwrap().to_string());
    (r.json().await.unwrap(), next)
}

/// Every page of `GET /api/tasks?{query}`, following `X-Next-Cursor` until a page has none (at
/// most 100 pages, so a cursor that never ends fails the test instead of hanging it).
pub(crate) async fn pages(app: &TestApp, query: &str) -> Vec<Vec<Task>> {
    let mut out = Vec::new();
    let mut before = String::new();
    for _ in 0..100 {
        let (tasks, next) = page(app, &format!("{query}{before}")).await;
        out.push(tasks);
        match next {
            Some(c) => before = format!("&before={c}"),
            None => return out,
        }
    }
    panic!("{query}: still a cursor after 100 pages");
}

#[tokio::test]
async fn a_full_page_that_holds_the_oldest_task_has_no_cursor_to_an_empty_page() {
    // Arrange: four pending tasks, then two of them completed.
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(app.create(&format!("t{i}"), "anna", "P1").await);
    }
    for id in &ids[..2] {
        app.admin.action(id, "start", None).await.unwrap();
        let done = json!({"result": {}});
        app.admin.action(id, "complete", Some(&done)).await.unwrap();
    }

    // Act: pages that end exactly at the oldest task, and one that does not.
    let (pending, pending_next) = page(&app, "assigned_to=anna&status=pending&limit=2").await;
    let (done, done_next) = page(&app, "assigned_to=anna&status=completed&limit=2").await;
    let (first, next) = page(&app, "assigned_to=anna&status=pending&limit=1").await;
    let cursor = next.expect("a page with a task after it has a cursor");
    let query = format!("assigned_to=anna&status=pending&limit=1&before={cursor}");
    let (second, second_next) = page(&app, &query).await;

    // Assert
    assert_eq!((pending.len(), pending_next), (2, None));
    assert_eq!((done.len(), done_next), (2, None));
    assert_eq!(first[0].id.as_str(), ids[3]);
    assert_eq!(second[0].id.as_str(), ids[2]);
    assert_eq!(second_next, None, "the last page, full, names no next one");
}

#[tokio::test]
async fn listings_page_newest_first_and_find_a_rare_status_among_many() {
    // Arrange: 30 tasks; 24 completed, 3 failed, 3 pending, in this order of creation.
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = app.create(&format!("t{i}"), "anna", "P1").await;
        if i < 27 {
            app.admin.action(&id, "start", None).await.unwrap();
            let verb = if i % 9 == 4 { "fail" } else { "complete" };
            let body = json!({"error": "boom"});
            app.admin.action(&id, verb, Some(&body)).await.unwrap();
        }
        ids.push(id);
    }
    let failed: Vec<&String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 9 == 4 && *i < 27)
        .map(|(_, id)| id)
        .collect();

    // The failed listing reads the server's copy of the index entries, which trails the ledger
    // by the sourcing delay (tens of milliseconds on a loaded machine).
    let js = app.jetstream().await;
    eventually(
        "the index copy to hold 3 entries",
        Duration::from_secs(5),
        || async {
            let mut copy = js.get_stream(subjects::INDEX_STREAM).await.ok()?;
            (copy.info().await.ok()?.state.messages == 3).then_some(())
        },
    )
    .await;

    // Act
    let (first, cursor) = page(&app, "assigned_to=anna&status=failed&limit=2").await;
    let (rest, end) = page(
        &app,
        &format!("status=failed&limit=2&before={}", cursor.clone().unwrap()),
    )
    .await;
    let all: Vec<Task> = pages(&app, "limit=7").await.concat();
    let (pending, _) = page(&app, "status=pending&limit=10").await;

    // Assert: newest first, each task once, the cursor ends.
    let got: Vec<&str> = first.iter().chain(&rest).map(|t| t.id.as_str()).collect();
    assert_eq!(
        got,
        [failed[2].as_str(), failed[1].as_str(), failed[0].as_str()]
    );
    assert!(end.is_none());
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(
        all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        newest_first
    );
    assert_eq!(all.iter().map(|t| &t.id).collect::<HashSet<_>>().len(), 30);
    let pending: Vec<&str> = pending.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        pending,
        [ids[29].as_str(), ids[28].as_str(), ids[27].as_str()]
    );
    let (status, body) = app
        .call(app.req(Method::GET, "/api/tasks?before=soon"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn running_tasks_page_newest_first_each_once_past_a_task_queued_again_after_its_start() {
    let app = TestApp::spawn().await;
    running_pages_follow_the_cursor(&app).await;
}

#[tokio::test]
async fn running_tasks_page_the_same_with_more_running_than_the_running_index_holds() {
    // Five running tasks, an index for two: listings walk the queue.
    let app = TestApp::spawn_with(|c| c.api.running_index_cap = 2).await;
    running_pages_follow_the_cursor(&app).await;
}

/// Five running tasks among three never started and one started, failed and queued again
/// (the newest queue message, and a `started` record, but pending), listed in pages of two
/// following the cursor: newest queued first, each once; and in one page of five, with no cursor.
async fn running_pages_follow_the_cursor(app: &TestApp) {
    // Arrange
    let mut running = Vec::new();
    for i in 0..8 {
        let id = app.create(&format!("t{i}"), "anna", "P1").await;
        if i % 3 != 1 {
            app.admin.action(&id, "start", None).await.unwrap();
            running.push(id);
        }
    }
    let again = app.create("queued again", "anna", "P1").await;
    app.admin.action(&again, "start", None).await.unwrap();
    let boom = json!({"error": "boom"});
    app.admin.action(&again, "fail", Some(&boom)).await.unwrap();
    app.admin.action(&again, "retry", None).await.unwrap();

    // Act: pages of two, following the cursor.
    let pages: Vec<Vec<String>> = pages(app, "status=running&limit=2")
        .await
        .iter()
        .map(|tasks| tasks.iter().map(|t| t.id.to_string()).collect())
        .collect();
    let whole = self::pages(app, "status=running&limit=5").await;

    // Assert: and a full page that holds the oldest running task names no page after it.
    let newest_first: Vec<String> = running.iter().rev().cloned().collect();
    let chunks: Vec<Vec<String>> = newest_first.chunks(2).map(<[String]>::to_vec).collect();
    assert_eq!(pages, chunks);
    let whole: Vec<Vec<String>> = whole
        .iter()
        .map(|tasks| tasks.iter().map(|t| t.id.to_string()).collect())
        .collect();
    assert_eq!(whole, [newest_first]);
}

#[tokio::test]
async fn a_completed_listing_shows_each_task_as_a_read_by_id_does_most_recently_finished_first() {
    // Arrange: three tasks completed in the order 2, 0, 1, each with its own result and a step
    // before it; a fourth left running, a fifth failed.
    let app = TestApp::spawn().await;
    let ids = started_tasks(&app, 5).await;
    for i in [2, 0, 1] {
        let step = json!({"info": format!("half of {i}")});
        app.admin
            .action(&ids[i], "step", Some(&step))
            .await
            .unwrap();
        let body = json!({"result": {"n": i}});
        app.admin
            .action(&ids[i], "complete", Some(&body))
            .await
            .unwrap();
    }
    let boom = json!({"error": "boom"});
    app.admin
        .action(&ids[4], "fail", Some(&boom))
        .await
        .unwrap();

    // Act
    let (listed, next) = page(&app, "assigned_to=anna&status=completed&limit=10").await;

    // Assert: the three completed tasks, the last finished first, each exactly as a read by id
    // shows it (status, result, revision: the state after its last event).
    let got: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got, [ids[1].as_str(), ids[0].as_str(), ids[2].as_str()]);
    assert!(next.is_none());
    assert!(listed.iter().all(|t| t.status == TaskStatus::Completed));
    listed_as_read(&app, &listed).await;
    assert_eq!(listed[0].result, Some(json!({"n": 1})));
}

#[tokio::test]
async fn a_listing_of_every_status_shows_each_task_as_a_read_by_id_does_newest_created_first() {
    // Arrange: anna's t0..t5 and bob's b0, then changes in an order unlike their creation: t1
    // steps and completes, t3 fails, t2 is cancelled, t5 steps, t0 completes last (its latest
    // record is the ledger's newest); t4 stays running.
    let app = TestApp::spawn().await;
    let ids = started_tasks(&app, 6).await;
    let bob = app.create("b0", "bob", "P2").await;
    let step = json!({"info": "half"});
    app.admin
        .action(&ids[1], "step", Some(&step))
        .await
        .unwrap();
    let done = |n: i64| json!({"result": {"n": n}});
    app.admin
        .action(&ids[1], "complete", Some(&done(1)))
        .await
        .unwrap();
    let boom = json!({"error": "boom"});
    app.admin
        .action(&ids[3], "fail", Some(&boom))
        .await
        .unwrap();
    app.admin.action(&ids[2], "cancel", None).await.unwrap();
    app.admin
        .action(&ids[5], "step", Some(&step))
        .await
        .unwrap();
    app.admin
        .action(&ids[0], "complete", Some(&done(0)))
        .await
        .unwrap();

    // Act: anna's first page of 4, the page after it, and every assignee's tasks.
    let (first, next) = page(&app, "assigned_to=anna&limit=4").await;
    let cursor = next.expect("a cursor after a full page");
    let (second, _) = page(&app, &format!("assigned_to=anna&limit=4&before={cursor}")).await;
    let (all, _) = page(&app, "limit=10").await;

    // Assert: newest created first, each task as a read by id shows it (state, revision).
    let order = |tasks: &[Task]| tasks.iter().map(|t| t.id.to_string()).collect::<Vec<_>>();
    assert_eq!(
        order(&first),
        [&ids[5], &ids[4], &ids[3], &ids[2]].map(String::clone)
    );
    assert_eq!(order(&second), [&ids[1], &ids[0]].map(String::clone));
    let mut everyone = vec![bob.clone()];
    everyone.extend(ids.iter().rev().cloned());
    assert_eq!(order(&all), everyone);
    for listed in [&first, &second, &all] {
        listed_as_read(&app, listed).await;
    }
    assert_eq!(first[1].status, TaskStatus::Running);
    assert_eq!(second[1].result, Some(json!({"n": 0})));
}

#[tokio::test]
async fn a_listing_of_every_status_shows_latest_states_past_tasks_with_long_logs() {
    // Arrange: `old` completed long ago; then four tasks whose 1,400 steps fill the ledger's
    // newest records (past 1,000 records a listing walks creations only, reading states);
    // `first`, created first, completes last.
    let app = TestApp::spawn().await;
    let first = app.create("first", "anna", "P1").await;
    let old = app.create("old", "anna", "P1").await;
    app.admin.action(&old, "start", None).await.unwrap();
    let done = json!({"result": "old"});
    app.admin
        .action(&old, "complete", Some(&done))
        .await
        .unwrap();
    let busy = started_tasks(&app, 4).await;
    let steps = busy.iter().map(|id| {
        let admin = &app.admin;
        async move {
            for i in 0..350 {
                let step = json!({"info": format!("step {i}")});
                admin.action(id, "step", Some(&step)).await.unwrap();
            }
        }
    });
    futures::future::join_all(steps).await;
    app.admin.action(&first, "start", None).await.unwrap();
    app.admin.action(&first, "complete", None).await.unwrap();

    // Act
    let (listed, _) = page(&app, "assigned_to=anna&limit=10").await;

    // Assert: all six, newest created first, each as a read by id shows it.
    let got: Vec<String> = listed.iter().map(|t| t.id.to_string()).collect();
    let mut want: Vec<String> = busy.iter().rev().cloned().collect();
    want.extend([old.clone(), first.clone()]);
    assert_eq!(got, want);
    listed_as_read(&app, &listed).await;
    assert_eq!(listed[4].status, TaskStatus::Completed);
    assert_eq!(listed[5].status, TaskStatus::Completed);
}

/// `n` tasks of anna, created and started one after another (`t0`, `t1`, …).
async fn started_tasks(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = app.create(&format!("t{i}"), "anna", "P1").await;
        app.admin.action(&id, "start", None).await.unwrap();
        ids.push(id);
    }
    ids
}

/// The failed listing of anna once it holds `n` tasks (the listing reads the index
/// copy, which trails the ledger by the server's sourcing delay).
async fn failed_of_anna(app: &TestApp, n: usize) -> Vec<Task> {
    eventually(
        &format!("the failed listing to hold {n} tasks"),
        Duration::from_secs(5),
        || async {
            let (tasks, _) = page(app, "assigned_to=anna&status=failed&limit=10").await;
            (tasks.len() == n).then_some(tasks)
        },
    )
    .await
}

/// Asserts that each listed task is exactly what a read by id shows (state and revision).
async fn listed_as_read(app: &TestApp, listed: &[Task]) {
    for t in listed {
        let read = app.admin.get_task(t.id.as_str()).await.unwrap();
        assert_eq!(
            serde_json::to_value(t).unwrap(),
            serde_json::to_value(&read).unwrap()
        );
    }
}

#[tokio::test]
async fn a_failed_listing_shows_tasks_as_read_by_id_and_drops_one_once_retried_or_swept() {
    // Arrange: three tasks of anna failed, in the order 0, 1, 2.
    let app = TestApp::spawn().await;
    let ids = started_tasks(&app, 3).await;
    for (i, id) in ids.iter().enumerate() {
        let boom = json!({"error": format!("boom {i}")});
        app.admin.action(id, "fail", Some(&boom)).await.unwrap();
    }
    let listed = failed_of_anna(&app, 3).await;
    let got: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    listed_as_read(&app, &listed).await;

    // Act + Assert: a retried task leaves the listing; failed again, it is back on top with
    // its new attempt.
    app.admin.action(&ids[0], "retry", None).await.unwrap();
    let listed = failed_of_anna(&app, 2).await;
    assert!(listed.iter().all(|t| t.id.as_str() != ids[0]));
    app.admin.action(&ids[0], "start", None).await.unwrap();
    let again = json!({"error": "boom again"});
    app.admin
        .action(&ids[0], "fail", Some(&again))
        .await
        .unwrap();
    let listed = failed_of_anna(&app, 3).await;
    assert_eq!(listed[0].id.as_str(), ids[0]);
    assert_eq!(listed[0].attempt, 2);
    assert_eq!(listed[0].error.as_deref(), Some("boom again"));
    listed_as_read(&app, &listed).await;

    // Act + Assert: swept tasks leave the listing at once.
    assert_eq!(app.admin.cleanup(Some(0)).await.unwrap(), 3);
    let (listed, _) = page(&app, "assigned_to=anna&status=failed&limit=10").await;
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn a_final_status_listing_since_a_time_shows_only_tasks_finished_after_it_and_ends_there() {
    // Arrange: anna's t0 fails, then (a moment later) t1 and t2; the cut-off lies between.
    let app = TestApp::spawn().await;
    let ids = started_tasks(&app, 3).await;
    let boom = json!({"error": "boom"});
    app.admin
        .action(&ids[0], "fail", Some(&boom))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for id in &ids[1..] {
        app.admin.action(id, "fail", Some(&boom)).await.unwrap();
    }
    failed_of_anna(&app, 3).await;

    // Act
    let since = format!("assigned_to=anna&status=failed&finished_after={cutoff}");
    let (listed, next) = page(&app, &format!("{since}&limit=10")).await;
    let paged: Vec<Task> = pages(&app, &format!("{since}&limit=1")).await.concat();

    // Assert: the two failed after the cut-off, newest first, with no page of older ones; a
    // page at a time gives the same two.
    let want = [ids[2].as_str(), ids[1].as_str()];
    let got: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got, want);
    assert_eq!(next, None, "no older page is due");
    let got: Vec<&str> = paged.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got, want);
    let (all, _) = page(&app, "assigned_to=anna&status=failed&limit=10").await;
    assert_eq!(all.len(), 3, "without the filter, all three");

    // Assert: a time that is not RFC 3339, or a status not listed by finish time, is a 400.
    for bad in [
        "status=failed&finished_after=yesterday".to_string(),
        format!("status=pending&finished_after={cutoff}"),
        format!("finished_after={cutoff}"),
    ] {
        let (status, body) = app
            .call(app.req(Method::GET, &format!("/api/tasks?{bad}")))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.to_string().contains("finished_after"), "{body}");
    }
}

#[tokio::test]
async fn finished_tasks_age_out_after_the_retention_and_pending_and_running_ones_never_do() {
    // Arrange: a retention of 1 s, swept every second.
    let app = TestApp::spawn_with(|c| {
        c.events.max_age_s = 1;
        c.events.sweep_interval_s = 1;
    })
    .await;
    let done = app.create("done", "anna", "P1").await;
    app.admin.action(&done, "start", None).await.unwrap();
    app.admin.action(&done, "complete", None).await.unwrap();
    let pending = app.create("waiting", "anna", "P1").await;
    let running = app.create("working", "anna", "P1").await;
    app.admin.action(&running, "start", None).await.unwrap();

    // Act: wait for the sweeper to remove the finished one.
    eventually(
        "the finished task to go",
        Duration::from_secs(15),
        || async { app.admin.get_task(&done).await.is_err().then_some(()) },
    )
    .await;

    // Assert: its whole log went with it; the active ones, older than the retention, stay.
    assert!(records(&app, &done).await.is_empty());
    assert_eq!(
        app.admin.get_task(&pending).await.unwrap().status,
        TaskStatus::Pending
    );
    assert_eq!(
        app.admin.get_task(&running).await.unwrap().status,
        TaskStatus::Running
    );
    let actions: Vec<String> = app
        .admin
        .logs(&pending)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.action)
        .collect();
    assert_eq!(actions, ["create"]);
}

//! Messages no client can read in the task ledger (issue 14): a fleet user who writes one into
//! a task's log (here, a `step` whose `Nats-Msg-Id` is not UTF-8) makes no API read of that task
//! fail, and no request on the API's main connection notices. The message is moved to the dead
//! letters, naming the task, and removed from the log.

use crate::harness::TestApp;
use crate::permissions::SecureNats;
use crate::poison::publish_raw_as;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use taskfleet::client::ApiClient;
use taskfleet::domain::{Assignee, NewTask, Task, TaskId};
use taskfleet::natsauth::Role;
use taskfleet::tasks::TaskService;

/// Header blocks async-nats refuses (`Nats-Msg-Id` not UTF-8), each with its own id (the
/// ledger would drop a second message with the same id as a duplicate).
const UNREADABLE: [&[u8]; 3] = [
    b"NATS/1.0\r\nNats-Msg-Id: \xff\xfe\x01\r\n\r\n",
    b"NATS/1.0\r\nNats-Msg-Id: \xff\xfe\x02\r\n\r\n",
    b"NATS/1.0\r\nNats-Msg-Id: \xff\xfe\x03\r\n\r\n",
];

/// Writes an unreadable `step` into the log of `assignee`'s task `id`, the way a fleet user
/// allowed to record that assignee's events could (stored as `events.<a>.<id>.step`).
async fn write_unreadable(app: &TestApp, assignee: &str, id: &str, which: usize) {
    let subject = format!("ledger.{assignee}.{id}.step");
    let body = br#"{"junk": "from a fleet user"}"#;
    publish_raw_as(&app.nats.url(), None, &subject, UNREADABLE[which], body).await;
}

/// Requests on the API's main connection, made over and over while a test reads the tasks
/// whose logs hold unreadable messages: the status of every one is kept.
struct Bystanders {
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<Vec<Result<String, String>>>>,
}

impl Bystanders {
    /// Four loops reading task `id` until [`finish`](Self::finish).
    fn start(api: &ApiClient, id: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = (0..4)
            .map(|_| {
                let (api, id, stop) = (api.clone(), id.to_string(), stop.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) || seen.is_empty() {
                        let got = api.get_task(&id).await;
                        seen.push(got.map(|t| t.id.to_string()).map_err(|e| e.to_string()));
                    }
                    seen
                })
            })
            .collect();
        Self { stop, loops }
    }

    /// Stops the loops and asserts that every request answered with the task.
    async fn finish(self, id: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let mut answered = 0;
        for l in self.loops {
            for got in l.await.unwrap() {
                assert_eq!(got.as_deref(), Ok(id), "a request beside the reads failed");
                answered += 1;
            }
        }
        eprintln!("requests answered beside the reads: {answered}");
    }
}

/// `assignee`'s dead letters that say a task's log held an unreadable message.
async fn ledger_letters(app: &TestApp, assignee: &str) -> Vec<Task> {
    let q = [("assigned_to", assignee.to_string())];
    let dead = app.admin.dead_letters(&q).await.expect("the dead letters");
    dead.into_iter()
        .filter(|t| t.error.as_deref().unwrap_or("").contains("log of task"))
        .collect()
}

/// Whether `subject` of the ledger still holds a message (read as JSON, which async-nats
/// decodes: an unreadable message there would be an error, not "none").
async fn ledger_holds(app: &TestApp, subject: &str) -> bool {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let events = app.jetstream().await.get_stream("EVENTS").await.unwrap();
    match events.get_last_raw_message_by_subject(subject).await {
        Ok(_) => true,
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => false,
        Err(_) => true,
    }
}

#[tokio::test]
async fn a_task_whose_log_holds_an_unreadable_message_still_answers_and_the_message_is_dead_lettered(
) {
    // Arrange: anna's task, then an unreadable step at the end of its log; a bystander task
    // read over and over meanwhile.
    let app = TestApp::spawn().await;
    let id = app.create("victim", "anna", "P1").await;
    let bystander = app.create("bystander", "anna", "P1").await;
    write_unreadable(&app, "anna", &id, 0).await;
    let others = Bystanders::start(&app.admin, &bystander);

    // Act
    let task = app.admin.get_task(&id).await;
    let logs = app.admin.logs(&id).await;
    others.finish(&bystander).await;
    let (task, logs) = (task.expect("GET the task"), logs.expect("GET its logs"));

    // Assert: the task's real state and log; the unreadable step is a dead letter that names
    // the task, the problem and the headers, under an id of its own, and left the log.
    assert_eq!(
        (task.task_name.as_str(), task.status.as_str()),
        ("victim", "pending")
    );
    let actions: Vec<&str> = logs.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["create"], "{logs:?}");
    let letters = ledger_letters(&app, "anna").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let why = letters[0].error.clone().unwrap_or_default();
    assert!(why.contains(&id), "{why}");
    assert!(why.contains("UTF-8"), "{why}");
    assert!(why.contains("Nats-Msg-Id"), "{why}");
    assert_ne!(letters[0].id.to_string(), id);
    let subject = format!("events.anna.{id}.step");
    assert_eq!(letters[0].payload["subject"], subject.as_str());
    assert!(!ledger_holds(&app, &subject).await);
}

#[tokio::test]
async fn a_task_log_with_an_unreadable_message_before_its_last_event_still_answers() {
    // Arrange: an unreadable step in the middle of anna's task log (a later event, written
    // without reading the task first, follows it).
    let app = TestApp::spawn().await;
    let id = app.create("victim", "anna", "P1").await;
    let bystander = app.create("bystander", "anna", "P1").await;
    write_unreadable(&app, "anna", &id, 0).await;
    let js = app.jetstream().await;
    let events = js.get_stream("EVENTS").await.unwrap();
    let created = events
        .get_last_raw_message_by_subject(&format!("events.anna.{id}.created"))
        .await
        .unwrap();
    js.publish(format!("ledger.anna.{id}.output"), created.payload)
        .await
        .unwrap()
        .await
        .unwrap();
    let others = Bystanders::start(&app.admin, &bystander);

    // Act
    let task = app.admin.get_task(&id).await;
    let logs = app.admin.logs(&id).await;
    others.finish(&bystander).await;
    let (task, logs) = (task.expect("GET the task"), logs.expect("GET its logs"));

    // Assert
    assert_eq!(task.status.as_str(), "pending");
    assert_eq!(logs.len(), 2, "{logs:?}");
    let letters = ledger_letters(&app, "anna").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(!ledger_holds(&app, &format!("events.anna.{id}.step")).await);
}

#[tokio::test]
async fn the_task_list_and_pending_list_answer_past_an_unreadable_ledger_message() {
    // Arrange: bob's two pending tasks, the first with an unreadable step at the end of its log.
    let app = TestApp::spawn().await;
    let first = app.create("first", "bob", "P1").await;
    let last = app.create("last", "bob", "P1").await;
    let bystander = app.create("bystander", "anna", "P1").await;
    write_unreadable(&app, "bob", &first, 0).await;
    let others = Bystanders::start(&app.admin, &bystander);

    // Act: the listing (no status), then another unreadable step and the pending list, then
    // a third and the pending listing.
    let bob = [("assigned_to", "bob".to_string())];
    let listed = app.admin.list_tasks(&bob).await;
    write_unreadable(&app, "bob", &first, 1).await;
    let pending = app.admin.pending(&bob).await;
    write_unreadable(&app, "bob", &first, 2).await;
    let mut pending_listed = bob.to_vec();
    pending_listed.push(("status", "pending".to_string()));
    let queued = app.admin.list_tasks(&pending_listed).await;
    others.finish(&bystander).await;
    let listed = listed.expect("bob's tasks");
    let pending = pending.expect("bob's pending list");
    let queued = queued.expect("bob's pending listing");

    // Assert: both tasks, pending, in every list; three dead letters naming the first.
    let ids = |ts: &[Task]| ts.iter().map(|t| t.id.to_string()).collect::<Vec<_>>();
    let sorted = |ts: &[Task]| {
        let mut v = ids(ts);
        v.sort();
        v
    };
    let mut both = vec![first.clone(), last.clone()];
    assert_eq!(ids(&pending), both);
    both.sort();
    assert_eq!(sorted(&listed), both);
    assert_eq!(sorted(&queued), both);
    assert!(listed.iter().all(|t| t.status.as_str() == "pending"));
    let letters = ledger_letters(&app, "bob").await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(letters
        .iter()
        .all(|l| l.error.as_deref().unwrap_or("").contains(&first)));
}

#[tokio::test]
async fn a_live_feed_of_a_task_goes_on_past_an_unreadable_message_in_its_log() {
    // Arrange: anna's task watched live; its first event seen.
    use futures::StreamExt;
    let app = TestApp::spawn().await;
    let id = app.create("watched", "anna", "P1").await;
    let bystander = app.create("bystander", "anna", "P1").await;
    let feed = app.admin.watch(&id).await.expect("the feed");
    futures::pin_mut!(feed);
    let first = feed
        .next()
        .await
        .expect("an event")
        .expect("a created event");
    let others = Bystanders::start(&app.admin, &bystander);

    // Act: an unreadable step lands in the log (only the feed reads it, and moves it aside),
    // then the task starts.
    write_unreadable(&app, "anna", &id, 0).await;
    let letters = crate::harness::eventually(
        "the feed to move the step aside",
        std::time::Duration::from_secs(15),
        || async {
            let letters = ledger_letters(&app, "anna").await;
            (!letters.is_empty()).then_some(letters)
        },
    )
    .await;
    let started = app.admin.action(&id, "start", None).await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(20), feed.next()).await;
    others.finish(&bystander).await;

    // Assert: the feed went on with the task's next event; the step is one dead letter.
    started.expect("the start");
    let next = next
        .expect("a live event")
        .expect("an event")
        .expect("an event");
    assert_eq!(first.kind.as_str(), "created");
    assert_eq!(next.kind.as_str(), "started");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(ledger_letters(&app, "anna").await.len(), 1);
}

/// Under per-process users: an API task service (answering workers' checks if `answering`,
/// until the test ends), anna's task, an unreadable step written into its log by anna's worker
/// user (which may append to anna's logs), and anna's worker task service.
async fn secure_victim(answering: bool) -> (SecureNats, TaskService, TaskService, TaskId) {
    let nats = SecureNats::start(&["anna"]).await;
    let metrics = Arc::new(taskfleet::metrics::Metrics::default());
    let api = TaskService::new(nats.bus(&Role::Api).await, metrics.clone());
    if answering {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(api.clone().answer_queue_checks(shutdown));
    }
    let new: NewTask =
        serde_json::from_value(serde_json::json!({"task_name": "victim", "assigned_to": "anna"}))
            .unwrap();
    let id = api.create(new, "t").await.unwrap().task.id;
    let anna = Assignee::parse("anna").unwrap();
    let role = Role::Worker(anna.clone());
    let (user, password) = nats.user(&role);
    let subject = format!("ledger.anna.{id}.step");
    let auth = Some((user.as_str(), password.as_str()));
    publish_raw_as(
        &nats.url(),
        auth,
        &subject,
        UNREADABLE[0],
        br#"{"junk": true}"#,
    )
    .await;
    let worker = TaskService::new(nats.bus(&role).await, metrics).scoped_to(anna);
    (nats, api, worker, id)
}

#[tokio::test]
async fn a_worker_user_that_may_not_move_an_unreadable_record_aside_gets_a_clear_error() {
    // Arrange: no API process answers the worker's request to check the log.
    let (nats, api, worker, id) = secure_victim(false).await;
    let role = Role::Worker(Assignee::parse("anna").unwrap());

    // Act
    let refused = worker.get(&id).await;
    let by_api = api.get(&id).await;
    let after = worker.get(&id).await;

    // Assert: the worker's read failed saying why, without trying what its user may not do;
    // the API's read moved the step aside, and then the worker reads the task too.
    let err = refused.expect_err("the worker cannot read past the step");
    let chain = format!("{err} / {:?}", std::error::Error::source(&err));
    assert!(chain.contains("no client can read"), "{chain}");
    assert!(chain.contains(id.as_str()), "{chain}");
    assert_eq!(nats.violations(&role), Vec::<String>::new());
    assert_eq!(
        by_api.expect("the API reads the task").status.as_str(),
        "pending"
    );
    assert_eq!(
        after.expect("then the worker does").status.as_str(),
        "pending"
    );
}

#[tokio::test]
async fn the_cancelled_list_answers_past_an_unreadable_index_entry_and_drops_it() {
    // Arrange: bob's task, cancelled (an index entry), then an unreadable index entry written
    // by a fleet user beside it; a bystander task read over and over meanwhile.
    let app = TestApp::spawn().await;
    let cancelled = app.create("cancelled", "bob", "P1").await;
    app.admin
        .action(&cancelled, "cancel", None)
        .await
        .expect("cancel");
    let bystander = app.create("bystander", "anna", "P1").await;
    let junk = "01JDX00000000000000000000Z";
    let subject = format!("index.cancelled.bob.{junk}");
    let body = br#"{"junk": "from a fleet user"}"#;
    publish_raw_as(&app.nats.url(), None, &subject, UNREADABLE[0], body).await;
    let js = app.jetstream().await;
    let copy = js.get_stream("LEDGER_INDEX").await.unwrap();
    let copied = crate::harness::wait::eventually(
        "the junk entry in the index copy",
        std::time::Duration::from_secs(10),
        || async {
            let info = copy.get_info().await.ok()?;
            (info.state.messages >= 2).then_some(info.state.messages)
        },
    )
    .await;
    let others = Bystanders::start(&app.admin, &bystander);

    // Act
    let query = [
        ("assigned_to", "bob".to_string()),
        ("status", "cancelled".to_string()),
    ];
    let listed = app.admin.list_tasks(&query).await;
    others.finish(&bystander).await;

    // Assert: the cancelled task is listed; the junk entry left the copy.
    let listed = listed.expect("bob's cancelled tasks");
    let ids: Vec<String> = listed.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(ids, [cancelled]);
    let left = copy.get_info().await.unwrap().state.messages;
    assert_eq!(left, copied - 1, "the junk entry is still in the copy");
}

#[tokio::test]
async fn a_worker_user_has_the_api_move_an_unreadable_record_out_of_its_tasks_log() {
    // Arrange: an API process answers checks.
    let (nats, api, worker, id) = secure_victim(true).await;
    let anna = Assignee::parse("anna").unwrap();
    let role = Role::Worker(anna.clone());

    // Act
    let read = worker.get(&id).await;

    // Assert: the worker reads its task; the step is a dead letter naming the task; the
    // worker's user was refused nothing.
    assert_eq!(
        read.expect("the worker reads its task").status.as_str(),
        "pending"
    );
    let dead = api
        .dead_letters(Some(&anna), 100)
        .await
        .expect("dead letters");
    let named: Vec<_> = dead
        .iter()
        .filter(|t| t.error.as_deref().unwrap_or("").contains(id.as_str()))
        .collect();
    assert_eq!(named.len(), 1, "{dead:?}");
    assert_eq!(nats.violations(&role), Vec::<String>::new());
}

//! Messages no client can read (issue 14): a queue message whose headers async-nats cannot
//! parse (not UTF-8, here) is moved to the dead letters with its reason, and neither the
//! worker's queue nor the API's pending list stops on it.

use crate::harness::app::worker_settings;
use crate::harness::TestApp;
use crate::workers::finished;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A header block async-nats refuses: its `Nats-Msg-Id` value is not UTF-8.
pub(crate) const POISON_HEADERS: &[u8] = b"NATS/1.0\r\nNats-Msg-Id: \xff\xfe\r\n\r\n";

/// Another one (a second message with the same id would be dropped as a duplicate).
const POISON_HEADERS_2: &[u8] = b"NATS/1.0\r\nNats-Msg-Id: \xfe\xff\r\n\r\n";

/// Publishes `body` with the raw header block `headers` on `subject`, speaking the NATS
/// protocol by hand (async-nats will not send headers that are not UTF-8), and waits for the
/// server to have processed it (PING/PONG).
async fn publish_raw(nats_url: &str, subject: &str, headers: &[u8], body: &[u8]) {
    publish_raw_as(nats_url, None, subject, headers, body).await
}

/// [`publish_raw`] as the NATS user `user` (name, password) when given.
pub(crate) async fn publish_raw_as(
    nats_url: &str,
    user: Option<(&str, &str)>,
    subject: &str,
    headers: &[u8],
    body: &[u8],
) {
    let addr = nats_url.trim_start_matches("nats://");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.unwrap().unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    let mut connect = json!({"verbose": false, "pedantic": false, "headers": true, "protocol": 1});
    if let Some((name, password)) = user {
        connect["user"] = name.into();
        connect["pass"] = password.into();
    }
    let mut out = format!("CONNECT {connect}\r\n").into_bytes();
    let total = headers.len() + body.len();
    out.extend_from_slice(format!("HPUB {subject} {} {total}\r\n", headers.len()).as_bytes());
    out.extend_from_slice(headers);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&out).await.unwrap();
    loop {
        let line = lines.next_line().await.unwrap().expect("an answer to PING");
        assert!(!line.starts_with("-ERR"), "{line}");
        if line == "PONG" {
            break;
        }
    }
}

/// Publishes a worker-run noop to `subject` the way another producer would.
async fn publish_noop(app: &TestApp, subject: &str, id: &str) {
    let js = app.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    let body = json!({"task_name": format!("good {id}")});
    js.publish_with_headers(subject.to_string(), headers, body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Dead letters of `assignee` whose error says their headers could not be read.
async fn unreadable_letters(
    app: &TestApp,
    assignee: &str,
    n: usize,
) -> Vec<taskfleet::domain::Task> {
    let q = [("assigned_to", assignee.to_string())];
    crate::harness::eventually(
        "the unreadable messages in the dead letters",
        Duration::from_secs(15),
        || async {
            let dead = app.admin.dead_letters(&q).await.ok()?;
            let letters: Vec<_> = dead
                .into_iter()
                .filter(|t| t.error.as_deref().unwrap_or("").contains("UTF-8"))
                .collect();
            (letters.len() == n).then_some(letters)
        },
    )
    .await
}

#[tokio::test]
async fn a_message_with_unreadable_headers_is_dead_lettered_and_every_priority_keeps_flowing() {
    // Arrange: one unreadable message queued before the worker starts (a pull gets it), one
    // after it is idle (its waiting request gets it).
    let app = TestApp::spawn().await;
    let url = app.nats.url();
    publish_raw(
        &url,
        "tasks.anna.p1.noop",
        POISON_HEADERS,
        b"{\"task_name\":\"p1\"}",
    )
    .await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_raw(
        &url,
        "tasks.anna.p0.noop",
        POISON_HEADERS_2,
        b"{\"task_name\":\"p0\"}",
    )
    .await;

    // Act: good tasks at every priority after them.
    let good = [
        ("tasks.anna.p0.noop", "01JPOISONGOODP0000000000001"),
        ("tasks.anna.p1.noop", "01JPOISONGOODP1000000000001"),
        ("tasks.anna.p2.noop", "01JPOISONGOODP2000000000001"),
    ];
    for (subject, id) in good {
        publish_noop(&app, subject, id).await;
    }

    // Assert: every good task ran; both unreadable ones are anna's dead letters, with their
    // bodies, and left the queue.
    for (_, id) in good {
        let ran = finished(&app, id, Duration::from_secs(20)).await;
        assert_eq!(ran.status.as_str(), "completed", "{id}: {:?}", ran.error);
    }
    let letters = unreadable_letters(&app, "anna", 2).await;
    let mut names: Vec<String> = letters
        .iter()
        .map(|t| t.payload["raw"].to_string())
        .collect();
    names.sort();
    assert!(
        names[0].contains("p0") && names[1].contains("p1"),
        "{names:?}"
    );
    let js = app.jetstream().await;
    let left = crate::harness::eventually("an empty queue", Duration::from_secs(10), || async {
        let n = js
            .get_stream("TASKS")
            .await
            .ok()?
            .cached_info()
            .state
            .messages;
        (n == 0).then_some(n)
    })
    .await;
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_pending_list_answers_past_a_message_with_unreadable_headers() {
    // Arrange: bob's P1 queue holds an unreadable message between two good tasks.
    let app = TestApp::spawn().await;
    let first = app.create("first", "bob", "P1").await;
    publish_raw(
        &app.nats.url(),
        "tasks.bob.p1",
        POISON_HEADERS,
        b"{\"task_name\":\"x\"}",
    )
    .await;
    let last = app.create("last", "bob", "P1").await;

    // Act
    let bob = [("assigned_to", "bob".to_string())];
    let started = std::time::Instant::now();
    let pending = app.admin.pending(&bob).await.expect("bob's pending list");
    let took = started.elapsed();
    let everyone = app
        .admin
        .pending(&[])
        .await
        .expect("the whole pending list");
    let listed = app
        .admin
        .list_tasks(&[("status", "pending".to_string())])
        .await
        .expect("the pending listing");

    // Assert: both good tasks, in order, in every list; the unreadable one is a dead letter.
    let ids =
        |ts: &[taskfleet::domain::Task]| ts.iter().map(|t| t.id.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ids(&pending),
        [first.clone(), last.clone()],
        "took {took:?}"
    );
    assert_eq!(ids(&everyone), [first.clone(), last.clone()]);
    let mut listed = ids(&listed);
    listed.sort();
    let mut want = vec![first, last];
    want.sort();
    assert_eq!(listed, want);
    let letters = unreadable_letters(&app, "bob", 1).await;
    assert_eq!(letters[0].payload["subject"], "tasks.bob.p1");
}

#[tokio::test]
async fn the_relay_skips_an_event_with_unreadable_headers_and_delivers_the_next_ones() {
    // Arrange: the relay running, then an unreadable message in the ledger ahead of a task's
    // events.
    let app = TestApp::spawn().await;
    let (hook, receiver) = crate::relay::Receiver::start().await;
    let _relay = app.relay(crate::harness::app::relay_settings()).await;
    let subject = "ledger.anna.01JPOISONEVENT000000000000001.started";
    let published = std::time::Instant::now();
    publish_raw(&app.nats.url(), subject, POISON_HEADERS, b"{}").await;

    // Act
    let task = app
        .admin
        .create_task(&json!({
            "task_name": "after the unreadable event", "assigned_to": "anna",
            "notify": [{"type": "webhook", "url": hook}]
        }))
        .await
        .unwrap();
    let id = task.id.to_string();
    app.admin.action(&id, "start", None).await.unwrap();
    app.admin.action(&id, "complete", None).await.unwrap();

    // Assert: the task's three events arrive, in order.
    receiver.wait_types(1).await;
    eprintln!(
        "from the unreadable event to the next event delivered: {:?}",
        published.elapsed()
    );
    let types = receiver.wait_types(3).await;
    assert_eq!(types, ["task.created", "task.started", "task.completed"]);
}

/// The largest message the test server accepts.
async fn max_payload(app: &TestApp) -> usize {
    app.jetstream().await.client().server_info().max_payload
}

#[tokio::test]
async fn a_queued_task_too_large_to_record_is_dead_lettered_and_the_queue_goes_on() {
    // Arrange: a noop whose body fits the queue but not a record (the record adds the event).
    let app = TestApp::spawn().await;
    let big = "x".repeat(max_payload(&app).await - 300);
    let body = json!({"task_name": "huge", "payload": {"blob": big}}).to_string();
    let js = app.jetstream().await;
    js.publish("tasks.anna.p1.noop", body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish_noop(&app, "tasks.anna.p1.noop", "01JTOOLARGEGOOD00000000001").await;

    // Act
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let good = finished(&app, "01JTOOLARGEGOOD00000000001", Duration::from_secs(20)).await;

    // Assert: the good task ran; the huge one is a dead letter saying why, not retried forever.
    assert_eq!(good.status.as_str(), "completed", "{:?}", good.error);
    let q = [("assigned_to", "anna".to_string())];
    let dead = crate::harness::eventually("the dead letter", Duration::from_secs(10), || async {
        let dead = app.admin.dead_letters(&q).await.ok()?;
        (dead.len() == 1).then_some(dead)
    })
    .await;
    let why = dead[0].error.clone().unwrap_or_default();
    assert!(why.contains("too large"), "{why}");
}

#[tokio::test]
async fn the_pending_list_moves_junk_and_oversized_messages_to_the_dead_letters() {
    // Arrange: on carol's bot-claimed queue, a body that is no JSON, one too large to record,
    // and a good task.
    let app = TestApp::spawn().await;
    let js = app.jetstream().await;
    js.publish("tasks.carol.p0", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let big = "x".repeat(max_payload(&app).await - 300);
    let huge = json!({"task_name": "huge", "payload": {"blob": big}}).to_string();
    js.publish("tasks.carol.p0", huge.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let good = app.create("good", "carol", "P0").await;

    // Act: listed twice (the second time nothing is left to move).
    let carol = [("assigned_to", "carol".to_string())];
    let first = app
        .admin
        .pending(&carol)
        .await
        .expect("carol's pending list");
    let second = app
        .admin
        .pending(&carol)
        .await
        .expect("carol's pending list again");

    // Assert
    let ids =
        |ts: &[taskfleet::domain::Task]| ts.iter().map(|t| t.id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second));
    assert_eq!(ids(&second), [good]);
    let dead = app.admin.dead_letters(&carol).await.unwrap();
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|t| t.error.clone().unwrap_or_default())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("JSON")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("too large")),
        "{reasons:?}"
    );
    let left = js
        .get_stream("TASKS")
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert_eq!(left, 1, "only the good task stays queued");
}

#[tokio::test]
async fn the_relay_ends_an_unreadable_delivery_job_and_delivers_the_next_ones() {
    // Arrange: a relay whose main connection the test can watch, delivering a task's events to
    // a receiver; its first event arrived, so the destination's queue has a loop.
    let app = TestApp::spawn().await;
    let (hook, receiver) = crate::relay::Receiver::start().await;
    let cfg = crate::harness::app::test_config(&app.nats.url());
    let bus = taskfleet::serve::connect(&cfg, &app.nats.url(), "test-relay")
        .await
        .expect("relay connects");
    let stop = tokio_util::sync::CancellationToken::new();
    let settings = crate::harness::app::relay_settings();
    let relay = tokio::spawn(taskfleet::relay::run(bus.clone(), settings, stop.clone()));
    let webhook = crate::harness::relay::webhook(&hook);
    let task = app
        .task_notifying("around unreadable jobs", json!([webhook]))
        .await;
    let created = format!("task_id={}", task.id);
    let first = app
        .wait_deliveries(&created, 1, Duration::from_secs(15))
        .await;
    let key = first[0]["job"]["key"].as_str().unwrap().to_string();
    let subject = taskfleet::bus::subjects::delivery(&key);

    // Act: on the destination's queue, an unreadable job, a job whose body is no job, and an
    // unreadable message whose body is no job either; then the task's next events.
    let job = json!({
        "id": "unreadable_job", "key": key, "destination": webhook,
        "text": "never sent", "created_time": "2026-01-01T00:00:00Z"
    });
    let url = app.nats.url();
    let published = std::time::Instant::now();
    publish_raw(&url, &subject, POISON_HEADERS, job.to_string().as_bytes()).await;
    let js = app.jetstream().await;
    js.publish(subject.clone(), "not a job".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish_raw(&url, &subject, POISON_HEADERS_2, b"not a job either").await;
    app.act(&task, "start").await;
    app.act(&task, "complete").await;

    // Assert: every event arrived, in order, and nothing else did.
    receiver.wait_types(2).await;
    eprintln!(
        "from the unreadable job to the next job delivered: {:?}",
        published.elapsed()
    );
    let types = receiver.wait_types(3).await;
    assert_eq!(types, ["task.created", "task.started", "task.completed"]);
    // The unreadable job is a dead delivery of its queue, saying why.
    let dead = app
        .wait_deliveries("status=dead", 1, Duration::from_secs(15))
        .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["job"]["id"], "unreadable_job");
    assert_eq!(dead[0]["job"]["key"], key.as_str());
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("UTF-8"), "{reason}");
    // Nothing is left to be handed out again (the junk bodies were ended too).
    let consumer = taskfleet::bus::subjects::delivery_consumer(&key);
    let stream = js.get_stream("DELIVERIES").await.unwrap();
    crate::harness::eventually("a settled queue", Duration::from_secs(30), || async {
        let info = stream.consumer_info(&consumer).await.ok()?;
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
    // The relay's main connection never dropped (only its reader connection did).
    let connects = bus.client.statistics().connects.load(Ordering::Relaxed);
    assert_eq!(connects, 1, "the relay's main connection reconnected");
    stop.cancel();
    relay.await.unwrap().expect("the relay ran");
}

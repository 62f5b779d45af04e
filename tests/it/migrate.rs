//! A store written before task storage v2 (task state in the KV bucket `tasks`) is refused at
//! start with what to do, and `taskfleet migrate` converts it in place.

use crate::harness::NatsServer;
use async_nats::jetstream::{self, kv, stream};
use serde_json::json;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use taskfleet::bus::{Bus, BusError, ConnectOptions, TopologyConfig};
use taskfleet::domain::{EventKind, Task, TaskEvent, TaskId, TaskStatus};
use taskfleet::tasks::TaskService;

fn task(id: &str, status: TaskStatus, attempt: u32, queue_seq: Option<u64>) -> Task {
    let new = serde_json::from_value(json!({"task_name": id, "assigned_to": "anna"})).unwrap();
    let mut t = Task::from_new(TaskId::parse(id).unwrap(), new);
    t.status = status;
    t.attempt = attempt;
    t.queue_seq = queue_seq;
    if status == TaskStatus::Completed {
        t.result = Some(json!("done before v2"));
    }
    t
}

/// The layout of taskfleet before storage v2: TASKS as today, EVENTS on `events.>` with a
/// 7-day age limit and events without state, task state in the KV bucket `tasks`.
async fn write_v1_store(js: &jetstream::Context) -> [Task; 3] {
    let queue = js
        .create_stream(stream::Config {
            name: "TASKS".into(),
            subjects: vec!["tasks.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    js.create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let body = json!({"id": "v1pending", "task_name": "v1pending"}).to_string();
    js.publish("tasks.anna.p1", body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let seq = queue.get_info().await.unwrap().state.last_sequence;
    let tasks = [
        task("v1pending", TaskStatus::Pending, 0, Some(seq)),
        task("v1done", TaskStatus::Completed, 1, None),
        task("v1running", TaskStatus::Running, 1, None),
    ];
    for kind in [EventKind::Created, EventKind::Started, EventKind::Completed] {
        let e = TaskEvent::new(&tasks[1].id, &tasks[1].assigned_to, kind, "v1");
        let subject = format!("events.anna.v1done.{}", kind.as_str());
        js.publish(subject, serde_json::to_vec(&e).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "tasks".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for t in &tasks {
        let key = format!("anna.{}", t.id);
        bucket
            .put(key, serde_json::to_vec(t).unwrap().into())
            .await
            .unwrap();
    }
    tasks
}

fn migrate(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_taskfleet"))
        .args(["migrate", "--nats-url", url])
        .env_remove("TASKFLEET_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run taskfleet migrate");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Connect options of a taskfleet process of its own, with no credentials, to `url`.
pub(crate) fn options(url: &str) -> ConnectOptions {
    ConnectOptions {
        url: url.to_string(),
        name: "test".into(),
        connect_timeout: Duration::from_secs(5),
        user: None,
        password: None,
    }
}

#[tokio::test]
async fn the_ledger_is_stored_in_4_mb_blocks_so_a_cold_read_loads_half_as_much_as_in_8_mb() {
    // Arrange: the streams as taskfleet makes them.
    let nats = NatsServer::start().await;
    let _bus = Bus::connect(&options(&nats.url()), &TopologyConfig::default())
        .await
        .expect("the topology is made");
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());

    // Act: 6 MB of records appended to the ledger.
    let record = bytes::Bytes::from(vec![b'x'; 8 * 1024]);
    let mut acks = Vec::new();
    for i in 0..768 {
        let subject = format!("ledger.anna.t{i}.step");
        acks.push(js.publish(subject, record.clone()).await.unwrap());
    }
    for ack in acks {
        ack.await.expect("stored");
    }

    // Assert: the server cut them into blocks of 4 MB, not one of 8 MB.
    let dir = nats.store_dir().join("jetstream/$G/streams/EVENTS/msgs");
    let sizes: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "blk"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert!(sizes.len() >= 2, "one block holds 6 MB: {sizes:?}");
    let limit = 4 * 1024 * 1024 + 16 * 1024;
    assert!(sizes.iter().all(|&s| s <= limit), "{sizes:?}");
}

#[tokio::test]
async fn a_store_from_before_storage_v2_is_refused_at_start_and_migrated_in_place() {
    // Arrange
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let before = write_v1_store(&js).await;

    // Act + Assert: refused with what to do, never silently ignored.
    let refused = Bus::connect(&options(&nats.url()), &TopologyConfig::default()).await;
    match refused {
        Err(BusError::Incompatible(why)) => assert!(why.contains("taskfleet migrate"), "{why}"),
        other => panic!("a v1 store was accepted: {other:?}"),
    }
    let (ok, said) = migrate(&nats.url());
    assert!(ok, "{said}");
    assert!(said.contains("3 tasks carried over"), "{said}");

    // Assert: every task reads as it was, the old log is kept, and work goes on.
    let bus = Bus::connect(&options(&nats.url()), &TopologyConfig::default())
        .await
        .expect("the migrated store is accepted");
    let tasks = TaskService::new(bus, Arc::new(Default::default()));
    for t in &before {
        let now = tasks.get(&t.id).await.unwrap();
        assert_eq!(
            (now.status, now.attempt, &now.result),
            (t.status, t.attempt, &t.result)
        );
    }
    let actions: Vec<String> = tasks
        .logs(&before[1].id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.action)
        .collect();
    assert_eq!(actions, ["create", "start", "complete", "complete"]);
    let pending = tasks.pending(None, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, before[0].id);
    let started = tasks.start(&before[0].id, "bot").await.unwrap();
    assert_eq!((started.status, started.attempt), (TaskStatus::Running, 1));
    assert!(
        js.get_stream("KV_tasks").await.is_err(),
        "the old bucket is gone"
    );
    let (ok, again) = migrate(&nats.url());
    assert!(ok && again.contains("nothing to migrate"), "{again}");
}

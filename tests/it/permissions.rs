//! Per-process NATS users (`taskfleet nats-config`) against a real nats-server running the
//! generated authorization block: each process does its job as its own user, and anna's worker
//! user is refused, with the server's permission error, on everything of trump's.

use crate::harness::app::worker_settings;
use crate::harness::dies_with_test;
use crate::harness::eventually;
use crate::harness::ports::{free_port, start_on_free_ports, up_command};
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskfleet::bus::permissions::inbox_prefix;
use taskfleet::bus::{subjects, Bus, ConnectOptions, TopologyConfig};
use taskfleet::domain::{Assignee, EventKind, NewTask, Priority, Task};
use taskfleet::natsauth::{self, Generated, Role};
use taskfleet::tasks::TaskService;
use tokio_util::sync::CancellationToken;

/// A nats-server running `nats.conf` plus a generated auth file, on a random port.
pub(crate) struct SecureNats {
    child: Child,
    port: u16,
    users: Generated,
    dir: tempfile::TempDir,
}

impl SecureNats {
    /// Generates users for `assignees` and starts the server with them.
    pub(crate) async fn start(assignees: &[&str]) -> Self {
        taskfleet::telemetry::init_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let users = natsauth::generate(&natsauth::Options {
            assignees: assignees.iter().map(|a| assignee(a)).collect(),
            out: dir.path().join("nats-auth.conf"),
            env_dir: dir.path().join("env"),
            rotate: false,
            bcrypt_cost: 4,
            anonymous_probe: false,
        })
        .unwrap();
        // The documented setup: the repository's nats.conf with the generated file included.
        let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf"));
        let conf = dir.path().join("server.conf");
        let text = format!("{}\ninclude \"nats-auth.conf\"\n", base.unwrap());
        std::fs::write(&conf, text).unwrap();
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports).unwrap();
        let bin =
            taskfleet::natsd::find_binary(None).expect("nats-server (scripts/ensure-nats.sh)");
        let child = dies_with_test(&mut Command::new(&bin))
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", "-1", "--store_dir"])
            .arg(dir.path().join("store"))
            .arg("-l")
            .arg(dir.path().join("nats.log"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let file = ports.join(format!(
            "{}_{}.ports",
            bin.file_name().unwrap().to_string_lossy(),
            child.id()
        ));
        let mut me = Self {
            child,
            port: 0,
            users,
            dir,
        };
        me.port = eventually("the ports file", Duration::from_secs(10), || async {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
            v["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
        })
        .await;
        let (client, _) = me.client(&Role::Api).await;
        let js = async_nats::jetstream::new(client);
        eventually("JetStream", Duration::from_secs(10), || async {
            js.query_account().await.ok()
        })
        .await;
        me
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(crate) fn user(&self, role: &Role) -> (String, String) {
        let c = self.users.credentials(role).expect("generated user");
        (c.user.clone(), c.password.expose_secret().to_string())
    }

    /// A fleet connection as `role`'s user, exactly as the processes make it.
    pub(crate) async fn bus(&self, role: &Role) -> Bus {
        let (user, password) = self.user(role);
        let opts = ConnectOptions {
            url: self.url(),
            name: format!("test-{user}"),
            connect_timeout: Duration::from_secs(10),
            user: Some(user),
            password: Some(password),
        };
        Bus::connect(&opts, &TopologyConfig::default())
            .await
            .expect("connects and opens the topology")
    }

    /// A raw client as `role`'s user that records the server's errors.
    async fn client(&self, role: &Role) -> (async_nats::Client, Errors) {
        let (user, password) = self.user(role);
        let errors = Errors::default();
        let seen = errors.clone();
        let client = async_nats::ConnectOptions::with_user_and_password(user.clone(), password)
            .custom_inbox_prefix(inbox_prefix(&user))
            .event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        seen.0.lock().unwrap().push(e.to_string());
                    }
                }
            })
            .connect(self.url())
            .await
            .expect("connects");
        (client, errors)
    }

    /// The server's log lines reporting a permission violation by `role`'s user.
    pub(crate) fn violations(&self, role: &Role) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
        let who = format!("user:{}\"", role.user());
        log.lines()
            .filter(|l| l.contains("Violation") && l.contains(&who))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Server errors (`-ERR …`) one connection received.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl Errors {
    /// Waits until the server refused `what` (`Publish to "x"` / `Subscription to "x"`).
    async fn refused(&self, what: &str) {
        let wanted = format!("permissions violation for {what}").to_lowercase();
        let started = Instant::now();
        loop {
            let seen = self.0.lock().unwrap().clone();
            if seen.iter().any(|e| e.to_lowercase().contains(&wanted)) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the server did not refuse {what}; it said: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn assignee(name: &str) -> Assignee {
    Assignee::parse(name).unwrap()
}

fn new_task(assignee: &str, kind: &str, payload: serde_json::Value) -> NewTask {
    serde_json::from_value(json!({
        "task_name": format!("{kind} for {assignee}"), "assigned_to": assignee,
        "priority": "P0", "kind": kind, "payload": payload,
    }))
    .unwrap()
}

/// Anna's worker (2 slots) as her own NATS user, until `token` is cancelled.
async fn annas_worker(
    nats: &SecureNats,
    settings: taskfleet::config::WorkerConfig,
    token: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), taskfleet::worker::WorkerError>> {
    let anna = Role::Worker(assignee("anna"));
    tokio::spawn(taskfleet::worker::run(
        nats.bus(&anna).await,
        taskfleet::worker::WorkerOptions {
            assignee: assignee("anna"),
            concurrency: 2,
            worker_id: "anna@test".into(),
            api_url: "http://127.0.0.1:9".into(),
            task_token_secret: None,
            settings,
        },
        token.clone(),
    ))
}

fn service(bus: Bus) -> TaskService {
    TaskService::new(bus, Arc::new(taskfleet::metrics::Metrics::default()))
}

async fn finished(tasks: &TaskService, id: &taskfleet::domain::TaskId) -> Task {
    eventually("the task to finish", Duration::from_secs(15), || async {
        let t = tasks.get(id).await.ok()?;
        t.status.is_terminal().then_some(t)
    })
    .await
}

/// A JetStream context whose requests give up after 1 s (a refused request gets no answer).
fn impatient(client: async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client)
}

#[tokio::test]
async fn the_api_user_creates_the_topology_and_queues_a_task_for_trump() {
    // Arrange
    let nats = SecureNats::start(&["anna", "trump"]).await;

    // Act: create, then what the API does with tasks: list, claim, log, feed, cancel.
    let api = service(nats.bus(&Role::Api).await);
    let created = api
        .create(new_task("trump", "manual", json!(null)), "test")
        .await
        .expect("the API may queue trump's task");
    let pending = api.pending(Some(&assignee("trump")), 10).await.unwrap();
    let other = api
        .create(new_task("anna", "manual", json!(null)), "test")
        .await
        .unwrap()
        .task;
    let listed = api
        .list(&taskfleet::tasks::ListFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = api.start(&created.task.id, "bot").await.unwrap();
    let logs = api.logs(&created.task.id).await.unwrap();
    let mut feed = Box::pin(api.follow(&created.task.id).await.unwrap());
    let first = tokio::time::timeout(Duration::from_secs(5), feed.next()).await;
    let cancelled = api.cancel(&other.id, None, "test").await.unwrap();
    let dead = api.dead_letters(None, 10).await.unwrap();

    // Assert
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, created.task.id);
    assert_eq!(listed.len(), 2);
    assert_eq!(started.status.as_str(), "running");
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(matches!(first, Ok(Some(Ok(_)))), "{first:?}");
    assert_eq!(cancelled.status.as_str(), "cancelled");
    assert!(dead.is_empty());
    let js = async_nats::jetstream::new(nats.client(&Role::Api).await.0);
    for s in natsauth::fleet_streams() {
        js.get_stream(&s).await.expect("stream created");
    }
    assert_eq!(nats.violations(&Role::Api), Vec::<String>::new());
}

#[tokio::test]
async fn annas_worker_user_runs_annas_tasks_end_to_end() {
    // Arrange
    let nats = SecureNats::start(&["anna", "trump"]).await;
    let api = service(nats.bus(&Role::Api).await);
    let anna = Role::Worker(assignee("anna"));
    let token = CancellationToken::new();
    let worker = annas_worker(&nats, worker_settings(), &token).await;

    // Act: one command that prints, one that reads stdin written through the API's user.
    let echo = api
        .create(
            new_task("anna", "exec", json!({"command": "echo hello"})),
            "t",
        )
        .await
        .unwrap()
        .task;
    let cat = api
        .create(new_task("anna", "exec", json!({"command": "cat"})), "t")
        .await
        .unwrap()
        .task;
    let control = subjects::control(&assignee("anna"), &cat.id, "input");
    let api_client = api.bus().client.clone();
    eventually(
        "the worker to take stdin",
        Duration::from_secs(15),
        || async {
            let body = json!({"data": "typed\n", "eof": true}).to_string();
            let reply = api_client
                .request(control.clone(), body.into())
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
            (v["ok"] == true).then_some(())
        },
    )
    .await;
    let echo = finished(&api, &echo.id).await;
    let cat = finished(&api, &cat.id).await;
    token.cancel();
    worker.await.unwrap().expect("the worker ran");

    // Assert
    assert_eq!(echo.status.as_str(), "completed", "{:?}", echo.error);
    assert_eq!(echo.result, Some(json!("hello\n")));
    assert_eq!(cat.result, Some(json!("typed\n")));
    assert_eq!(nats.violations(&anna), Vec::<String>::new());
    assert_eq!(nats.violations(&Role::Api), Vec::<String>::new());
}

#[tokio::test]
async fn annas_worker_user_has_the_api_move_aside_a_message_it_cannot_read() {
    // Arrange: an API answering queue checks, anna's worker, and an unreadable message ahead
    // of a good task in anna's queue.
    let nats = SecureNats::start(&["anna"]).await;
    let api = service(nats.bus(&Role::Api).await);
    let token = CancellationToken::new();
    tokio::spawn(api.clone().answer_queue_checks(token.clone()));
    let (user, password) = nats.user(&Role::Api);
    let poison = crate::poison::POISON_HEADERS;
    let body = br#"{"task_name":"unreadable"}"#;
    let url = nats.url();
    crate::poison::publish_raw_as(
        &url,
        Some((&user, &password)),
        "tasks.anna.p0.noop",
        poison,
        body,
    )
    .await;
    let good = api
        .create(new_task("anna", "noop", json!({})), "t")
        .await
        .unwrap()
        .task;
    let anna = Role::Worker(assignee("anna"));
    let worker = annas_worker(&nats, worker_settings(), &token).await;

    // Act
    let good = finished(&api, &good.id).await;
    let dead = eventually("the dead letter", Duration::from_secs(15), || async {
        let dead = api.dead_letters(Some(&assignee("anna")), 10).await.ok()?;
        (dead.len() == 1).then_some(dead)
    })
    .await;
    token.cancel();
    worker.await.unwrap().expect("the worker ran");

    // Assert: the good task ran; the unreadable one is a dead letter saying why; anna's user
    // never tried what it may not do (the API read the queue for it).
    assert_eq!(good.status.as_str(), "completed", "{:?}", good.error);
    let why = dead[0].error.clone().unwrap_or_default();
    assert!(why.contains("UTF-8"), "{why}");
    assert_eq!(nats.violations(&anna), Vec::<String>::new());
}

#[tokio::test]
async fn a_nats_url_with_credentials_connects_as_that_user() {
    // Arrange: the API's credentials in the URL only, the password percent-encoded.
    let nats = SecureNats::start(&["anna"]).await;
    let (user, password) = nats.user(&Role::Api);
    let encoded: String = password.bytes().map(|b| format!("%{b:02X}")).collect();
    let opts = ConnectOptions {
        url: format!("nats://{user}:{encoded}@127.0.0.1:{}", nats.port),
        name: "test-url-credentials".into(),
        connect_timeout: Duration::from_secs(10),
        user: None,
        password: None,
    };

    // Act
    let bus = Bus::connect(&opts, &TopologyConfig::default()).await;

    // Assert: connected as the API user, who may queue tasks.
    let bus = bus.expect("connects with the URL's credentials");
    let created = service(bus)
        .create(new_task("anna", "noop", json!({})), "t")
        .await;
    assert!(created.is_ok(), "{created:?}");
    assert_eq!(nats.violations(&Role::Api), Vec::<String>::new());
}

#[tokio::test]
async fn annas_worker_user_is_refused_trumps_subjects_and_consumers() {
    // Arrange: the topology, a task for trump, and trump's consumer.
    let nats = SecureNats::start(&["anna", "trump"]).await;
    let api = service(nats.bus(&Role::Api).await);
    api.create(new_task("trump", "exec", json!({"command": "true"})), "t")
        .await
        .unwrap();
    let trump = nats.bus(&Role::Worker(assignee("trump"))).await;
    let worker_config = |who: &str, filter: String| pull::Config {
        durable_name: Some(subjects::worker_consumer(
            &assignee(who),
            Priority::P1,
            None,
        )),
        filter_subject: filter,
        ack_policy: AckPolicy::Explicit,
        ..Default::default()
    };
    let trumps_p1 = subjects::worker_filter(&assignee("trump"), Priority::P1, None);
    let _: PullConsumer = trump
        .topology
        .tasks
        .create_consumer(worker_config("trump", trumps_p1.clone()))
        .await
        .expect("trump may create his own consumer");
    let (client, errors) = nats.client(&Role::Worker(assignee("anna"))).await;
    let js = impatient(client.clone());
    let tasks = js.get_stream(subjects::TASKS_STREAM).await.unwrap();

    // Act + Assert: subscribe to trump's queue subjects.
    let mut spy = client.subscribe("tasks.trump.>").await.unwrap();
    errors.refused("Subscription to \"tasks.trump.>\"").await;

    // Publish one of trump's events.
    let published = js.publish("events.trump.x.started", "{}".into()).await;
    assert!(
        published.unwrap().await.is_err(),
        "no ack for a refused publish"
    );
    errors
        .refused("Publish to \"events.trump.x.started\"")
        .await;

    // Pull from trump's consumer, directly or through its info.
    let next = "$JS.API.CONSUMER.MSG.NEXT.TASKS.worker_trump_p1";
    let pulled = tokio::time::timeout(
        Duration::from_secs(1),
        client.request(next, json!({"batch": 1}).to_string().into()),
    )
    .await;
    assert!(!matches!(pulled, Ok(Ok(_))), "no message for anna");
    errors.refused(&format!("Publish to \"{next}\"")).await;
    let info = tasks.get_consumer::<pull::Config>("worker_trump_p1").await;
    assert!(info.is_err());
    errors
        .refused("Publish to \"$JS.API.CONSUMER.INFO.TASKS.worker_trump_p1\"")
        .await;

    // Create a consumer on trump's subjects: under her own name, or unnamed.
    let hijack = tasks
        .create_consumer(worker_config("anna", trumps_p1.clone()))
        .await;
    assert!(hijack.is_err());
    errors
        .refused(&format!(
            "Publish to \"$JS.API.CONSUMER.CREATE.TASKS.worker_anna_p1.{trumps_p1}\""
        ))
        .await;
    let unnamed = tasks
        .create_consumer(pull::Config {
            filter_subject: "tasks.trump.>".into(),
            ..Default::default()
        })
        .await;
    assert!(unnamed.is_err());
    errors
        .refused("Publish to \"$JS.API.CONSUMER.CREATE.TASKS\"")
        .await;
    // The subject names her filter, so the server refuses a body with other filters.
    let sneaky = client
        .request(
            "$JS.API.CONSUMER.CREATE.TASKS.worker_anna_p1.tasks.anna.p1.*",
            json!({"stream_name": "TASKS", "config": {"durable_name": "worker_anna_p1",
                "filter_subjects": [trumps_p1], "ack_policy": "explicit"}})
            .to_string()
            .into(),
        )
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&sneaky.payload).to_string();
    assert!(answer.contains("\"error\""), "{answer}");

    // Her own consumer is fine, and nothing of trump's ever reached her.
    let own = subjects::worker_filter(&assignee("anna"), Priority::P1, None);
    tasks
        .create_consumer(worker_config("anna", own))
        .await
        .expect("anna may create her own consumer");
    let leaked = tokio::time::timeout(Duration::from_millis(200), spy.next()).await;
    assert!(!matches!(leaked, Ok(Some(_))), "anna received {leaked:?}");
}

#[tokio::test]
async fn annas_worker_user_can_neither_read_nor_write_trumps_task_state() {
    // Arrange: one task each for trump and anna, created by the API.
    let nats = SecureNats::start(&["anna", "trump"]).await;
    let api = service(nats.bus(&Role::Api).await);
    let trumps = api
        .create(new_task("trump", "manual", json!({"secret": "t"})), "t")
        .await
        .unwrap()
        .task;
    let annas = api
        .create(new_task("anna", "manual", json!(null)), "t")
        .await
        .unwrap()
        .task;
    let anna = Role::Worker(assignee("anna"));
    let (client, errors) = nats.client(&anna).await;
    let trumps_record = subjects::event(&assignee("trump"), &trumps.id, EventKind::Created);

    // Act + Assert: a direct get of trump's record (by subject, and with the subject in the
    // body), the leader's MSG.GET, a write to trump's ledger, a consumer on the ledger.
    let direct = format!(
        "$JS.API.DIRECT.GET.{}.{trumps_record}",
        subjects::EVENTS_STREAM
    );
    let body_direct = format!("$JS.API.DIRECT.GET.{}", subjects::EVENTS_STREAM);
    let leader = format!("$JS.API.STREAM.MSG.GET.{}", subjects::EVENTS_STREAM);
    let body = json!({ "last_by_subj": subjects::task_ledger(&assignee("trump"), &trumps.id) });
    for (request, payload) in [
        (direct, String::new()),
        (body_direct, body.to_string()),
        (leader, body.to_string()),
    ] {
        let got = tokio::time::timeout(
            Duration::from_secs(1),
            client.request(request.clone(), payload.into()),
        )
        .await;
        assert!(
            !matches!(got, Ok(Ok(_))),
            "anna read trump's state with {request}: {got:?}"
        );
        errors.refused(&format!("Publish to \"{request}\"")).await;
    }
    let js = impatient(client.clone());
    let trumps_write = subjects::ledger_write(&assignee("trump"), &trumps.id, EventKind::Completed);
    let written = js.publish(trumps_write.clone(), "{}".into()).await;
    assert!(
        written.unwrap().await.is_err(),
        "no ack for a refused write"
    );
    errors
        .refused(&format!("Publish to \"{trumps_write}\""))
        .await;
    let ledger = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    let watch: Result<PullConsumer, _> = ledger
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await;
    assert!(watch.is_err(), "anna may not read every task's ledger");
    errors
        .refused(&format!(
            "Publish to \"$JS.API.CONSUMER.CREATE.{}\"",
            subjects::EVENTS_STREAM
        ))
        .await;

    // Her own worker service reads her task, and finds no task of trump's.
    let own = service(nats.bus(&anna).await).scoped_to(assignee("anna"));
    assert_eq!(own.get(&annas.id).await.unwrap().id, annas.id);
    let hidden = own.get(&trumps.id).await;
    assert!(
        matches!(hidden, Err(taskfleet::tasks::TaskError::NotFound(_))),
        "{hidden:?}"
    );
    let unchanged = api.get(&trumps.id).await.unwrap();
    assert_eq!(unchanged.revision, trumps.revision);
}

#[tokio::test]
async fn the_relay_user_reads_events_but_cannot_publish_tasks() {
    // Arrange
    let nats = SecureNats::start(&["anna"]).await;
    let api = service(nats.bus(&Role::Api).await);
    let relay_bus = nats.bus(&Role::Relay).await;
    let token = CancellationToken::new();
    let relay = tokio::spawn(taskfleet::relay::run(
        relay_bus,
        Default::default(),
        token.clone(),
    ));

    // Act: the relay reads the `created` event of a new task.
    api.create(new_task("anna", "manual", json!(null)), "t")
        .await
        .unwrap();
    let events = api.bus().topology.events.clone();
    eventually(
        "the relay to ack the event",
        Duration::from_secs(10),
        || async {
            let mut c: PullConsumer = events
                .get_consumer(subjects::RELAY_EVENTS_CONSUMER)
                .await
                .ok()?;
            let info = c.info().await.ok()?;
            (info.ack_floor.stream_sequence >= 1 && info.num_pending == 0).then_some(())
        },
    )
    .await;
    token.cancel();
    relay.await.unwrap().expect("the relay ran");
    let while_running = nats.violations(&Role::Relay);
    let (client, errors) = nats.client(&Role::Relay).await;
    let queued = impatient(client.clone())
        .publish("tasks.anna.p0", "{}".into())
        .await;

    // Assert
    assert_eq!(while_running, Vec::<String>::new());
    assert!(
        queued.unwrap().await.is_err(),
        "no ack for a refused publish"
    );
    errors.refused("Publish to \"tasks.anna.p0\"").await;
}

#[tokio::test]
async fn nats_config_writes_private_files_that_nats_server_accepts_and_prints_no_password() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_taskfleet"))
            .args(["nats-config", "--assignees", "anna,trump", "--out"])
            .arg(dir.path().join("nats-auth.conf"))
            .arg("--env-dir")
            .arg(dir.path().join("env"))
            .output()
            .unwrap()
    };

    // Act
    let first = run();
    let env = |user: &str| std::fs::read_to_string(dir.path().join(format!("env/{user}.env")));
    let before = env("worker-anna").unwrap();
    let second = run();
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, "include \"nats-auth.conf\"\n").unwrap();
    let checked = Command::new(taskfleet::natsd::find_binary(None).unwrap())
        .arg("-c")
        .arg(&conf)
        .arg("-t")
        .output()
        .unwrap();

    // Assert
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{first:?}");
    let password = before
        .lines()
        .find_map(|l| l.strip_prefix("TASKFLEET_NATS__PASSWORD="))
        .unwrap();
    assert!(!out.contains(password), "{out}");
    assert!(out.contains("worker-trump"), "{out}");
    assert!(String::from_utf8_lossy(&second.stdout).contains("password kept"));
    assert_eq!(env("worker-anna").unwrap(), before);
    assert!(checked.status.success(), "{checked:?}");
    use std::os::unix::fs::PermissionsExt;
    for f in ["nats-auth.conf", "env/api.env", "env/worker-trump.env"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

/// `taskfleet up --secure` with a worker for anna: the binary as a user runs it.
#[tokio::test]
async fn up_secure_runs_every_process_as_its_own_user() {
    // Arrange
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("fleet.toml");
    std::fs::write(&config, "[fleet]\nassignees = [\"anna\"]\n").unwrap();
    let (mut child, api_port, nats_port) = start_secure_up(data.path(), &config).await;
    let client = taskfleet::client::ApiClient::new(
        &format!("http://127.0.0.1:{api_port}"),
        Some("test-admin-key-0123456789".into()),
    );
    let started = Instant::now();

    // Act: an exec task for anna, run by anna's worker user.
    let task = eventually(
        "the API to accept a task",
        Duration::from_secs(60),
        || async {
            client
                .create_task(&json!({"task_name": "hi", "assigned_to": "anna",
                "kind": "exec", "payload": {"command": "echo hi"}}))
                .await
                .ok()
        },
    )
    .await;
    let done = eventually("the task to finish", Duration::from_secs(20), || async {
        let t = client.get_task(task.id.as_str()).await.ok()?;
        t.status.is_terminal().then_some(t)
    })
    .await;
    let anonymous = async_nats::connect(format!("nats://127.0.0.1:{nats_port}"))
        .await
        .expect("the readiness probe user");
    let probe = async_nats::jetstream::new(anonymous.clone())
        .query_account()
        .await;
    let spy = impatient(anonymous)
        .get_stream(subjects::TASKS_STREAM)
        .await;
    taskfleet::sys::signal_process(child.id().unwrap(), libc::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("up exits after SIGTERM")
        .unwrap();

    // Assert
    assert_eq!(done.status.as_str(), "completed", "{:?}", done.error);
    assert!(probe.is_ok(), "anonymous may ask JetStream's account info");
    assert!(spy.is_err(), "anonymous may read nothing else");
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(data.path().join("nats-server.log")).unwrap();
    let violations: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Violation") && !l.contains(natsauth::PROBE_USER))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
    let env = std::fs::read_to_string(data.path().join("nats-auth/worker-anna.env")).unwrap();
    assert!(env.contains("TASKFLEET_NATS__USER=worker-anna"));
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// `taskfleet up --secure` with `config` and its data in `data`, its API on `api_port` and its
/// nats-server on `nats_port`; what it says goes to `data/up.log`.
fn secure_up(data: &Path, config: &Path, api_port: u16, nats_port: u16) -> tokio::process::Child {
    let log = std::fs::File::create(data.join("up.log")).expect("up's log file");
    up_command(data, api_port, nats_port)
        .arg("--secure")
        .arg("--config")
        .arg(config)
        .env("TASKFLEET_API_KEY", "test-admin-key-0123456789")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn taskfleet up")
}

/// Starts [`secure_up`] on ports [`free_port`] hands out and waits (60 s at most) until its API
/// answers; returns it with the API's and nats-server's ports. Another test may take a port
/// before `up` binds it: a start that fails so is tried again on others, three times at most.
async fn start_secure_up(data: &Path, config: &Path) -> (tokio::process::Child, u16, u16) {
    start_on_free_ports("taskfleet up --secure", || async move {
        let (api_port, nats_port) = (free_port(), free_port());
        let mut child = secure_up(data, config, api_port, nats_port);
        let healthz = format!("http://127.0.0.1:{api_port}/healthz");
        let answered = eventually(
            "up's API to answer, or up to exit",
            Duration::from_secs(60),
            || {
                let exited = child.try_wait().expect("try_wait").is_some();
                let healthz = healthz.clone();
                async move {
                    if exited {
                        return Some(false);
                    }
                    let answer =
                        tokio::time::timeout(Duration::from_secs(2), reqwest::get(&healthz));
                    answer.await.ok()?.ok().map(|_| true)
                }
            },
        )
        .await;
        match answered {
            true => Ok((child, api_port, nats_port)),
            false => Err(std::fs::read_to_string(data.join("up.log")).unwrap_or_default()),
        }
    })
    .await
}

#[tokio::test]
async fn annas_worker_user_holds_and_gives_back_flow_control_places_without_a_violation() {
    // Arrange: a cap, a limited key, a lane and a rate, all in the worker's own config.
    let nats = SecureNats::start(&["anna", "trump"]).await;
    let api = service(nats.bus(&Role::Api).await);
    let anna = Role::Worker(assignee("anna"));
    let mut settings = worker_settings();
    settings.limits.max_running = Some(1);
    settings.limits.concurrency = [("repo:*".to_string(), 1)].into();
    settings.limits.rate = [(
        "chan:*".to_string(),
        taskfleet::domain::Rate::parse("50/s").unwrap(),
    )]
    .into();
    let token = CancellationToken::new();
    let worker = annas_worker(&nats, settings, &token).await;

    // Act
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut new = new_task("anna", "exec", json!({"command": "echo hi"}));
        new.concurrency_key = Some("repo:acme/web".into());
        new.rate_key = Some("chan:tg-1".into());
        new.lane = Some("session:1".into());
        ids.push(api.create(new, "t").await.unwrap().task.id);
    }
    let mut done = Vec::new();
    for id in &ids {
        done.push(finished(&api, id).await);
    }
    token.cancel();
    worker.await.unwrap().expect("the worker ran");

    // Assert
    assert!(done.iter().all(|t| t.status.as_str() == "completed"));
    assert_eq!(nats.violations(&anna), Vec::<String>::new());
}

#[tokio::test]
async fn the_relay_user_ends_an_unreadable_delivery_job_without_a_violation() {
    // Arrange: a relay as its own user delivering anna's tasks to a receiver; the first task's
    // event arrived, so its destination has a queue and a loop.
    let nats = SecureNats::start(&["anna"]).await;
    let api = service(nats.bus(&Role::Api).await);
    let (hook, receiver) = crate::relay::Receiver::start().await;
    let token = CancellationToken::new();
    let settings = crate::harness::app::relay_settings();
    let relay_bus = nats.bus(&Role::Relay).await;
    let relay = tokio::spawn(taskfleet::relay::run(relay_bus, settings, token.clone()));
    let notifying = |name: &str| -> NewTask {
        serde_json::from_value(json!({
            "task_name": name, "assigned_to": "anna", "priority": "P0", "kind": "manual",
            "notify": [{"type": "webhook", "url": hook}],
        }))
        .unwrap()
    };
    let received = |n: usize| {
        let receiver = receiver.clone();
        async move {
            eventually("the deliveries", Duration::from_secs(20), || async {
                (receiver.seen.lock().unwrap().len() >= n).then_some(())
            })
            .await
        }
    };
    api.create(notifying("first"), "t").await.unwrap();
    received(1).await;
    let webhook = json!({"type": "webhook", "url": hook});
    let destination: taskfleet::outbound::destination::Destination =
        serde_json::from_value(webhook.clone()).unwrap();
    let key = destination.key(None);

    // Act: an unreadable job on the destination's queue (the API user may write there), then
    // the next task's event.
    let (user, password) = nats.user(&Role::Api);
    let job = json!({
        "id": "unreadable_job", "key": key, "destination": webhook,
        "text": "never sent", "created_time": "2026-01-01T00:00:00Z"
    });
    crate::poison::publish_raw_as(
        &nats.url(),
        Some((&user, &password)),
        &subjects::delivery(&key),
        crate::poison::POISON_HEADERS,
        job.to_string().as_bytes(),
    )
    .await;
    api.create(notifying("second"), "t").await.unwrap();
    received(2).await;
    let store = taskfleet::relay::store::DeliveryStore::new(api.bus().clone());
    let dead = eventually("the dead delivery", Duration::from_secs(15), || async {
        let record = store.get("unreadable_job").await.ok()?;
        (record.status == taskfleet::relay::job::DeliveryStatus::Dead).then_some(record)
    })
    .await;
    token.cancel();
    relay.await.unwrap().expect("the relay ran");

    // Assert: the relay's user read the job as JSON and ended it, with nothing refused.
    assert!(dead.reason.unwrap_or_default().contains("UTF-8"));
    assert_eq!(nats.violations(&Role::Relay), Vec::<String>::new());
}

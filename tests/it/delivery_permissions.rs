//! Delivery records under the fleet's own NATS users (`taskfleet nats-config`): the relay
//! records, moves and settles deliveries, and the API lists, reads and replays them, each as
//! its own user, without one permission violation.

use crate::harness::app::{relay_settings, test_config, ADMIN_KEY};
use crate::harness::dies_with_test;
use crate::harness::eventually;
use crate::harness::receiver::{Answer, Endpoint};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use taskfleet::config::Config;
use taskfleet::domain::Assignee;
use taskfleet::natsauth::{self, Generated, Role};
use taskfleet::outbound::destination::Destination;
use tokio_util::sync::CancellationToken;

/// nats-server with the repository's `nats.conf` and a generated authorization block.
struct SecuredNats {
    child: Child,
    port: u16,
    users: Generated,
    dir: tempfile::TempDir,
}

impl SecuredNats {
    async fn start() -> Self {
        taskfleet::telemetry::init_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let users = natsauth::generate(&natsauth::Options {
            assignees: vec![Assignee::parse("anna").unwrap()],
            out: dir.path().join("nats-auth.conf"),
            env_dir: dir.path().join("env"),
            rotate: false,
            bcrypt_cost: 4,
            anonymous_probe: false,
        })
        .unwrap();
        let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf"));
        let conf = dir.path().join("server.conf");
        let text = format!("{}\ninclude \"nats-auth.conf\"\n", base.unwrap());
        std::fs::write(&conf, text).unwrap();
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports).unwrap();
        let bin = taskfleet::natsd::find_binary(None).expect("nats-server");
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
        let port = eventually("the ports file", Duration::from_secs(10), || async {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
            v["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
        })
        .await;
        Self {
            child,
            port,
            users,
            dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The test config, connecting as `role`'s user.
    fn config(&self, role: &Role) -> Config {
        let c = self.users.credentials(role).expect("generated user");
        let mut cfg = test_config(&self.url());
        cfg.nats.user = Some(c.user.clone());
        cfg.nats.password = Some(SecretString::from(c.password.expose_secret().to_string()));
        cfg
    }

    /// The server's log lines reporting a permission violation by `role`'s user.
    fn violations(&self, role: &Role) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
        let who = format!("user:{}\"", role.user());
        log.lines()
            .filter(|l| l.contains("Violation") && l.contains(&who))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for SecuredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API served as the `api` user on 127.0.0.1:0.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn start(nats: &SecuredNats, token: &CancellationToken) -> Self {
        let cfg = nats.config(&Role::Api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (url, t) = (nats.url(), token.clone());
        tokio::spawn(async move {
            let key = cfg.api.admin_key.clone();
            taskfleet::serve::run_api(&cfg, &url, listener, key.as_ref(), t).await
        });
        let api = Self {
            base,
            http: reqwest::Client::new(),
        };
        eventually("the API to answer", Duration::from_secs(20), || async {
            let r = api.http.get(format!("{}/healthz", api.base)).send().await;
            (r.ok()?.status() == StatusCode::OK).then_some(())
        })
        .await;
        api
    }

    /// A request with the admin key (and a JSON body unless `Null`): status and JSON answer.
    async fn call(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Bot-Key", ADMIN_KEY);
        let req = if body.is_null() { req } else { req.json(&body) };
        let r = req.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /api/deliveries?<query>`.
    async fn deliveries(&self, query: &str) -> Vec<Value> {
        let (_, list) = self
            .call(
                Method::GET,
                &format!("/api/deliveries?{query}"),
                Value::Null,
            )
            .await;
        list.as_array().cloned().unwrap_or_default()
    }
}

fn webhook(url: String) -> Destination {
    Destination::Webhook {
        url,
        secret: None,
        secret_env: None,
        events: vec![],
        headers: Default::default(),
        headers_env: Default::default(),
    }
}

/// The relay, as the `relay` user, with webhooks `flaky` (fails once) and `refusing` (400).
async fn relay(
    nats: &SecuredNats,
    flaky: &Endpoint,
    refusing: &Endpoint,
    token: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), taskfleet::relay::RelayError>> {
    let mut settings = relay_settings();
    let destinations = [
        ("flaky", flaky.url("/flaky")),
        ("refusing", refusing.url("/refusing")),
    ];
    for (name, url) in destinations {
        settings.destinations.insert(name.into(), webhook(url));
    }
    let cfg = nats.config(&Role::Relay);
    let bus = taskfleet::serve::connect(&cfg, &nats.url(), "test-relay")
        .await
        .expect("the relay connects as its own user");
    tokio::spawn(taskfleet::relay::run(bus, settings, token.clone()))
}

#[tokio::test]
async fn the_relay_and_the_api_handle_delivery_records_as_their_own_users_without_a_violation() {
    // Arrange: one webhook that fails once then accepts (a record created, then moved), one
    // that refuses (dead at once); the relay and the API each as their own NATS user.
    let nats = SecuredNats::start().await;
    let token = CancellationToken::new();
    let api = Api::start(&nats, &token).await;
    let flaky = Endpoint::scripted(vec![Answer::status(500)]).await;
    let refusing = Endpoint::start().await;
    refusing.answer_from_now_on(Answer::status(400));
    let relay = relay(&nats, &flaky, &refusing, &token).await;

    // Act: a task notifying both; its first event is delivered after a retry, and dies.
    let new = json!({"task_name": "t", "assigned_to": "anna", "notify": ["flaky", "refusing"]});
    let (created, task) = api.call(Method::POST, "/api/tasks", new).await;
    let of_task = format!("task_id={}", task["id"].as_str().unwrap());
    eventually(
        "both deliveries settled",
        Duration::from_secs(15),
        || async {
            let ok = api.deliveries(&format!("status=delivered&{of_task}")).await;
            let dead = api.deliveries(&format!("status=dead&{of_task}")).await;
            (ok.len() == 1 && dead.len() == 1).then_some(())
        },
    )
    .await;
    let dead = eventually("the dead copy", Duration::from_secs(5), || async {
        let dead = api.deliveries("status=dead&destination=refusing").await;
        (dead.len() == 1).then_some(dead)
    })
    .await;
    let one = format!("/api/deliveries/{}", dead[0]["job"]["id"].as_str().unwrap());
    let (read, _) = api.call(Method::GET, &one, Value::Null).await;
    let (replayed, _) = api
        .call(Method::POST, &format!("{one}/replay"), Value::Null)
        .await;
    refusing.wait_for(2, Duration::from_secs(10)).await;
    let since = json!({"since": "2024-01-01T00:00:00Z"});
    let (again, _) = api
        .call(Method::POST, "/api/destinations/refusing/replay", since)
        .await;
    let (listed, _) = api
        .call(Method::GET, "/api/destinations", Value::Null)
        .await;
    let (enabled, _) = api
        .call(
            Method::POST,
            "/api/destinations/refusing/enable",
            Value::Null,
        )
        .await;
    for query in [
        "status=pending",
        "status=delivered",
        "",
        "destination=flaky",
    ] {
        api.deliveries(query).await;
    }
    token.cancel();
    relay.await.unwrap().expect("the relay ran");

    // Assert
    assert_eq!(created, StatusCode::CREATED, "{task}");
    assert_eq!(read, StatusCode::OK);
    assert_eq!(replayed, StatusCode::ACCEPTED);
    assert_eq!(again, StatusCode::ACCEPTED);
    assert_eq!(listed, StatusCode::OK);
    assert_eq!(enabled, StatusCode::OK);
    assert_eq!(nats.violations(&Role::Relay), Vec::<String>::new());
    assert_eq!(nats.violations(&Role::Api), Vec::<String>::new());
}

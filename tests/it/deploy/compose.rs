//! deploy/compose.yaml: three clustered nats-servers, the API, the relay, and one worker per
//! fleet assignee, each checked against the real CLI and config.

use super::support::*;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use taskfleet::cli::Command;

/// One service of compose.yaml, merge keys resolved.
pub struct Service {
    pub name: String,
    v: Value,
}

impl Service {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key)
    }

    pub fn image(&self) -> String {
        s(self
            .get("image")
            .unwrap_or_else(|| panic!("{}: image", self.name)))
    }

    pub fn is_nats(&self) -> bool {
        self.image().starts_with("nats:")
    }

    pub fn command(&self) -> Vec<String> {
        strings(
            self.get("command")
                .unwrap_or_else(|| panic!("{}: command", self.name)),
        )
    }

    /// `environment` as written (interpolations unresolved).
    pub fn raw_env(&self) -> Env {
        let Some(env) = self.get("environment") else {
            return Env::new();
        };
        env.as_mapping()
            .unwrap_or_else(|| panic!("{}: environment is a mapping", self.name))
            .iter()
            .map(|(k, v)| (s(k), s(v)))
            .collect()
    }

    /// The `env_file`s, relative to deploy/.
    pub fn env_files(&self) -> Vec<String> {
        self.get("env_file").map(strings).unwrap_or_default()
    }

    /// What the container gets: its env files (from `taskfleet nats-config`), then
    /// `environment` (compose lets it win), with stand-ins for `${…}`.
    pub fn env(&self) -> Env {
        let mut env = Env::new();
        for f in self.env_files() {
            let name = f.strip_prefix("./env/").unwrap_or_else(|| {
                panic!("{}: env file {f} is not one nats-config writes", self.name)
            });
            env.extend(credentials().env_file(name).clone());
        }
        for (k, v) in self.raw_env() {
            env.insert(k, interpolate(&v).0);
        }
        env
    }

    pub fn volumes(&self) -> Vec<String> {
        self.get("volumes").map(strings).unwrap_or_default()
    }

    /// The host side of the volume mounted at `target`.
    pub fn mount_source(&self, target: &str) -> Option<String> {
        self.volumes().into_iter().find_map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            (parts.get(1) == Some(&target)).then(|| parts[0].to_string())
        })
    }

    /// The repository file behind `--config` (through the service's volume).
    pub fn config_file(&self) -> PathBuf {
        let cli = parse_cli(&self.command());
        let inside = cli.config.expect("--config").display().to_string();
        assert_eq!(inside, CONFIG_IN_CONTAINER, "{}", self.name);
        let host = self
            .mount_source(&inside)
            .unwrap_or_else(|| panic!("{}: nothing mounted at {inside}", self.name));
        deploy(&host)
    }

    pub fn config(&self) -> taskfleet::config::Config {
        effective_config(&self.name, &self.config_file(), &self.env())
    }
}

pub fn services() -> Vec<Service> {
    let docs = yaml_docs(&deploy("compose.yaml"));
    assert_eq!(docs.len(), 1, "compose.yaml is one document");
    docs[0]["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| Service {
            name: s(k),
            v: v.clone(),
        })
        .collect()
}

pub fn taskfleet_services() -> Vec<Service> {
    services().into_iter().filter(|s| !s.is_nats()).collect()
}

pub fn nats_services() -> Vec<Service> {
    services().into_iter().filter(Service::is_nats).collect()
}

#[test]
fn compose_runs_three_clustered_nats_nodes_with_jetstream() {
    let nats = nats_services();
    let names: Vec<String> = nats.iter().map(|n| n.name.clone()).collect();
    assert_eq!(names, ["nats-1", "nats-2", "nats-3"]);
    let mut data = BTreeSet::new();
    for n in &nats {
        assert_eq!(
            n.command(),
            ["--config", "/etc/nats/nats.conf"],
            "{}",
            n.name
        );
        assert_eq!(n.mount_source("/etc/nats").as_deref(), Some("./nats"));
        data.insert(n.mount_source("/data").expect("a data volume"));
        assert_eq!(
            n.env()["SERVER_NAME"],
            n.name,
            "server_name is the service name"
        );
        assert_eq!(n.get("hostname").map(s).as_deref(), Some(n.name.as_str()));
        let test = strings(&n.get("healthcheck").expect("healthcheck")["test"]).join(" ");
        assert!(test.contains("http://127.0.0.1:8222/healthz"), "{test}");
    }
    assert_eq!(data.len(), 3, "one JetStream volume per node");

    let conf = read(&deploy("nats/nats.conf"));
    assert!(conf.contains("server_name: $SERVER_NAME"));
    assert!(
        conf.contains("\nhttp_port: 8222\n"),
        "the health check's port"
    );
    assert!(conf.contains("jetstream {") && conf.contains("store_dir: \"/data\""));
    assert!(conf.contains("cluster {") && conf.contains("    port: 6222\n"));
    for n in &names {
        assert!(
            conf.contains(&format!("\"nats://{n}:6222\"")),
            "route to {n}"
        );
    }
    assert!(conf.contains("include ./auth.conf"));
}

#[test]
fn compose_commands_parse_with_the_real_cli() {
    let mut kinds = BTreeMap::new();
    for svc in taskfleet_services() {
        assert!(svc.image().starts_with("taskfleet:"), "{}", svc.name);
        let build = svc.get("build").expect("build");
        assert_eq!(build["dockerfile"], "deploy/Dockerfile");
        assert_eq!(build["context"], "..");
        let kind = match parse_cli(&svc.command()).command {
            Command::Api(_) => "api",
            Command::Relay(_) => "relay",
            Command::Worker(_) => "worker",
            other => panic!("{}: {other:?} is not a service", svc.name),
        };
        *kinds.entry(kind).or_insert(0) += 1;
        assert!(svc.config_file().is_file(), "{}", svc.name);
    }
    assert_eq!((kinds["api"], kinds["relay"]), (1, 1));
    assert_eq!(kinds["worker"], fleet_assignees().len());
}

#[test]
fn compose_env_names_are_config_fields_cli_variables_or_named_secrets() {
    for svc in taskfleet_services() {
        let env = svc.env();
        assert_env_names_are_read(&svc.name, &env);
        svc.config();
    }
}

#[test]
fn compose_has_one_scalable_worker_per_fleet_assignee_with_its_own_nats_user() {
    let mut assignees = BTreeSet::new();
    let mut users = BTreeSet::new();
    for svc in taskfleet_services() {
        let env = svc.env();
        assert_eq!(svc.env_files().len(), 1, "{}: its own env file", svc.name);
        let user = env
            .get("TASKFLEET_NATS__USER")
            .unwrap_or_else(|| panic!("{}: a NATS user", svc.name));
        assert!(env.contains_key("TASKFLEET_NATS__PASSWORD"), "{}", svc.name);
        assert!(
            users.insert(user.clone()),
            "{}: user {user} is shared",
            svc.name
        );
        for k in ["TASKFLEET_NATS__USER", "TASKFLEET_NATS__PASSWORD"] {
            assert!(
                !svc.raw_env().contains_key(k),
                "{}: {k} comes from the env file",
                svc.name
            );
        }
        match parse_cli(&svc.command()).command {
            Command::Api(_) => assert_eq!(user, "api"),
            Command::Relay(_) => assert_eq!(user, "relay"),
            Command::Worker(w) => {
                taskfleet::domain::Assignee::parse(&w.assignee).expect("a valid assignee");
                assert_eq!(user, &format!("worker-{}", w.assignee));
                assert_eq!(env.get("TASKFLEET_ASSIGNEE"), Some(&w.assignee));
                assert!(assignees.insert(w.assignee.clone()), "{}", svc.name);
                // `--scale worker-anna=3` needs neither a fixed name nor a host port.
                assert!(svc.get("container_name").is_none(), "{}", svc.name);
                assert!(svc.get("ports").is_none(), "{}", svc.name);
                assert!(
                    !env.contains_key("TASKFLEET_API_KEY"),
                    "workers get no admin key"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(assignees, fleet_assignees());
}

#[test]
fn compose_health_checks_ask_healthz() {
    for svc in taskfleet_services() {
        // The API on its --api-addr; relay and workers on their health endpoint.
        let port = match parse_cli(&svc.command()).command {
            Command::Api(a) => a.api_addr.expect("--api-addr").port(),
            _ => health_listen(&svc.command(), &svc.config())
                .unwrap_or_else(|| panic!("{}: --health-listen", svc.name))
                .port(),
        };
        let test = strings(&svc.get("healthcheck").expect("healthcheck")["test"]).join(" ");
        assert!(
            test.contains(&format!("http://127.0.0.1:{port}/healthz")),
            "{}: {test}",
            svc.name
        );
    }
    for n in nats_services() {
        assert!(n.get("healthcheck").is_some(), "{}", n.name);
    }
}

#[test]
fn compose_stop_grace_outlasts_the_workers_shutdown_grace() {
    for svc in taskfleet_services() {
        if !matches!(parse_cli(&svc.command()).command, Command::Worker(_)) {
            continue;
        }
        let cfg = svc.config();
        let need = cfg.worker.shutdown_grace_s + cfg.worker.kill_grace_s;
        let grace = duration_s(&s(svc.get("stop_grace_period").expect("stop_grace_period")));
        assert!(
            grace > need,
            "{}: stop_grace_period {grace} s <= {need} s",
            svc.name
        );
        // tini as PID 1 passes SIGTERM on and reaps what the worker's commands leave behind.
        assert_eq!(svc.get("init"), Some(&Value::Bool(true)), "{}", svc.name);
    }
}

#[test]
fn compose_services_use_r3_and_list_all_three_nats_nodes() {
    let nodes: BTreeSet<String> = nats_services()
        .iter()
        .map(|n| format!("nats://{}:4222", n.name))
        .collect();
    for svc in taskfleet_services() {
        let cfg = svc.config();
        assert_eq!(cfg.nats.replicas, 3, "{}", svc.name);
        assert_eq!(svc.env()["TASKFLEET_NATS__REPLICAS"], "3", "{}", svc.name);
        let urls: BTreeSet<String> = cfg
            .nats
            .url
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect();
        assert_eq!(urls, nodes, "{}", svc.name);
    }
}

#[test]
fn compose_gives_each_fleet_secret_only_to_the_services_that_read_it() {
    for svc in taskfleet_services() {
        let env = svc.env();
        let cmd = parse_cli(&svc.command()).command;
        let reader = match cmd {
            Command::Api(_) => "api",
            Command::Relay(_) => "relay",
            _ => "worker",
        };
        assert_eq!(
            env.contains_key("TASKFLEET_API_KEY"),
            reader == "api",
            "{}",
            svc.name
        );
        assert_eq!(
            env.contains_key("TASKFLEET_FLEET__TASK_TOKEN_SECRET"),
            reader != "relay",
            "{}: API and workers share the task token secret",
            svc.name
        );
        for (name, read_by) in named_secrets() {
            assert_eq!(
                env.contains_key(&name),
                read_by == reader,
                "{}: {name}",
                svc.name
            );
        }
    }
}

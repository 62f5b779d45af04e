//! deploy/k8s/: the NATS StatefulSet and the API, relay and worker Deployments.

use super::support::*;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use taskfleet::cli::Command;

/// Every document of every manifest, with its file name.
pub fn docs() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("k8s"))
        .expect("deploy/k8s")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            yaml_docs(f).into_iter().map(move |d| (name.clone(), d))
        })
        .collect()
}

pub fn of_kind(kind: &str) -> Vec<Value> {
    docs()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect()
}

pub fn nats_statefulset() -> Value {
    let sets = of_kind("StatefulSet");
    assert_eq!(sets.len(), 1, "one StatefulSet (NATS)");
    sets[0].clone()
}

pub fn nats_conf() -> String {
    let maps = of_kind("ConfigMap");
    let m = maps
        .iter()
        .find(|m| m["metadata"]["name"] == "nats-config")
        .expect("ConfigMap nats-config");
    s(&m["data"]["nats.conf"])
}

/// The one container of a Deployment's pod.
pub struct Pod {
    pub name: String,
    deployment: Value,
    pub spec: Value,
    pub container: Value,
}

impl Pod {
    pub fn args(&self) -> Vec<String> {
        strings(&self.container["args"])
    }

    /// What the container gets: the NATS user's Secret (made from its env file, see
    /// deploy/README.md), then `env`, with `x-<key>` for keys of the Secret `taskfleet-env`.
    pub fn env(&self) -> Env {
        let mut env = Env::new();
        for from in self.container["envFrom"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let secret = s(&from["secretRef"]["name"]);
            let file = credentials()
                .env_files
                .keys()
                .find(|f| secret_name(f) == secret)
                .unwrap_or_else(|| panic!("{}: no env file makes Secret {secret}", self.name));
            env.extend(credentials().env_file(file).clone());
        }
        for e in self.container["env"].as_sequence().into_iter().flatten() {
            let name = s(&e["name"]);
            let value = match e.get("value") {
                Some(v) => s(v),
                None => format!("x-{}", self.fleet_secret(e)),
            };
            env.insert(name, value);
        }
        env
    }

    fn fleet_secret(&self, e: &Value) -> String {
        let r = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], "taskfleet-env", "{}: {:?}", self.name, e["name"]);
        s(&r["key"])
    }

    /// Keys of the Secret `taskfleet-env` (deploy/fleet.env) this container uses.
    pub fn fleet_secrets(&self) -> BTreeSet<String> {
        let env = self.container["env"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        env.iter()
            .filter(|e| e.get("valueFrom").is_some())
            .map(|e| self.fleet_secret(e))
            .collect()
    }

    /// The repository file behind `--config`: the ConfigMap `taskfleet-config`, made from
    /// deploy/taskfleet.toml (deploy/README.md).
    pub fn config_file(&self) -> PathBuf {
        let cli = parse_cli(&self.args());
        let config = cli.config.expect("--config").display().to_string();
        assert_eq!(config, CONFIG_IN_CONTAINER, "{}", self.name);
        let mounts = self.container["volumeMounts"].as_sequence().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == "/etc/taskfleet")
            .unwrap_or_else(|| panic!("{}: /etc/taskfleet mounted", self.name));
        let volumes = self.spec["volumes"].as_sequence().unwrap();
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert_eq!(
            volume["configMap"]["name"], "taskfleet-config",
            "{}",
            self.name
        );
        deploy("taskfleet.toml")
    }

    pub fn config(&self) -> taskfleet::config::Config {
        effective_config(&self.name, &self.config_file(), &self.env())
    }
}

/// `worker-session_agent.env` → `nats-worker-session-agent` (Secret names allow no `_`).
pub fn secret_name(env_file: &str) -> String {
    format!(
        "nats-{}",
        env_file.trim_end_matches(".env").replace('_', "-")
    )
}

pub fn pods() -> Vec<Pod> {
    of_kind("Deployment")
        .into_iter()
        .map(|d| {
            let spec = d["spec"]["template"]["spec"].clone();
            let containers = spec["containers"].as_sequence().unwrap().clone();
            assert_eq!(containers.len(), 1, "one container per pod");
            Pod {
                name: s(&d["metadata"]["name"]),
                deployment: d.clone(),
                spec,
                container: containers[0].clone(),
            }
        })
        .collect()
}

#[test]
fn k8s_manifests_parse_into_namespaced_objects() {
    let docs = docs();
    for (file, d) in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{file}: {d:?}"
        );
        let name = s(&d["metadata"]["name"]);
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "taskfleet", "{file}: {name}");
        }
    }
    let kinds: BTreeSet<String> = docs.iter().map(|(_, d)| s(&d["kind"])).collect();
    for k in [
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
    ] {
        assert!(kinds.contains(k), "deploy/k8s has a {k}");
    }
}

#[test]
fn k8s_deployments_have_probes_resources_and_a_non_root_user() {
    let mut workers = BTreeSet::new();
    let mut kinds = BTreeMap::new();
    for pod in pods() {
        let c = &pod.container;
        for r in ["cpu", "memory"] {
            let requests = &c["resources"]["requests"];
            assert!(requests.get(r).is_some(), "{}: requests {r}", pod.name);
        }
        assert_eq!(
            pod.spec["securityContext"]["runAsNonRoot"],
            Value::Bool(true)
        );
        assert_eq!(
            pod.spec["securityContext"]["runAsUser"].as_u64(),
            Some(10001)
        );
        assert!(s(&c["image"]).starts_with("taskfleet:"), "{}", pod.name);
        let kind = match parse_cli(&pod.args()).command {
            Command::Api(a) => {
                let port = u64::from(a.api_addr.expect("--api-addr").port());
                let ports = c["ports"].as_sequence().unwrap();
                let declared = ports
                    .iter()
                    .find(|p| p["containerPort"].as_u64() == Some(port))
                    .expect("the API's port is declared");
                for probe in ["readinessProbe", "livenessProbe"] {
                    let get = &c[probe]["httpGet"];
                    assert_eq!(get["path"], "/healthz", "{}: {probe}", pod.name);
                    assert_eq!(get["port"], declared["name"], "{}: {probe}", pod.name);
                }
                "api"
            }
            other => {
                // Relay and workers: their health endpoint, reachable from the kubelet.
                let addr = health_listen(&pod.args(), &pod.config())
                    .unwrap_or_else(|| panic!("{}: --health-listen", pod.name));
                assert!(
                    addr.ip().is_unspecified(),
                    "{}: listens on {addr}",
                    pod.name
                );
                let ports = c["ports"].as_sequence().expect("ports");
                let declared = ports
                    .iter()
                    .find(|p| p["containerPort"].as_u64() == Some(u64::from(addr.port())))
                    .expect("the health port is declared");
                for (probe, path) in [
                    ("startupProbe", "/healthz"),
                    ("readinessProbe", "/readyz"),
                    ("livenessProbe", "/healthz"),
                ] {
                    let get = &c[probe]["httpGet"];
                    assert_eq!(get["path"], path, "{}: {probe}", pod.name);
                    assert_eq!(get["port"], declared["name"], "{}: {probe}", pod.name);
                }
                match other {
                    Command::Worker(w) => {
                        assert!(workers.insert(w.assignee.clone()), "{}", pod.name);
                        let rolling = &pod.deployment["spec"]["strategy"]["rollingUpdate"];
                        assert_eq!(rolling["maxUnavailable"].as_u64(), Some(0), "{}", pod.name);
                        "worker"
                    }
                    Command::Relay(_) => "relay",
                    other => panic!("{}: {other:?}", pod.name),
                }
            }
        };
        *kinds.entry(kind).or_insert(0) += 1;
        assert_env_names_are_read(&pod.name, &pod.env());
    }
    assert_eq!(workers, fleet_assignees());
    assert_eq!((kinds["api"], kinds["relay"]), (1, 1));
}

#[test]
fn k8s_termination_grace_outlasts_the_workers_shutdown_grace() {
    for pod in pods() {
        if !matches!(parse_cli(&pod.args()).command, Command::Worker(_)) {
            continue;
        }
        let cfg = pod.config();
        let need = cfg.worker.shutdown_grace_s + cfg.worker.kill_grace_s;
        let grace = pod.spec["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            grace > need,
            "{}: terminationGracePeriodSeconds {grace} <= {need}",
            pod.name
        );
    }
}

#[test]
fn k8s_pods_use_r3_their_own_nats_user_and_all_three_nats_nodes() {
    let set = nats_statefulset();
    let (name, service) = (s(&set["metadata"]["name"]), s(&set["spec"]["serviceName"]));
    let nodes: BTreeSet<String> = (0..set["spec"]["replicas"].as_u64().unwrap())
        .map(|i| format!("nats://{name}-{i}.{service}:4222"))
        .collect();
    let mut users = BTreeSet::new();
    for pod in pods() {
        let env = pod.env();
        let cfg = pod.config();
        assert_eq!(cfg.nats.replicas, 3, "{}", pod.name);
        assert_eq!(env["TASKFLEET_NATS__REPLICAS"], "3", "{}", pod.name);
        let urls: BTreeSet<String> = cfg
            .nats
            .url
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect();
        assert_eq!(urls, nodes, "{}", pod.name);
        let user = cfg.nats.user.expect("a NATS user");
        assert!(
            users.insert(user.clone()),
            "{}: user {user} is shared",
            pod.name
        );
        if let Command::Worker(w) = parse_cli(&pod.args()).command {
            assert_eq!(user, format!("worker-{}", w.assignee));
        }
    }
}

#[test]
fn k8s_nats_statefulset_runs_three_replicas_behind_a_headless_service() {
    let set = nats_statefulset();
    assert_eq!(set["spec"]["replicas"].as_u64(), Some(3));
    assert!(!set["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .unwrap()
        .is_empty());
    let service_name = s(&set["spec"]["serviceName"]);
    let services = of_kind("Service");
    let svc = services
        .iter()
        .find(|s| s["metadata"]["name"] == service_name.as_str())
        .expect("the StatefulSet's Service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], Value::Bool(true));
    let conf = nats_conf();
    let name = s(&set["metadata"]["name"]);
    for i in 0..3 {
        assert!(conf.contains(&format!("\"nats://{name}-{i}.{service_name}:6222\"")));
    }
    assert!(conf.contains("jetstream {") && conf.contains("include ./auth.conf"));
    let c = &set["spec"]["template"]["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert!(
            s(&c[probe]["httpGet"]["path"]).starts_with("/healthz"),
            "{probe}"
        );
    }
}

/// Bytes of a memory size as Go's `GOMEMLIMIT` (`3GiB`) or Kubernetes (`4Gi`) writes it.
fn memory_bytes(text: &str) -> u64 {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let scale: u64 = match unit.trim_end_matches('B') {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("memory unit {other:?} in {text:?}"),
    };
    digits.parse::<u64>().expect("a whole number") * scale
}

#[test]
fn k8s_nats_nodes_have_a_go_memory_limit_for_a_million_tasks_under_their_container_limit() {
    let set = nats_statefulset();
    let c = &set["spec"]["template"]["spec"]["containers"][0];
    let go = c["env"]
        .as_sequence()
        .expect("the nats container's env")
        .iter()
        .find(|e| e["name"] == "GOMEMLIMIT")
        .map(|e| memory_bytes(&s(&e["value"])))
        .expect("GOMEMLIMIT set on the nats container");
    let limit = memory_bytes(&s(&c["resources"]["limits"]["memory"]));
    // 1536MiB is where a node holding 1M tasks started collecting back to back
    // (docs/benchmarks.md, "Memory of a nats-server holding a million tasks").
    assert!(
        go >= 1536 << 20,
        "GOMEMLIMIT {go} B is below a million tasks' floor"
    );
    // Room above Go's limit for what it does not count (the page cache the cgroup charges for
    // the store's files; how far a soft limit is overshot), so the collector works harder
    // before the pod would be killed.
    assert!(
        go * 10 <= limit * 9,
        "GOMEMLIMIT {go} B leaves no room under {limit} B"
    );
    assert!(
        go * 2 >= limit,
        "GOMEMLIMIT {go} B is under half the {limit} B limit"
    );
}

#[test]
fn memory_sizes_read_as_go_and_kubernetes_write_them() {
    assert_eq!(memory_bytes("3GiB"), 3 << 30);
    assert_eq!(memory_bytes("4Gi"), 4 << 30);
    assert_eq!(memory_bytes("1536MiB"), 1536 << 20);
    assert_eq!(memory_bytes("512Mi"), 512 << 20);
}

#[test]
fn k8s_and_compose_take_the_same_fleet_secrets() {
    let mut compose_vars = BTreeSet::new();
    for svc in super::compose::taskfleet_services() {
        for v in svc.raw_env().values() {
            compose_vars.extend(interpolate(v).1);
        }
    }
    let k8s_keys: BTreeSet<String> = pods().iter().flat_map(Pod::fleet_secrets).collect();
    assert_eq!(compose_vars, k8s_keys, "deploy/fleet.env feeds both");
    for pod in pods() {
        let env = pod.env();
        let reader = match parse_cli(&pod.args()).command {
            Command::Api(_) => "api",
            Command::Relay(_) => "relay",
            _ => "worker",
        };
        assert_eq!(
            env.contains_key("TASKFLEET_API_KEY"),
            reader == "api",
            "{}",
            pod.name
        );
        for (name, read_by) in named_secrets() {
            assert_eq!(
                env.contains_key(&name),
                read_by == reader,
                "{}: {name}",
                pod.name
            );
        }
    }
}

//! Reading deploy/: YAML with merge keys, compose services, k8s pods, the config a service ends
//! up with, the real CLI, and the credentials `taskfleet nats-config` writes.

use clap::{CommandFactory, Parser};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::Deserialize;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use taskfleet::cli::Cli;
use taskfleet::config::Config;

pub const BIN: &str = env!("CARGO_BIN_EXE_taskfleet");

/// Where compose and k8s mount `deploy/taskfleet.toml`.
pub const CONFIG_IN_CONTAINER: &str = "/etc/taskfleet/taskfleet.toml";

/// Environment variables `Config::load` reads besides `TASKFLEET_<SECTION>__<FIELD>`.
const CONFIG_SHORTCUTS: [&str; 2] = ["NATS_URL", "TASKFLEET_API_KEY"];

/// The subcommand that writes NATS users and their env files.
pub const NATS_CONFIG: &str = "nats-config";

pub type Env = BTreeMap<String, String>;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn deploy(rel: &str) -> PathBuf {
    root().join("deploy").join(rel)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Resolves `<<` merge keys. serde_norway resolves one level per pass, and compose.yaml merges
/// anchors that merge anchors themselves, so pass until none is left.
fn merged(mut v: Value) -> Value {
    fn has_merge_key(v: &Value) -> bool {
        match v {
            Value::Mapping(m) => m.contains_key("<<") || m.values().any(has_merge_key),
            Value::Sequence(s) => s.iter().any(has_merge_key),
            Value::Tagged(t) => has_merge_key(&t.value),
            _ => false,
        }
    }
    for _ in 0..8 {
        if !has_merge_key(&v) {
            return v;
        }
        v.apply_merge().expect("valid merge keys");
    }
    panic!("merge keys nested more than 8 deep");
}

/// Every document of a (multi-document) YAML file, merge keys resolved.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            merged(v)
        })
        .filter(|v| !v.is_null())
        .collect()
}

pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

pub fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(s).collect(),
        other => vec![s(other)],
    }
}

fn fleet_toml() -> toml::Value {
    read(&deploy("taskfleet.toml"))
        .parse()
        .expect("deploy/taskfleet.toml parses")
}

pub fn fleet_assignees() -> BTreeSet<String> {
    fleet_toml()["fleet"]["assignees"]
        .as_array()
        .expect("[fleet] assignees")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The `*_env` variables deploy/taskfleet.toml names, with the process that reads them: the
/// relay's destination secrets, the API's scoped keys.
pub fn named_secrets() -> Vec<(String, &'static str)> {
    let t = fleet_toml();
    let mut out = Vec::new();
    if let Some(dests) = t.get("relay").and_then(|r| r.get("destinations")) {
        for d in dests.as_table().unwrap().values() {
            for field in ["secret_env", "token_env", "bot_token_env"] {
                if let Some(v) = d.get(field) {
                    out.push((v.as_str().unwrap().to_string(), "relay"));
                }
            }
        }
    }
    if let Some(keys) = t.get("api").and_then(|a| a.get("keys")) {
        for k in keys.as_array().unwrap() {
            if let Some(v) = k.get("key_env") {
                out.push((v.as_str().unwrap().to_string(), "api"));
            }
        }
    }
    out
}

/// Compose's `${NAME}`, `${NAME:?msg}`, `${NAME:-default}` → `x-NAME`, and the names.
pub fn interpolate(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        assert!(tail.starts_with("${"), "only ${{…}} is used: {text}");
        let end = tail.find('}').expect("closing }");
        let name: String = tail[2..end]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push_str(&format!("x-{name}"));
        names.push(name);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    (out, names)
}

// ---- the CLI and the config --------------------------------------------------------------------

pub fn parse_cli(args: &[String]) -> Cli {
    let mut argv = vec!["taskfleet".to_string()];
    argv.extend(args.iter().cloned());
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"))
}

/// Every `env = "…"` of the real CLI, all subcommands.
fn cli_env_names() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.insert(e.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&Cli::command(), &mut out);
    out
}

/// Fails unless every variable is one taskfleet reads: a config field as
/// `TASKFLEET_<SECTION>__<FIELD>` ([`effective_config`] checks the field exists), a CLI flag's
/// variable, a shortcut of `Config::load`, or a secret deploy/taskfleet.toml names with `*_env`.
pub fn assert_env_names_are_read(service: &str, env: &Env) {
    let cli = cli_env_names();
    let secrets: BTreeSet<String> = named_secrets().into_iter().map(|(n, _)| n).collect();
    for name in env.keys() {
        let ok = (name.starts_with("TASKFLEET_") && name.contains("__"))
            || cli.contains(name)
            || CONFIG_SHORTCUTS.contains(&name.as_str())
            || secrets.contains(name);
        assert!(ok, "{service}: taskfleet does not read {name}");
    }
}

/// The config a service ends up with: defaults, the TOML file, `TASKFLEET_<SECTION>__<FIELD>`,
/// then `NATS_URL` and `TASKFLEET_API_KEY`, layered as `Config::load` does but from `env` instead
/// of this process's environment (which every test thread shares). Unknown fields fail here as
/// there (`deny_unknown_fields`); `services::compose_and_k8s_services_run_…` runs the real
/// binary, and so the real loader, on the same input.
pub fn effective_config(service: &str, file: &Path, env: &Env) -> Config {
    let mut fig = Figment::new().merge(Toml::file(file));
    for (k, v) in env {
        if let Some(rest) = k.strip_prefix("TASKFLEET_").filter(|r| r.contains("__")) {
            let path = rest
                .to_lowercase()
                .split("__")
                .collect::<Vec<_>>()
                .join(".");
            let value: figment::value::Value = v.parse().expect("infallible");
            fig = fig.merge(Serialized::default(&path, value));
        }
    }
    let mut cfg: Config = fig
        .extract()
        .unwrap_or_else(|e| panic!("{service}: config does not load: {e}"));
    if let Some(url) = env.get("NATS_URL") {
        cfg.nats.url = Some(url.clone());
    }
    if let Some(key) = env.get("TASKFLEET_API_KEY") {
        cfg.api.admin_key = Some(key.clone().into());
    }
    cfg.validate()
        .unwrap_or_else(|e| panic!("{service}: config is invalid: {e}"));
    cfg
}

/// Where a worker or the relay serves `/healthz` and `/readyz`: `--health-listen`, else its
/// config's `worker.health_listen` / `relay.health_listen` (`None` for the API and when unset).
pub fn health_listen(args: &[String], cfg: &Config) -> Option<std::net::SocketAddr> {
    match parse_cli(args).command {
        taskfleet::cli::Command::Worker(w) => w.health_listen.or(cfg.worker.health_listen),
        taskfleet::cli::Command::Relay(r) => r.health_listen.or(cfg.relay.health_listen),
        _ => None,
    }
}

// ---- credentials -------------------------------------------------------------------------------

/// What `taskfleet nats-config` writes: auth.conf and one env file per user.
pub struct Credentials {
    /// False when the command does not exist (yet): stand-ins, and no users in auth.conf.
    pub real: bool,
    pub auth_conf: String,
    /// `<user>.env` → its variables.
    pub env_files: BTreeMap<String, Env>,
}

impl Credentials {
    pub fn env_file(&self, name: &str) -> &Env {
        self.env_files
            .get(name)
            .unwrap_or_else(|| panic!("no env file {name}; have {:?}", self.env_files.keys()))
    }
}

pub fn nats_config_exists() -> bool {
    Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == NATS_CONFIG)
}

/// The documented command, run once per test process into a temp dir (bcrypt makes it slow to
/// repeat); stand-ins named as it would name them when the command does not exist.
pub fn credentials() -> &'static Credentials {
    static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        let assignees = fleet_assignees();
        if !nats_config_exists() {
            let mut env_files = BTreeMap::new();
            for user in ["api".to_string(), "relay".to_string()]
                .into_iter()
                .chain(assignees.iter().map(|a| format!("worker-{a}")))
            {
                let mut env = Env::new();
                env.insert("TASKFLEET_NATS__USER".into(), user.clone());
                env.insert("TASKFLEET_NATS__PASSWORD".into(), "stand-in".into());
                if let Some(a) = user.strip_prefix("worker-") {
                    env.insert("TASKFLEET_ASSIGNEE".into(), a.into());
                }
                env_files.insert(format!("{user}.env"), env);
            }
            return Credentials {
                real: false,
                auth_conf: String::new(),
                env_files,
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let list = assignees.into_iter().collect::<Vec<_>>().join(",");
        let out = std::process::Command::new(BIN)
            .args([NATS_CONFIG, "--assignees", &list, "--out"])
            .arg(dir.path().join("nats/auth.conf"))
            .arg("--env-dir")
            .arg(dir.path().join("env"))
            .env_clear()
            .output()
            .expect("run taskfleet nats-config");
        assert!(out.status.success(), "taskfleet nats-config: {out:?}");
        let mut env_files = BTreeMap::new();
        for entry in std::fs::read_dir(dir.path().join("env")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            env_files.insert(name, parse_env_file(&read(&path)));
        }
        Credentials {
            real: true,
            auth_conf: read(&dir.path().join("nats/auth.conf")),
            env_files,
        }
    })
}

/// `KEY=value` lines, as compose's `env_file` and `kubectl create secret --from-env-file` read
/// them (comments and blank lines skipped, no quoting used).
pub fn parse_env_file(text: &str) -> Env {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("env line {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Compose's `40s`, `1m30s` → seconds.
pub fn duration_s(text: &str) -> u64 {
    let mut total = 0;
    let mut num = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration {text}"));
        num.clear();
        total += match c {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => panic!("duration {text}"),
        };
    }
    assert!(num.is_empty(), "duration {text} has a unit");
    total
}

pub fn nats_server() -> PathBuf {
    taskfleet::natsd::find_binary(None).unwrap_or_else(|e| {
        panic!("{e}\nhint: run `scripts/ensure-nats.sh` or `make test`, which install nats-server")
    })
}

//! Layered configuration: built-in defaults → TOML file (`--config`) → `TASKFLEET_<SECTION>__<FIELD>`
//! environment variables → the documented shortcuts (`NATS_URL`, `TASKFLEET_API_KEY`) → `validate()`.
//!
//! Every field is documented in `config/taskfleet.example.toml`.

use crate::domain::Assignee;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or variable did not parse.
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value parsed but makes no sense.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Everything taskfleet processes read at start-up.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where NATS is and how streams are sized.
    pub nats: NatsConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Event retention.
    pub events: EventsConfig,
    /// What `taskfleet up` runs besides the API.
    pub fleet: FleetConfig,
    /// How workers pull and run tasks.
    pub worker: WorkerConfig,
    /// Where progress goes: destinations, routes, message templates, retries.
    pub relay: RelayConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Delayed tasks and cron schedules.
    pub scheduling: SchedulingConfig,
    /// Cron schedules applied at API start-up (`[[schedules]]`): the config is the truth for
    /// these names (a changed entry replaces the stored schedule).
    pub schedules: Vec<ScheduleConfig>,
}

/// One `[[schedules]]` entry: the same fields as `POST /api/schedules`.
pub type ScheduleConfig = crate::schedules::ScheduleSpec;

/// Delayed tasks and cron schedules.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingConfig {
    /// A cron tick handled later than this many seconds after it was due (every API was
    /// down) is recorded as missed instead of creating its task. Default 300.
    pub catch_up_s: u64,
    /// How far ahead a delayed task may be scheduled (`run_at`, `delay_s`); further is a 422.
    /// Default 365.
    pub max_delay_days: u64,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        Self {
            catch_up_s: 300,
            max_delay_days: crate::domain::limits::MAX_DELAY_DAYS,
        }
    }
}

/// NATS connection and topology sizing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s); when unset, `up` starts a local nats-server. Env: `NATS_URL`.
    pub url: Option<String>,
    /// Optional NATS user for this process.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<SecretString>,
    /// Replicas of every stream and bucket: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// Seconds to keep trying the first connection.
    pub connect_timeout_s: u64,
    /// Client port of the nats-server that `up` starts.
    pub local_port: u16,
    /// Path of the nats-server binary `up` starts (else `NATS_SERVER_BIN`, `.tools/nats`, PATH).
    pub server_bin: Option<PathBuf>,
    /// Largest message, in bytes.
    pub max_msg_size: i32,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            user: None,
            password: None,
            replicas: 1,
            connect_timeout_s: 30,
            local_port: 4222,
            server_bin: None,
            max_msg_size: 2 * 1024 * 1024,
        }
    }
}

/// One API key scoped to some assignees.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and the task log's `operator` column (never the key itself).
    pub name: String,
    /// The key. Prefer `key_env` so the file holds no secret.
    pub key: Option<SecretString>,
    /// Name of an environment variable holding the key.
    pub key_env: Option<String>,
    /// Assignees this key may read and change; `["*"]` means all (an admin key).
    pub assignees: Vec<String>,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address (`up --api-addr` overrides).
    pub addr: SocketAddr,
    /// Largest request body, in bytes (bigger ones get 413).
    pub body_limit: usize,
    /// The admin key. Env: `TASKFLEET_API_KEY`. When unset, `up` generates one.
    pub admin_key: Option<SecretString>,
    /// Keys scoped to assignees.
    pub keys: Vec<ApiKeyConfig>,
    /// Seconds a request may take before it is answered 503 (SSE streams excepted).
    pub request_timeout_s: u64,
    /// Default and largest page size of list endpoints.
    pub default_limit: usize,
    /// Largest page size of list endpoints.
    pub max_limit: usize,
    /// Most running tasks each API process keeps in its running index (docs/design.md, "Running
    /// tasks among a queue of pending ones"); 0 turns it off: running listings walk the queue.
    pub running_index_cap: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            body_limit: 1024 * 1024,
            admin_key: None,
            keys: Vec::new(),
            request_timeout_s: 30,
            default_limit: 100,
            max_limit: 1000,
            running_index_cap: 50_000,
        }
    }
}

/// Retention of finished tasks, their events and the other records.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Seconds a finished (completed, failed, cancelled) task and its events (the task log) are
    /// kept after it finished; pending and running tasks are kept however old. Delivery records
    /// are kept as long. Default 7 days.
    pub max_age_s: u64,
    /// Seconds between two runs of the API's retention sweeper. Default 60.
    pub sweep_interval_s: u64,
    /// Seconds idempotency keys are remembered. Default 7 days.
    pub idempotency_ttl_s: u64,
    /// Seconds dead letters (tasks that used up their attempts) are kept. Default 30 days.
    pub dead_letter_max_age_s: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_age_s: 7 * 24 * 3600,
            sweep_interval_s: 60,
            idempotency_ttl_s: 7 * 24 * 3600,
            dead_letter_max_age_s: 30 * 24 * 3600,
        }
    }
}

/// What `taskfleet up` runs besides the API, and what API and workers share.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Assignees that get a worker under `up` (e.g. `["anna", "trump", "cc", "session_agent"]`).
    pub assignees: Vec<Assignee>,
    /// Secret that signs task-scoped tokens; the API and every worker need the same one.
    /// Env: `TASKFLEET_FLEET__TASK_TOKEN_SECRET`. `up` generates one into the data dir.
    pub task_token_secret: Option<SecretString>,
}

/// A command template for an external coding agent (seed 004). Each element is one argv entry;
/// `{prompt}`, `{cwd}` and `{task_id}` are replaced inside elements. Never run through a shell.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentTemplate {
    /// One-shot (`mode: run`) command.
    pub argv: Vec<String>,
    /// Command for `mode: session` (stdin stays open for follow-ups); defaults to `argv`.
    #[serde(default)]
    pub session_argv: Option<Vec<String>>,
}

fn agent(argv: &[&str]) -> AgentTemplate {
    AgentTemplate {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        session_argv: None,
    }
}

/// How workers pull and run tasks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Tasks one worker process runs at once (`worker --concurrency` overrides).
    pub concurrency: usize,
    /// Seconds without a lease renewal after which JetStream gives the task to another replica.
    pub ack_wait_s: u64,
    /// Seconds running tasks get to finish on SIGTERM before they are handed back.
    pub shutdown_grace_s: u64,
    /// Milliseconds between queue checks while idle (new tasks wake workers at once anyway).
    pub idle_poll_ms: u64,
    /// Bytes of output tail kept per stream of a running command.
    pub output_cap_bytes: usize,
    /// Milliseconds between `output` events of one task (output is coalesced in between).
    pub output_interval_ms: u64,
    /// Default time limit of `exec` tasks, in seconds.
    pub exec_timeout_s: u64,
    /// Seconds between SIGTERM and SIGKILL when a command is stopped.
    pub kill_grace_s: u64,
    /// Where `hook` tasks are POSTed (a bot's local gateway).
    pub hook_url: Option<String>,
    /// The API URL given to running tasks as `TASKFLEET_API_URL` [default: http://<api.addr>].
    pub api_url: Option<String>,
    /// Agent used when a task names an unknown `agent_id` (unset: such tasks fail at once).
    pub fallback_agent: Option<String>,
    /// Agent id → command template.
    pub agents: std::collections::BTreeMap<String, AgentTemplate>,
    /// Weighted pulling instead of strict priority: out of every `p0+p1+p2` pulls (when all
    /// priorities have work), this many go to each. Unset: strict P0 > P1 > P2.
    pub weights: Option<[u32; 3]>,
    /// Where `taskfleet worker` serves `/healthz` and `/readyz` (`--health-listen` overrides).
    /// Unset: no health endpoint (`up` never serves one).
    pub health_listen: Option<SocketAddr>,
    /// Seconds this worker's announcement in the worker registry lives without a renewal
    /// (renewed every third of it): a worker that died drops out of `GET /api/workers` within
    /// this.
    pub registry_ttl_s: u64,
    /// Flow control across every replica of the assignee: concurrency and rate limits per key
    /// pattern, and `max_running` (see `limits/`).
    pub limits: crate::domain::DeclaredLimits,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            ack_wait_s: 30,
            shutdown_grace_s: 20,
            idle_poll_ms: 1000,
            output_cap_bytes: 1024 * 1024,
            output_interval_ms: 250,
            exec_timeout_s: 1800,
            kill_grace_s: 5,
            hook_url: None,
            api_url: None,
            fallback_agent: None,
            agents: [
                (
                    "codex",
                    agent(&[
                        "codex",
                        "exec",
                        "--full-auto",
                        "--skip-git-repo-check",
                        "{prompt}",
                    ]),
                ),
                ("claude", agent(&["claude", "-p", "{prompt}"])),
                ("gemini", agent(&["gemini", "-p", "{prompt}"])),
                ("opencode", agent(&["opencode", "run", "{prompt}"])),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            weights: None,
            health_listen: None,
            registry_ttl_s: 15,
            limits: Default::default(),
        }
    }
}

pub use crate::relay::config::{RelayConfig, RouteConfig};
pub use crate::telemetry::{LogFormat, TelemetryConfig};

impl Config {
    /// Loads defaults, then `file`, then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::new();
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(
            Env::prefixed("TASKFLEET_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let mut cfg: Config = fig.extract().map_err(Box::new)?;
        if let Some(url) = non_empty_env("NATS_URL") {
            cfg.nats.url = Some(url);
        }
        if let Some(key) = non_empty_env("TASKFLEET_API_KEY") {
            cfg.api.admin_key = Some(SecretString::from(key));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=5).contains(&self.nats.replicas) {
            return bad(format!(
                "nats.replicas must be 1..=5, got {}",
                self.nats.replicas
            ));
        }
        if self.api.body_limit < 1024 {
            return bad("api.body_limit must be at least 1024 bytes".into());
        }
        if self.api.default_limit == 0 || self.api.default_limit > self.api.max_limit {
            return bad("api.default_limit must be between 1 and api.max_limit".into());
        }
        if self.events.max_age_s < 60 {
            return bad("events.max_age_s must be at least 60".into());
        }
        if let Err(m) = self.relay.validate() {
            return bad(m);
        }
        let w = &self.worker;
        if !(1..=1024).contains(&w.concurrency) {
            return bad("worker.concurrency must be 1..=1024".into());
        }
        if w.ack_wait_s < 3 {
            return bad("worker.ack_wait_s must be at least 3".into());
        }
        if w.output_cap_bytes < 1024 {
            return bad("worker.output_cap_bytes must be at least 1024".into());
        }
        if let Some(f) = &w.fallback_agent {
            if !w.agents.contains_key(f) {
                return bad(format!(
                    "worker.fallback_agent {f:?} is not in worker.agents"
                ));
            }
        }
        for (id, a) in &w.agents {
            if a.argv.is_empty() || a.session_argv.as_ref().is_some_and(Vec::is_empty) {
                return bad(format!("worker.agents.{id}: argv must not be empty"));
            }
        }
        if w.weights.is_some_and(|ws| ws.iter().all(|&x| x == 0)) {
            return bad("worker.weights must not all be 0".into());
        }
        self.validate_schedules()?;
        for k in &self.api.keys {
            if k.key.is_none() == k.key_env.is_none() {
                return bad(format!(
                    "api.keys `{}`: set exactly one of key, key_env",
                    k.name
                ));
            }
            if k.assignees.is_empty() {
                return bad(format!(
                    "api.keys `{}`: assignees must not be empty",
                    k.name
                ));
            }
            for a in &k.assignees {
                if a != "*" && Assignee::parse(a).is_err() {
                    return bad(format!("api.keys `{}`: bad assignee {a:?}", k.name));
                }
            }
        }
        Ok(())
    }

    /// Checks `[[schedules]]` (each like `POST /api/schedules`, names unique) and `scheduling`.
    fn validate_schedules(&self) -> Result<(), ConfigError> {
        if self.scheduling.catch_up_s == 0 {
            return Err(ConfigError::Invalid(
                "scheduling.catch_up_s must be positive".into(),
            ));
        }
        if !(1..=36_500).contains(&self.scheduling.max_delay_days) {
            return Err(ConfigError::Invalid(
                "scheduling.max_delay_days must be between 1 and 36500".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.schedules {
            if let Err(e) = s.check() {
                return Err(ConfigError::Invalid(format!("schedules `{}`: {e}", s.name)));
            }
            if !seen.insert(&s.name) {
                return Err(ConfigError::Invalid(format!(
                    "schedules: the name `{}` is used twice",
                    s.name
                )));
            }
        }
        Ok(())
    }

    /// The topology sizes this config asks for.
    pub fn topology(&self) -> crate::bus::TopologyConfig {
        crate::bus::TopologyConfig {
            replicas: self.nats.replicas,
            events_max_age: Duration::from_secs(self.events.max_age_s),
            idempotency_ttl: Duration::from_secs(self.events.idempotency_ttl_s),
            dead_letter_max_age: Duration::from_secs(self.events.dead_letter_max_age_s),
            max_msg_size: self.nats.max_msg_size,
        }
    }

    /// Connection options for a process named `name`, against `url`.
    pub fn connect_options(&self, url: &str, name: &str) -> crate::bus::ConnectOptions {
        use secrecy::ExposeSecret;
        crate::bus::ConnectOptions {
            url: url.to_string(),
            name: name.to_string(),
            connect_timeout: Duration::from_secs(self.nats.connect_timeout_s),
            user: self.nats.user.clone(),
            password: self
                .nats
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string()),
        }
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!(c.api.addr.to_string(), "127.0.0.1:8090");
        assert_eq!(c.api.body_limit, 1024 * 1024);
        assert_eq!(c.events.max_age_s, 7 * 24 * 3600);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_toml_file_overrides_defaults_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[nats]\nreplicas = 3\n[fleet]\nassignees = [\"anna\"]\n[[api.keys]]\nname = \"anna-bot\"\nkey_env = \"ANNA_KEY\"\nassignees = [\"anna\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.nats.replicas, 3);
        assert_eq!(c.fleet.assignees[0].as_str(), "anna");
        assert_eq!(c.api.keys[0].name, "anna-bot");

        std::fs::write(&f, "[nats]\nreplica = 3\n").unwrap();
        assert!(Config::load(Some(&f)).is_err());
        std::fs::write(&f, "[fleet]\nassignees = [\"Anna\"]\n").unwrap();
        assert!(Config::load(Some(&f)).is_err());
    }

    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/taskfleet.example.toml");
        let c = Config::load(Some(&path)).unwrap();
        let d = Config::default();
        assert_eq!(c.api.addr, d.api.addr);
        assert_eq!(c.api.body_limit, d.api.body_limit);
        assert_eq!(c.events.max_age_s, d.events.max_age_s);
        assert_eq!(c.nats.max_msg_size, d.nats.max_msg_size);
        assert_eq!(c.fleet.assignees.len(), 4);
    }

    #[test]
    fn a_missing_config_file_is_an_error_not_a_silent_default() {
        assert!(Config::load(Some(Path::new("/nonexistent/taskfleet.toml"))).is_err());
    }
}

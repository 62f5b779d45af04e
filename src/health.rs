//! Health endpoints of `taskfleet worker` and `taskfleet relay` (the API serves its own
//! `/healthz`, see `api::health`). Off unless `--health-listen ADDR` (or `worker.health_listen`,
//! `relay.health_listen`) is set; `taskfleet up` never serves them.
//!
//! - `GET /healthz` (liveness): 200 while the process is connected to NATS and its main loop runs
//!   (for a worker: its pulls are not failing). A worker letting its tasks finish or handing them
//!   back at shutdown is still alive. 503 with a `reason` otherwise: starting, NATS disconnected,
//!   pulls failing, stopped.
//! - `GET /readyz` (readiness): `/healthz`, and 503 while starting or stopping (`"state":
//!   "draining"`), so an orchestrator counts on a replica only while it takes work.
//!
//! Both answer JSON: `{"status": "ok" | "unavailable", "component", "state", "nats", "reason"?,
//! "version"}`. [`Health`] is the shared state the process updates; [`serve`] answers from it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A failed pull counts against liveness for this long, unless a later pull succeeded. An idle
/// worker reports no successful pulls, so a recovered one turns healthy again after this.
const PULL_FAILURE_WINDOW: Duration = Duration::from_secs(15);

/// The health listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The address could not be bound.
    #[error("cannot listen for health checks on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting to NATS, opening streams and consumers.
    Starting = 0,
    /// Taking work.
    Running = 1,
    /// Asked to stop: finishing or handing back what it holds, taking nothing new.
    Draining = 2,
    /// Its main loop has ended.
    Stopped = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Running,
            2 => Self::Draining,
            _ => Self::Stopped,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

/// The health of one process, updated by its main loop and read by [`serve`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// `worker` or `relay`, echoed in every answer.
    component: &'static str,
    /// The NATS connection, once there is one.
    client: OnceLock<async_nats::Client>,
    /// A [`Phase`] as u8.
    phase: AtomicU8,
    /// The last failed pull (when, why) and the last successful one.
    pulls: Mutex<Pulls>,
}

#[derive(Debug, Default)]
struct Pulls {
    failed: Option<(Instant, String)>,
    succeeded: Option<Instant>,
}

/// Marks its [`Health`] stopped when dropped (see [`Health::stopped_on_drop`]).
#[derive(Debug)]
pub struct StoppedOnDrop(Health);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.set_phase(Phase::Stopped);
    }
}

/// What the endpoints answer, computed from [`Health`] at request time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `None` when alive, else why not.
    pub not_live: Option<String>,
    /// `None` when ready, else why not.
    pub not_ready: Option<String>,
    /// The phase, as the body shows it.
    pub state: &'static str,
    /// The NATS connection state (`pending`, `connected`, `disconnected`).
    pub nats: String,
}

impl Health {
    /// A process named `component` (`worker`, `relay`), starting.
    pub fn new(component: &'static str) -> Self {
        Self(Arc::new(Inner {
            component,
            client: OnceLock::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            pulls: Mutex::new(Pulls::default()),
        }))
    }

    /// The connection whose state the endpoints report (the first one given is kept).
    pub fn attach(&self, client: &async_nats::Client) {
        let _ = self.0.client.set(client.clone());
    }

    /// Moves to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.0.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.phase.load(Ordering::SeqCst))
    }

    /// A guard that marks the process [`Phase::Stopped`] when dropped: held by a main loop, it
    /// turns the endpoints to 503 however the loop ends (return, error, panic).
    pub fn stopped_on_drop(&self) -> StoppedOnDrop {
        StoppedOnDrop(self.clone())
    }

    /// Records a successful pull.
    pub fn pull_succeeded(&self) {
        self.0.pulls.lock().expect("health lock").succeeded = Some(Instant::now());
    }

    /// Records a failed pull.
    pub fn pull_failed(&self, why: &str) {
        self.0.pulls.lock().expect("health lock").failed = Some((Instant::now(), why.to_string()));
    }

    /// What the endpoints would answer now.
    pub fn report(&self) -> Report {
        let phase = self.phase();
        let nats = self
            .0
            .client
            .get()
            .map(|c| c.connection_state())
            .unwrap_or(async_nats::connection::State::Pending);
        let connected = nats == async_nats::connection::State::Connected;
        let not_live = match phase {
            Phase::Starting => Some("starting: connecting to NATS".to_string()),
            Phase::Stopped => Some("stopped".to_string()),
            Phase::Running | Phase::Draining if !connected => Some(format!("NATS {nats}")),
            Phase::Running | Phase::Draining => self.failing_pulls(),
        };
        let not_ready = not_live.clone().or(match phase {
            Phase::Draining => Some("draining: shutting down, taking no new work".to_string()),
            _ => None,
        });
        Report {
            not_live,
            not_ready,
            state: phase.as_str(),
            nats: nats.to_string(),
        }
    }

    fn failing_pulls(&self) -> Option<String> {
        let pulls = self.0.pulls.lock().expect("health lock");
        let (at, why) = pulls.failed.as_ref()?;
        let recent = at.elapsed() < PULL_FAILURE_WINDOW;
        let recovered = pulls.succeeded.is_some_and(|ok| ok > *at);
        (recent && !recovered).then(|| format!("pulls failing: {why}"))
    }
}

/// The two routes, answering from `health`.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds `addr` (if set) and serves `health` there in the background until the returned guard
/// is dropped, so the endpoints keep answering while the process drains.
pub async fn spawn(
    addr: Option<SocketAddr>,
    health: &Health,
) -> Result<Option<DropGuard>, HealthError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, component = health.0.component, "health endpoint listening");
    let stop = CancellationToken::new();
    let (health, token) = (health.clone(), stop.clone());
    tokio::spawn(async move {
        if let Err(e) = serve(listener, health, token).await {
            tracing::warn!(error.message = %e, "health endpoint stopped");
        }
    });
    Ok(Some(stop.drop_guard()))
}

async fn healthz(State(health): State<Health>) -> Response {
    let report = health.report();
    answer(&health, &report, report.not_live.as_deref())
}

async fn readyz(State(health): State<Health>) -> Response {
    let report = health.report();
    answer(&health, &report, report.not_ready.as_deref())
}

fn answer(health: &Health, report: &Report, problem: Option<&str>) -> Response {
    let mut body = serde_json::json!({
        "status": if problem.is_none() { "ok" } else { "unavailable" },
        "component": health.0.component,
        "state": report.state,
        "nats": report.nats,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = match problem {
        None => StatusCode::OK,
        Some(reason) => {
            body["reason"] = reason.into();
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::{Health, Phase};

    #[test]
    fn a_process_without_a_connection_is_neither_live_nor_ready() {
        let h = Health::new("worker");
        let r = h.report();
        assert_eq!(r.state, "starting");
        assert!(r.not_live.as_deref().unwrap().contains("starting"));
        assert!(r.not_ready.is_some());

        h.set_phase(Phase::Running);
        let r = h.report();
        assert_eq!(r.not_live.as_deref(), Some("NATS pending"), "{r:?}");
        assert_eq!(r.nats, "pending");
    }

    #[test]
    fn a_dropped_main_loop_reports_stopped() {
        let h = Health::new("relay");
        h.set_phase(Phase::Running);
        drop(h.stopped_on_drop());
        assert_eq!(h.phase(), Phase::Stopped);
        assert_eq!(h.report().not_live.as_deref(), Some("stopped"));
    }

    #[test]
    fn a_failed_pull_counts_until_a_later_pull_succeeds() {
        let h = Health::new("worker");
        h.pull_failed("no answer to the pull request");
        assert_eq!(
            h.failing_pulls().as_deref(),
            Some("pulls failing: no answer to the pull request")
        );
        h.pull_succeeded();
        assert_eq!(h.failing_pulls(), None);
    }
}

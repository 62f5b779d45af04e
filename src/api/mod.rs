//! The HTTP API: OpenTask routes (seed 001) plus taskfleet's extensions.
//!
//! - `tasks.rs`: create, get, list, pending;
//! - `actions.rs`: start, complete, fail, cancel, retry, and idempotency keys for every action;
//! - `progress.rs`: Live Task Pulse (step/next, heartbeat, progress) and cleanup;
//! - `events.rs`: the task log and the live SSE feed;
//! - `runs.rs`: output and stdin of running commands, dead letters;
//! - `deliveries.rs`: push ingest and the relay's deliveries (list, replay), through the relay's
//!   delivery store (`relay::store`);
//! - `destinations.rs`: the relay's destinations (list, enable one a 410 disabled);
//! - `health.rs`: `/healthz`, `/metrics` and request timing;
//! - `workers.rs`: `/api/workers`, the worker registry;
//! - `schedules.rs`: `/api/schedules`, cron schedules;
//! - `openapi.rs`: `/api/openapi.json`, the OpenAPI document of every route here;
//! - `overview.rs`: `/api/overview` and its live feed, the dashboard's first page;
//! - `throughput.rs`: the overview's tasks finished per minute, counted from the ledger;
//! - `ui.rs`: `/` and `/ui/{file}`, the web dashboard (embedded files under `ui/`);
//! - `auth.rs`, `error.rs`, `state.rs`: keys, errors, shared state.

mod actions;
pub mod auth;
mod deliveries;
mod destinations;
mod error;
mod events;
mod health;
mod limits;
mod openapi;
mod overview;
mod progress;
mod runs;
mod schedules;
mod state;
mod tasks;
mod throughput;
mod ui;
mod workers;

pub use error::{ApiError, BodyLimit, IdPath, JsonBody, Params};
pub use state::{AppState, Limits};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every route, with limits, timeouts and metrics applied.
///
/// The request timeout wraps every route but the two live feeds (SSE streams stay open); the
/// 404/405 fallbacks, request metrics, tracing and the body limit wrap everything, in that order
/// from the inside out.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let limit = state.limits.body;
    let timed = Router::new()
        .merge(task_routes())
        .merge(task_action_routes())
        .merge(relay_routes())
        .merge(operation_routes())
        .merge(ui_routes())
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            health::timeout,
        ));
    timed
        .merge(streaming_routes())
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            health::observe,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(health::request_span)
                .on_response(health::request_done),
        )
        .layer(axum::Extension(BodyLimit(limit)))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Tasks and what they hold: create, list, pending, cleanup, one task, its log, its output and
/// input, and the dead letters.
fn task_routes() -> Router<AppState> {
    Router::new()
        .route("/api/tasks", post(tasks::create).get(tasks::list))
        .route("/api/tasks/pending", get(tasks::pending))
        .route("/api/tasks/cleanup", post(progress::cleanup))
        .route("/api/tasks/{id}", get(tasks::get_one))
        .route("/api/tasks/{id}/logs", get(events::logs))
        .route("/api/tasks/{id}/output", get(runs::output))
        .route("/api/tasks/{id}/input", post(runs::input))
        .route("/api/dead-letters", get(runs::dead_letters))
}

/// What changes a task, each under `PUT` and `POST`: the state actions and Live Task Pulse.
fn task_action_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/tasks/{id}/start",
            put(actions::start).post(actions::start),
        )
        .route(
            "/api/tasks/{id}/complete",
            put(actions::complete).post(actions::complete),
        )
        .route(
            "/api/tasks/{id}/fail",
            put(actions::fail).post(actions::fail),
        )
        .route(
            "/api/tasks/{id}/cancel",
            put(actions::cancel).post(actions::cancel),
        )
        .route(
            "/api/tasks/{id}/retry",
            put(actions::retry).post(actions::retry),
        )
        .route(
            "/api/tasks/{id}/reschedule",
            put(actions::reschedule).post(actions::reschedule),
        )
        .route(
            "/api/tasks/{id}/step",
            put(progress::step).post(progress::step),
        )
        .route(
            "/api/tasks/{id}/next",
            put(progress::step).post(progress::step),
        )
        .route(
            "/api/tasks/{id}/heartbeat",
            put(progress::heartbeat).post(progress::heartbeat),
        )
        .route(
            "/api/tasks/{id}/progress",
            put(progress::progress).post(progress::progress),
        )
}

/// The relay: push ingest, deliveries and destinations.
fn relay_routes() -> Router<AppState> {
    Router::new()
        .route("/api/push", post(deliveries::push))
        .route("/api/deliveries", get(deliveries::list))
        .route("/api/deliveries/{id}", get(deliveries::get_one))
        .route("/api/deliveries/{id}/replay", post(deliveries::replay))
        .route("/api/destinations", get(destinations::list))
        .route(
            "/api/destinations/{id}/replay",
            post(deliveries::replay_destination),
        )
        .route("/api/destinations/{id}/enable", post(destinations::enable))
}

/// Running the fleet: workers, limits, schedules, the overview, health, metrics and the OpenAPI
/// document.
fn operation_routes() -> Router<AppState> {
    Router::new()
        .route("/api/workers", get(workers::list))
        .route("/api/limits", get(limits::list))
        .route(
            "/api/limits/{assignee}/{key}",
            put(limits::put).delete(limits::remove),
        )
        .route(
            "/api/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/api/schedules/{name}",
            get(schedules::get_one)
                .put(schedules::replace)
                .delete(schedules::delete),
        )
        .route("/api/schedules/{name}/pause", post(schedules::pause))
        .route("/api/schedules/{name}/resume", post(schedules::resume))
        .route("/api/schedules/{name}/trigger", post(schedules::trigger))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/overview", get(overview::get))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
}

/// The web dashboard's page and its embedded files.
fn ui_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
}

/// The live feeds (SSE): a task's events and the overview's. No request timeout applies.
fn streaming_routes() -> Router<AppState> {
    Router::new()
        .route("/api/tasks/{id}/events", get(events::feed))
        .route("/api/overview/events", get(overview::feed))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

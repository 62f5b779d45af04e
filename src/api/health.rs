//! Liveness, metrics, request timing, and the JSON 404, 405 and timeout 503.

use super::error::ApiError;
use super::state::AppState;
use crate::bus::subjects;
use crate::metrics::{HttpLabels, TaskLabels};
use crate::relay::job::DeliveryStatus;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::{Duration, Instant};

/// `GET /healthz` (no auth): 200 while NATS is connected, 503 otherwise. It also says the
/// fleet's stall threshold (`stall_after_s`, [`crate::domain::StallRule`]), which `pulse status`
/// reads since it runs without the fleet's config.
pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    let connected = state.tasks.bus().is_connected();
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if connected { "ok" } else { "degraded" },
        "nats": if connected { "connected" } else { "disconnected" },
        "version": env!("CARGO_PKG_VERSION"),
        "stall_after_s": state.stall.after.as_secs(),
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics` (no auth): Prometheus text; queue depth is read from the stream on each scrape.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    super::workers::count_online(&state).await;
    super::limits::count_usage(&state).await;
    let metrics = state.tasks.metrics();
    match state
        .tasks
        .bus()
        .topology
        .tasks
        .info_with_subjects(subjects::ALL_TASKS)
        .await
    {
        Ok(mut info) => {
            metrics.queue_depth.clear();
            let mut counts = std::collections::HashMap::<TaskLabels, i64>::new();
            while let Some(Ok((subject, n))) = futures::StreamExt::next(&mut info).await {
                if let Some((a, p, _)) = subjects::parse_task(&subject) {
                    *counts
                        .entry(TaskLabels {
                            assignee: a.to_string(),
                            priority: p.to_string(),
                        })
                        .or_default() += n as i64;
                }
            }
            for (labels, n) in &counts {
                metrics.queue_depth.get_or_create(labels).set(*n);
            }
            refresh_backlog(&state, counts.into_keys().collect()).await;
        }
        Err(e) => tracing::warn!(error.message = %e, "queue depth unavailable"),
    }
    let client = &state.tasks.bus().client;
    let (stream, held) = (subjects::TASKS_STREAM, subjects::ALL_SCHEDULED);
    match crate::bus::direct::count_after(client, stream, held, 0).await {
        Ok(n) => {
            metrics.tasks_scheduled.set(n as i64);
        }
        Err(e) => tracing::warn!(error.message = %e, "scheduled count unavailable"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// Refreshes the backlog gauges: for each queue holding messages, its oldest pending task's age
/// and its stalled tasks (one short walk each, `TaskService::queue_gauges`); and the pending and
/// dead delivery records (counted in their copies, delete markers of the last minute included).
async fn refresh_backlog(state: &AppState, queues: Vec<TaskLabels>) {
    let backlog = &state.tasks.metrics().backlog;
    backlog.oldest_pending_age.clear();
    backlog.tasks_stalled.clear();
    for labels in queues {
        let parsed = (
            crate::domain::Assignee::parse(&labels.assignee),
            crate::domain::Priority::parse(&labels.priority),
        );
        let (Ok(assignee), Ok(priority)) = parsed else {
            continue;
        };
        match state
            .tasks
            .queue_gauges(&assignee, priority, state.stall)
            .await
        {
            Ok(g) => {
                if let Some(age) = g.oldest_pending_s {
                    backlog.oldest_pending_age.get_or_create(&labels).set(age);
                }
                backlog.tasks_stalled.get_or_create(&labels).set(g.stalled);
            }
            Err(e) => tracing::warn!(error.message = %e, "queue figures unavailable"),
        }
    }
    for status in [DeliveryStatus::Pending, DeliveryStatus::Dead] {
        match state.deliveries.count(status).await {
            Ok(n) => {
                let labels = crate::metrics::DeliveryLabels {
                    status: status.as_str().into(),
                };
                backlog
                    .delivery_records
                    .get_or_create(&labels)
                    .set(n as i64);
            }
            Err(e) => {
                tracing::warn!(error.message = %e, status = status.as_str(), "delivery record count unavailable")
            }
        }
    }
}

/// Records the latency of every request by route template.
pub(super) async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    state
        .tasks
        .metrics()
        .http_latency
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16().to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The span of one request, `METHOD /route/{template}`, a child of the caller's trace when the
/// request carries a `traceparent`. Health checks and scrapes get none (they would drown the
/// traces that matter).
pub(super) fn request_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    if matches!(route, "/healthz" | "/metrics") {
        return tracing::Span::none();
    }
    let method = req.method().as_str();
    let span = tracing::info_span!(target: "taskfleet::trace", "request",
        otel.name = format!("{method} {route}"), otel.kind = "server",
        http.request.method = method, http.route = route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty);
    crate::telemetry::continue_http_trace(&span, req.headers());
    span
}

/// Notes the status on the request's span (a 5xx marks it an error), and logs the request at
/// debug level as tower-http's default does.
pub(super) fn request_done(response: &Response, latency: Duration, span: &tracing::Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tracing::debug!(
        latency_ms = latency.as_millis() as u64,
        status = status.as_u16(),
        "finished processing request"
    );
}

/// Requests that take longer than `limit` (`api.request_timeout_s`): a JSON 503 like every other
/// error (the store did not answer in time).
pub(super) async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let (method, route) = (req.method().clone(), req.uri().path().to_string());
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(anyhow::anyhow!(
            "{method} {route} took longer than {limit:?}"
        ))
        .into_response(),
    }
}

/// Unknown routes: a JSON 404 like every other error.
pub(super) async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// Known routes with the wrong method: a JSON 405.
pub(super) async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

//! API errors as `{"error": {"code", "message"}}` with the right status; a JSON body extractor
//! that answers malformed input with 400/413/422 instead of a 500.

use crate::tasks::TaskError;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// An error answered to an API caller. 4xx messages are for the caller; 5xx causes are logged and
/// hidden.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad JSON, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// No key, or a key we do not know.
    #[error("missing or invalid API key (send X-Bot-Key or Authorization: Bearer)")]
    Unauthorized,
    /// The key may not touch this assignee or task.
    #[error("{0}")]
    Forbidden(String),
    /// No such task or route.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The task's state does not allow this.
    #[error("{message}")]
    Conflict {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason.
        message: String,
    },
    /// The body is over the limit.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// Well-formed but invalid values.
    #[error("{0}")]
    Unprocessable(String),
    /// NATS is unreachable or failing.
    #[error("the task store is unavailable; try again")]
    Unavailable(#[source] anyhow::Error),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Unavailable(cause) = &self {
            tracing::error!(error.cause_chain = ?cause, error.message = %cause, "request failed");
        }
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        (status, Json(body)).into_response()
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::NotFound(id) => Self::NotFound(format!("task {id} not found")),
            TaskError::Invalid(m) => Self::Unprocessable(m),
            TaskError::IllegalTransition(message) => Self::Conflict {
                code: "illegal_transition",
                message,
            },
            TaskError::StaleLease(message) => Self::Conflict {
                code: "stale_lease",
                message,
            },
            e @ TaskError::Contended(_) => Self::Conflict {
                code: "contended",
                message: e.to_string(),
            },
            TaskError::Bus(crate::bus::BusError::TooLarge(why)) => Self::Unprocessable(format!(
                "the task's record would be too large to store ({why}); send a smaller result, \
                 error or payload"
            )),
            TaskError::Bus(b) => Self::Unavailable(b.into()),
        }
    }
}

/// A JSON body parsed regardless of `Content-Type` (bots' curl scripts are not always careful).
/// An empty body (no bytes at all) parses as JSON `null`, so `Option<T>` bodies may be omitted;
/// anything else must be JSON (a body of only whitespace is malformed, 400).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_body(&bytes, false).map(JsonBody)
    }
}

/// A [`JsonBody`] in which a field `T` does not know is refused (422 naming it) rather than
/// ignored: for bodies where a misspelt field silently changes what happens (a task's `kind`
/// sent as `type` made a manual task no worker runs).
#[derive(Debug)]
pub(super) struct StrictJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_body(&bytes, true).map(StrictJsonBody)
    }
}

/// The request's body, within the route's [`BodyLimit`] (413 past it).
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map(|l| l.0)
        .unwrap_or(usize::MAX);
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest(format!("cannot read request body: {rej}"))
        }
    })
}

/// Parses a JSON body (none at all reads as `null`) into `T`, naming the field serde refused;
/// when `strict`, a field `T` does not know is refused too.
fn parse_body<T: DeserializeOwned>(bytes: &[u8], strict: bool) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.is_empty() { b"null" } else { bytes };
    // Every body is an object (or none); serde would read a struct from an array too, or
    // refuse a short one with a message about tuple lengths.
    if text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::Unprocessable(
            "the request body must be a JSON object, not an array".into(),
        ));
    }
    let mut unknown: Vec<String> = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(text);
    let mut note = |path: serde_ignored::Path<'_>| {
        if strict {
            unknown.push(path.to_string());
        }
    };
    let ignoring = serde_ignored::Deserializer::new(&mut json, &mut note);
    let parsed = serde_path_to_error::deserialize(ignoring)
        .map_err(|e| (e.path().to_string(), e.into_inner()))
        .and_then(|v| json.end().map(|_| v).map_err(|e| (String::new(), e)))
        .map_err(|(field, inner)| body_error(&field, inner))?;
    match unknown.first() {
        Some(field) => Err(ApiError::Unprocessable(format!(
            "unknown field `{field}`{}",
            if field == "type" {
                " (a task's kind is `kind`)"
            } else {
                ""
            }
        ))),
        _ => Ok(parsed),
    }
}

/// A body serde refused: malformed JSON is a 400; JSON of the wrong shape a 422 naming the
/// field by its path (`delay_s`, `notify[2]`) unless the message names it already.
fn body_error(field: &str, inner: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let mut message = inner.to_string();
    if inner.classify() == Category::Data {
        // Where in the JSON text says nothing more once the field is named (and nothing to a
        // caller who built the body with a CLI).
        let at = format!(" at line {} column {}", inner.line(), inner.column());
        if let Some(bare) = message.strip_suffix(&at) {
            message = bare.to_string();
        }
    }
    match inner.classify() {
        Category::Data if field.is_empty() || field == "." || message.starts_with(field) => {
            ApiError::Unprocessable(message)
        }
        Category::Data => ApiError::Unprocessable(format!("{field}: {message}")),
        _ => ApiError::BadRequest(format!("malformed JSON: {message}")),
    }
}

/// The `{id}` path segment. Anything that cannot be a task id (including non-UTF-8) is a 404.
#[derive(Debug)]
pub struct IdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(_) => Err(ApiError::NotFound(format!(
                "task {} not found",
                parts.uri.path().rsplit('/').next().unwrap_or_default()
            ))),
        }
    }
}

/// Query parameters whose rejections (repeated or malformed parameters) are JSON 400s.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// The body limit in force, put in request extensions so errors can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

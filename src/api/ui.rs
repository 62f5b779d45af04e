//! The web dashboard: `GET /` (the page) and `GET /ui/{file}` (its stylesheet and script
//! modules), every file embedded in the binary from `ui/` beside this file. Served without a key
//! (they hold no data: every figure the page shows comes from a JSON API call that sends the key
//! the user signed in with) under a strict Content-Security-Policy: nothing but this origin, no
//! inline script or style, no framing.

use super::error::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The policy every dashboard file is served with.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The page.
const INDEX: &str = include_str!("ui/index.html");

/// The files under `/ui/`: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("ui/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/api.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/pages.js"),
    ),
    (
        "task.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/task.js"),
    ),
];

/// `GET /`: the dashboard page.
pub(super) async fn index(headers: HeaderMap) -> Response {
    embedded(&headers, "text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`: one of the page's files, 404 for any other name.
pub(super) async fn asset(headers: HeaderMap, Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => embedded(&headers, kind, body),
        None => ApiError::NotFound(format!("no dashboard file {file}")).into_response(),
    }
}

/// `body` with its type, the policy and a validator: the browser asks again each time
/// (`no-cache`) and gets a 304 while the binary, and so the file, is the same.
fn embedded(headers: &HeaderMap, kind: &'static str, body: &'static str) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let status = if fresh {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut response = if fresh {
        status.into_response()
    } else {
        (status, body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

/// The 64-bit FNV-1a hash of `bytes` (an ETag, not a secret).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

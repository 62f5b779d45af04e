//! `Collector`: a real OTLP/HTTP trace receiver on 127.0.0.1:0 (`POST /v1/traces`, protobuf
//! `ExportTraceServiceRequest`, as a collector takes it) that decodes and keeps every span.

use super::eventually;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One span as the collector received it (ids in lowercase hex, as `traceparent` writes them).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// String and integer attributes, as text.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Inner {
    spans: Vec<ReceivedSpan>,
    /// `content-type` of every export request.
    content_types: Vec<String>,
    /// Bodies that were not a valid `ExportTraceServiceRequest`.
    undecodable: usize,
}

type Shared = Arc<Mutex<Inner>>;

/// A local OTLP/HTTP trace receiver. The server lives until the test ends.
#[derive(Debug, Clone)]
pub struct Collector {
    base: String,
    inner: Shared,
}

fn text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(text)
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: (!span.parent_span_id.is_empty())
                    .then(|| hex(&span.parent_span_id)),
                attributes: span
                    .attributes
                    .iter()
                    .filter_map(|kv| Some((kv.key.clone(), text(kv)?)))
                    .collect(),
            });
        }
    }
    out
}

async fn export(State(inner): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut s = inner.lock().unwrap();
    s.content_types.push(content_type);
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            s.spans.extend(flatten(request));
            let answer = ExportTraceServiceResponse::default().encode_to_vec();
            (
                StatusCode::OK,
                [("content-type", "application/x-protobuf")],
                answer,
            )
        }
        Err(_) => {
            s.undecodable += 1;
            (
                StatusCode::BAD_REQUEST,
                [("content-type", "text/plain")],
                b"not an ExportTraceServiceRequest".to_vec(),
            )
        }
    }
}

#[allow(dead_code)]
impl Collector {
    /// Starts the receiver.
    pub async fn start() -> Self {
        let inner = Shared::default();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, inner }
    }

    /// `http://127.0.0.1:<port>` (what `OTEL_EXPORTER_OTLP_ENDPOINT` takes).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `http://127.0.0.1:<port>/v1/traces` (what `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` takes).
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.base)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.inner.lock().unwrap().spans.clone()
    }

    /// The `content-type` of every export request so far.
    pub fn content_types(&self) -> Vec<String> {
        self.inner.lock().unwrap().content_types.clone()
    }

    /// How many export requests could not be decoded.
    pub fn undecodable(&self) -> usize {
        self.inner.lock().unwrap().undecodable
    }

    /// Waits (bounded) until the spans received satisfy `done`, and returns them all.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        eventually(what, limit, || {
            let spans = self.spans();
            let ok = done(&spans);
            async move { ok.then_some(spans) }
        })
        .await
    }
}

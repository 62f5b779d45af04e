//! Logs and traces: an env-filtered `tracing` subscriber (human or JSON), OTLP/HTTP export of
//! spans configured by the standard `OTEL_*` variables, and W3C trace context carried in NATS
//! headers, continued from an HTTP request's `traceparent` and sent on webhook requests.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, or `OTEL_TRACES_EXPORTER=otlp` (to the default `http://localhost:4318`); off with
//! `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`. The SDK's batch processor exports
//! from a thread of its own, outside any Tokio runtime, so its HTTP client is a blocking one
//! ([`BlockingHttp`]). Spans of the `taskfleet` crate at info level and above are exported
//! whatever the log filter says; spans with the target [`SPAN_TARGET`] (HTTP requests, runs,
//! fan-out, deliveries) are kept out of the logs.

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// Filter in `RUST_LOG` syntax (`RUST_LOG` wins when set).
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Human,
            log_filter: "info,async_nats=warn".into(),
        }
    }
}

/// Target of the spans that exist for traces only (kept out of the logs): HTTP requests,
/// task runs, the relay's fan-out and deliveries.
pub const SPAN_TARGET: &str = "taskfleet::trace";

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE: &str = "taskfleet";

/// The exporter's request timeout when no `OTEL_EXPORTER_OTLP_*TIMEOUT` is set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why spans are not exported.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration (an endpoint that is no URL, compression).
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The HTTP client for the exporter could not be built.
    #[error("OTLP HTTP client: {0}")]
    Client(String),
}

/// Keeps the trace exporter alive; call [`TelemetryGuard::shutdown`] before exiting to flush.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops the trace exporter, if any. Blocks: call it outside async code (it
    /// waits for the last export).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("taskfleet: trace exporter shutdown: {e}");
            }
        }
    }
}

/// Installs the global subscriber and, when the `OTEL_*` variables ask for it, the OTLP
/// exporter, named `service` unless the variables name it. Safe to call more than once (later
/// calls install nothing).
pub fn init(cfg: &TelemetryConfig, service: &str) -> TelemetryGuard {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let (propagator, mut notes) = propagator(&env);
    opentelemetry::global::set_text_map_propagator(propagator);
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = match format!("{SPAN_TARGET}=off").parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    let fmt = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .boxed(),
    };
    let provider = if wants_export(&env) {
        notes.extend(unsupported(&env));
        otlp_provider(service, &env)
            .map_err(|e| notes.push(format!("traces not exported: {e}")))
            .ok()
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("taskfleet"))
            .with_filter(Targets::new().with_target("taskfleet", tracing::Level::INFO))
    });
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok();
    for note in notes {
        tracing::warn!("{note}");
    }
    if installed && provider.is_some() {
        tracing::info!(endpoint = %traces_endpoint(&env), "exporting traces over OTLP/HTTP");
    }
    TelemetryGuard { provider }
}

/// Test logging: silent unless `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            ))
            .with_test_writer()
            .try_init();
    }
}

/// Whether the variables ask for OTLP trace export: never with `OTEL_SDK_DISABLED=true`; when
/// `OTEL_TRACES_EXPORTER` is set, if it names `otlp`; else when an OTLP endpoint is set.
fn wants_export(env: &dyn Fn(&str) -> Option<String>) -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    match env("OTEL_TRACES_EXPORTER") {
        Some(names) => names.split(',').any(|n| n.trim() == "otlp"),
        None => {
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
                || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        }
    }
}

/// Notes on variables taskfleet does not follow: exporters other than `otlp`, a protocol other
/// than `http/protobuf` (the only one built in), and compression (none is built in).
fn unsupported(env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(names) = env("OTEL_TRACES_EXPORTER") {
        for other in names.split(',').map(str::trim) {
            if !matches!(other, "otlp" | "none" | "") {
                notes.push(format!(
                    "OTEL_TRACES_EXPORTER: {other:?} is not supported (otlp, none)"
                ));
            }
        }
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = env(var).filter(|p| p.trim() != "http/protobuf") {
            notes.push(format!(
                "{var}={p}: taskfleet exports over http/protobuf only; using that"
            ));
        }
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ] {
        if let Some(c) = env(var).filter(|c| c.trim() != "none") {
            notes.push(format!(
                "{var}={c}: compression is not built in; the exporter refuses it (unset it)"
            ));
        }
    }
    notes
}

/// `OTEL_PROPAGATORS` (default `tracecontext,baggage`; `none` for none) as one propagator, with
/// notes on names taskfleet does not know.
fn propagator(env: &dyn Fn(&str) -> Option<String>) -> (TextMapCompositePropagator, Vec<String>) {
    let names = env("OTEL_PROPAGATORS").unwrap_or_else(|| "tracecontext,baggage".into());
    let mut chosen: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    let mut notes = Vec::new();
    for name in names.split(',').map(str::trim) {
        match name {
            "tracecontext" => chosen.push(Box::new(TraceContextPropagator::new())),
            "baggage" => chosen.push(Box::new(BaggagePropagator::new())),
            "none" | "" => {}
            other => notes.push(format!(
                "OTEL_PROPAGATORS: {other:?} is not supported (tracecontext, baggage, none)"
            )),
        }
    }
    (TextMapCompositePropagator::new(chosen), notes)
}

/// The exporter's request timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s.
fn export_timeout(env: &dyn Fn(&str) -> Option<String>) -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|var| env(var)?.trim().parse().ok())
    .map(Duration::from_millis)
    .unwrap_or(DEFAULT_TIMEOUT)
}

/// Where spans go, for the start-up log line (the exporter resolves it the same way).
fn traces_endpoint(env: &dyn Fn(&str) -> Option<String>) -> String {
    match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(url) => url,
        None => {
            let base = env("OTEL_EXPORTER_OTLP_ENDPOINT")
                .unwrap_or_else(|| "http://localhost:4318".into());
            format!("{}/v1/traces", base.trim_end_matches('/'))
        }
    }
}

/// Whether the variables name the resource attribute `key` (`service.name` is also named by
/// `OTEL_SERVICE_NAME`).
fn names_attribute(env: &dyn Fn(&str) -> Option<String>, key: &str) -> bool {
    (key == "service.name" && env("OTEL_SERVICE_NAME").is_some())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == key))
        })
}

/// The resource: what the variables say (the SDK reads them), plus `service.name` = `service`
/// and `service.version` where they say nothing.
fn resource(service: &str, env: &dyn Fn(&str) -> Option<String>) -> opentelemetry_sdk::Resource {
    let mut builder = opentelemetry_sdk::Resource::builder();
    if !names_attribute(env, "service.name") {
        builder = builder.with_service_name(service.to_string());
    }
    if !names_attribute(env, "service.version") {
        builder = builder.with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
    }
    builder.build()
}

/// The tracer provider: a batch processor (its `OTEL_BSP_*` and `OTEL_TRACES_SAMPLER*` read by
/// the SDK) feeding the OTLP/HTTP exporter (endpoint and headers read by the exporter).
fn otlp_provider(
    service: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingHttp::new(export_timeout(env))?)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service, env))
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// The exporter's HTTP client: reqwest's blocking client, since the SDK exports from a thread
/// of its own with no Tokio runtime (an async client panics there: "no reactor running").
#[derive(Debug)]
struct BlockingHttp(reqwest::blocking::Client);

impl BlockingHttp {
    /// A client with `timeout` per request. It is built on a thread of its own: building (and
    /// dropping) a blocking client inside a runtime panics.
    fn new(timeout: Duration) -> Result<Self, TelemetryError> {
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| TelemetryError::Client("building the client panicked".into()))?
        .map(Self)
        .map_err(|e| TelemetryError::Client(e.to_string()))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<bytes::Bytes>,
    ) -> Result<opentelemetry_http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let response = self.0.execute(request.try_into()?)?;
        let (status, headers) = (response.status(), response.headers().clone());
        let mut answer = opentelemetry_http::Response::builder()
            .status(status)
            .body(response.bytes()?)?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context into NATS headers (`traceparent`).
pub fn inject_context(headers: &mut async_nats::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// Makes `span` a child of the trace carried in `headers`, if any.
pub fn continue_trace(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(h) = headers {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(h)));
        let _ = span.set_parent(cx);
    }
}

/// A trace context carried in a message body rather than its headers (`traceparent`, …): each
/// job of a delivery bundle carries its event's.
pub type TraceContext = std::collections::HashMap<String, String>;

/// The trace context of `span`, to carry in a message body.
pub fn trace_context(span: &tracing::Span) -> TraceContext {
    let cx = span.context();
    let mut map = TraceContext::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    map
}

/// Makes `span` a child of the trace `cx` carries, if it carries one.
pub fn continue_trace_from(span: &tracing::Span, cx: &TraceContext) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(cx));
    let _ = span.set_parent(cx);
}

/// Makes `span` a child of the trace an HTTP request carries (`traceparent`), if it carries one.
pub fn continue_http_trace(span: &tracing::Span, headers: &reqwest::header::HeaderMap) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let _ = span.set_parent(cx);
}

/// The current span's trace context as HTTP headers (`traceparent`), for an outgoing request;
/// empty when spans are not exported.
pub fn http_trace_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(&mut headers))
    });
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn spans_are_exported_when_either_otlp_endpoint_is_set() {
        assert!(!wants_export(&vars(&[])));
        assert!(wants_export(&vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://c:4318"
        )])));
        assert!(wants_export(&vars(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])));
    }

    #[test]
    fn the_exporter_variable_and_sdk_disabled_win_over_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert!(!wants_export(&vars(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
        assert!(!wants_export(&vars(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "TRUE")
        ])));
        assert!(wants_export(&vars(&[("OTEL_TRACES_EXPORTER", "otlp")])));
        assert!(wants_export(&vars(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "false")
        ])));
    }

    #[test]
    fn the_signal_timeout_wins_over_the_general_one_and_both_are_milliseconds() {
        assert_eq!(export_timeout(&vars(&[])), DEFAULT_TIMEOUT);
        let general = ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500");
        assert_eq!(
            export_timeout(&vars(&[general])),
            Duration::from_millis(2500)
        );
        assert_eq!(
            export_timeout(&vars(&[
                general,
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")
            ])),
            Duration::from_millis(700)
        );
    }

    #[test]
    fn the_endpoint_shown_is_the_signal_url_as_given_or_the_base_with_v1_traces() {
        assert_eq!(
            traces_endpoint(&vars(&[])),
            "http://localhost:4318/v1/traces"
        );
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/");
        assert_eq!(traces_endpoint(&vars(&[base])), "http://c:4318/v1/traces");
        let signal = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x");
        assert_eq!(traces_endpoint(&vars(&[base, signal])), "http://t:1/x");
    }

    #[test]
    fn a_service_name_from_the_variables_is_kept_and_taskfleet_is_the_default() {
        let named = |pairs: &[(&str, &str)]| {
            resource("taskfleet", &vars(pairs))
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string())
        };
        // The SDK's detectors read the real environment; only the fallback is ours to test
        // without touching it, plus what `names_attribute` decides.
        assert!(names_attribute(
            &vars(&[("OTEL_SERVICE_NAME", "bots")]),
            "service.name"
        ));
        assert!(names_attribute(
            &vars(&[("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=bots")]),
            "service.name"
        ));
        assert!(!names_attribute(
            &vars(&[("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=x")]),
            "service.name"
        ));
        if std::env::var_os("OTEL_SERVICE_NAME").is_none()
            && std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_none()
        {
            assert_eq!(named(&[]).as_deref(), Some("taskfleet"));
        }
    }

    #[test]
    fn unsupported_protocols_exporters_and_propagators_are_named() {
        let notes = unsupported(&vars(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_EXPORTER", "otlp,zipkin"),
        ]));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(unsupported(&vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).is_empty());
        let (_, notes) = propagator(&vars(&[("OTEL_PROPAGATORS", "tracecontext,b3")]));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(propagator(&vars(&[])).1.is_empty());
    }
}

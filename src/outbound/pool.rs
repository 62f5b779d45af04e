//! The hardened client's kept connections: per origin, idle HTTP/1.1 connections, each used by
//! one request at a time and put back by that request, once the connection is ready for the
//! next, before its answer is handed on.
//!
//! hyper-util's pooled client (`legacy::Client`) puts a used connection back from a task of its
//! own and races every checkout against a new connect, so a request sent right after another to
//! the same host often went out on a second connection. A receiver that serves one connection
//! at a time (Python's single-threaded `HTTPServer` speaking HTTP/1.1) did not read it while the
//! first stayed open: each such delivery waited out its attempt timeout (seen on 2026-12-06, 15
//! webhooks in ~90 s). Here a destination's deliveries, one after another, share one connection;
//! requests that overlap get one each.

use super::ssrf::SafeResolver;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower_service::Service;

/// What makes connections: TCP through the safe resolver, TLS for `https`.
pub(super) type Connector = hyper_rustls::HttpsConnector<HttpConnector<SafeResolver>>;

/// One HTTP/1.1 connection's request side.
pub(super) type Sender = SendRequest<Full<Bytes>>;

/// How long an idle kept connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per origin, at most (the relay holds one per destination it is
/// delivering to; a hundred destinations on one host keep a hundred).
const IDLE_PER_ORIGIN: usize = 1024;

/// How long a used connection may take to be ready for another request; one that is not (its
/// answer's body was not read to the end, say) is closed instead.
const READY_WAIT: Duration = Duration::from_millis(100);

/// How often every origin's idle connections are looked at for ones kept too long.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Resolving, connecting or the TLS handshake failed (or the safe resolver refused).
    #[error("cannot connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection's HTTP/1.1 setup failed.
    #[error("cannot set up the connection: {0}")]
    Handshake(#[source] hyper::Error),
}

/// `scheme://authority` of a request target.
type Origin = String;

#[derive(Default)]
struct Idle {
    by_origin: HashMap<Origin, Vec<(Instant, Sender)>>,
    swept: Option<Instant>,
}

/// The kept connections (cheap to clone: shared).
#[derive(Clone)]
pub(super) struct Pool {
    connector: Connector,
    idle: Arc<Mutex<Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().expect("pool lock");
        let kept: usize = idle.by_origin.values().map(Vec::len).sum();
        f.debug_struct("Pool").field("idle", &kept).finish()
    }
}

fn origin(uri: &http::Uri) -> Origin {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map_or("", |a| a.as_str());
    format!("{scheme}://{authority}")
}

impl Pool {
    /// An empty pool making its connections with `connector`.
    pub(super) fn new(connector: Connector) -> Self {
        Self {
            connector,
            idle: Arc::default(),
        }
    }

    /// A kept connection to `uri`'s origin ready for a request (`true`), else a new one.
    pub(super) async fn checkout(&self, uri: &http::Uri) -> Result<(Sender, bool), PoolError> {
        if let Some(sender) = self.take_idle(&origin(uri)) {
            return Ok((sender, true));
        }
        Ok((self.connect(uri).await?, false))
    }

    fn take_idle(&self, origin: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        let kept = idle.by_origin.get_mut(origin)?;
        while let Some((since, sender)) = kept.pop() {
            if since.elapsed() < IDLE_TIMEOUT && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// A new connection to `uri`'s origin; it closes once its sender is dropped.
    pub(super) async fn connect(&self, uri: &http::Uri) -> Result<Sender, PoolError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(PoolError::Connect)?;
        let io = connector
            .call(uri.clone())
            .await
            .map_err(PoolError::Connect)?;
        let (sender, connection) = http1::handshake(io).await.map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error.message = %e, "outbound connection ended");
            }
        });
        Ok(sender)
    }

    /// Keeps `sender` for `uri`'s origin once it is ready for another request; one that is not
    /// ready within [`READY_WAIT`], or is closed, is dropped (closing its connection).
    pub(super) async fn checkin(&self, uri: &http::Uri, mut sender: Sender) {
        let ready = tokio::time::timeout(READY_WAIT, sender.ready()).await;
        if !matches!(ready, Ok(Ok(()))) {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            idle.swept = Some(Instant::now());
            for kept in idle.by_origin.values_mut() {
                kept.retain(|(since, s)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed());
            }
            idle.by_origin.retain(|_, kept| !kept.is_empty());
        }
        let kept = idle.by_origin.entry(origin(uri)).or_default();
        if kept.len() < IDLE_PER_ORIGIN {
            kept.push((Instant::now(), sender));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_the_scheme_and_authority_of_a_target() {
        let uri: http::Uri = "https://hooks.example.com:8443/a/b?c=d".parse().unwrap();
        assert_eq!(origin(&uri), "https://hooks.example.com:8443");
        let plain: http::Uri = "http://127.0.0.1/x".parse().unwrap();
        assert_eq!(origin(&plain), "http://127.0.0.1");
    }
}

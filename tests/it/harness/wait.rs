//! Bounded polling: no fixed sleeps in tests.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 25 ms until it returns `Some`, or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let polled = poll_until(limit, || {
        let checked = check();
        async move { checked.await.ok_or(()) }
    });
    match polled.await {
        Ok(v) => v,
        Err(()) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every 25 ms until it returns `Ok`; after `limit`, its last `Err` (for a test
/// that says more than [`eventually`] about what did not happen).
pub async fn poll_until<T, E, F, Fut>(limit: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        let last = check().await;
        if last.is_ok() || started.elapsed() >= limit {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

//! Reading and changing one entry of the `taskfleet_limits` bucket with a compare-and-set on its
//! revision, and the entry keys: everything of assignee `a` lives under `a.` (a worker's NATS
//! user may write there only).

use super::LimitsError;
use crate::bus::NatsResultExt;
use async_nats::jetstream::kv;
use base64::Engine;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// Tries of one compare-and-set before giving up (the caller then waits and tries again later).
const TRIES: usize = 24;

/// The entry key of `key` of kind `kind` (`c` concurrency, `l` lane, `r` rate, `o` override).
pub(crate) fn entry_key(assignee: &str, kind: &str, key: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    format!("{assignee}.{kind}.{encoded}")
}

/// The entry of the assignee-wide cap.
pub(crate) fn cap_key(assignee: &str) -> String {
    format!("{assignee}.all")
}

/// The entry holding what the assignee's workers declared (`[worker.limits]`).
pub(crate) fn declared_key(assignee: &str) -> String {
    format!("{assignee}.declared")
}

/// Reads `key` (`None` when absent or deleted) with its revision (0 when it never existed).
pub(crate) async fn read<T: DeserializeOwned>(
    kv: &kv::Store,
    key: &str,
) -> Result<(Option<T>, u64), LimitsError> {
    let entry = kv.entry(key).await.op("read a limits entry")?;
    Ok(match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            (serde_json::from_slice(&e.value).ok(), e.revision)
        }
        Some(e) => (None, e.revision),
        None => (None, 0),
    })
}

/// Applies `f` to `key`'s value (`init` when absent) and stores the result if `f` says it
/// changed it, compare-and-set on the revision read; a lost race reads again. Returns `f`'s
/// answer from the round that was stored (or needed no write).
pub(crate) async fn change<T, R>(
    kv: &kv::Store,
    key: &str,
    init: impl Fn() -> T,
    f: impl FnMut(&mut T) -> (bool, R),
) -> Result<R, LimitsError>
where
    T: Serialize + DeserializeOwned,
{
    change_from(kv, key, None, init, f).await
}

/// [`change`] starting from `first`, a [`read`] of `key` made already (say, alongside another
/// read): one round trip less when nobody changed the entry since.
pub(crate) async fn change_from<T, R>(
    kv: &kv::Store,
    key: &str,
    mut first: Option<(Option<T>, u64)>,
    init: impl Fn() -> T,
    mut f: impl FnMut(&mut T) -> (bool, R),
) -> Result<R, LimitsError>
where
    T: Serialize + DeserializeOwned,
{
    for attempt in 0..TRIES {
        let (value, revision) = match first.take() {
            Some(read) => read,
            None => read::<T>(kv, key).await?,
        };
        let mut value = value.unwrap_or_else(&init);
        let (write, answer) = f(&mut value);
        if !write {
            return Ok(answer);
        }
        let bytes = serde_json::to_vec(&value).expect("limits entries serialize");
        if revision == 0 {
            match kv.create(key, bytes.into()).await {
                Ok(_) => return Ok(answer),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed(e, "create a limits entry")),
            }
        } else {
            match kv.update(key, bytes.into(), revision).await {
                Ok(_) => return Ok(answer),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(failed(e, "update a limits entry")),
            }
        }
        // Someone else changed the entry first: read it again after a moment.
        let jitter = rand::random::<u64>() % (2 + attempt as u64 * 2);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    Err(LimitsError::Contended(key.to_string()))
}

/// A NATS error of `op`.
fn failed<E: std::error::Error + Send + Sync + 'static>(e: E, op: &'static str) -> LimitsError {
    LimitsError::Bus(crate::bus::BusError::Op {
        op,
        source: Box::new(e),
    })
}

/// Writes `value` at `key` whatever was there.
pub(crate) async fn put<T: Serialize>(
    kv: &kv::Store,
    key: &str,
    value: &T,
) -> Result<(), LimitsError> {
    let bytes = serde_json::to_vec(value).expect("limits entries serialize");
    kv.put(key, bytes.into()).await.op("write a limits entry")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_are_valid_kv_keys_whatever_the_key_says() {
        let k = entry_key("anna", "c", "repo:acme/web ü.*>");
        assert!(k.starts_with("anna.c."));
        assert!(k["anna.c.".len()..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}

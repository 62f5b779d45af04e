//! Errors at the NATS boundary, classified once from async-nats error kinds.

use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A NATS or JetStream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The server refused or dropped the connection.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// Server URL (credentials removed).
        url: String,
        /// Cause.
        source: BoxError,
    },
    /// No connection within the allowed time (`nats.connect_timeout_s`).
    #[error("no connection to NATS at {url} within {after:?} (last attempt: {last_error})")]
    ConnectTimeout {
        /// Server URL (credentials removed).
        url: String,
        /// How long we tried.
        after: Duration,
        /// Why the last attempt failed, as async-nats reports it.
        last_error: String,
    },
    /// The server or the store is not one this build works with (a nats-server too old, a store
    /// written before task storage v2); the message says what to do.
    #[error("{0}")]
    Incompatible(String),
    /// A compare-and-set lost against a concurrent writer.
    #[error("the record changed concurrently")]
    RevisionConflict,
    /// A stored message or record could not be decoded.
    #[error("cannot decode {what}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Cause.
        source: serde_json::Error,
    },
    /// The message is larger than NATS accepts (`max_payload`, a stream's `max_msg_size`):
    /// sending it again cannot help.
    #[error("the message is too large for NATS ({0})")]
    TooLarge(String),
    /// Any other failed operation.
    #[error("NATS operation `{op}` failed")]
    Op {
        /// The operation, e.g. `kv update`.
        op: &'static str,
        /// Cause.
        source: BoxError,
    },
}

/// Adds the operation name to async-nats errors: `js.publish(..).await.op("publish task")?`.
pub trait NatsResultExt<T> {
    /// Wraps the error as [`BusError::Op`].
    fn op(self, op: &'static str) -> Result<T, BusError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> NatsResultExt<T> for Result<T, E> {
    fn op(self, op: &'static str) -> Result<T, BusError> {
        self.map_err(|e| BusError::Op {
            op,
            source: Box::new(e),
        })
    }
}

impl BusError {
    /// Wraps an async-nats error with the operation's name.
    pub fn from_op<E: std::error::Error + Send + Sync + 'static>(op: &'static str, e: E) -> Self {
        Self::Op {
            op,
            source: Box::new(e),
        }
    }
}

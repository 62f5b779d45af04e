//! What every handler shares.

use super::auth::Keys;
use crate::tasks::TaskService;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Shared handler state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Task operations.
    pub tasks: TaskService,
    /// The relay's delivery store (records, queue, replays).
    pub deliveries: crate::relay::store::DeliveryStore,
    /// Cron schedules.
    pub schedules: crate::schedules::ScheduleService,
    /// Accepted API keys.
    pub keys: Arc<Keys>,
    /// Page sizes and limits.
    pub limits: Limits,
    /// Flow control (concurrency keys, rates, lanes; see `limits/`).
    pub flow: crate::limits::Limits,
    /// Cancelled on shutdown; long-lived responses (SSE) end with it.
    pub shutdown: CancellationToken,
    /// Names of the relay destinations in this process's config (`[relay.destinations.*]`);
    /// a destination-wide replay knows a name from here or from its recorded deliveries.
    pub destinations: Arc<std::collections::BTreeSet<String>>,
    /// When a running task counts as stalled in `status=stalled` listings, the overview and
    /// `/metrics` (the relay's rule, from `relay.stall_after_s`).
    pub stall: crate::domain::StallRule,
    /// The dashboard overviews last computed, shared by every open page (see `overview.rs`).
    pub(crate) overview: Arc<super::overview::Cache>,
}

/// Sizes the API enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body in bytes.
    pub body: usize,
    /// Default page size.
    pub default_page: usize,
    /// Largest page size.
    pub max_page: usize,
}

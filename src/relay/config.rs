//! The relay's section of the config (`[relay]`): routes, destinations, templates, retries.
//! `config.rs` composes it with the other sections.

use serde::Deserialize;
use std::net::SocketAddr;

/// A routing rule: events matching every non-empty filter go to `destinations`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Only these assignees (empty: all).
    pub assignees: Vec<crate::domain::Assignee>,
    /// Only these priorities (empty: all).
    pub priorities: Vec<crate::domain::Priority>,
    /// Only these event types (empty: all).
    pub events: Vec<crate::domain::EventKind>,
    /// Names of `[relay.destinations.*]`.
    pub destinations: Vec<String>,
}

/// Where progress goes, and how it reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Built-in message language: `en` or `zh`.
    pub language: super::message::Language,
    /// Message templates by event type, replacing the built-in ones (see README).
    pub templates: std::collections::BTreeMap<String, String>,
    /// Heartbeats, progress and output of one task reach a destination at most this often (s).
    pub throttle_s: u64,
    /// A running task with no event for this long gets one `stalled` event (s).
    pub stall_after_s: u64,
    /// Time limit of one delivery attempt (s).
    pub attempt_timeout_s: u64,
    /// Delays before attempts 1, 2, … in seconds (±20 % jitter); after the last, dead letter.
    pub retry_schedule_s: Vec<u64>,
    /// Internal addresses or host names deliveries may reach anyway (CIDRs, IPs or names),
    /// e.g. `["127.0.0.1/32"]` for a gateway on the same machine. Everything internal is refused
    /// otherwise.
    pub allow: Vec<String>,
    /// Named destinations (`[relay.destinations.ops] type = "webhook" …`).
    pub destinations: std::collections::BTreeMap<String, super::destination::Destination>,
    /// Routing rules by assignee, priority and event type.
    pub routes: Vec<RouteConfig>,
    /// The destination `POST /api/push` (and `pulse push`) delivers to; its session id is
    /// replaced by the push's `sessionId`.
    pub push_destination: Option<String>,
    /// Where `taskfleet relay` serves `/healthz` and `/readyz` (`--health-listen` overrides).
    /// Unset: no health endpoint (`up` never serves one).
    pub health_listen: Option<SocketAddr>,
    /// Seconds the relay's announcement in the worker registry lives without a renewal.
    pub registry_ttl_s: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            language: super::message::Language::En,
            templates: Default::default(),
            throttle_s: 30,
            stall_after_s: 180,
            attempt_timeout_s: 15,
            retry_schedule_s: vec![0, 5, 300, 1800, 7200, 18000, 36000, 36000],
            allow: Vec::new(),
            destinations: Default::default(),
            routes: Vec::new(),
            push_destination: None,
            health_listen: None,
            registry_ttl_s: 15,
        }
    }
}

//! The relay's section of the config (`[relay]`): routes, destinations, templates, retries.
//! `config.rs` composes it with the other sections; the checks and defaults of the section live
//! here ([`RelayConfig::validate`], `Default`).

use crate::domain::{Assignee, StallRule};
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
    pub language: crate::text::message::Language,
    /// Message templates by event type, replacing the built-in ones (see README).
    pub templates: std::collections::BTreeMap<String, String>,
    /// Heartbeats, progress and output of one task reach a destination at most this often (s).
    pub throttle_s: u64,
    /// A running task with no event for longer than this gets one `stalled` event (s); the
    /// threshold of the fleet's one stall rule ([`RelayConfig::stall_rule`]).
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
    pub destinations: std::collections::BTreeMap<String, crate::outbound::destination::Destination>,
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
            language: crate::text::message::Language::En,
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

impl RelayConfig {
    /// The stall rule these settings give (`stall_after_s`).
    pub fn stall_rule(&self) -> StallRule {
        StallRule::from_secs(self.stall_after_s)
    }

    /// Checks values that parse but make no sense; the error names the setting
    /// (`relay.allow: …`).
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_schedule_s.is_empty() {
            return Err("relay.retry_schedule_s must not be empty".into());
        }
        if self.attempt_timeout_s == 0 {
            return Err("relay.attempt_timeout_s must be positive".into());
        }
        if let Err(e) = crate::outbound::ssrf::AllowList::new(self.allow.iter()) {
            return Err(format!("relay.allow: {e}"));
        }
        for (name, dest) in &self.destinations {
            if Assignee::parse(name).is_err() {
                return Err(format!(
                    "relay.destinations.{name}: names must match [a-z0-9_-]{{1,64}}"
                ));
            }
            dest.check()
                .map_err(|e| format!("relay.destinations.{name}: {e}"))?;
        }
        for route in &self.routes {
            if let Some(d) = route
                .destinations
                .iter()
                .find(|d| !self.destinations.contains_key(*d))
            {
                return Err(format!("relay.routes: unknown destination {d:?}"));
            }
        }
        match &self.push_destination {
            Some(p) if !self.destinations.contains_key(p) => Err(format!(
                "relay.push_destination {p:?} is not in relay.destinations"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::destination::Destination;

    /// A change to the default settings.
    type Change = Box<dyn FnOnce(&mut RelayConfig)>;

    /// The error of `cfg` after `change`.
    fn refusal(change: impl FnOnce(&mut RelayConfig)) -> String {
        let mut cfg = RelayConfig::default();
        change(&mut cfg);
        cfg.validate().expect_err("refused")
    }

    #[test]
    fn the_defaults_pass_and_give_a_three_minute_stall_rule() {
        let cfg = RelayConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.stall_rule(), StallRule::default());
    }

    #[test]
    fn each_refusal_names_the_relay_setting_at_fault() {
        let cases: [(&str, Change); 7] = [
            (
                "relay.retry_schedule_s",
                Box::new(|c| c.retry_schedule_s.clear()),
            ),
            (
                "relay.attempt_timeout_s",
                Box::new(|c| c.attempt_timeout_s = 0),
            ),
            (
                "relay.allow",
                Box::new(|c| c.allow = vec!["not an address/99".into()]),
            ),
            (
                "relay.destinations.Bad Name",
                Box::new(|c| {
                    c.destinations
                        .insert("Bad Name".into(), Destination::Log {});
                }),
            ),
            (
                "relay.destinations.ops",
                Box::new(|c| {
                    let hook = serde_json::json!({"type": "webhook", "url": "https://x.test/h",
                        "headers": {"webhook-signature": "v1,forged"}});
                    let hook = serde_json::from_value(hook).unwrap();
                    c.destinations.insert("ops".into(), hook);
                }),
            ),
            (
                "relay.routes",
                Box::new(|c| {
                    c.routes.push(RouteConfig {
                        destinations: vec!["nowhere".into()],
                        ..Default::default()
                    });
                }),
            ),
            (
                "relay.push_destination",
                Box::new(|c| c.push_destination = Some("nowhere".into())),
            ),
        ];
        for (setting, change) in cases {
            let err = refusal(change);
            assert!(err.starts_with(setting), "{setting}: {err}");
        }
    }
}

//! Outbound: how taskfleet talks to the outside: where to deliver, refusing internal addresses,
//! signing webhooks, the hardened HTTP client.
//!
//! - [`destination`]: where to deliver (named in the relay's config or given per task in
//!   `notify`, which the API and the schedules check on create) and the key it is queued under.
//! - [`ssrf`]: refusing outbound requests to loopback, private and other internal addresses, both
//!   for the literal URL and after DNS resolution ([`ssrf::SafeResolver`], the client's resolver).
//! - [`signature`]: Standard Webhooks signing and verification (`webhook-id`,
//!   `webhook-timestamp`, `webhook-signature`), checked against the reference library's vectors.
//! - [`client`]: the HTTP client every outbound request uses: hyper's HTTP/1.1 connections with
//!   the safe resolver and rustls, no proxy, no redirects, a deadline per request and the
//!   `taskfleet/<version>` user agent; `pool` keeps its connections (a destination's requests,
//!   one after another, share one).
//!
//! Nothing here knows NATS, tasks or the relay: these modules use external crates and
//! [`crate::domain`] only, and are unit-tested in place (the resolver only does DNS).

pub mod client;
pub mod destination;
mod pool;
pub mod signature;
pub mod ssrf;

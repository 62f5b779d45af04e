//! The relay: `taskfleet relay` turns task events into webhook calls and chat messages.
//!
//! - `fanout.rs`: every event → one delivery job per destination (notify + routes), throttled,
//!   plus stall detection; `deliver.rs`: one ordered, retrying loop per destination;
//!   `record.rs`: its delivery records (one write per attempt, the last record kept);
//!   [`disabled`]: destinations disabled by a 410 (KV `relay_destinations`), listed and enabled;
//!   `server.rs`: wiring ([`run`]).
//!
//! - [`destination`]: where to deliver (config-named or per-task `notify`) and its queue key.
//! - [`signature`]: Standard Webhooks signing and verification (`webhook-id`,
//!   `webhook-timestamp`, `webhook-signature`), checked against the reference library's vectors.
//! - [`message`]: human messages in the Live Task Pulse format (≤ 3 lines), English and Chinese
//!   built in, templates overridable per event kind.
//! - [`split`]: fitting text into chat platform limits (Telegram, Discord, Slack) without cutting
//!   a character or an emoji sequence in half.
//! - [`ssrf`]: refusing outbound requests to loopback, private and other internal addresses, both
//!   for the literal URL and after DNS resolution ([`ssrf::SafeResolver`] for reqwest).
//! - [`retry`]: the delivery schedule (Svix's: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
//!   10 h, ±20 % jitter), Retry-After handling, and the classification of HTTP statuses and
//!   transport errors into deliver / retry / give up / disable.
//!
//! Every module is pure (or, for the resolver, only does DNS) and unit-tested in place.

pub mod config;
mod deliver;
pub mod disabled;
mod fanout;
mod record;
mod server;

pub use server::{resolve_destinations, run, run_with_health, templates, RelayError};
pub mod destination;
pub mod job;
pub mod message;
pub mod retry;
pub mod signature;
pub mod sinks;
pub mod split;
pub mod ssrf;

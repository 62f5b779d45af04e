//! The relay: `taskfleet relay` turns task events into webhook calls and chat messages.
//!
//! - `fanout.rs`: every event → one delivery job per destination (notify + routes), throttled,
//!   plus stall detection; `deliver.rs`: one ordered, retrying loop per destination;
//!   `lane.rs`: the window of messages both take, in order, from a consumer pinned to one relay
//!   replica at a time;
//!   [`store`]: the delivery store, the only code that reads or writes the DELIVERIES stream
//!   and the delivery records (one write per attempt, the last record kept), which the API's
//!   delivery routes call;
//!   [`disabled`]: destinations disabled by a 410 (KV `relay_destinations`), listed and enabled;
//!   `server.rs`: wiring ([`run`]).
//!
//! - [`retry`]: the delivery schedule (Svix's: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
//!   10 h, ±20 % jitter), Retry-After handling, and the classification of HTTP statuses and
//!   transport errors into deliver / retry / give up / disable.
//! - [`sinks`]: sending one delivery job to one destination, once.
//!
//! `retry` is pure and unit-tested in place. The pure libraries the relay builds on live below
//! it: [`crate::outbound`] (where to deliver and its queue key, SSRF guard, Standard Webhooks
//! signing, the hardened HTTP client) and [`crate::text`] (Live Task Pulse templates, chat
//! platform splitting).

pub mod config;
mod deliver;
pub mod disabled;
mod fanout;
mod lane;
mod server;

pub use server::{resolve_destinations, run, run_with_health, templates, RelayError};
pub mod job;
pub mod retry;
pub mod sinks;
pub mod store;

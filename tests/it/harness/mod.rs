//! Test harness: a real nats-server per test, a real API on 127.0.0.1:0, and polling helpers.

pub mod app;
pub mod browser;
pub mod cluster;
pub mod events;
pub mod nats;
pub mod otlp;
pub mod process;
pub mod receiver;
pub mod relay;
pub mod wait;

pub use app::TestApp;
#[allow(unused_imports)]
pub use nats::NatsServer;
#[allow(unused_imports)]
pub use wait::{eventually, poll_until};

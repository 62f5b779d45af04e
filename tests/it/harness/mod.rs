//! Test harness: a real nats-server per test, a real API on 127.0.0.1:0, and polling helpers.

pub mod app;
pub mod browser;
pub mod cluster;
pub mod events;
pub mod nats;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod receiver;
pub mod relay;
pub mod wait;

pub use app::TestApp;
#[allow(unused_imports)]
pub use nats::NatsServer;
#[allow(unused_imports)]
pub use wait::{eventually, poll_until};

/// Has Linux SIGKILL the child `cmd` spawns when the thread that spawns it ends (a test's thread,
/// or a worker thread of its runtime). `Drop` stops the children of a test that ends; this stops
/// those of a test binary killed by a signal (Ctrl-C, a runner's timeout), which would otherwise
/// leave its nats-servers and workers running.
pub fn dies_with_test(cmd: &mut std::process::Command) -> &mut std::process::Command {
    taskfleet::sys::die_with_parent(cmd, libc::SIGKILL);
    cmd
}

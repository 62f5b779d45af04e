//! Property tests: the task state machine keeps its invariants under any sequence of actions,
//! and everything that parses outside input (create bodies, queue messages, event payloads,
//! pulse command lines, relay templates and platform splitting) survives any input and keeps
//! its round trips. Pure functions only: no nats-server is started.
//!
//! Every property runs a bounded number of cases (see [`config`]) so the binary stays well under
//! 30 s on 2 cores. Failures are not persisted (`failure_persistence: None`): proptest prints
//! the shrunk input and its seed instead of writing regression files into the tree.

mod create_body;
mod events;
mod gen;
mod pulse_cli;
mod queue_messages;
mod relay_messages;
mod relay_split;
mod state_machine;

use proptest::test_runner::Config;

/// The configuration every property runs with: `cases` cases, no regression files.
pub(crate) fn config(cases: u32) -> Config {
    Config {
        failure_persistence: None,
        ..Config::with_cases(cases)
    }
}

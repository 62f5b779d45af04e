//! taskfleet: a task fleet for multi-container AI-bot deployments, built on NATS JetStream.
//!
//! A task API publishes tasks to JetStream subjects per assignee and priority; bots (and, later,
//! workers) claim them in strict priority order; every change is recorded as an event.
//!
//! # Layout
//!
//! - [`domain`]: ids, names, priorities, the task record, events and the state machine (pure).
//! - [`bus`]: NATS connection, the JetStream topology, and every subject name (`bus::subjects`).
//! - [`tasks`]: the task service: create, claim, finish, cancel, retry, pending list, logs.
//! - [`schedules`]: cron schedules: definitions in KV, ticks held by the broker, the scheduler.
//! - [`registry`]: the worker registry: workers and relays announce themselves with a TTL.
//! - [`api`]: the HTTP API (OpenTask routes, auth, errors, SSE, health, metrics).
//! - [`serve`]: wiring a process: `taskfleet api` and the API part of `up`.
//! - [`up`] and [`natsd`]: `taskfleet up`, with its own nats-server child process.
//! - [`natsauth`]: `taskfleet nats-config`: one NATS user per process, least-privilege permissions.
//! - [`client`]: the HTTP client used by the CLI and the integration tests.
//! - [`cli`]: the command line (`main` only parses and dispatches).
//! - [`relay`]: `taskfleet relay`: task events to webhook calls and chat messages.
//! - [`outbound`]: how taskfleet talks to the outside: refusing internal addresses (SSRF),
//!   signing webhooks (Standard Webhooks), the hardened HTTP client (pure).
//! - [`text`]: messages for people: Live Task Pulse templates en/zh, chat platform splitting (pure).
//! - [`worker`]: pulls an assignee's tasks in strict priority order and runs them.
//! - [`token`]: task-scoped tokens handed to running tasks.
//! - [`health`]: `/healthz` and `/readyz` of workers and the relay (`--health-listen`).
//! - [`secrets`]: `taskfleet secrets`: the fleet-wide admin key and task-token secret.
//! - [`config`], [`telemetry`], [`metrics`], [`shutdown`]: the process plumbing; `memory` (inside
//!   the crate): the bounded memory of what a process learned, cleared when full.
//! - [`sys`]: the only module with `unsafe` code: process groups and the parent-death signal.
#![deny(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod api;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod health;
pub mod limits;
mod memory;
pub mod metrics;
pub mod natsauth;
pub mod natsd;
pub mod outbound;
pub mod registry;
pub mod relay;
pub mod schedules;
pub mod secrets;
pub mod serve;
pub mod shutdown;
pub mod sys;
pub mod tasks;
pub mod telemetry;
pub mod text;
pub mod token;
pub mod up;
pub mod worker;

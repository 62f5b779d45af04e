//! One integration test binary. Every test starts its own nats-server (random port, temp store,
//! loopback) through `harness`, so tests run in parallel and share nothing.

#![deny(unsafe_code)]

mod harness;

mod api_auth;
mod api_errors;
mod api_openapi;
mod api_tasks;
mod browser;
mod browser_deliveries;
mod cli;
mod cluster;
mod cluster_relay;
mod dashboard;
mod dashboard_filters;
mod delayed;
mod delivery_listing;
mod delivery_permissions;
mod deploy;
mod durability;
mod flow;
mod health;
mod ledger;
mod ledger_poison;
mod leftovers;
mod listing_published;
mod migrate;
mod nats_outage;
mod permissions;
mod poison;
mod pulse_api;
mod pulse_cli;
mod relay;
mod relay_deliveries;
mod relay_destinations;
mod relay_fanout;
mod relay_queue;
mod relay_replicas;
mod relay_restart;
mod schedules;
mod secrets;
mod skill;
mod traces;
mod transitions;
mod workers;
mod workers_agents;
mod workers_fastpath;
mod workers_hook;
mod workers_io;
mod workers_process;
mod workers_registry;

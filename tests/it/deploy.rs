//! Checks of `deploy/` that run without Docker or Kubernetes (neither runs on our machines).
//!
//! - `compose`: compose.yaml parses; every taskfleet service's command parses with the real CLI
//!   and its environment (its own env file from `taskfleet nats-config`, plus fleet secrets) names
//!   only what taskfleet reads; one worker per fleet assignee; health checks on `/healthz` for
//!   every service; stop grace periods.
//! - `k8s`: the manifests parse; probes (relay and workers on their health endpoint), resources,
//!   grace periods, the NATS StatefulSet.
//! - `secrets`: `taskfleet secrets` writes the fleet.env that compose and k8s read (0600, random
//!   each time, not over an existing file without `--force`).
//! - `cluster`: the NATS configs pass `nats-server -t`; three real nats-servers started from
//!   deploy/nats/nats.conf with the users `taskfleet nats-config` writes (host names and ports
//!   moved to loopback) form a JetStream cluster that takes the fleet's R3 streams.
//! - `services`: every compose service and k8s container, run as the real `taskfleet` binary
//!   with its own arguments, env file and config, starts against that cluster and stops cleanly
//!   on SIGTERM; a worker stopped in a rolling restart hands its task to the new replica.
//! - `image`: the Dockerfile builds what the Makefile builds and runs as a non-root user; the
//!   build context keeps every build input.
//! - `monitoring`: the Grafana dashboard and the Prometheus alerts query only metrics a live API
//!   exports, and the backlog gauges they read show the fleet's state.
//!
//! deploy/README.md lists every test here and says what they leave unchecked
//! (`readme_names_every_check_of_the_deploy_tests` keeps it honest).

mod cluster;
mod compose;
mod image;
mod k8s;
mod monitoring;
mod secrets;
mod services;
mod support;

use support::{deploy, read, root};

#[test]
fn readme_names_every_check_of_the_deploy_tests() {
    let readme = read(&deploy("README.md"));
    let mut sources = vec![read(&root().join("tests/it/deploy.rs"))];
    for entry in std::fs::read_dir(root().join("tests/it/deploy")).unwrap() {
        sources.push(read(&entry.unwrap().path()));
    }
    let mut tests = Vec::new();
    for text in &sources {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for w in lines.windows(2) {
            if w[0] == "#[test]" || w[0] == "#[tokio::test]" {
                let f = w[1].trim_start_matches("async ").trim_start_matches("fn ");
                tests.push(f.split('(').next().unwrap().to_string());
            }
        }
    }
    assert!(tests.len() > 10, "{tests:?}");
    for t in &tests {
        assert!(
            readme.contains(t.as_str()),
            "deploy/README.md does not name {t}"
        );
    }
    for cmd in [
        "taskfleet nats-config --assignees anna,trump,cc,session_agent",
        "taskfleet --config deploy/taskfleet.toml secrets --out deploy/fleet.env",
        "--out deploy/nats/auth.conf --env-dir deploy/env",
        "--from-file=taskfleet.toml=deploy/taskfleet.toml",
        "--from-env-file=deploy/fleet.env",
        "--from-env-file=\"$f\"",
        "--scale worker-anna=3",
    ] {
        assert!(readme.contains(cmd), "deploy/README.md: {cmd}");
    }
}

//! Processes and a NATS that is not there: start-up gives up after `nats.connect_timeout_s`
//! naming the URL, and SIGTERM ends a worker (and the relay) even while every NATS server is
//! down. Bounds are generous: these are behaviour tests, not benchmarks.

use crate::harness::process::{processes_with, spawn_taskfleet, unique_sleep};
use crate::harness::{eventually, TestApp};
use crate::workers::{create_kind, running};
use serde_json::json;
use std::time::{Duration, Instant};

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn api_worker_and_relay_fail_within_their_connect_timeout_naming_the_url_when_nats_is_unreachable(
) {
    // Arrange
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let env = [
        ("NATS_URL", url.as_str()),
        ("TASKFLEET_NATS__CONNECT_TIMEOUT_S", "2"),
        ("TASKFLEET_API_KEY", "test-admin-key-0123456789"),
    ];
    let commands: [&[&str]; 3] = [
        &["worker", "--assignee", "anna"],
        &["relay"],
        &["api", "--api-addr", "127.0.0.1:0"],
    ];

    // Act
    let started = Instant::now();
    let mut procs: Vec<_> = commands
        .iter()
        .map(|args| spawn_taskfleet(args, &env))
        .collect();
    let mut exits = Vec::new();
    for p in &mut procs {
        exits.push(p.wait_exit(Duration::from_secs(10)).await);
    }
    let took = started.elapsed();

    // Assert
    for ((args, p), exit) in commands.iter().zip(&procs).zip(exits) {
        let log = p.log();
        assert!(!exit.success(), "{args:?}: {exit:?}\n{log}");
        assert!(
            log.contains(&format!("error: no connection to NATS at {url} within 2s")),
            "{args:?}:\n{log}"
        );
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn a_worker_and_the_relay_given_sigterm_while_nats_is_down_exit_within_the_grace_period() {
    // Arrange: an idle worker (shutdown grace 2 s) and a relay, then every NATS server gone.
    let mut app = TestApp::spawn().await;
    let mut worker = app.worker_process("anna", 1, &[]).await;
    let nats = app.nats.url();
    let mut relay = spawn_taskfleet(&["relay"], &[("NATS_URL", nats.as_str())]);
    relay
        .wait_log("relay running", Duration::from_secs(20))
        .await;
    app.nats.kill();

    // Act
    let asked = Instant::now();
    worker.signal(libc::SIGTERM);
    relay.signal(libc::SIGTERM);
    let worker_exit = worker.wait_exit(Duration::from_secs(2 + 5)).await;
    let relay_exit = relay.wait_exit(Duration::from_secs(10)).await;

    // Assert
    assert!(worker_exit.success(), "{worker_exit:?}\n{}", worker.log());
    assert!(relay_exit.success(), "{relay_exit:?}\n{}", relay.log());
    eprintln!(
        "worker and relay exited {:?} after SIGTERM",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_worker_running_a_task_when_nats_goes_down_exits_on_sigterm_and_stops_the_command() {
    // Arrange: shutdown grace 2 s, kill grace 1 s (the harness's), a command that would run
    // for ten minutes, then every NATS server gone.
    let mut app = TestApp::spawn().await;
    let mut worker = app.worker_process("anna", 1, &[]).await;
    let marker = unique_sleep();
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": format!("sleep {marker}")}),
    )
    .await;
    running(&app, &id).await;
    app.nats.kill();

    // Act
    let asked = Instant::now();
    worker.signal(libc::SIGTERM);
    let exit = worker.wait_exit(Duration::from_secs(2 + 1 + 5)).await;
    let took = asked.elapsed();

    // Assert: it could not hand the task back (JetStream redelivers it after ack_wait), but it
    // stopped the command and exited.
    assert!(exit.success(), "{exit:?}\n{}", worker.log());
    eventually("the command to be gone", Duration::from_secs(5), || async {
        processes_with(&marker).is_empty().then_some(())
    })
    .await;
    eprintln!("worker exited {took:?} after SIGTERM");
}

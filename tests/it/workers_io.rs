//! What goes in and out of a running command: the output cap, captured output, stdin writes.

use crate::harness::app::worker_settings;
use crate::harness::events::events;
use crate::harness::TestApp;
use crate::workers::{create_kind, finished, output_line};
use serde_json::{json, Value};
use std::time::Duration;
use taskfleet::client::ClientError;

#[tokio::test]
async fn a_loud_command_keeps_only_the_capped_tail_as_result_but_counts_every_byte() {
    // Arrange
    let app = TestApp::spawn().await;
    let mut settings = worker_settings();
    settings.output_cap_bytes = 1024;
    let _worker = app.worker("anna", 1, settings).await;
    let expected_bytes: u64 = (1..=200_000u64)
        .map(|n| n.to_string().len() as u64 + 1)
        .sum();

    // Act
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"argv": ["seq", "1", "200000"]}),
    )
    .await;
    let task = finished(&app, &id, Duration::from_secs(20)).await;

    // Assert
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    let result = task.result.as_ref().and_then(Value::as_str).unwrap();
    assert!(result.len() <= 1024, "{} bytes kept", result.len());
    assert!(result.ends_with("199999\n200000\n"), "{result}");
    let completed = events(&app, &format!("events.anna.{id}.completed")).await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].data["stdout_bytes"], expected_bytes);
    let chunks = events(&app, &format!("events.anna.{id}.output")).await;
    let sent: u64 = chunks
        .iter()
        .map(|e| e.data["text"].as_str().unwrap().len() as u64)
        .sum();
    let dropped: u64 = chunks
        .iter()
        .map(|e| e.data["dropped_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sent + dropped, expected_bytes);
    let page = app.admin.output(&id, &[]).await.unwrap();
    assert_eq!(page["running"], false);
    assert_eq!(page["dropped_bytes"], dropped);
    assert!(dropped > 0, "a 1.3 MB burst is more than the chunks carry");
}

#[tokio::test]
async fn the_output_of_a_command_that_outran_the_chunk_cap_shows_only_lines_it_printed() {
    // Arrange: 15-byte lines, so 64 KiB chunk ends fall inside lines.
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let is_printed = |l: &str| {
        l.strip_prefix("line-")
            .and_then(|r| r.strip_suffix("-ok"))
            .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
    };

    // Act
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"argv": ["seq", "-f", "line-%06g-ok", "1", "200000"]}),
    )
    .await;
    let task = finished(&app, &id, Duration::from_secs(20)).await;
    let mut lines = Vec::new();
    loop {
        let offset = lines.len().to_string();
        let page = app
            .admin
            .output(&id, &[("offset", offset), ("limit", "5000".to_string())])
            .await
            .unwrap();
        let got = page["lines"].as_array().unwrap().clone();
        if got.is_empty() {
            break;
        }
        lines.extend(got.into_iter().map(|l| l.as_str().unwrap().to_string()));
    }

    // Assert: dropped output may be missing, but no line may be cut or glued to another.
    assert_eq!(task.status.as_str(), "completed");
    assert!(!lines.is_empty());
    // Where output was dropped, one marker line says so instead.
    let is_marker = |l: &str| l.starts_with("[… ") && l.ends_with(" dropped …]");
    let bad: Vec<&String> = lines
        .iter()
        .filter(|l| !is_printed(l) && !is_marker(l))
        .collect();
    assert!(bad.is_empty(), "lines the command never printed: {bad:?}");
}

#[tokio::test]
async fn text_posted_to_input_reaches_the_running_commands_stdin_and_eof_closes_it() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": "echo ready; cat"}),
    )
    .await;
    output_line(&app, &id, "ready").await;

    // Act
    let first = app.admin.input(&id, "one\n", false).await.unwrap();
    let last = app.admin.input(&id, "two\n", true).await.unwrap();
    let task = finished(&app, &id, Duration::from_secs(15)).await;
    let too_late = app.admin.input(&id, "three\n", false).await;

    // Assert
    assert_eq!(first["bytes"], 4);
    assert_eq!(last["eof"], true);
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(task.result, Some(json!("ready\none\ntwo\n")));
    match too_late {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (409, "not_running"))
        }
        other => panic!("expected 409 not_running, got {other:?}"),
    }
}

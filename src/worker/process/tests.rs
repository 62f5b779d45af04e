//! Tests of the process runner, with real processes.
use super::group::{group_alive, live_members};
use super::*;
use std::time::Instant as StdInstant;

fn sh(script: &str) -> ProcessSpec {
    let mut spec = ProcessSpec::new(["sh", "-c", script]);
    spec.chunk_interval = Duration::from_millis(50);
    spec.kill_grace = Duration::from_millis(500);
    spec
}

/// Runs `spec` with `input` queued on stdin (then the sender dropped) and collects every chunk.
async fn run_with(
    spec: ProcessSpec,
    input: Vec<StdinInput>,
    cancel: CancellationToken,
) -> (Result<ProcessOutcome, ProcessError>, Vec<OutputChunk>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(16);
    for item in input {
        in_tx.send(item).await.unwrap();
    }
    drop(in_tx);
    let collector = tokio::spawn(async move {
        let mut chunks = Vec::new();
        while let Some(c) = rx.recv().await {
            chunks.push(c);
        }
        chunks
    });
    let result = run(spec, tx, in_rx, cancel).await;
    (result, collector.await.unwrap())
}

async fn run_simple(spec: ProcessSpec) -> (ProcessOutcome, Vec<OutputChunk>) {
    let (result, chunks) = run_with(spec, Vec::new(), CancellationToken::new()).await;
    (result.expect("run"), chunks)
}

fn text_of(chunks: &[OutputChunk], stream: Stream) -> String {
    chunks
        .iter()
        .filter(|c| c.stream == stream)
        .map(|c| c.text.as_str())
        .collect()
}

fn assert_group_gone(pgid: u32) {
    assert!(
        !group_alive(pgid),
        "a process of group {pgid} is still alive"
    );
    assert_eq!(live_members(pgid).unwrap(), 0);
}

#[tokio::test]
async fn a_successful_program_reports_exit_zero_and_its_stdout() {
    let (outcome, chunks) = run_simple(ProcessSpec::new(["echo", "hello world"])).await;
    assert!(outcome.success());
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.signal, None);
    assert_eq!(outcome.stdout_tail, "hello world\n");
    assert_eq!(outcome.stdout_bytes, 12);
    assert_eq!(text_of(&chunks, Stream::Stdout), "hello world\n");
    assert_group_gone(outcome.pid);
}

#[tokio::test]
async fn a_failing_program_reports_its_exit_code_and_stderr_tail() {
    let (outcome, chunks) = run_simple(sh("echo out; echo oops >&2; exit 3")).await;
    assert_eq!(outcome.exit_code, Some(3));
    assert!(!outcome.success());
    assert_eq!(outcome.stderr_tail, "oops\n");
    assert_eq!((outcome.stdout_bytes, outcome.stderr_bytes), (4, 5));
    assert_eq!(text_of(&chunks, Stream::Stderr), "oops\n");
}

#[tokio::test]
async fn the_output_cap_keeps_the_tail_and_counts_every_byte() {
    let mut spec = ProcessSpec::new(["seq", "1", "200000"]);
    spec.output_cap = 1000;
    let (outcome, chunks) = run_simple(spec).await;
    let expected: u64 = (1..=200_000u64)
        .map(|n| n.to_string().len() as u64 + 1)
        .sum();
    assert_eq!(outcome.stdout_bytes, expected);
    assert!(outcome.stdout_tail.len() <= 1000);
    assert!(outcome.stdout_tail.ends_with("199999\n200000\n"));
    let sent: u64 = chunks.iter().map(|c| c.text.len() as u64).sum();
    let dropped: u64 = chunks.iter().map(|c| c.dropped_bytes).sum();
    assert_eq!(sent + dropped, expected);
    assert!(chunks.iter().all(|c| c.text.len() <= MAX_CHUNK));
}
const MAX_CHUNK: usize = super::super::output::MAX_CHUNK_BYTES;

#[tokio::test]
async fn a_timeout_kills_the_program_within_timeout_and_grace() {
    let mut spec = ProcessSpec::new(["sleep", "600"]);
    spec.timeout = Some(Duration::from_millis(300));
    // A generous grace: `sleep` dies on the SIGTERM at once, so the run still ends right after
    // the timeout; the grace only matters on a loaded machine.
    spec.kill_grace = Duration::from_secs(3);
    let t0 = StdInstant::now();
    let (outcome, _) = run_simple(spec).await;
    assert!(t0.elapsed() < Duration::from_millis(300 + 1500));
    assert!(outcome.timed_out && !outcome.cancelled);
    assert_eq!(outcome.signal, Some(libc::SIGTERM));
    assert_group_gone(outcome.pid);
}

#[tokio::test]
async fn cancelling_kills_the_whole_process_group_quickly() {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let t0 = StdInstant::now();
    let spec = sh("sleep 600 & sleep 600 & wait");
    let (result, _) = run_with(spec, Vec::new(), cancel).await;
    let outcome = result.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(outcome.cancelled && !outcome.timed_out);
    assert_group_gone(outcome.pid);
}

#[tokio::test]
async fn a_program_that_ignores_sigterm_is_sigkilled_after_the_grace() {
    let mut spec = sh("trap '' TERM; sleep 600 & sleep 600");
    spec.timeout = Some(Duration::from_millis(200));
    spec.kill_grace = Duration::from_millis(400);
    let t0 = StdInstant::now();
    let (outcome, _) = run_simple(spec).await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(outcome.timed_out);
    assert_eq!(outcome.signal, Some(libc::SIGKILL));
    assert_group_gone(outcome.pid);
}

#[tokio::test]
async fn background_processes_left_by_a_finished_program_are_stopped() {
    let (outcome, _) = run_simple(sh("sleep 600 & echo started")).await;
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.stdout_tail, "started\n");
    assert!(outcome.duration < Duration::from_secs(2));
    assert_group_gone(outcome.pid);
}

#[tokio::test]
async fn stdin_data_reaches_the_program_and_eof_closes_it() {
    let input = vec![
        StdinInput::Data(b"line one\n".to_vec()),
        StdinInput::Data(b"line two\n".to_vec()),
        StdinInput::Eof,
    ];
    let mut spec = ProcessSpec::new(["cat"]);
    spec.timeout = Some(Duration::from_secs(5));
    let (result, _) = run_with(spec, input, CancellationToken::new()).await;
    let outcome = result.unwrap();
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(outcome.stdout_tail, "line one\nline two\n");
}

#[tokio::test]
async fn env_and_cwd_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh("echo \"$TASKFLEET_TEST_VAR\"; pwd -P");
    spec.env
        .push(("TASKFLEET_TEST_VAR".into(), "from the spec".into()));
    spec.cwd = Some(dir.path().to_path_buf());
    let (outcome, _) = run_simple(spec).await;
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(
        outcome.stdout_tail,
        format!("from the spec\n{}\n", cwd.display())
    );
}

#[tokio::test]
async fn a_pty_run_sees_a_terminal_and_merges_stderr_into_stdout() {
    let mut spec = sh("test -t 1 && echo tty; echo err >&2");
    spec.pty = true;
    spec.timeout = Some(Duration::from_secs(5));
    let (outcome, chunks) = run_simple(spec).await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(outcome.stdout_tail, "tty\r\nerr\r\n");
    assert_eq!(outcome.stderr_bytes, 0);
    assert!(chunks.iter().all(|c| c.stream == Stream::Stdout));
    assert_eq!(text_of(&chunks, Stream::Stdout), "tty\r\nerr\r\n");
    assert_group_gone(outcome.pid);
}

#[tokio::test]
async fn a_pty_run_takes_stdin_and_eof() {
    let mut spec = ProcessSpec::new(["head", "-c", "100"]);
    spec.pty = true;
    spec.timeout = Some(Duration::from_secs(5));
    let input = vec![StdinInput::Data(b"typed".to_vec()), StdinInput::Eof];
    let (result, _) = run_with(spec, input, CancellationToken::new()).await;
    let outcome = result.unwrap();
    assert!(outcome.success(), "{outcome:?}");
    // The terminal echoes the input, then `head` prints it back.
    assert!(outcome.stdout_tail.starts_with("typed"), "{outcome:?}");
    assert!(outcome.stdout_tail.ends_with("typed"), "{outcome:?}");
}

#[tokio::test]
async fn many_quick_lines_arrive_in_few_chunks_that_add_up_to_the_output() {
    let mut spec = ProcessSpec::new(["seq", "1", "1000"]);
    spec.chunk_interval = Duration::from_millis(250);
    let (outcome, chunks) = run_simple(spec).await;
    let expected: String = (1..=1000).map(|n| format!("{n}\n")).collect();
    assert!(chunks.len() < 10, "{} chunks", chunks.len());
    assert_eq!(text_of(&chunks, Stream::Stdout), expected);
    assert_eq!(outcome.stdout_tail, expected);
    assert!(chunks.iter().all(|c| c.dropped_bytes == 0));
    let mut line = 0;
    for c in &chunks {
        assert_eq!(c.first_line, line);
        line += c.text.matches('\n').count() as u64;
    }
}

#[tokio::test]
async fn a_full_output_channel_does_not_block_the_program() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let (_in_tx, in_rx) = tokio::sync::mpsc::channel(1);
    let mut spec = ProcessSpec::new(["seq", "1", "100000"]);
    spec.chunk_interval = Duration::from_millis(5);
    let t0 = StdInstant::now();
    let outcome = run(spec, tx, in_rx, CancellationToken::new())
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(outcome.exit_code, Some(0));
    assert!(outcome.stdout_tail.ends_with("99999\n100000\n"));
    assert!(rx.recv().await.unwrap().first_line == 0);
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error_naming_it() {
    let spec = ProcessSpec::new(["taskfleet-no-such-program"]);
    let (result, _) = run_with(spec, Vec::new(), CancellationToken::new()).await;
    match result {
        Err(ProcessError::Spawn { program, source }) => {
            assert_eq!(program, "taskfleet-no-such-program");
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    let (result, _) = run_with(
        ProcessSpec::new(Vec::<String>::new()),
        Vec::new(),
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(result, Err(ProcessError::EmptyArgv)));
}

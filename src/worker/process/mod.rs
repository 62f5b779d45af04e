//! The child-process runner behind `exec` and `agent` tasks.
//!
//! [`run`] starts one program from an argv (never through a shell: callers that take a
//! `command` string wrap it in `sh -c` themselves) and drives it to the end:
//!
//! - the child leads its own process group (a new session under a pseudo-terminal), and every
//!   kill signals the whole group, so grandchildren go too; a parent-death signal (Linux) kills
//!   the child if this process dies first;
//! - stdout and stderr are read concurrently into a [`TailBuffer`](super::output::TailBuffer)
//!   each, and streamed as [`OutputChunk`]s, coalesced per [`ProcessSpec::chunk_interval`];
//!   a slow consumer never blocks the child (see [`run`]);
//! - cancellation and timeouts send SIGTERM to the group, then SIGKILL after
//!   [`ProcessSpec::kill_grace`]; processes left in the group after the program exits get the
//!   same treatment, so nothing of the group outlives [`run`].

mod group;
mod spawn;

use self::group::{Group, GroupGuard};
use self::spawn::{spawn, Reader, Spawned, Writer};
use super::output::Coalescer;
pub use super::output::{OutputChunk, Stream};
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{Receiver, Sender};
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Default for [`ProcessSpec::output_cap`]: 1 MiB of tail per stream.
pub const DEFAULT_OUTPUT_CAP: usize = 1024 * 1024;
/// Default for [`ProcessSpec::chunk_interval`].
pub const DEFAULT_CHUNK_INTERVAL: Duration = Duration::from_millis(250);
/// Default for [`ProcessSpec::kill_grace`].
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// How often the group is checked for survivors once the program has exited.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long output is still read once no process of the group is left (a process that left the
/// group, e.g. a daemon, may hold the pipe open for ever).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long the group may take to vanish after SIGKILL before [`run`] gives up waiting.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the last chunks may wait for room in the output channel.
const FINAL_FLUSH_WAIT: Duration = Duration::from_millis(500);
/// Bytes read from a pipe at a time.
const READ_BUF: usize = 16 * 1024;

/// What to run and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The program (`argv[0]`, looked up in `PATH`) and its arguments. Never run through a shell.
    pub argv: Vec<String>,
    /// Working directory; `None` keeps ours.
    pub cwd: Option<PathBuf>,
    /// Variables added to (or replacing in) the inherited environment.
    pub env: Vec<(String, String)>,
    /// Wall-clock limit; `None` means none.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL to the process group.
    pub kill_grace: Duration,
    /// Run under a pseudo-terminal: the child sees a tty, stderr is merged into stdout.
    pub pty: bool,
    /// Bytes of tail kept per stream for [`ProcessOutcome`].
    pub output_cap: usize,
    /// Output is delivered at most this often (one chunk per stream per interval).
    pub chunk_interval: Duration,
}

impl ProcessSpec {
    /// A spec for `argv` with the defaults: no timeout, pipes, [`DEFAULT_KILL_GRACE`],
    /// [`DEFAULT_OUTPUT_CAP`] and [`DEFAULT_CHUNK_INTERVAL`].
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: Vec::new(),
            timeout: None,
            kill_grace: DEFAULT_KILL_GRACE,
            pty: false,
            output_cap: DEFAULT_OUTPUT_CAP,
            chunk_interval: DEFAULT_CHUNK_INTERVAL,
        }
    }
}

/// Input for the child's stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinInput {
    /// Bytes to write.
    Data(Vec<u8>),
    /// End of input: closes the pipe (under a pty, sends the terminal's EOF character, ^D).
    Eof,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutcome {
    /// The child's process id, which is also its process group id.
    pub pid: u32,
    /// Exit code, if the program exited by itself.
    pub exit_code: Option<i32>,
    /// The signal that ended the program, if one did.
    pub signal: Option<i32>,
    /// It was killed because [`ProcessSpec::timeout`] passed.
    pub timed_out: bool,
    /// It was killed because the cancellation token fired.
    pub cancelled: bool,
    /// From spawn until every process of the group was gone and the output read.
    pub duration: Duration,
    /// The last [`ProcessSpec::output_cap`] bytes of stdout (lossy UTF-8, from a char boundary).
    pub stdout_tail: String,
    /// The last [`ProcessSpec::output_cap`] bytes of stderr (empty under a pty).
    pub stderr_tail: String,
    /// Bytes written to stdout in all.
    pub stdout_bytes: u64,
    /// Bytes written to stderr in all.
    pub stderr_bytes: u64,
}

impl ProcessOutcome {
    /// The program exited by itself with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.cancelled
    }
}

/// The process could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `argv` was empty.
    #[error("nothing to run: argv is empty")]
    EmptyArgv,
    /// Starting the program failed (not found, not executable, bad `cwd`…).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// Cause.
        source: io::Error,
    },
    /// No pseudo-terminal could be set up.
    #[error("cannot open a pseudo-terminal: {0}")]
    Pty(#[source] io::Error),
    /// Waiting for the program failed.
    #[error("cannot wait for {program}: {source}")]
    Wait {
        /// `argv[0]`.
        program: String,
        /// Cause.
        source: io::Error,
    },
}

/// Runs the process to the end and reports how it ended.
///
/// - **Output**: chunks go to `output`, at most one per stream per `chunk_interval`, each at
///   most [`MAX_CHUNK_BYTES`](super::output::MAX_CHUNK_BYTES), cut after the last complete line
///   when there is one. Sending never waits while the child runs: if the channel is full the
///   chunk stays pending and keeps growing up to the cap, and what does not fit is counted in
///   the next chunk's `dropped_bytes` (it still counts in the totals and the tails). At the end
///   the last chunks wait at most 500 ms for room. A closed channel just discards chunks.
/// - **Stdin**: `Data` is written as it comes. With pipes, stdin is closed on `Eof` *or when
///   every sender is dropped* (drop the sender at once for "no input"). Under a pty, `Eof`
///   sends ^D and dropping the senders leaves the terminal open.
/// - **Stopping**: `cancel` (→ `cancelled`) or the timeout (→ `timed_out`) sends SIGTERM to the
///   process group and SIGKILL after `kill_grace`. When the program exits by itself while other
///   processes of its group still run, those get the same sequence. `run` returns once no live
///   process of the group is left (zombies that only init can reap don't count).
///
/// Dropping the future kills the whole group with SIGKILL.
pub async fn run(
    spec: ProcessSpec,
    output: Sender<OutputChunk>,
    stdin: Receiver<StdinInput>,
    cancel: CancellationToken,
) -> Result<ProcessOutcome, ProcessError> {
    let started = Instant::now();
    let program = spec.argv.first().ok_or(ProcessError::EmptyArgv)?.clone();
    let Spawned {
        child,
        pgid,
        stdout,
        stderr,
        stdin: stdin_writer,
    } = spawn(&spec)?;
    // Declared before the guard so that, as the future is dropped, the guard's SIGKILL to the
    // group comes before the child's own kill-on-drop.
    let mut group = Group::new(child, pgid, &spec, started);
    let mut guard = GroupGuard { pgid, armed: true };
    tracing::debug!(pid = pgid, %program, pty = spec.pty, "child started");

    let mut pipes = Pipes {
        out: Pipe::new(Stream::Stdout, Some(stdout), spec.output_cap),
        err: Pipe::new(Stream::Stderr, stderr, spec.output_cap),
    };
    let feed = pump_stdin(stdin, stdin_writer, spec.pty);
    supervise(
        &mut group,
        &mut pipes,
        feed,
        &output,
        &cancel,
        spec.chunk_interval,
    )
    .await
    .map_err(|source| ProcessError::Wait { program, source })?;
    if group.gone {
        guard.armed = false;
    }

    pipes.flush_final(&output).await;
    Ok(group.outcome(started, &pipes))
}

/// Drives the child until [`Group::finished`]: reads both output streams, flushes chunks every
/// `chunk_interval`, feeds stdin, and stops the group on `cancel` or at the deadline. Fails only
/// if waiting for the child fails (the caller's [`GroupGuard`] then kills the group).
async fn supervise(
    group: &mut Group,
    pipes: &mut Pipes,
    feed: impl std::future::Future<Output = ()>,
    output: &Sender<OutputChunk>,
    cancel: &CancellationToken,
    chunk_interval: Duration,
) -> io::Result<()> {
    tokio::pin!(feed);
    let mut feed_done = false;
    let mut ticker = interval(chunk_interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut poll = interval(GROUP_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);

    while !group.finished(pipes.drained()) {
        let drained = pipes.drained();
        let stopping = group.stopping();
        tokio::select! {
            n = pipes.out.reader.read(&mut pipes.out.buf), if !pipes.out.eof => pipes.out.took(n),
            n = pipes.err.reader.read(&mut pipes.err.buf), if !pipes.err.eof => pipes.err.took(n),
            _ = ticker.tick() => pipes.flush(output),
            () = &mut feed, if !feed_done => feed_done = true,
            st = group.child.wait(), if group.status.is_none() => group.exited(st?),
            () = cancel.cancelled(), if !stopping => {
                group.cancelled = true;
                group.terminate();
            }
            () = sleep_opt(group.deadline), if !stopping => {
                group.timed_out = true;
                group.terminate();
            }
            () = sleep_opt(group.kill_at), if group.killed_at.is_none() && !group.gone => {
                group.kill();
            }
            _ = poll.tick(), if group.status.is_some() && !group.gone => group.check_gone(),
            () = sleep_opt(group.drain_until), if !drained => {}
        }
    }
    Ok(())
}

/// One output stream of the child: its reader, a read buffer and the chunks made of it.
struct Pipe {
    reader: Reader,
    buf: Vec<u8>,
    chunks: Coalescer,
    /// Nothing more will be read (EOF, a read error, or no such stream).
    eof: bool,
}

impl Pipe {
    /// A pipe reading `reader` as `stream`; with no reader (stderr under a pty) it is at EOF.
    fn new(stream: Stream, reader: Option<Reader>, cap: usize) -> Self {
        Self {
            eof: reader.is_none(),
            reader: reader.unwrap_or_else(|| Box::new(tokio::io::empty())),
            buf: vec![0u8; READ_BUF],
            chunks: Coalescer::new(stream, cap),
        }
    }

    /// Takes the result of one read into `buf`.
    fn took(&mut self, read: io::Result<usize>) {
        match read {
            Ok(n) if n > 0 => self.chunks.push(&self.buf[..n]),
            _ => self.eof = true, // EOF, or EIO once a pty has no slave left
        }
    }
}

/// The child's stdout and stderr.
struct Pipes {
    out: Pipe,
    err: Pipe,
}

impl Pipes {
    /// Both streams are read to the end.
    fn drained(&self) -> bool {
        self.out.eof && self.err.eof
    }

    /// Sends what is pending of each stream if the channel has room now.
    fn flush(&mut self, output: &Sender<OutputChunk>) {
        self.out.chunks.flush(output);
        self.err.chunks.flush(output);
    }

    /// Sends the rest of each stream, waiting at most [`FINAL_FLUSH_WAIT`] in all.
    async fn flush_final(&mut self, output: &Sender<OutputChunk>) {
        let deadline = Instant::now() + FINAL_FLUSH_WAIT;
        self.out.chunks.flush_final(output, deadline).await;
        self.err.chunks.flush_final(output, deadline).await;
    }
}

/// Feeds the child's stdin until `Eof` or until every sender is gone.
async fn pump_stdin(mut rx: Receiver<StdinInput>, mut sink: Writer, pty: bool) {
    let mut at_line_start = true;
    while let Some(input) = rx.recv().await {
        match input {
            StdinInput::Data(data) if data.is_empty() => {}
            StdinInput::Data(data) => {
                if sink.write_all(&data).await.is_err() || sink.flush().await.is_err() {
                    return;
                }
                at_line_start = data.ends_with(b"\n");
            }
            StdinInput::Eof if pty => {
                // A pending partial line takes one ^D to be read, an empty line one more.
                let eof: &[u8] = if at_line_start { b"\x04" } else { b"\x04\x04" };
                let _ = sink.write_all(eof).await;
                return;
            }
            StdinInput::Eof => return,
        }
    }
    // Returning drops `sink`: closes the pipe (a pty's write half only shares the master).
}

/// Sleeps until `at`; with no `at`, for ever.
async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;

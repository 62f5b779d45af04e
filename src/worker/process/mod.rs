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

use super::output::Coalescer;
pub use super::output::{OutputChunk, Stream};
use crate::sys::{self, signal_group};
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A started child and its ends of stdio.
struct Spawned {
    child: tokio::process::Child,
    pgid: u32,
    stdout: Reader,
    stderr: Option<Reader>,
    stdin: Writer,
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
        mut child,
        pgid,
        stdout: mut out_reader,
        stderr,
        stdin: stdin_writer,
    } = spawn(&spec)?;
    let mut guard = GroupGuard { pgid, armed: true };
    tracing::debug!(pid = pgid, %program, pty = spec.pty, "child started");

    let mut out = Coalescer::new(Stream::Stdout, spec.output_cap);
    let mut err = Coalescer::new(Stream::Stderr, spec.output_cap);
    let (mut out_eof, mut err_eof) = (false, stderr.is_none());
    let mut err_reader: Reader = stderr.unwrap_or_else(|| Box::new(tokio::io::empty()));
    let (mut out_buf, mut err_buf) = (vec![0u8; READ_BUF], vec![0u8; READ_BUF]);

    let stdin_task = pump_stdin(stdin, stdin_writer, spec.pty);
    tokio::pin!(stdin_task);
    let mut stdin_done = false;

    let mut ticker = interval(spec.chunk_interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut poll = interval(GROUP_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let deadline = spec.timeout.map(|t| started + t);
    let mut status: Option<ExitStatus> = None;
    let (mut timed_out, mut cancelled) = (false, false);
    let mut kill_at: Option<Instant> = None;
    let mut killed_at: Option<Instant> = None;
    let mut group_gone = false;
    let mut drain_until: Option<Instant> = None;

    loop {
        let drained = out_eof && err_eof;
        if group_gone && (drained || drain_until.is_some_and(|d| Instant::now() >= d)) {
            break;
        }
        if killed_at.is_some_and(|k| Instant::now() >= k + KILL_WAIT) {
            tracing::warn!(
                pid = pgid,
                "process group still alive after SIGKILL; giving up"
            );
            break;
        }
        let stopping = status.is_some() || kill_at.is_some();
        tokio::select! {
            n = out_reader.read(&mut out_buf), if !out_eof => match n {
                Ok(n) if n > 0 => out.push(&out_buf[..n]),
                _ => out_eof = true, // EOF, or EIO once a pty has no slave left
            },
            n = err_reader.read(&mut err_buf), if !err_eof => match n {
                Ok(n) if n > 0 => err.push(&err_buf[..n]),
                _ => err_eof = true,
            },
            _ = ticker.tick() => {
                out.flush(&output);
                err.flush(&output);
            }
            () = &mut stdin_task, if !stdin_done => stdin_done = true,
            st = child.wait(), if status.is_none() => {
                status = Some(st.map_err(|source| ProcessError::Wait {
                    program: program.clone(),
                    source,
                })?);
                if group_alive(pgid) {
                    if kill_at.is_none() {
                        tracing::debug!(pid = pgid, "program exited; stopping the rest of its group");
                        let _ = signal_group(pgid, libc::SIGTERM);
                        kill_at = Some(Instant::now() + spec.kill_grace);
                    }
                } else {
                    group_gone = true;
                    drain_until = Some(Instant::now() + DRAIN_GRACE);
                }
            }
            () = cancel.cancelled(), if !stopping => {
                cancelled = true;
                let _ = signal_group(pgid, libc::SIGTERM);
                kill_at = Some(Instant::now() + spec.kill_grace);
            }
            () = sleep_opt(deadline), if !stopping => {
                timed_out = true;
                let _ = signal_group(pgid, libc::SIGTERM);
                kill_at = Some(Instant::now() + spec.kill_grace);
            }
            () = sleep_opt(kill_at), if killed_at.is_none() && !group_gone => {
                tracing::debug!(pid = pgid, "grace over; SIGKILL to the group");
                let _ = signal_group(pgid, libc::SIGKILL);
                killed_at = Some(Instant::now());
            }
            _ = poll.tick(), if status.is_some() && !group_gone => {
                if !group_alive(pgid) {
                    group_gone = true;
                    drain_until = Some(Instant::now() + DRAIN_GRACE);
                }
            }
            () = sleep_opt(drain_until), if !drained => {}
        }
    }
    if group_gone {
        guard.armed = false;
    }

    let flush_deadline = Instant::now() + FINAL_FLUSH_WAIT;
    out.flush_final(&output, flush_deadline).await;
    err.flush_final(&output, flush_deadline).await;
    Ok(ProcessOutcome {
        pid: pgid,
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        timed_out,
        cancelled,
        duration: started.elapsed(),
        stdout_tail: out.tail().tail(),
        stderr_tail: err.tail().tail(),
        stdout_bytes: out.tail().total(),
        stderr_bytes: err.tail().total(),
    })
}

/// Starts the child: with pipes in a new process group, or on a new pty in a new session.
fn spawn(spec: &ProcessSpec) -> Result<Spawned, ProcessError> {
    let program = spec.argv[0].clone();
    let spawn_err = |source| ProcessError::Spawn {
        program: program.clone(),
        source,
    };
    let path = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| std::ffi::OsString::from(v))
        .or_else(|| std::env::var_os("PATH"));
    resolve_program(&program, path.as_deref(), spec.cwd.as_deref()).map_err(spawn_err)?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(guard_script(spec.kill_grace))
        .arg("taskfleet-task")
        .args(&spec.argv)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    // SIGTERM to the guard shell when the spawning thread ends; the guard then stops the group.
    sys::die_with_parent(cmd.as_std_mut(), libc::SIGTERM);
    let (child, stdout, stderr, stdin): (_, Reader, Option<Reader>, Writer) = if spec.pty {
        let (pty, pts) = pty_process::open().map_err(|e| ProcessError::Pty(pty_io(e)))?;
        pty.resize(pty_process::Size::new(24, 80))
            .map_err(|e| ProcessError::Pty(pty_io(e)))?;
        // setsid() in the child makes it the leader of a new session and process group.
        let child = pty_process::Command::from(cmd)
            .spawn(pts)
            .map_err(|e| spawn_err(pty_io(e)))?;
        let (read, write) = pty.into_split();
        (child, Box::new(read), None, Box::new(write))
    } else {
        cmd.process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let missing = || spawn_err(io::Error::other("child stdio was not captured"));
        let stdin: Writer = Box::new(stdin.ok_or_else(missing)?);
        let stdout: Reader = Box::new(stdout.ok_or_else(missing)?);
        let stderr: Reader = Box::new(stderr.ok_or_else(missing)?);
        (child, stdout, Some(stderr), stdin)
    };
    let pgid = child
        .id()
        .ok_or_else(|| spawn_err(io::Error::other("child has no pid")))?;
    Ok(Spawned {
        child,
        pgid,
        stdout,
        stderr,
        stdin,
    })
}

fn pty_io(e: pty_process::Error) -> io::Error {
    match e {
        pty_process::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
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

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGKILLs the group if [`run`] is dropped before the group is gone.
struct GroupGuard {
    pgid: u32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = signal_group(self.pgid, libc::SIGKILL);
        }
    }
}

/// Whether any process of group `pgid` is still alive (zombies don't count: orphans left to an
/// init that does not reap would otherwise look alive for ever).
fn group_alive(pgid: u32) -> bool {
    if signal_group(pgid, 0).is_err() {
        return false;
    }
    #[cfg(target_os = "linux")]
    return live_members(pgid).map_or(true, |n| n > 0);
    #[cfg(not(target_os = "linux"))]
    true
}

/// Non-zombie processes of group `pgid`, from `/proc/*/stat`.
#[cfg(target_os = "linux")]
fn live_members(pgid: u32) -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        // "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
        if pgrp == Some(pgid) && state != "Z" && state != "X" {
            n += 1;
        }
    }
    Ok(n)
}

/// The shell every program runs under (`sh -c GUARD taskfleet-task argv…`). It runs the program
/// in the background of the same process group with the original stdin, waits for it and exits
/// with its status. On SIGTERM — sent by the worker to the group, or by Linux when the worker
/// dies (parent-death signal) — it stops the whole group, grandchildren included: SIGTERM, then
/// SIGKILL as soon as the program is gone or after the grace. So a `kill -9` of the worker
/// leaves nothing of the task running.
fn guard_script(grace: Duration) -> String {
    let ticks = (grace.as_millis() / 100).max(1);
    // `trap : TERM` first: the guard's own copy of `kill -TERM 0` must not re-enter the trap,
    // and (unlike an ignored signal) a caught one is reset to default in the children. The trap
    // waits (in 0.1 s ticks, reading the program's state from /proc so a zombie counts as gone)
    // for the program to end, and SIGKILLs the whole group when the grace runs out.
    // A program that died by a signal is re-raised on the guard, so the worker sees the signal.
    // The guard's own stderr (job reports like "Terminated") goes to /dev/null; the program
    // keeps the real one (fd 4 while the guard runs).
    format!(
        "exec 3<&0 4>&2 2>/dev/null; \
         reraise() {{ if [ \"$1\" -gt 128 ]; then trap - TERM; kill -$(($1-128)) $$; fi; exit \"$1\"; }}; \
         trap 'trap : TERM; kill -TERM 0; i=0; \
           while [ $i -lt {ticks} ] && read -r _ _ st _ < /proc/$c/stat && [ \"$st\" != Z ]; do sleep 0.1; i=$((i+1)); done; \
           [ $i -ge {ticks} ] && kill -KILL 0; wait $c; reraise $?' TERM; \
         \"$@\" <&3 3<&- 2>&4 4>&- & c=$!; exec 3<&- 4>&-; wait $c; reraise $?"
    )
}

/// Checks that `program` exists and is executable (the guard shell would otherwise start and
/// fail with 127), searching `path` for bare names like a shell does.
fn resolve_program(
    program: &str,
    path: Option<&std::ffi::OsStr>,
    cwd: Option<&std::path::Path>,
) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let not_found = || io::Error::new(io::ErrorKind::NotFound, "program not found");
    if program.contains('/') {
        let p = match cwd {
            Some(dir) if !program.starts_with('/') => dir.join(program),
            _ => PathBuf::from(program),
        };
        return executable(&p).then_some(p).ok_or_else(not_found);
    }
    std::env::split_paths(path.unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(not_found)
}

#[cfg(test)]
mod tests;

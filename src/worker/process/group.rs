//! The child's process group on its way out: how the program ended, stopping the group
//! (SIGTERM, then SIGKILL after the grace), knowing when no process of it is left, and the guard
//! shell that stops the group when the worker dies.

use super::{Pipes, ProcessOutcome, ProcessSpec, DRAIN_GRACE, KILL_WAIT};
use crate::sys::signal_group;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::time::Instant;

/// The child and its process group on their way out: how the program ended, why the group is
/// being stopped, when SIGKILL is due, and whether the group is gone.
pub(super) struct Group {
    /// The guard shell (the program runs under it).
    pub(super) child: tokio::process::Child,
    /// The group's id (the guard shell's pid).
    pub(super) pgid: u32,
    /// How long SIGTERM is given before SIGKILL.
    pub(super) kill_grace: Duration,
    /// When [`ProcessSpec::timeout`] passes.
    pub(super) deadline: Option<Instant>,
    /// The program's exit status, once it exited.
    pub(super) status: Option<ExitStatus>,
    /// The group was stopped at the timeout.
    pub(super) timed_out: bool,
    /// The group was stopped by cancellation.
    pub(super) cancelled: bool,
    /// When SIGKILL is due (SIGTERM was sent).
    pub(super) kill_at: Option<Instant>,
    /// When SIGKILL was sent.
    pub(super) killed_at: Option<Instant>,
    /// No live process of the group is left.
    pub(super) gone: bool,
    /// How long output is still read now that the group is gone.
    pub(super) drain_until: Option<Instant>,
}

impl Group {
    /// The group of `child` (led by `pgid`), started at `started` under `spec`.
    pub(super) fn new(
        child: tokio::process::Child,
        pgid: u32,
        spec: &ProcessSpec,
        started: Instant,
    ) -> Self {
        Self {
            child,
            pgid,
            kill_grace: spec.kill_grace,
            deadline: spec.timeout.map(|t| started + t),
            status: None,
            timed_out: false,
            cancelled: false,
            kill_at: None,
            killed_at: None,
            gone: false,
            drain_until: None,
        }
    }

    /// Supervising is over: the group is gone and its output read (or the drain grace is
    /// over), or the group outlived SIGKILL by [`KILL_WAIT`].
    pub(super) fn finished(&self, drained: bool) -> bool {
        if self.gone && (drained || self.drain_until.is_some_and(|d| Instant::now() >= d)) {
            return true;
        }
        if self
            .killed_at
            .is_some_and(|k| Instant::now() >= k + KILL_WAIT)
        {
            tracing::warn!(
                pid = self.pgid,
                "process group still alive after SIGKILL; giving up"
            );
            return true;
        }
        false
    }

    /// The program exited or a stop is under way: cancellation and the timeout no longer apply.
    pub(super) fn stopping(&self) -> bool {
        self.status.is_some() || self.kill_at.is_some()
    }

    /// SIGTERM to the group; SIGKILL follows after the grace.
    pub(super) fn terminate(&mut self) {
        let _ = signal_group(self.pgid, libc::SIGTERM);
        self.kill_at = Some(Instant::now() + self.kill_grace);
    }

    /// The grace is over: SIGKILL to the group.
    pub(super) fn kill(&mut self) {
        tracing::debug!(pid = self.pgid, "grace over; SIGKILL to the group");
        let _ = signal_group(self.pgid, libc::SIGKILL);
        self.killed_at = Some(Instant::now());
    }

    /// The program exited: what is left of its group is stopped, unless a stop is under way.
    pub(super) fn exited(&mut self, status: ExitStatus) {
        self.status = Some(status);
        if group_alive(self.pgid) {
            if self.kill_at.is_none() {
                tracing::debug!(
                    pid = self.pgid,
                    "program exited; stopping the rest of its group"
                );
                self.terminate();
            }
        } else {
            self.mark_gone();
        }
    }

    /// Checks whether the group has died out since the program exited.
    pub(super) fn check_gone(&mut self) {
        if !group_alive(self.pgid) {
            self.mark_gone();
        }
    }

    /// No live process of the group is left: output is read for [`DRAIN_GRACE`] more at most.
    pub(super) fn mark_gone(&mut self) {
        self.gone = true;
        self.drain_until = Some(Instant::now() + DRAIN_GRACE);
    }

    /// How the run ended, with the tails and totals of `pipes`.
    pub(super) fn outcome(&self, started: Instant, pipes: &Pipes) -> ProcessOutcome {
        let (out, err) = (pipes.out.chunks.tail(), pipes.err.chunks.tail());
        ProcessOutcome {
            pid: self.pgid,
            exit_code: self.status.and_then(|s| s.code()),
            signal: self
                .status
                .and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
            timed_out: self.timed_out,
            cancelled: self.cancelled,
            duration: started.elapsed(),
            stdout_tail: out.tail(),
            stderr_tail: err.tail(),
            stdout_bytes: out.total(),
            stderr_bytes: err.total(),
        }
    }
}

/// SIGKILLs the group if [`run`] is dropped before the group is gone.
pub(super) struct GroupGuard {
    pub(super) pgid: u32,
    pub(super) armed: bool,
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
pub(super) fn group_alive(pgid: u32) -> bool {
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
pub(super) fn live_members(pgid: u32) -> io::Result<usize> {
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
pub(super) fn guard_script(grace: Duration) -> String {
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

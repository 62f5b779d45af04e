//! The only module with `unsafe` code: process groups, the parent-death signal, SIGPIPE.
//!
//! The crate denies `unsafe_code` everywhere else (`lib.rs`). Each raw call sits in one small safe
//! function here, with the argument checks that make it sound and a `SAFETY:` note:
//!
//! - [`signal_process`] and [`signal_group`]: `kill(2)` of one process or of a whole process group
//!   (the worker's running tasks, the command sink's children, the local nats-server).
//! - [`die_with_parent`]: `prctl(PR_SET_PDEATHSIG)` between fork and exec, so a child is told when
//!   the thread that spawned it ends (Linux only; elsewhere nothing is set).
#![allow(unsafe_code)]

use std::io;
use std::process::Command;

/// A signal number, as `libc` names them (`libc::SIGTERM`, `libc::SIGKILL`; 0 only checks).
pub type Signal = libc::c_int;

/// Sends `sig` to process `pid` (0 only checks that it exists). Refuses pid 0, which would signal
/// our own process group.
pub fn signal_process(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    if pid <= 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) only reads its two integer arguments; `pid` is positive, so it names one
    // process and never a group.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `sig` to every process of group `pgid` (0 only checks that the group exists). Refuses
/// groups 0 and 1: `kill(0)` would signal our own group and `kill(-1)` every process we may signal.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(io::Error::other)?;
    if pgid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) only reads its two integer arguments; `-pgid` is below -1, so it names
    // exactly one process group.
    let rc = unsafe { libc::kill(-pgid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks Linux to send `sig` to the child `cmd` spawns when the thread that spawned it ends (on a
/// tokio runtime, a worker thread, which lives as long as the runtime). Elsewhere a no-op. For a
/// `tokio::process::Command`, pass `cmd.as_std_mut()`. A negative `sig` (no signal has one) means
/// SIGTERM.
pub fn die_with_parent(cmd: &mut Command, sig: Signal) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let sig = libc::c_ulong::try_from(sig).unwrap_or(libc::SIGTERM as libc::c_ulong);
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: prctl is one, it allocates nothing, takes no lock
        // and touches no memory of the parent (`sig` is copied in). Its result is ignored: a
        // child without the signal still runs; it would only outlive us if we crashed.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, sig);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cmd, sig);
}

/// Restores the default action of SIGPIPE (end the process), which Rust's runtime sets to
/// ignore: a command whose output goes to a pipe its reader closed early (`taskfleet task list |
/// head -1`) then ends quietly, as other Unix tools do, instead of panicking on the failed
/// print. Only for commands that print and exit: a server keeps ignoring it (a write to a pipe
/// of a task's process that exited must be an error it handles, not its end).
pub fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler (no code of ours runs on the signal);
    // called in `main` before the runtime starts any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Stdio;

    #[test]
    fn pid_and_group_zero_and_one_are_refused_without_sending() {
        for sig in [0, libc::SIGKILL] {
            let e = signal_process(0, sig).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            for pgid in [0, 1] {
                let e = signal_group(pgid, sig).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            }
        }
        assert!(signal_process(u32::MAX, 0).is_err());
    }

    #[test]
    fn a_signal_reaches_the_process_it_names() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        signal_process(child.id(), 0).unwrap();
        signal_process(child.id(), libc::SIGTERM).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn a_group_signal_reaches_the_leader_and_its_children() {
        // The background subshell holds stdout too: EOF comes once every member is gone, and
        // "survived" only if the subshell outlived the signal.
        let mut child = Command::new("sh")
            .args(["-c", "(sleep 5; echo survived) & echo started; wait"])
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "started\n");
        let pgid = child.id();
        signal_group(pgid, 0).unwrap();
        signal_group(pgid, libc::SIGKILL).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_child_is_signalled_when_the_thread_that_spawned_it_ends() {
        let script = "trap 'echo got-term; exit 0' TERM; echo ready; \
                      i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo no-term";
        let (mut child, mut out) = std::thread::spawn(move || {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]).stdout(Stdio::piped());
            die_with_parent(&mut cmd, libc::SIGTERM);
            let mut child = cmd.spawn().unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut ready = String::new();
            out.read_line(&mut ready).unwrap();
            assert_eq!(ready, "ready\n");
            (child, out)
        })
        .join()
        .unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "got-term\n");
        assert!(child.wait().unwrap().success());
    }
}

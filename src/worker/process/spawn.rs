//! Starting the child: the program looked up as a shell would, run under the guard shell (see
//! [`guard_script`]) in a process group of its own, with pipes or on a pseudo-terminal.

use super::group::guard_script;
use super::{ProcessError, ProcessSpec};
use crate::sys;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncWrite};

/// The read end of one of the child's output streams.
pub(super) type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The write end of the child's stdin.
pub(super) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A started child and its ends of stdio.
pub(super) struct Spawned {
    pub(super) child: tokio::process::Child,
    pub(super) pgid: u32,
    pub(super) stdout: Reader,
    pub(super) stderr: Option<Reader>,
    pub(super) stdin: Writer,
}

/// Starts the child: with pipes in a new process group, or on a new pty in a new session.
pub(super) fn spawn(spec: &ProcessSpec) -> Result<Spawned, ProcessError> {
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
    let mut cmd = guard_command(spec);
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

/// `sh -c GUARD taskfleet-task argv…` (see [`guard_script`]) with the spec's environment and
/// working directory, killed on drop and sent SIGTERM when the spawning thread ends.
pub(super) fn guard_command(spec: &ProcessSpec) -> tokio::process::Command {
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
    cmd
}

/// A pty error as an I/O error.
pub(super) fn pty_io(e: pty_process::Error) -> io::Error {
    match e {
        pty_process::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Checks that `program` exists and is executable (the guard shell would otherwise start and
/// fail with 127), searching `path` for bare names like a shell does.
pub(super) fn resolve_program(
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

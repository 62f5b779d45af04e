//! The `command` sink: runs a configured argv template, e.g.
//! `["openclaw", "message", "send", "--channel", "{channel}", "--target", "{target}",
//! "--message", "{text}"]`.
//!
//! Placeholders are replaced inside each element, in one pass (text that itself contains
//! `{task_id}` is not expanded again): `{text}` (the message), `{task_id}`, `{task_name}`,
//! `{event}` (`task.completed`, …, or `push`) and every key of `vars`; the built-in names win over
//! `vars`, and unknown placeholders stay as they are. The result is passed to the program as
//! argv, never through a shell, so quotes, `$(…)` and `;` arrive literally.
//!
//! The program runs in its own process group with stdin closed and at most the context's
//! timeout: exit 0 is delivered (stdout as response), a non-zero exit or a timeout (the whole
//! group is killed) is retried with the tail of stderr as response, and a program that does not
//! exist or may not be run is a permanent failure.

use super::{Attempt, SinkContext};
use crate::relay::job::{DeliveryJob, MAX_RESPONSE_BYTES};
use crate::relay::retry::Verdict;
use crate::sys;
use std::collections::BTreeMap;
use std::io;
use std::process::Stdio;

/// Runs `argv` with `job`'s values substituted.
pub(super) async fn run(
    ctx: &SinkContext,
    argv: &[String],
    vars: &BTreeMap<String, String>,
    job: &DeliveryJob,
) -> Attempt {
    let args: Vec<String> = argv.iter().map(|a| expand(a, job, vars)).collect();
    let Some((program, rest)) = args.split_first() else {
        return Attempt::permanent("the command's argv is empty");
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            return Attempt::permanent(format!("cannot run {program:?}: {e}"));
        }
        Err(e) => return retry(format!("cannot start {program:?}: {e}")),
    };
    let pid = child.id();
    match tokio::time::timeout(ctx.timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stdout = stdout.trim();
            let response = (!stdout.is_empty()).then(|| tail(stdout).to_string());
            Attempt::new(Verdict::Delivered, None, response)
        }
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let said = [stderr.trim(), stdout.trim()]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or("");
            retry(format!("{program:?} {}: {}", out.status, tail(said)))
        }
        Ok(Err(e)) => retry(format!("waiting for {program:?}: {e}")),
        Err(_) => {
            // Dropping the wait future killed the child (kill_on_drop); kill what it started.
            if let Some(pid) = pid {
                kill_group(pid);
            }
            retry(format!("{program:?} timed out after {:?}", ctx.timeout))
        }
    }
}

fn retry(why: String) -> Attempt {
    Attempt::new(Verdict::Retry { after: None }, None, Some(why))
}

/// `template` with every known `{name}` replaced, in one left-to-right pass.
fn expand(template: &str, job: &DeliveryJob, vars: &BTreeMap<String, String>) -> String {
    let names = job.task.as_ref().and_then(|t| t.names());
    let task_id = names
        .as_ref()
        .map(|t| t.id.as_str())
        .or_else(|| job.event.as_ref().map(|e| e.task_id.as_str()))
        .unwrap_or_default();
    let task_name = names.as_ref().map_or("", |t| t.task_name.as_str());
    let event = job.event_type();
    let lookup = |name: &str| -> Option<&str> {
        match name {
            "text" => Some(&job.text),
            "task_id" => Some(task_id),
            "task_name" => Some(task_name),
            "event" => Some(&event),
            other => vars.get(other).map(String::as_str),
        }
    };
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after
            .find('}')
            .and_then(|close| lookup(&after[..close]).map(|v| (v, close)));
        match value {
            Some((v, close)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The last [`MAX_RESPONSE_BYTES`] of `text`, cut at a character boundary.
fn tail(text: &str) -> &str {
    if text.len() <= MAX_RESPONSE_BYTES {
        return text;
    }
    let mut start = text.len() - MAX_RESPONSE_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Kills process group `pgid` (the child made itself its leader with `process_group(0)`). A group
/// that is already gone is harmless (ESRCH), and groups 0 and 1 are refused by [`sys`].
fn kill_group(pgid: u32) {
    let _ = sys::signal_group(pgid, libc::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{ctx, job, task_job};
    use super::super::{send, Destination, SinkContext};
    use super::*;
    use crate::outbound::ssrf::AllowList;
    use std::time::{Duration, Instant};

    fn command(argv: &[&str], vars: &[(&str, &str)]) -> Destination {
        Destination::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A script that writes each of its arguments on its own line to `$1`.
    fn recorder(dir: &tempfile::TempDir) -> String {
        let path = dir.path().join("record.sh");
        std::fs::write(
            &path,
            "#!/bin/sh\nout=$1; shift\nprintf '%s\\n' \"$@\" > \"$out\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn placeholders_are_substituted_inside_argv_elements() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args.txt");
        let dest = command(
            &[
                &recorder(&dir),
                out.to_str().unwrap(),
                "--channel",
                "{channel}",
                "--target={target}",
                "{task_id}/{task_name}/{event}",
                "--message",
                "{text}",
                "{unknown}",
            ],
            &[("channel", "telegram"), ("target", "@ops")],
        );
        let res = send(&ctx(), &dest, &task_job("✅ done")).await;
        assert_eq!(res.verdict, Verdict::Delivered, "{:?}", res.response);
        let lines: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let expected = [
            "--channel",
            "telegram",
            "--target=@ops",
            "t_42/Weekly report/task.completed",
            "--message",
            "✅ done",
            "{unknown}",
        ];
        assert_eq!(lines, expected);
    }

    #[tokio::test]
    async fn the_text_arrives_literally_without_shell_interpretation() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let text = format!(
            "$(touch {}); echo `id` {{task_id}} 'q' \"dq\" ; *",
            marker.display()
        );
        let out = dir.path().join("args.txt");
        let dest = command(&[&recorder(&dir), out.to_str().unwrap(), "{text}"], &[]);
        let res = send(&ctx(), &dest, &job(&text)).await;
        assert_eq!(res.verdict, Verdict::Delivered, "{:?}", res.response);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{text}\n"));
        assert!(!marker.exists(), "the text was run by a shell");
    }

    #[tokio::test]
    async fn printf_output_is_the_response_of_a_delivered_command() {
        let dest = command(&["printf", "sent %s", "{text}"], &[]);
        let res = send(&ctx(), &dest, &job("$(echo hi)")).await;
        assert_eq!(res.verdict, Verdict::Delivered);
        assert_eq!(res.response.as_deref(), Some("sent $(echo hi)"));
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_retried_with_stderr_as_response() {
        let dest = command(&["ls", "/surely/not/here/{text}"], &[]);
        let res = send(&ctx(), &dest, &job("x")).await;
        assert_eq!(res.verdict, Verdict::Retry { after: None });
        let response = res.response.unwrap();
        assert!(response.contains("/surely/not/here/x"), "{response}");
        let dest = command(&["test", "{text}", "=", "other"], &[]);
        let res = send(&ctx(), &dest, &job("x")).await;
        assert_eq!(res.verdict, Verdict::Retry { after: None });
    }

    #[tokio::test]
    async fn a_missing_program_is_permanent() {
        let dest = command(&["/nonexistent/taskfleet-notify", "{text}"], &[]);
        let res = send(&ctx(), &dest, &job("x")).await;
        assert_eq!(res.verdict, Verdict::Permanent);
        let empty = command(&[], &[]);
        assert_eq!(
            send(&ctx(), &empty, &job("x")).await.verdict,
            Verdict::Permanent
        );
    }

    #[tokio::test]
    async fn a_command_running_past_the_timeout_is_killed_and_retried() {
        let allow = AllowList::default();
        let quick = SinkContext::new(allow, Duration::from_millis(300)).unwrap();
        let started = Instant::now();
        let res = send(&quick, &command(&["sleep", "10"], &[]), &job("x")).await;
        assert_eq!(res.verdict, Verdict::Retry { after: None });
        assert!(res.response.unwrap().contains("timed out"));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn substituted_text_is_not_expanded_again() {
        let j = task_job("{task_id} and {channel}");
        let vars = BTreeMap::from([("channel".to_string(), "c".to_string())]);
        assert_eq!(expand("[{text}]", &j, &vars), "[{task_id} and {channel}]");
        assert_eq!(expand("{{text}}", &j, &vars), "{{task_id} and {channel}}");
        assert_eq!(expand("{text", &j, &vars), "{text");
    }

    #[test]
    fn the_tail_keeps_the_end_at_a_char_boundary() {
        let long = format!("{}é{}", "a".repeat(5000), "z".repeat(4095));
        let t = tail(&long);
        assert!(t.len() <= MAX_RESPONSE_BYTES && t.ends_with('z'));
    }
}

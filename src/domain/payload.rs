//! Kind-specific payloads, checked when a task is created so bad input is refused up front.

use super::names::TaskKind;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// `exec` (seed 003): a command run by a worker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecPayload {
    /// A shell command line (run with `sh -c`).
    #[serde(default)]
    pub command: Option<String>,
    /// Or the program and its arguments, run without a shell.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Time limit in seconds (default 1800).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Run under a pseudo-terminal.
    #[serde(default)]
    pub pty: bool,
}

impl ExecPayload {
    /// The argv to run: `argv`, or `sh -c <command>`.
    pub fn program(&self) -> Vec<String> {
        match (&self.argv, &self.command) {
            (Some(argv), _) => argv.clone(),
            (None, Some(cmd)) => vec!["sh".into(), "-c".into(), cmd.clone()],
            (None, None) => Vec::new(),
        }
    }
}

/// How an agent run behaves (seed 004).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// One-shot: the prompt goes in, the run ends.
    #[default]
    Run,
    /// Stdin stays open for follow-ups through `POST /api/tasks/{id}/input`.
    Session,
}

/// `agent` (seed 004): an external coding agent run by a worker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentPayload {
    /// Which agent (`codex`, `claude`, `gemini`, `opencode`, …): a key of `worker.agents`.
    pub agent_id: String,
    /// What to ask it.
    pub prompt: String,
    /// Working directory (absolute paths preferred).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Time limit in seconds (default: the task's `timeout_s`, else `worker.exec_timeout_s`).
    #[serde(default)]
    pub run_timeout_s: Option<u64>,
    /// `run` (default) or `session`.
    #[serde(default)]
    pub mode: AgentMode,
}

/// `payload` as the payload of `kind` (a JSON object); what serde refused names its field
/// (`command: invalid type …`) unless the message names it already.
fn parse<T: serde::de::DeserializeOwned>(kind: &str, payload: &Value) -> Result<T, String> {
    if !payload.is_object() {
        return Err(format!("{kind} payload must be a JSON object"));
    }
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let (path, message) = (e.path().to_string(), e.inner().to_string());
        match path == "." || message.contains(&format!("`{path}`")) {
            true => format!("{kind} payload: {message}"),
            false => format!("{kind} payload: {path}: {message}"),
        }
    })
}

/// Checks the payload of `kind`; the message is shown to the caller.
pub fn validate(kind: TaskKind, payload: &Value) -> Result<(), String> {
    match kind {
        TaskKind::Exec => {
            if payload.get("command").is_some_and(Value::is_array) {
                return Err(
                    "exec payload: `command` is one shell command line (a string); \
                    give a program and its arguments as a list in `argv`"
                        .into(),
                );
            }
            let p: ExecPayload = parse("exec", payload)?;
            match (&p.command, &p.argv) {
                (Some(_), Some(_)) => {
                    Err("exec payload: give `command` or `argv`, not both".into())
                }
                (Some(c), None) if c.trim().is_empty() => {
                    Err("exec payload: `command` is empty".into())
                }
                (None, Some(a)) if a.first().is_none_or(|p| p.is_empty()) => {
                    Err("exec payload: `argv` needs a program".into())
                }
                (None, None) => Err("exec payload needs `command` or `argv`".into()),
                _ if p.timeout_s == Some(0) => {
                    Err("exec payload: timeout_s must be positive".into())
                }
                _ => Ok(()),
            }
        }
        TaskKind::Agent => {
            let p: AgentPayload = parse("agent", payload)?;
            if p.agent_id.trim().is_empty() || p.prompt.trim().is_empty() {
                return Err("agent payload needs `agent_id` and `prompt`".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_needs_exactly_one_of_command_and_argv() {
        assert!(validate(TaskKind::Exec, &json!({"command": "echo hi"})).is_ok());
        assert!(validate(
            TaskKind::Exec,
            &json!({"argv": ["echo", "hi"], "pty": true})
        )
        .is_ok());
        assert!(validate(TaskKind::Exec, &json!({})).is_err());
        assert!(validate(TaskKind::Exec, &json!({"command": " "})).is_err());
        assert!(validate(TaskKind::Exec, &json!({"command": "a", "argv": ["b"]})).is_err());
        assert!(validate(TaskKind::Exec, &json!({"command": "a", "shell": "zsh"})).is_err());
    }

    #[test]
    fn a_command_given_as_a_list_is_pointed_to_argv() {
        let refused = validate(TaskKind::Exec, &json!({"command": ["sleep", "5"]}));
        assert!(refused.unwrap_err().contains("`argv`"));
    }

    #[test]
    fn a_refused_payload_field_is_named() {
        let refused = validate(
            TaskKind::Exec,
            &json!({"command": "make", "timeout_s": "soon"}),
        );
        assert!(
            refused
                .as_ref()
                .unwrap_err()
                .starts_with("exec payload: timeout_s: invalid type"),
            "{refused:?}"
        );
        let agent = validate(TaskKind::Agent, &json!({"agent_id": 7, "prompt": "hi"}));
        assert!(
            agent
                .as_ref()
                .unwrap_err()
                .starts_with("agent payload: agent_id: invalid type"),
            "{agent:?}"
        );
        let unknown = validate(TaskKind::Exec, &json!({"command": "a", "shell": "zsh"}));
        assert!(
            unknown
                .as_ref()
                .unwrap_err()
                .starts_with("exec payload: unknown field `shell`"),
            "{unknown:?}"
        );
        let list = validate(TaskKind::Exec, &json!(["make"]));
        assert_eq!(list.unwrap_err(), "exec payload must be a JSON object");
    }

    #[test]
    fn agent_needs_an_agent_and_a_prompt() {
        assert!(validate(
            TaskKind::Agent,
            &json!({"agent_id": "codex", "prompt": "fix it"})
        )
        .is_ok());
        assert!(validate(TaskKind::Agent, &json!({"agent_id": "codex"})).is_err());
        assert!(validate(
            TaskKind::Agent,
            &json!({"agent_id": "codex", "prompt": "x", "mode": "chat"})
        )
        .is_err());
    }

    #[test]
    fn a_command_runs_through_sh_and_argv_runs_as_is() {
        let c: ExecPayload = serde_json::from_value(json!({"command": "echo $HOME"})).unwrap();
        assert_eq!(c.program(), ["sh", "-c", "echo $HOME"]);
        let a: ExecPayload = serde_json::from_value(json!({"argv": ["ls", "-l"]})).unwrap();
        assert_eq!(a.program(), ["ls", "-l"]);
    }
}

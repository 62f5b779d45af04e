//! `taskfleet secrets`: the fleet-wide secrets as one env file, for compose (`--env-file`) and
//! Kubernetes (`kubectl create secret generic --from-env-file`), so nobody writes them by hand:
//!
//! - `TASKFLEET_API_KEY`, the admin key (random, as `taskfleet up` makes it);
//! - `TASKFLEET_FLEET__TASK_TOKEN_SECRET`, which signs task-scoped tokens (random);
//! - for the `--config` file: a random key for every `[[api.keys]]` `key_env`, a `whsec_`
//!   signing secret for every webhook destination's `secret_env`, and, as commented lines to fill
//!   in, the tokens other services issue (`token_env`, `bot_token_env`).
//!
//! The file is mode 0600, an existing one is replaced only with `--force`, and no secret is
//! printed: [`write_env_file`] returns variable names only.

use crate::config::Config;
use base64::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The admin key's variable.
pub const API_KEY_VAR: &str = "TASKFLEET_API_KEY";
/// The task-token secret's variable.
pub const TASK_TOKEN_SECRET_VAR: &str = "TASKFLEET_FLEET__TASK_TOKEN_SECRET";

/// Writing the env file failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The file exists and `force` was not given.
    #[error(
        "{path} exists; pass --force to replace it (every service must then get the new secrets)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// A new random admin API key: `tfk_` and 256 random bits in hex.
pub fn new_api_key() -> String {
    format!(
        "tfk_{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

/// A new random secret for task-scoped tokens: 256 random bits in hex.
pub fn new_token_secret() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

/// A new Standard Webhooks signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_webhook_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// What [`write_env_file`] wrote: variable names, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Variables set to new random values.
    pub generated: Vec<String>,
    /// Variables left for the operator to fill in (commented out), with what they are.
    pub to_fill: Vec<(String, String)>,
}

/// One variable of the file.
enum Var {
    /// A new random value; the comment says what it is for.
    Generated { comment: String, value: String },
    /// To be filled in by the operator.
    ToFill { what: String },
}

/// Writes the fleet's secrets for `cfg` to `path` (mode 0600). Refuses to replace an existing
/// file unless `force`.
pub fn write_env_file(path: &Path, cfg: &Config, force: bool) -> Result<Written, SecretsError> {
    let vars = variables(cfg);
    let mut text = String::from(
        "# The fleet's secrets, written by `taskfleet secrets` (mode 0600). Never commit it.\n\
         # compose: docker compose -f deploy/compose.yaml --env-file <this file> up …\n\
         # k8s:     kubectl -n taskfleet create secret generic taskfleet-env --from-env-file=<this file>\n",
    );
    let mut written = Written {
        path: path.to_path_buf(),
        generated: Vec::new(),
        to_fill: Vec::new(),
    };
    for (name, var) in &vars {
        match var {
            Var::Generated { comment, value } => {
                text.push_str(&format!("# {comment}\n{name}={value}\n"));
                written.generated.push(name.clone());
            }
            Var::ToFill { what } => {
                text.push_str(&format!("# To fill in: {what}.\n#{name}=\n"));
                written.to_fill.push((name.clone(), what.clone()));
            }
        }
    }
    write_private(path, &text, force)?;
    Ok(written)
}

/// Every variable, in file order: the two fleet-wide secrets, then those the config names.
fn variables(cfg: &Config) -> Vec<(String, Var)> {
    let mut vars = vec![
        (
            API_KEY_VAR.to_string(),
            Var::Generated {
                comment: "The admin API key (API only).".into(),
                value: new_api_key(),
            },
        ),
        (
            TASK_TOKEN_SECRET_VAR.to_string(),
            Var::Generated {
                comment: "Signs task-scoped tokens (API and every worker).".into(),
                value: new_token_secret(),
            },
        ),
    ];
    let mut named = BTreeMap::new();
    for k in &cfg.api.keys {
        if let Some(var) = &k.key_env {
            let comment = format!(
                "API key `{}` (scoped to {})",
                k.name,
                k.assignees.join(", ")
            );
            named.entry(var.clone()).or_insert(Var::Generated {
                comment,
                value: new_api_key(),
            });
        }
    }
    for (name, dest) in &cfg.relay.destinations {
        // Every `*_env` field of the destination, whatever its type.
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(dest) else {
            continue;
        };
        let kind = fields.get("type").and_then(|t| t.as_str()).unwrap_or("?");
        // A `*_env` field names one variable, or (`headers_env`) one per header.
        let vars = fields
            .iter()
            .filter(|(f, _)| f.ends_with("_env"))
            .flat_map(|(f, v)| {
                let one = v.as_str().map(|var| (f.clone(), var));
                let each = v.as_object().into_iter().flatten();
                let each =
                    each.filter_map(move |(h, var)| Some((format!("{f}.{h}"), var.as_str()?)));
                one.into_iter().chain(each)
            });
        for (field, var) in vars {
            let var_entry = if kind == "webhook" && field == "secret_env" {
                Var::Generated {
                    comment: format!(
                        "Signs deliveries to webhook destination `{name}`: give it to the receiver."
                    ),
                    value: new_webhook_secret(),
                }
            } else {
                Var::ToFill {
                    what: format!("{field} of {kind} destination `{name}` (relay only)"),
                }
            };
            named.entry(var.to_string()).or_insert(var_entry);
        }
    }
    vars.extend(named);
    vars
}

/// Writes `text` to `path` with mode 0600: a new file, or with `force` a replacement put in
/// place by rename (so the old file is never half written).
fn write_private(path: &Path, text: &str, force: bool) -> Result<(), SecretsError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SecretsError::Write { path, source }
    };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
    }
    let target = if force {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        path.with_file_name(format!(
            ".{}.{:08x}.tmp",
            name.unwrap_or_default(),
            rand::random::<u32>()
        ))
    } else {
        path.to_path_buf()
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&target).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists && !force {
            SecretsError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            SecretsError::Write {
                path: target.clone(),
                source,
            }
        }
    })?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        let _ = std::fs::remove_file(&target);
        return Err(SecretsError::Write {
            path: target,
            source,
        });
    }
    if force {
        std::fs::rename(&target, path).map_err(|source| {
            let _ = std::fs::remove_file(&target);
            SecretsError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_destinations() -> Config {
        let relay = toml::from_str(
            r#"
            [destinations.ops]
            type = "webhook"
            url = "https://ops.example.com/hook"
            secret_env = "OPS_WEBHOOK_SECRET"
            headers_env = { Authorization = "OPS_GATEWAY_AUTH" }
            [destinations.webchat]
            type = "chat"
            url = "https://chat.example.com/api/push"
            session_id = "main"
            token_env = "WEBCHAT_TOKEN"
            "#,
        )
        .unwrap();
        Config {
            relay,
            ..Config::default()
        }
    }

    fn values(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn the_file_is_private_and_holds_new_random_secrets_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a/fleet.env"), dir.path().join("b.env"));
        let cfg = config_with_destinations();
        let written = write_env_file(&a, &cfg, false).unwrap();
        write_env_file(&b, &cfg, false).unwrap();

        let (va, vb) = (
            values(&std::fs::read_to_string(&a).unwrap()),
            values(&std::fs::read_to_string(&b).unwrap()),
        );
        assert_eq!(
            written.generated,
            [API_KEY_VAR, TASK_TOKEN_SECRET_VAR, "OPS_WEBHOOK_SECRET"]
        );
        let to_fill: Vec<&str> = written.to_fill.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(to_fill, ["OPS_GATEWAY_AUTH", "WEBCHAT_TOKEN"]);
        for name in &written.generated {
            assert!(va[name].len() >= 40, "{name}");
            assert_ne!(va[name], vb[name], "{name} is random");
        }
        assert!(va[API_KEY_VAR].starts_with("tfk_"));
        assert!(va["OPS_WEBHOOK_SECRET"].starts_with("whsec_"));
        assert!(!va.contains_key("WEBCHAT_TOKEN"), "left to fill in");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&a).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_existing_file_is_replaced_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.env");
        std::fs::write(&path, "KEEP=me\n").unwrap();
        let cfg = Config::default();

        let refused = write_env_file(&path, &cfg, false).unwrap_err();
        assert!(matches!(refused, SecretsError::Exists { .. }), "{refused}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "KEEP=me\n");

        write_env_file(&path, &cfg, true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(values(&text).contains_key(API_KEY_VAR), "{text}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file left behind");
    }
}

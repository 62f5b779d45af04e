//! `taskfleet nats-config`: the NATS server's users and permissions for a fleet, and one env file
//! per process with its credentials, so nobody writes them by hand.
//!
//! - `matrix.rs`: the roles (`api`, `relay`, `worker-<assignee>`) and their exact permissions;
//! - here: passwords (random, kept across runs unless rotated, stored in the server config as
//!   bcrypt hashes only), the generated `authorization` block, and the env files.
//!
//! The auth file is meant to be `include`d from the server config (see `nats.conf`); each env
//! file (`<user>.env`: `TASKFLEET_NATS__USER`, `TASKFLEET_NATS__PASSWORD`, and
//! `TASKFLEET_ASSIGNEE` for workers) goes to one container only, e.g. as compose's `env_file`.

mod matrix;

pub use matrix::{fleet_streams, Role, UserPermissions};

use crate::domain::Assignee;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// bcrypt cost of the stored hashes (what `nats server passwd` uses). The server checks a hash
/// on every connect, so higher costs slow down every (re)connect of every process.
pub const DEFAULT_BCRYPT_COST: u32 = 11;

/// The user that connections without credentials become when [`Options::anonymous_probe`] is set.
pub const PROBE_USER: &str = "anonymous-probe";

/// Generating the files failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// bcrypt failed.
    #[error("cannot hash a password")]
    Hash(#[from] bcrypt::BcryptError),
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    /// One worker user per assignee (none: only the API and the relay).
    pub assignees: Vec<Assignee>,
    /// The auth file (an `authorization { users = [...] }` block to `include`).
    pub out: PathBuf,
    /// Where `<user>.env` files go.
    pub env_dir: PathBuf,
    /// New passwords for every user; else passwords in existing env files are kept.
    pub rotate: bool,
    /// bcrypt cost ([`DEFAULT_BCRYPT_COST`]; tests use the minimum, 4).
    pub bcrypt_cost: u32,
    /// Adds [`PROBE_USER`] as the server's `no_auth_user`: it may only ask for JetStream's
    /// account info, which `taskfleet up`'s readiness check does without credentials.
    pub anonymous_probe: bool,
}

/// One generated user.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Its role.
    pub role: Role,
    /// The NATS user name.
    pub user: String,
    /// Its password (also in `env_file`).
    pub password: SecretString,
    /// Its env file.
    pub env_file: PathBuf,
    /// Whether the password came from an existing env file.
    pub reused: bool,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The auth file.
    pub auth_file: PathBuf,
    /// Every user, in the file's order.
    pub users: Vec<Credentials>,
}

impl Generated {
    /// The credentials of `role`.
    pub fn credentials(&self, role: &Role) -> Option<&Credentials> {
        self.users.iter().find(|c| &c.role == role)
    }
}

/// One user as the auth file shows it.
struct Entry {
    user: String,
    comment: String,
    /// A bcrypt hash (plain only for the probe user).
    password: String,
    permissions: UserPermissions,
}

/// Writes the auth file and one env file per user (all mode 0600).
pub fn generate(opts: &Options) -> Result<Generated, NatsAuthError> {
    let mut assignees = opts.assignees.clone();
    assignees.sort();
    assignees.dedup();
    create_dir(&opts.env_dir)?;
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    let mut users = Vec::new();
    let mut entries = Vec::new();
    for role in Role::all(&assignees) {
        let user = role.user();
        let env_file = opts.env_dir.join(format!("{user}.env"));
        let kept = if opts.rotate {
            None
        } else {
            read_password(&env_file)
        };
        let reused = kept.is_some();
        let password = kept.unwrap_or_else(random_password);
        write_private(&env_file, &env_text(&role, &user, &password))?;
        entries.push(Entry {
            comment: format!("{user}: {}", role.purpose()),
            password: bcrypt::hash(&password, opts.bcrypt_cost)?,
            permissions: role.permissions(&assignees),
            user: user.clone(),
        });
        users.push(Credentials {
            role,
            user,
            password: SecretString::from(password),
            env_file,
            reused,
        });
    }
    if opts.anonymous_probe {
        entries.push(Entry {
            user: PROBE_USER.into(),
            comment: format!("{PROBE_USER}: connections without credentials (readiness checks)"),
            // Plain on purpose: the server hands `no_auth_user` connections the stored password,
            // which a bcrypt hash would not match. Knowing it grants nothing beyond anonymity.
            password: random_password(),
            permissions: UserPermissions {
                publish: vec![crate::bus::permissions::js_info()],
                subscribe: vec!["_INBOX.>".into()],
                allow_responses: false,
            },
        });
    }
    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let text = render(&entries, &assignees, name.as_deref(), opts.anonymous_probe);
    write_private(&opts.out, &text)?;
    Ok(Generated {
        auth_file: opts.out.clone(),
        users,
    })
}

/// The auth file: a commented `authorization` block (plus `no_auth_user` for the probe).
fn render(entries: &[Entry], assignees: &[Assignee], file: Option<&str>, probe: bool) -> String {
    let names: Vec<&str> = assignees.iter().map(Assignee::as_str).collect();
    let mut out = format!(
        "# NATS users of a taskfleet fleet, generated by\n\
         #   taskfleet nats-config --assignees {}\n\
         # Do not edit: run the command again (existing env files keep their passwords;\n\
         # --rotate makes new ones). Passwords are bcrypt hashes; each process's password\n\
         # is in its own env file. Include this file from the server config:\n\
         #   include \"{}\"   # a path relative to the including file\n\n",
        names.join(","),
        file.unwrap_or("nats-auth.conf")
    );
    if probe {
        out.push_str(&format!("no_auth_user: {}\n\n", quote(PROBE_USER)));
    }
    out.push_str("authorization {\n  users = [\n");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("    # {}\n    {{\n", e.comment));
        out.push_str(&format!("      user: {}\n", quote(&e.user)));
        out.push_str(&format!("      password: {}\n", quote(&e.password)));
        out.push_str("      permissions: {\n");
        out.push_str(&list("publish", &e.permissions.publish));
        out.push_str(&list("subscribe", &e.permissions.subscribe));
        if e.permissions.allow_responses {
            out.push_str("        allow_responses: true\n");
        }
        out.push_str("      }\n    }\n");
    }
    out.push_str("  ]\n}\n");
    out
}

fn list(name: &str, subjects: &[String]) -> String {
    let items: Vec<String> = subjects
        .iter()
        .map(|s| format!("            {}", quote(s)))
        .collect();
    format!(
        "        {name}: {{\n          allow: [\n{}\n          ]\n        }}\n",
        items.join(",\n")
    )
}

/// A double-quoted config string (NATS does not expand `$` inside quotes).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn env_text(role: &Role, user: &str, password: &str) -> String {
    let mut text = format!(
        "# NATS credentials of the taskfleet user {user} ({}).\n\
         # Generated by `taskfleet nats-config`; give this file to that process only.\n\
         TASKFLEET_NATS__USER={user}\n\
         TASKFLEET_NATS__PASSWORD={password}\n",
        role.purpose()
    );
    if let Role::Worker(a) = role {
        text.push_str(&format!("TASKFLEET_ASSIGNEE={a}\n"));
    }
    text
}

/// The password of an existing env file, when it has a usable one.
fn read_password(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("TASKFLEET_NATS__PASSWORD="))
        .map(str::to_string)
        .filter(|p| p.len() >= 16 && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// 32 alphanumeric characters (about 190 bits), safe in env files and URLs.
fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Creates `dir` (and its parents) readable by the owner only, when it does not exist yet.
fn create_dir(dir: &Path) -> Result<(), NatsAuthError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| NatsAuthError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `text` to a fresh file with mode 0600, then renames it over `path`, so the secret is
/// never readable by others, not even for a moment or when `path` had a looser mode.
fn write_private(path: &Path, text: &str) -> Result<(), NatsAuthError> {
    let err = |source| NatsAuthError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()));
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    fn opts(dir: &Path) -> Options {
        Options {
            assignees: vec![
                Assignee::parse("trump").unwrap(),
                Assignee::parse("anna").unwrap(),
            ],
            out: dir.join("conf/nats-auth.conf"),
            env_dir: dir.join("env"),
            rotate: false,
            bcrypt_cost: 4,
            anonymous_probe: false,
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_private_and_hold_hashes_not_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&opts(dir.path())).unwrap();

        let users: Vec<&str> = g.users.iter().map(|c| c.user.as_str()).collect();
        assert_eq!(users, ["api", "relay", "worker-anna", "worker-trump"]);
        let auth = std::fs::read_to_string(&g.auth_file).unwrap();
        assert_eq!(mode(&g.auth_file), 0o600);
        for c in &g.users {
            assert_eq!(mode(&c.env_file), 0o600);
            assert!(!auth.contains(c.password.expose_secret()));
            let env = std::fs::read_to_string(&c.env_file).unwrap();
            assert!(env.contains(&format!(
                "TASKFLEET_NATS__PASSWORD={}\n",
                c.password.expose_secret()
            )));
            assert!(env.contains(&format!("TASKFLEET_NATS__USER={}\n", c.user)));
        }
        assert!(
            std::fs::read_to_string(dir.path().join("env/worker-anna.env"))
                .unwrap()
                .contains("TASKFLEET_ASSIGNEE=anna\n")
        );
        assert_eq!(auth.matches("password: \"$2b$04$").count(), 4);
        assert!(!auth.contains("no_auth_user"));
        assert!(auth.contains("allow_responses: true"));
    }

    #[test]
    fn a_second_run_keeps_passwords_and_rotate_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(&opts(dir.path())).unwrap();
        let again = generate(&opts(dir.path())).unwrap();
        let rotated = generate(&Options {
            rotate: true,
            ..opts(dir.path())
        })
        .unwrap();

        for ((a, b), c) in first.users.iter().zip(&again.users).zip(&rotated.users) {
            assert_eq!(a.password.expose_secret(), b.password.expose_secret());
            assert!(b.reused && !a.reused && !c.reused);
            assert_ne!(a.password.expose_secret(), c.password.expose_secret());
            assert!(
                bcrypt::verify(c.password.expose_secret(), &hash_in(&rotated, &c.user)).unwrap()
            );
        }
    }

    #[test]
    fn the_probe_user_is_only_added_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&Options {
            anonymous_probe: true,
            ..opts(dir.path())
        })
        .unwrap();
        let auth = std::fs::read_to_string(&g.auth_file).unwrap();
        assert!(auth.contains(&format!("no_auth_user: \"{PROBE_USER}\"")));
        assert!(g.users.iter().all(|c| c.user != PROBE_USER));
    }

    fn hash_in(g: &Generated, user: &str) -> String {
        let auth = std::fs::read_to_string(&g.auth_file).unwrap();
        let at = auth.find(&format!("user: \"{user}\"")).unwrap();
        let rest = &auth[at..];
        let start = rest.find("password: \"").unwrap() + "password: \"".len();
        rest[start..start + 60].to_string()
    }
}

//! deploy/fleet.env: `taskfleet secrets`, run as deploy/README.md says, writes every fleet secret
//! compose interpolates and the k8s pods take from the Secret `taskfleet-env`, privately and
//! freshly random each time, and never over an existing file unless asked.

use super::compose::taskfleet_services;
use super::k8s::pods;
use super::support::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

/// The documented command, writing to `out`.
fn secrets(out: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .arg("--config")
        .arg(deploy("taskfleet.toml"))
        .args(["secrets", "--out"])
        .arg(out)
        .args(extra)
        .env_clear()
        .output()
        .expect("run taskfleet secrets")
}

/// Variables set in the file, and variables it leaves to fill in (`#NAME=` lines).
fn set_and_to_fill(text: &str) -> (Env, BTreeSet<String>) {
    let to_fill = text
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.strip_suffix('='))
        .filter(|n| !n.contains(' '))
        .map(str::to_string)
        .collect();
    (parse_env_file(text), to_fill)
}

#[test]
fn secrets_writes_the_fleet_env_that_compose_and_k8s_read() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("fleet.env"), dir.path().join("again.env"));

    // Act
    let out = secrets(&first, &[]);
    let again = secrets(&second, &[]);

    // Assert: written, private, and every variable compose and k8s take is in it.
    assert!(out.status.success(), "{out:?}");
    assert!(again.status.success(), "{again:?}");
    let text = read(&first);
    let (set, to_fill) = set_and_to_fill(&text);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let mut wanted = BTreeSet::new();
    for svc in taskfleet_services() {
        for v in svc.raw_env().values() {
            wanted.extend(interpolate(v).1);
        }
    }
    wanted.extend(pods().iter().flat_map(|p| p.fleet_secrets()));
    for name in &wanted {
        assert!(
            set.contains_key(name) || to_fill.contains(name),
            "{name} is not in the generated file:\n{}",
            text.lines()
                .map(|l| l.split('=').next().unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for name in ["TASKFLEET_API_KEY", "TASKFLEET_FLEET__TASK_TOKEN_SECRET"] {
        assert!(set[name].len() >= 64, "{name} is set");
    }
    // Random every time, and never printed.
    let (other, _) = set_and_to_fill(&read(&second));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, value) in &set {
        assert_ne!(value, &other[name], "{name} differs between runs");
        assert!(!stdout.contains(value.as_str()), "{name} printed: {stdout}");
    }
    // Left to fill in: the tokens other services issue, which only the relay reads.
    for name in &to_fill {
        assert!(
            named_secrets()
                .iter()
                .any(|(n, by)| n == name && *by == "relay"),
            "{name}"
        );
    }
}

#[test]
fn secrets_refuses_to_replace_an_existing_fleet_env_without_force() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.env");
    assert!(secrets(&path, &[]).status.success());
    let before = read(&path);

    // Act
    let refused = secrets(&path, &[]);
    let unchanged = read(&path);
    let forced = secrets(&path, &["--force"]);

    // Assert
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(unchanged, before);
    assert!(forced.status.success(), "{forced:?}");
    let (old, new) = (parse_env_file(&before), parse_env_file(&read(&path)));
    assert_ne!(old["TASKFLEET_API_KEY"], new["TASKFLEET_API_KEY"]);
}

#[test]
fn compose_and_the_readme_use_the_generated_fleet_env() {
    let compose = read(&deploy("compose.yaml"));
    let readme = read(&deploy("README.md"));
    for text in [&compose, &readme] {
        assert!(text.contains("secrets --out deploy/fleet.env"));
        assert!(text.contains("--env-file deploy/fleet.env"));
    }
    // Every fleet secret compose interpolates says where it comes from when missing.
    for svc in taskfleet_services() {
        for v in svc.raw_env().values() {
            if !interpolate(v).1.is_empty() {
                assert!(v.contains(":?") && v.contains("deploy/fleet.env"), "{v}");
            }
        }
    }
}

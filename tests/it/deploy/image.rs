//! deploy/Dockerfile and /.dockerignore, read as text (no Docker engine here), and the NATS image.

use super::compose::nats_services;
use super::k8s::nats_statefulset;
use super::support::*;
use std::collections::BTreeSet;

fn manifest() -> toml::Value {
    read(&root().join("Cargo.toml")).parse().unwrap()
}

/// `nats:2.15-alpine` → (2, 15, None); `nats:2.12.4` → (2, 12, Some(4)).
fn nats_version(image: &str) -> (u32, u32, Option<u32>) {
    let tag = image
        .strip_prefix("nats:")
        .expect("the official nats image");
    let version = tag.split('-').next().unwrap();
    let parts: Vec<u32> = version
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("{image}: pin a version"))
        })
        .collect();
    assert!(
        (2..=3).contains(&parts.len()),
        "{image}: major.minor[.patch]"
    );
    (parts[0], parts[1], parts.get(2).copied())
}

#[test]
fn nats_image_is_at_least_2_11_and_never_2_12_3_or_2_12_4() {
    let mut images: Vec<String> = nats_services().iter().map(|n| n.image()).collect();
    let set = nats_statefulset();
    for c in set["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
    {
        images.push(s(&c["image"]));
    }
    let distinct: BTreeSet<&String> = images.iter().collect();
    assert_eq!(
        distinct.len(),
        1,
        "compose and k8s run the same NATS: {images:?}"
    );
    let min = taskfleet::natsd::MIN_VERSION;
    for image in &images {
        let (major, minor, patch) = nats_version(image);
        assert!(
            (major, minor) >= (min.0, min.1),
            "{image}: taskfleet needs >= {min:?}"
        );
        // A floating 2.12 tag, or a 2.12 patch up to 4, may be one of the two.
        let bad = (major, minor) == (2, 12) && matches!(patch, None | Some(0..=4));
        assert!(
            !bad,
            "{image}: 2.12.3 and 2.12.4 lose work-queue messages with R3"
        );
    }
    let readme = read(&deploy("README.md"));
    for v in ["2.12.1", "2.12.3", "2.12.4"] {
        assert!(readme.contains(v), "deploy/README.md names {v}");
    }
}

#[test]
fn dockerfile_builds_the_release_binary_and_runs_it_as_a_non_root_user() {
    let text = read(&deploy("Dockerfile")).replace("\\\n", " ");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: build and runtime");

    // Build: a toolchain no older than Cargo.toml's rust-version, on the runtime's Debian.
    let build_image = froms[0].split_whitespace().nth(1).unwrap();
    let runtime_image = froms[1].split_whitespace().nth(1).unwrap();
    let rust = build_image
        .strip_prefix("rust:")
        .expect("the official rust image");
    let (version, variant) = rust.split_once('-').expect("rust:<version>-<variant>");
    let codename = variant.rsplit('-').next().unwrap();
    assert_eq!(
        runtime_image,
        format!("debian:{codename}-slim"),
        "the same glibc"
    );
    let manifest = manifest();
    let wanted = manifest["package"]["rust-version"].as_str().unwrap();
    let v = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        v(version) >= v(wanted),
        "rust {version} < rust-version {wanted}"
    );

    // The release profile, as `make run` builds it, locked, of the binary Cargo.toml declares.
    let builds: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("RUN ") && l.contains("cargo build"))
        .copied()
        .collect();
    assert_eq!(builds.len(), 1);
    let cargo = builds[0]
        .split("&&")
        .find_map(|part| part.find("cargo build").map(|at| part[at..].trim()))
        .unwrap();
    assert_eq!(cargo, "cargo build --release --locked --bin taskfleet");
    let bins = manifest["bin"].as_array().unwrap();
    assert!(bins.iter().any(|b| b["name"].as_str() == Some("taskfleet")));
    let makefile = read(&root().join("Makefile"));
    assert!(
        makefile.contains("$(CARGO) build --release"),
        "the Makefile's release build"
    );

    // Runtime: certificates, a non-root user with a fixed uid, taskfleet as the entrypoint.
    let has = |f: &dyn Fn(&str) -> bool| lines.iter().any(|l| f(l));
    assert!(has(
        &|l| l.contains("install") && l.contains("ca-certificates")
    ));
    assert!(has(&|l| l.contains("useradd") && l.contains("--uid 10001")));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid == "10001" || uid == "taskfleet", "USER {user}");
    assert!(lines.contains(&r#"ENTRYPOINT ["taskfleet"]"#));
}

#[test]
fn dockerignore_keeps_every_build_input_and_drops_state_and_secrets() {
    let patterns: Vec<String> = read(&root().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').to_string())
        .collect();
    assert!(
        patterns
            .iter()
            .all(|p| !p.starts_with('!') && (p.starts_with("**/*") || !p.contains('*'))),
        "only plain paths and `**/*suffix`: the matcher below follows nothing else"
    );
    let ignored = |path: &str| {
        patterns.iter().any(|p| match p.strip_prefix("**/*") {
            Some(suffix) => path.ends_with(suffix),
            None => path == p || path.starts_with(&format!("{p}/")),
        })
    };
    let manifest = manifest();
    let mut inputs = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    inputs.push(manifest["lib"]["path"].as_str().unwrap().to_string());
    for section in ["bin", "test"] {
        for t in manifest[section].as_array().unwrap() {
            inputs.push(t["path"].as_str().unwrap().to_string());
        }
    }
    for e in manifest["example"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let file = format!("examples/{name}.rs");
        // An example is `examples/<name>.rs` or a directory `examples/<name>/main.rs`.
        if root().join(&file).exists() {
            inputs.push(file);
        } else {
            inputs.push(format!("examples/{name}/main.rs"));
        }
    }
    for input in &inputs {
        assert!(root().join(input).exists(), "{input}");
        assert!(
            !ignored(input),
            ".dockerignore drops {input}, which the build needs"
        );
    }
    for state in [
        "target/release/taskfleet",
        "data/api-key",
        ".tools/nats/bin/nats-server",
        "deploy/fleet.env",
        "deploy/env/api.env",
        "deploy/nats/auth.conf",
    ] {
        assert!(ignored(state), ".dockerignore keeps {state}");
    }
}

//! Link options for the `taskfleet` binary only (no dependency is rebuilt for them). An idle
//! worker's memory is mostly the pages of this binary it has touched, so both options make it
//! smaller (docs/benchmarks.md, "Idle worker memory"):
//!
//! - relative relocations stored packed (`-z pack-relative-relocs`, `DT_RELR`; glibc 2.36+, as
//!   in Debian 12 and the Docker image): the loader no longer reads a 1.2 MB `.rela.dyn` at every
//!   start, and the binary stays position-independent (its code still loads at a random address);
//! - the functions a worker and the API run placed together (`link/hot-functions.txt`, read by
//!   LLD's `--symbol-ordering-file`; `make symbol-order` writes it): the kernel maps code 64 KiB
//!   around each first touch, so scattered hot functions keep most of the code resident. A name
//!   the file lists that a build does not have (another toolchain, a dependency updated since)
//!   is skipped: a stale file costs memory, never the build.
//!
//! Only where rustc links with its own LLD by default (x86_64 Linux with glibc, rustc 1.90+)
//! and no other linker is configured: another linker may not know these options.

use std::path::Path;
use std::process::Command;

/// The file of hot function names, relative to the package root.
const ORDER_FILE: &str = "link/hot-functions.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if !links_with_lld() {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&root).join(ORDER_FILE);
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether the binary is linked by rustc's own LLD: target x86_64-unknown-linux-gnu, no linker
/// configured, rustc 1.90 or later (the first to link with LLD by default there).
fn links_with_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || std::env::var_os("RUSTC_LINKER").is_some() {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("--version").output();
    let text = version.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let minor = text.ok().and_then(|t| {
        let v = t.split_whitespace().nth(1)?.to_string();
        v.split('.').nth(1)?.parse::<u32>().ok()
    });
    minor.is_some_and(|m| m >= 90)
}

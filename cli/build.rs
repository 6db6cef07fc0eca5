//! Embeds the payload library into the `memray` binary, so that a lone binary
//! (`cargo install --path cli`) can run and attach with nothing installed beside it.
//!
//! The payload crate is built by a nested `cargo build` into `<target>/embedded-payload`
//! (its own target directory: the outer build holds the lock on the usual one), then
//! included with `include_bytes!` by src/payload_file.rs, which writes it to a
//! content-hashed file in a cache directory on first use when no payload sits next to
//! the binary.
//!
//! `MEMRAY_EMBED_PAYLOAD=0` skips this (the binary then needs the payload beside it or
//! MEMRAY_PAYLOAD); so does a source tree without ../payload (a packaged crate).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
#[path = "../injector/src/session/content_hash.rs"]
mod content_hash;
use content_hash::content_hash;

const LIB: &str = "libmemray_payload.so";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let payload_dir = workspace.join("payload");
    let generated = out_dir.join("embedded_payload.rs");

    println!("cargo:rerun-if-env-changed=MEMRAY_EMBED_PAYLOAD");
    println!("cargo:rerun-if-changed=build.rs");

    let disabled = env::var("MEMRAY_EMBED_PAYLOAD").map(|v| v == "0").unwrap_or(false);
    if disabled || !payload_dir.join("Cargo.toml").is_file() {
        if !disabled {
            println!("cargo:warning=memray: {} not found: the payload is not embedded", payload_dir.display());
        }
        write_if_changed(&generated, "pub const EMBEDDED: Option<(&[u8], &str)> = None;\n");
        return;
    }
    // Everything the payload is built from (it embeds python/memray/_tracking.py for attach).
    for dep in [
        "payload/src",
        "payload/csrc",
        "payload/build.rs",
        "payload/Cargo.toml",
        "capture/src",
        "capture/Cargo.toml",
        "cpython/src",
        "cpython/Cargo.toml",
        "python/memray/_tracking.py",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dep).display());
    }

    let release = env::var("PROFILE").map(|p| p != "debug").unwrap_or(true);
    let target_dir = embed_target_dir(&out_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(payload_dir.join("Cargo.toml"))
        .arg("-p")
        .arg("memray-payload")
        .arg("--lib")
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    // The outer build's settings for the memray binary must not leak into the nested one
    // (a CARGO_TARGET_DIR would point it at the locked directory).
    for var in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR", "CARGO_BUILD_TARGET", "CARGO_PRIMARY_PACKAGE", "RUSTC_WORKSPACE_WRAPPER"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("memray: cannot run cargo to build the payload: {e}"));
    if !status.success() {
        panic!("memray: building the payload to embed failed ({status}); set MEMRAY_EMBED_PAYLOAD=0 to skip embedding");
    }
    let built = target_dir.join(if release { "release" } else { "debug" }).join(LIB);
    let bytes = fs::read(&built).unwrap_or_else(|e| panic!("memray: cannot read {}: {e}", built.display()));
    let hash = format!("{:016x}", content_hash(&bytes));
    let copy = out_dir.join(LIB);
    if fs::read(&copy).ok().as_deref() != Some(&bytes[..]) {
        fs::write(&copy, &bytes).unwrap_or_else(|e| panic!("memray: cannot write {}: {e}", copy.display()));
    }
    write_if_changed(
        &generated,
        &format!("pub const EMBEDDED: Option<(&[u8], &str)> = Some((include_bytes!({:?}), {:?}));\n", copy.display().to_string(), hash),
    );
}

/// `<target>/embedded-payload` when OUT_DIR has cargo's usual shape
/// (`<target>/<profile>/build/<pkg>-<hash>/out`): one payload build shared by `cargo build`,
/// `clippy`, `test` and `install --target-dir`, whose OUT_DIRs differ. Not the outer target
/// directory itself, whose lock the outer build holds. Otherwise a folder inside OUT_DIR.
fn embed_target_dir(out_dir: &Path) -> PathBuf {
    let mut up = out_dir.ancestors();
    match (up.nth(2), up.nth(1)) {
        (Some(build), Some(target)) if build.file_name().is_some_and(|n| n == "build") => target.join("embedded-payload"),
        _ => out_dir.join("payload-target"),
    }
}

fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).unwrap_or_else(|e| panic!("memray: cannot write {}: {e}", path.display()));
    }
}

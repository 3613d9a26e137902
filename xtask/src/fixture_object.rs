//! Host-test helper: compiles a tiny `#![no_std]` source to a ppc64le relocatable object with the pinned rustc.

use std::path::PathBuf;
use std::process::Command;

/// Compiles `source` as crate `fixture` at opt-level 2 and returns the object's bytes.
pub fn compile(test: &str, version: &str, source: &str) -> Vec<u8> {
    compile_with(test, version, source, "fixture", &["-C", "opt-level=2"])
}

/// Compiles `source` as the lib crate `crate_name` for the kernel's target, with `options` added to
/// rustc's command line, and returns the object's bytes. `test` and `version` name the scratch files
/// (unique per test, so tests running in parallel do not share them).
pub fn compile_with(test: &str, version: &str, source: &str, crate_name: &str, options: &[&str]) -> Vec<u8> {
    let folder = std::env::temp_dir().join(format!("xtask-fixture-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    // Each version in a folder of its own, under one file name that both
    // builds see as `fixture/lib.rs`, as the generator's two builds share one tree.
    let version_folder = folder.join(version);
    std::fs::create_dir_all(&version_folder).unwrap();
    let source_path = version_folder.join("lib.rs");
    let object_path: PathBuf = folder.join(format!("{version}.o"));
    std::fs::write(&source_path, source).unwrap();
    let mut remap = std::ffi::OsString::from("--remap-path-prefix=");
    remap.push(&version_folder);
    remap.push("=fixture");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let output = Command::new(rustc)
        .args(["--edition", "2024", "--crate-type", "lib", "--crate-name", crate_name, "--emit", "obj"])
        .args(["-C", "panic=abort", "--target", "powerpc64le-unknown-linux-gnu"])
        // As `patch from-diff` compiles the kernel: the large code model, every static its own symbol.
        .args(["-C", "code-model=large", "-C", "llvm-args=-enable-global-merge=false"])
        .args(options)
        .arg(remap)
        .arg("-o")
        .arg(&object_path)
        .arg(&source_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "rustc failed: {}", String::from_utf8_lossy(&output.stderr));
    let bytes = std::fs::read(&object_path).unwrap();
    std::fs::remove_dir_all(&folder).ok();
    bytes
}

//! Links the kernel with the project's linker script and brings in the patch signing key.
//!
//! `cargo xtask build` sets two variables for this script:
//! - `KLP_PATCH_PUBLIC_KEY`: the absolute path of the 32-byte ed25519 public key
//!   that patch modules must be signed with (`.keys/patch-signing.pub`, made by
//!   xtask on first use); copied to `$OUT_DIR/patch_public_key.bin`.
//! - `KLP_TEST_MODULES_DIR` (test kernel only): the folder of the signed sample
//!   modules (`target/patches`); the files in TEST_MODULES are copied to
//!   `$OUT_DIR`. Without it those files are written empty.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The signed sample modules the in-kernel tests load.
const TEST_MODULES: [&str; 21] = [
    "greeting.klp",
    "counter.klp",
    "ten.klp",
    "missing-target.klp",
    "notrace-target.klp",
    "unmarked-target.klp",
    "inlined-target.klp",
    "callbacks.klp",
    "states.klp",
    "cumulative.klp",
    "shadow.klp",
    "hello-module.klp",
    "hello-module-fix.klp",
    "busy-module.klp",
    "target-module.klp",
    "bad-module.klp",
    "failing-module.klp",
    "klp-sym-reader.klp",
    "foreign-build.klp",
    "kernel-sym-reader.klp",
    "kernel-sym-missing.klp",
];

fn main() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../linker/kernel.ld");
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    println!("cargo:rerun-if-changed={}", script.display());

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    public_key(&out);
    test_modules(&out);
}

/// Copies the patch signing public key into `$OUT_DIR/patch_public_key.bin`.
fn public_key(out: &Path) {
    println!("cargo:rerun-if-env-changed=KLP_PATCH_PUBLIC_KEY");
    let Some(path) = env::var_os("KLP_PATCH_PUBLIC_KEY") else {
        fail(
            "KLP_PATCH_PUBLIC_KEY is not set: it names the ed25519 public key patch modules are \
             signed with. Build the kernel with `cargo xtask build`, which makes the key pair in \
             .keys/ on first use and sets the variable.",
        );
    };
    let path = PathBuf::from(path);
    println!("cargo:rerun-if-changed={}", path.display());
    let key = fs::read(&path).unwrap_or_else(|error| fail(&format!("reading {}: {error}", path.display())));
    if key.len() != 32 {
        fail(&format!(
            "{} holds {} bytes; an ed25519 public key is 32 bytes (delete .keys/patch-signing.pub \
             and xtask derives it again from the private key)",
            path.display(),
            key.len()
        ));
    }
    write(&out.join("patch_public_key.bin"), &key);
}

/// Copies the signed sample modules for the in-kernel tests, or writes them empty.
fn test_modules(out: &Path) {
    println!("cargo:rerun-if-env-changed=KLP_TEST_MODULES_DIR");
    let directory = env::var_os("KLP_TEST_MODULES_DIR").map(PathBuf::from);
    for module in TEST_MODULES {
        let bytes = match &directory {
            Some(directory) => {
                let path = directory.join(module);
                println!("cargo:rerun-if-changed={}", path.display());
                fs::read(&path).unwrap_or_else(|error| {
                    fail(&format!(
                        "reading {}: {error} (KLP_TEST_MODULES_DIR is set; `cargo xtask patch build --all` makes the modules)",
                        path.display()
                    ))
                })
            }
            None => Vec::new(),
        };
        write(&out.join(module), &bytes);
    }
}

/// Writes `bytes` unless the file already holds them (keeps its timestamp for cargo).
fn write(path: &Path, bytes: &[u8]) {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return;
    }
    fs::write(path, bytes).unwrap_or_else(|error| fail(&format!("writing {}: {error}", path.display())));
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

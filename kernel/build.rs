//! Links the kernel with the project's linker script.
fn main() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../linker/kernel.ld");
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    println!("cargo:rerun-if-changed={}", script.display());
}

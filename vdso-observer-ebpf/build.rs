use which::which;

/// Building this crate needs `bpf-linker` on PATH, which cargo cannot express as
/// a dependency: rebuild when the linker binary changes.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup` to install it"
        ),
    }
}

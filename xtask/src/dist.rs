//! `cargo xtask dist`: the release binary, its man pages and shell completions
//! in target/dist.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    exec::quiet,
    observer::{self, RELEASE_BINARY},
    setup,
};

pub fn run() -> Result<()> {
    setup::run(false)?;
    observer::build_release()?;
    let binary = Path::new(RELEASE_BINARY);
    let dist = Path::new("target/dist");
    fs::create_dir_all(dist)?;
    fs::copy(binary, dist.join("vdso-observer")).context("copying the binary into target/dist")?;
    quiet(
        "man pages into target/dist/man",
        "dist-man",
        Command::new(binary)
            .args(["generate", "man"])
            .arg(dist.join("man")),
    )?;
    for shell in ["bash", "zsh", "fish"] {
        quiet(
            &format!("{shell} completions into target/dist/completions"),
            &format!("dist-completions-{shell}"),
            Command::new(binary)
                .args(["generate", "completions", shell])
                .arg(dist.join("completions")),
        )?;
    }
    eprintln!(
        "target/dist: vdso-observer, man/*.1 (man -l target/dist/man/vdso-observer.1), completions/"
    );
    Ok(())
}

//! Running other programs: one line per step on the terminal, the full output
//! in a log under target/xtask-logs, and its tail only when a step fails.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Lines of a failed step's log shown on the terminal.
const TAIL_LINES: usize = 40;

/// Prints one line per step, so a person sees what is happening and where it stopped.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// target/xtask-logs, created on first use.
pub fn log_dir() -> PathBuf {
    let dir = Path::new("target/xtask-logs");
    let _ = fs::create_dir_all(dir);
    dir.to_path_buf()
}

/// Runs `command` as one quiet step: `==> what` on the terminal, its stdout and
/// stderr into target/xtask-logs/LOG.log; on failure, the log's tail and path.
pub fn quiet(what: &str, log: &str, command: &mut Command) -> Result<()> {
    step(what);
    let path = log_dir().join(format!("{log}.log"));
    let file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("starting {}", describe(command)))?;
    if !status.success() {
        print_tail(&path);
        bail!(
            "{} failed ({status}); full output in {}",
            describe(command),
            path.display()
        );
    }
    Ok(())
}

/// The last lines of a log, on stderr.
pub fn print_tail(path: &Path) {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "--- last {} lines of {} ---",
        lines.len() - from,
        path.display()
    );
    for line in &lines[from..] {
        let _ = writeln!(err, "{line}");
    }
    let _ = writeln!(err, "---");
}

/// stdout of a command that must succeed; its stderr in the error otherwise.
pub fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {}", describe(command)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(command),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// stdout of a command that succeeded; None when it is missing or failed.
pub fn probe(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cargo that runs xtask (CARGO), else the one on PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `program arg arg` for messages.
pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_step_keeps_its_output_in_the_log_and_names_it_on_failure() {
        let dir = std::env::temp_dir().join(format!("xtask-quiet-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let _ = std::env::set_current_dir(&dir);
        quiet(
            "a step that talks",
            "talker",
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
        )
        .unwrap();
        let log = fs::read_to_string(dir.join("target/xtask-logs/talker.log")).unwrap();
        assert!(log.contains("out") && log.contains("err"), "{log}");
        let err = quiet("a step that fails", "failer", &mut Command::new("false")).unwrap_err();
        assert!(
            err.to_string().contains("target/xtask-logs/failer.log"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

//! `vdso-observer top`: frames of per-process kernel-entering time calls.

use std::io::{ErrorKind, IsTerminal as _, Write as _};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    model::Report,
    session::{Session, SessionOptions},
    ui::format::{self, Selection},
};

/// How `top` runs: what the command line said, as the front end needs it.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// One frame, then exit.
    pub once: bool,
    /// Plain frames even on a terminal.
    pub batch: bool,
    /// Frames before exiting; 0: until interrupted.
    pub iterations: u64,
    pub interval: std::time::Duration,
    pub json: bool,
    pub selection: Selection,
}

pub async fn run(args: TopOptions, options: SessionOptions) -> Result<()> {
    let interactive = !args.once && !args.batch && !args.json;
    let selection = args.selection.clone();
    if interactive {
        if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
            return super::tui::run(args.interval, args.iterations, selection, options).await;
        }
        log::info!("stdout is not a terminal: batch mode (-b)");
    }
    let frames = if args.once { 1 } else { args.iterations };
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;

    let mut session = Session::start(options)?;
    eprintln!(
        "vdso-observer: observing every process, {} per frame (Ctrl-C ends the window early)",
        humantime::format_duration(args.interval)
    );

    let mut frame = 0u64;
    loop {
        let deadline = tokio::time::Instant::now() + args.interval;
        let interrupted = tokio::select! {
            _ = session.sleep_until(deadline) => false,
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
        };
        let (mut report, _) = session.next_window()?;
        let hidden = keep_selected(&mut report, &selection, args.json);
        if !print(&report, args.json, hidden)? {
            return Ok(()); // stdout closed (e.g. piped into head)
        }
        frame += 1;
        if interrupted || (frames != 0 && frame >= frames) {
            return Ok(());
        }
    }
}

/// Keeps the selected processes; JSON keeps getrandom-only ones (it keeps every
/// count). Returns how many were hidden for making only getrandom calls.
fn keep_selected(report: &mut Report, selection: &Selection, json: bool) -> usize {
    let selection = Selection {
        show_getrandom_only: selection.show_getrandom_only || json,
        ..selection.clone()
    };
    let before = report.processes.len();
    let mut hidden = 0;
    report.processes.retain(|process| {
        let keep = selection.keeps(process);
        if !keep && process.only_getrandom && selection.keeps_if_shown(process) {
            hidden += 1;
        }
        keep
    });
    debug_assert!(report.processes.len() + hidden <= before);
    hidden
}

/// False when stdout is gone.
fn print(report: &Report, json: bool, hidden: usize) -> Result<bool> {
    let text = if json {
        let mut line = serde_json::to_string(report).context("encoding the report as JSON")?;
        line.push('\n');
        line
    } else {
        format::render(report, hidden)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err).context("writing to stdout"),
    }
}

//! `vdso-observer top`: frames of per-process kernel-entering time calls.

use std::io::{ErrorKind, IsTerminal as _, Write as _};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    TopArgs,
    report::Report,
    session::{Session, SessionOptions},
    table,
};

pub async fn run(args: TopArgs, options: SessionOptions) -> Result<()> {
    let interactive = !args.once && !args.batch && !args.json;
    if interactive {
        if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
            return crate::tui::run(args.interval, options).await;
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
        keep_selected(&mut report, &args);
        if !print(&report, args.json)? {
            return Ok(()); // stdout closed (e.g. piped into head)
        }
        frame += 1;
        if interrupted || (frames != 0 && frame >= frames) {
            return Ok(());
        }
    }
}

fn keep_selected(report: &mut Report, args: &TopArgs) {
    report.processes.retain(|process| {
        (args.pids.is_empty() || args.pids.contains(&process.pid))
            && args
                .comm
                .as_deref()
                .is_none_or(|needle| process.comm.contains(needle))
            && (!args.flagged_only || !process.flags.is_empty())
    });
}

/// False when stdout is gone.
fn print(report: &Report, json: bool) -> Result<bool> {
    let text = if json {
        let mut line = serde_json::to_string(report).context("encoding the report as JSON")?;
        line.push('\n');
        line
    } else {
        table::render(report)
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

//! The interactive, full-screen `top` (ratatui + crossterm).
//!
//! Collection runs on the same timer as batch mode; keys come from a thread
//! reading terminal events. The terminal is restored on quit, Ctrl-C, SIGTERM
//! and panic (ratatui's panic hook).

mod app;
mod view;

use std::time::Duration;

use anyhow::{Context as _, Result};
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

pub use app::App;

use crate::{
    session::{Session, SessionOptions},
    ui::format::Selection,
};

/// Runs the TUI until q, Ctrl-C, SIGTERM, or `frames` windows (0: no end).
pub async fn run(
    interval: Duration,
    frames: u64,
    selection: Selection,
    options: SessionOptions,
) -> Result<()> {
    // Load before taking over the screen, so errors print as usual.
    let mut session = Session::start(options)?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;

    let mut app = App::new(session.system(), interval);
    app.select(selection);
    let mut shown = 0u64;
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = event::read() {
            if keys_tx.send(event).is_err() {
                break;
            }
        }
    });

    let mut terminal = ratatui::init();
    let result = async {
        // The first frame comes sooner, so the screen fills at once.
        let mut next = tokio::time::Instant::now() + interval.min(Duration::from_secs(1));
        terminal.draw(|frame| view::draw(frame, &app))?;
        loop {
            tokio::select! {
                _ = session.sleep_until(next) => {
                    next += interval;
                    let (report, _) = session.next_window()?;
                    app.on_report(report);
                    shown += 1;
                    if frames != 0 && shown >= frames {
                        // Like top -n: the last frame stays on screen as the program ends.
                        terminal.draw(|frame| view::draw(frame, &app))?;
                        app.quit = true;
                    }
                }
                event = keys.recv() => match event {
                    Some(Event::Key(key)) if key.kind != KeyEventKind::Release => app.on_key(key),
                    Some(_) => {} // resize and others: just redraw
                    None => app.quit = true,
                },
                _ = terminate.recv() => app.quit = true,
                _ = hangup.recv() => app.quit = true,
            }
            if app.quit {
                return Ok::<(), anyhow::Error>(());
            }
            terminal.draw(|frame| view::draw(frame, &app))?;
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests;

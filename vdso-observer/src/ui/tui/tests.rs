//! Rendering checks on ratatui's TestBackend, and key handling.

use std::time::Duration;

use ratatui::{
    Terminal,
    backend::TestBackend,
    buffer::Buffer,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    style::Color,
};
use vdso_observer_common::{NO_CLOCK, Origin, TimeCall};

use super::{
    app::{App, Column},
    view,
};
use crate::{
    model::{Aggregator, Report, SystemReport, VdsoCapability, aggregate::testing},
    ui::format::Selection,
};

/// The machine as a session reports it before measuring: hpet (not
/// vDSO-capable) or tsc.
fn host(capability: VdsoCapability) -> SystemReport {
    testing::system(capability == VdsoCapability::Yes, false)
}

/// pid, comm, call, clock, origin, count over a 1 s window.
type Row<'a> = (u32, &'a str, TimeCall, i32, Origin, u64);

fn report(rows: &[Row]) -> Report {
    let rows: Vec<testing::Row> = rows
        .iter()
        .map(|&(pid, comm, call, clock, origin, count)| {
            (pid, comm.as_bytes(), call, clock, origin, count)
        })
        .collect();
    testing::window(
        &mut Aggregator::new(None),
        &rows,
        Duration::from_secs(1),
        true,
    )
}

fn sample_report() -> Report {
    let mut report = report(&[
        (
            100,
            "direct-app",
            TimeCall::ClockGettime,
            1,
            Origin::Direct,
            5000,
        ),
        (
            200,
            "postgres",
            TimeCall::ClockGettime,
            2,
            Origin::VdsoFallback,
            300,
        ),
        (
            300,
            "legacy",
            TimeCall::Gettimeofday,
            NO_CLOCK,
            Origin::LegacyVsyscall,
            40,
        ),
    ]);
    // An estimate, as sampling fills it in.
    report.processes[1].vdso_calls_per_sec = Some(1_200_000.0);
    report.processes[1].vdso_estimated = true;
    report.processes[1].kernel_share = Some(300.0 / 1_200_300.0);
    report
}

fn render(app: &App, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| view::draw(frame, app)).unwrap();
    terminal.backend().buffer().clone()
}

fn lines(buffer: &Buffer) -> Vec<String> {
    let area = buffer.area;
    (0..area.height)
        .map(|y| {
            (0..area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect()
}

fn line_with<'a>(lines: &'a [String], text: &str) -> (usize, &'a String) {
    lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text:?}:\n{}", lines.join("\n")))
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn header_names_host_clocksource_and_totals() {
    let mut app = App::new(host(VdsoCapability::No), Duration::from_secs(2));
    app.on_report(sample_report());
    let screen = lines(&render(&app, 160, 20));
    assert!(
        screen[0].starts_with("vdso-observer  db1  kernel 6.18.0  every 2s"),
        "{screen:?}"
    );
    assert!(
        screen[1].contains("clocksource hpet (NOT vDSO-capable: clock reads enter the kernel)  available: tsc hpet  vsyscall: xonly"),
        "{screen:?}"
    );
    assert!(screen[2].contains("kernel entries/s 5.3k"), "{screen:?}");
    assert!(screen[2].contains("processes 3 (2 flagged)"), "{screen:?}");
}

#[test]
fn a_clock_event_stays_in_the_header() {
    let mut app = App::new(host(VdsoCapability::No), Duration::from_secs(2));
    let mut with_event = sample_report();
    let mut system = testing::system(false, false);
    system.events.push(crate::model::ClockEvent {
        at_unix: 0.0,
        kind: crate::model::ClockEventKind::Switched,
        message: "clocksource: Switched to clocksource hpet".into(),
    });
    with_event.system = Some(system);
    app.on_report(with_event);
    app.on_report(sample_report());
    let screen = lines(&render(&app, 200, 12));
    assert!(
        screen[1].contains("clock event: clocksource: Switched to clocksource hpet"),
        "{screen:?}"
    );
}

#[test]
fn rows_are_sorted_by_kernel_entries_with_estimates_marked() {
    let mut app = App::new(host(VdsoCapability::Yes), Duration::from_secs(2));
    app.on_report(sample_report());
    let screen = lines(&render(&app, 160, 20));
    let (header_at, header) = line_with(&screen, "PID");
    assert!(header.contains("KERN/s▼"), "{header}");
    let (first, row) = line_with(&screen, "direct-app");
    assert_eq!(first, header_at + 1);
    assert!(
        row.contains("5.0k") && row.contains("CLOCK_MONOTONIC") && row.contains("direct"),
        "{row}"
    );
    let (second, row) = line_with(&screen, "postgres");
    assert_eq!(second, header_at + 2);
    assert!(row.contains("~1.2M"), "estimate marked with ~: {row}");
    assert!(row.contains("0.02%"), "{row}");
    assert!(row.contains("(cpu-clock)"), "{row}");
    let (_, row) = line_with(&screen, "legacy");
    assert!(row.contains("vsyscall"), "{row}");
    assert!(row.contains(" - "), "no vDSO figure shows as -: {row}");
}

#[test]
fn flagged_rows_stand_out_and_expected_ones_do_not() {
    let mut app = App::new(host(VdsoCapability::Yes), Duration::from_secs(2));
    app.on_report(sample_report());
    let buffer = render(&app, 160, 20);
    let screen = lines(&buffer);
    let (flagged, _) = line_with(&screen, "direct-app");
    let (expected, _) = line_with(&screen, "postgres");
    assert_eq!(buffer[(1, flagged as u16)].fg, Color::Red);
    assert_ne!(buffer[(1, expected as u16)].fg, Color::Red);
}

#[test]
fn empty_list_and_first_window_say_so() {
    let mut app = App::new(host(VdsoCapability::Yes), Duration::from_secs(3));
    let screen = lines(&render(&app, 100, 10));
    assert!(
        screen[2].contains("collecting the first window (3s)"),
        "{screen:?}"
    );
    let mut empty = report(&[]);
    empty.system = Some(testing::system(true, true));
    app.on_report(empty);
    let screen = lines(&render(&app, 120, 10));
    line_with(
        &screen,
        "no process entered the kernel for time in this window; the vDSO answers on tsc",
    );
    // The header shows the session's measured answer, not the table's.
    line_with(&screen, "clocksource tsc (vDSO-capable, measured)");
}

#[test]
fn narrow_terminals_drop_the_least_important_columns() {
    let mut app = App::new(host(VdsoCapability::Yes), Duration::from_secs(2));
    app.on_report(sample_report());
    let screen = lines(&render(&app, 60, 12));
    let (_, header) = line_with(&screen, "PID");
    assert!(
        header.contains("COMM") && header.contains("KERN/s") && header.contains("FLAG"),
        "{header}"
    );
    assert!(
        !header.contains("NOVDSO") && !header.contains("CLOCK"),
        "{header}"
    );
    assert!(screen.iter().all(|l| l.chars().count() <= 60));
    assert_eq!(view::visible_columns(400).len(), Column::ALL.len());
}

#[test]
fn keys_sort_filter_pause_and_quit() {
    let mut app = App::new(host(VdsoCapability::Yes), Duration::from_secs(2));
    app.on_report(sample_report());
    let pids = |app: &App| app.rows().iter().map(|p| p.pid).collect::<Vec<_>>();
    assert_eq!(pids(&app), [100, 200, 300]);
    app.on_key(key(KeyCode::Char('R')));
    assert_eq!(pids(&app), [300, 200, 100]);
    app.on_key(key(KeyCode::Char('P')));
    assert_eq!(app.sort, Column::Pid);
    assert_eq!(pids(&app), [100, 200, 300]);
    app.on_key(key(KeyCode::Char('>')));
    assert_eq!(app.sort, Column::User);
    app.on_key(key(KeyCode::Char('<')));
    app.on_key(key(KeyCode::Char('<')));
    assert_eq!(app.sort, Column::Pid, "< stops at the first column");

    for c in "/post".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    assert_eq!(pids(&app), [200], "filters while typing");
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.filter, "post");
    app.on_key(key(KeyCode::Esc));
    assert_eq!(pids(&app).len(), 3);
    for c in "/300".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    app.on_key(key(KeyCode::Enter));
    assert_eq!(pids(&app), [300], "a number filters by pid");
    app.on_key(key(KeyCode::Esc));

    app.on_key(key(KeyCode::Char('f')));
    assert_eq!(pids(&app), [100, 300], "flagged only");
    app.on_key(key(KeyCode::Char('f')));

    app.on_key(key(KeyCode::Char(' ')));
    app.on_report(report(&[]));
    assert_eq!(pids(&app).len(), 3, "paused: the screen keeps its frame");
    app.on_key(key(KeyCode::Char(' ')));
    assert!(pids(&app).is_empty(), "resumed: the newest frame shows");

    app.on_key(key(KeyCode::Char('h')));
    assert!(app.help);
    let screen = lines(&render(&app, 100, 30));
    line_with(&screen, "vdso-observer top: keys");
    app.on_key(key(KeyCode::Char('x')));
    assert!(!app.help && !app.quit);
    app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(app.quit);
    let mut app = App::new(host(VdsoCapability::Yes), Duration::from_secs(1));
    app.on_key(key(KeyCode::Char('q')));
    assert!(app.quit);
}

#[test]
fn the_command_line_selection_holds_in_the_tui() {
    let mut app = App::new(host(VdsoCapability::Yes), Duration::from_secs(1));
    app.select(Selection {
        pids: vec![100, 300],
        comm: Some("legacy".into()),
        flagged_only: true,
        ..Selection::default()
    });
    app.on_report(sample_report());
    let pids: Vec<u32> = app.rows().iter().map(|p| p.pid).collect();
    assert_eq!(pids, [300], "-p, --comm and --flagged-only together");
    assert_eq!(app.filter, "legacy", "--comm seeds the / filter");
    // Esc clears the filter, f shows unflagged rows: -p still holds.
    app.on_key(key(KeyCode::Esc));
    app.on_key(key(KeyCode::Char('f')));
    let pids: Vec<u32> = app.rows().iter().map(|p| p.pid).collect();
    assert_eq!(pids, [100, 300]);
}

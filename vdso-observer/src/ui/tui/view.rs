//! Drawing the interactive `top`: header, table, footer, help.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span, Text},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap},
};

use super::app::{App, Column, main_clock};
use crate::{
    model::ProcessReport,
    ui::format::{
        capability_words, container_column, empty_window_line, excess_column, flag_column, percent,
        pod_column, rate, vdso_column,
    },
};

/// Style of a row whose process has a fault flag.
pub const FLAGGED: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);

pub fn draw(frame: &mut Frame, app: &App) {
    let [header, table, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(app)), header);
    draw_table(frame, app, table);
    frame.render_widget(Paragraph::new(footer_line(app)), footer);
    if app.help {
        draw_help(frame, frame.area());
    }
}

fn header_lines(app: &App) -> Vec<Line<'static>> {
    let system = &app.system;
    let mut first = vec![
        Span::from("vdso-observer").bold(),
        Span::from(format!(
            "  {}  kernel {}  every {}",
            system.hostname,
            system.kernel,
            humantime::format_duration(app.interval)
        )),
    ];
    if app.paused {
        first.push(Span::from("  PAUSED").reversed());
    }
    if app.flagged_only {
        first.push(Span::from("  [flagged only]").yellow());
    }
    if !app.filter.is_empty() {
        first.push(Span::from(format!("  filter: {}", app.filter)).yellow());
    }

    // The session's measured state: at start, then as each window says it.
    let mut second = Vec::new();
    let (capable, capable_now) = capability_words(system);
    let style = match capable_now {
        Some(true) => Style::new().green(),
        Some(false) => FLAGGED,
        None => Style::new().yellow(),
    };
    let current = system.clocksource.as_ref().map(|c| c.current.clone());
    let available = system
        .clocksource
        .as_ref()
        .map(|c| c.available.join(" "))
        .unwrap_or_default();
    let vsyscall = Some(system.vsyscall);
    match current {
        Some(current) => {
            second.push(Span::from("clocksource "));
            second.push(Span::from(current).bold());
            second.push(Span::from(" ("));
            second.push(Span::styled(capable, style));
            second.push(Span::from(format!(")  available: {available}")));
        }
        None => second.push(Span::from("clocksource unknown")),
    }
    if let Some(mode) = vsyscall {
        second.push(Span::from(format!("  vsyscall: {}", mode.name())));
    }
    if let Some(event) = &app.last_event {
        second.push(Span::styled(
            format!("  clock event: {}", event.message),
            Style::new().yellow().bold(),
        ));
    }

    let third = match &app.report {
        None => Line::from(format!(
            "collecting the first window ({})...",
            humantime::format_duration(app.interval)
        )),
        Some(report) => {
            let totals = report.totals();
            let shown: Vec<_> = report
                .processes
                .iter()
                .filter(|p| app.fixed.keeps(p))
                .collect();
            let flagged = shown.iter().filter(|p| !p.flags.is_empty()).count();
            let lost = report.observer.lost.time_calls_map_full + report.observer.lost.read_failed;
            let mut spans = vec![Span::from(format!(
                "kernel entries/s {}  vDSO calls/s {}  in kernel {}  processes {} ({} flagged)",
                rate(totals.kernel_per_sec),
                totals
                    .vdso_per_sec
                    .map_or("-".to_owned(), |v| format!("~{}", rate(v))),
                totals.kernel_share().map_or("-".to_owned(), percent),
                shown.len(),
                flagged
            ))];
            if lost > 0 {
                spans.push(Span::styled(
                    format!("  LOST {lost} calls (map full)"),
                    FLAGGED,
                ));
            }
            Line::from(spans)
        }
    };
    vec![Line::from(first), Line::from(second), third]
}

/// Columns that fit `width`, dropping the least important first.
pub fn visible_columns(width: u16) -> Vec<Column> {
    // Least important last.
    const PRIORITY: [Column; 15] = [
        Column::Pid,
        Column::Comm,
        Column::Kernel,
        Column::Flag,
        Column::Vdso,
        Column::KernelShare,
        Column::Excess,
        Column::Fallback,
        Column::Direct,
        Column::User,
        Column::Container,
        Column::Clock,
        Column::Pod,
        Column::Vsyscall,
        Column::NoVdso,
    ];
    let mut shown = Vec::new();
    let mut used = 0u16;
    for column in PRIORITY {
        let need = width_of(column) + 1;
        if used + need <= width.max(1) {
            used += need;
            shown.push(column);
        }
    }
    Column::ALL
        .into_iter()
        .filter(|c| shown.contains(c))
        .collect()
}

fn width_of(column: Column) -> u16 {
    match column {
        Column::Pid => 7,
        Column::User => 8,
        Column::Comm => 16,
        Column::Container => 16,
        Column::Pod => 24,
        Column::Clock => 24,
        Column::Flag => 22,
        _ => 9,
    }
}

fn is_numeric(column: Column) -> bool {
    !matches!(
        column,
        Column::User
            | Column::Comm
            | Column::Container
            | Column::Pod
            | Column::Clock
            | Column::Flag
    )
}

/// One cell of a row; `seconds` is the report's window.
fn cell(process: &ProcessReport, column: Column, seconds: f64) -> String {
    let per_sec = |count: u64| rate(count as f64 / seconds.max(1e-9));
    match column {
        Column::Pid => crate::ui::format::pid_column(process),
        Column::User => process.user.clone().unwrap_or_else(|| "?".into()),
        Column::Comm => {
            if process.exited {
                format!("{}*", process.comm)
            } else {
                process.comm.clone()
            }
        }
        Column::Container => container_column(process).to_owned(),
        Column::Pod => pod_column(process),
        Column::Vdso => vdso_column(process),
        Column::Kernel => rate(process.kernel_entries_per_sec),
        Column::Fallback => per_sec(process.by_origin.vdso_fallback),
        Column::Direct => per_sec(process.by_origin.direct),
        Column::Vsyscall => per_sec(process.by_origin.legacy_vsyscall),
        Column::NoVdso => per_sec(process.by_origin.no_vdso),
        Column::KernelShare => process.kernel_share.map_or("-".into(), percent),
        Column::Excess => excess_column(process, seconds),
        Column::Clock => main_clock(process).to_owned(),
        Column::Flag => flag_column(process),
    }
}

fn draw_table(frame: &mut Frame, app: &App, area: Rect) {
    let columns = visible_columns(area.width);
    let header = Row::new(columns.iter().map(|&column| {
        let mark = if column == app.sort {
            if app.descending { "▼" } else { "▲" }
        } else {
            ""
        };
        let text = format!("{}{mark}", column.title());
        let style = if column == app.sort {
            Style::new().reversed().bold()
        } else {
            Style::new().reversed()
        };
        let text = Text::from(text);
        let text = if is_numeric(column) {
            text.right_aligned()
        } else {
            text
        };
        Cell::from(text).style(style)
    }));
    let rows: Vec<&ProcessReport> = app.rows();
    let window_seconds = app.report.as_ref().map_or(1.0, |r| r.window_seconds);
    if app.report.is_some() && rows.is_empty() {
        let text = if app.flagged_only || !app.filter.is_empty() {
            "no process matches the filter (Esc clears it, f shows all)".to_owned()
        } else {
            empty_window_line(app.report.as_ref().and_then(|r| r.system.as_ref()))
        };
        frame.render_widget(
            Paragraph::new(vec![Line::from(""), Line::from(text).italic()]).block(
                Block::new()
                    .borders(Borders::TOP)
                    .title(Line::from(" processes ")),
            ),
            area,
        );
        return;
    }
    let body: Vec<Row> = rows
        .iter()
        .skip(app.scroll)
        .map(|process| {
            let row = Row::new(columns.iter().map(|&c| {
                let text = Text::from(cell(process, c, window_seconds));
                Cell::from(if is_numeric(c) {
                    text.right_aligned()
                } else {
                    text
                })
            }));
            if process.flags.is_empty() {
                row
            } else {
                row.style(FLAGGED)
            }
        })
        .collect();
    let widths: Vec<Constraint> = columns
        .iter()
        .map(|&c| match c {
            Column::Flag => Constraint::Min(width_of(c)),
            _ => Constraint::Length(width_of(c)),
        })
        .collect();
    frame.render_widget(
        Table::new(body, widths).header(header).column_spacing(1),
        area,
    );
}

fn footer_line(app: &App) -> Line<'static> {
    if let Some(text) = &app.editing {
        return Line::from(vec![
            Span::from("filter (comm or pid): ").bold(),
            Span::from(text.clone()),
            Span::from("█"),
            Span::from("   Enter apply  Esc cancel").dim(),
        ]);
    }
    Line::from(
        "h help  q quit  / filter  f flagged only  space pause  < > sort column  R reverse"
            .to_owned(),
    )
    .dim()
}

const HELP: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit"),
    ("h, ?", "this help (any key closes it)"),
    ("space", "pause / resume the display (counting goes on)"),
    (
        "/",
        "filter by comm substring or pid; Enter applies, Esc cancels",
    ),
    ("Esc", "clear the filter"),
    ("f", "flagged processes only"),
    ("< >", "sort by the column to the left / right"),
    ("R", "reverse the sort order"),
    ("P C K V F", "sort by PID, COMM, KERN/s, VDSO/s, KERN%"),
    ("↑ ↓ PgUp PgDn", "scroll"),
    ("", ""),
    ("KERN/s", "time calls that entered the kernel, per second"),
    (
        "FALLBK/s",
        "…from inside the vDSO (clocksource or CPU-time clock)",
    ),
    (
        "DIRECT/s",
        "…issued outside the vDSO (syscall(2), static runtimes)",
    ),
    ("VSYSC/s", "…through the legacy vsyscall page"),
    ("NOVDSO/s", "…from processes without a vDSO"),
    (
        "VDSO/s",
        "calls the vDSO answered (~ = estimated by sampling)",
    ),
    ("KERN%", "share of time calls that entered the kernel"),
    (
        "FLAG",
        "fallback direct vsyscall no-vdso; (cpu-clock) is expected",
    ),
    ("*", "the process exited during the window"),
];

fn draw_help(frame: &mut Frame, area: Rect) {
    let width = area.width.min(78);
    let height = area.height.min(HELP.len() as u16 + 2);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::from(format!("{key:>14}  ")).bold(),
                Span::from(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" vdso-observer top: keys ")),
        popup,
    );
}

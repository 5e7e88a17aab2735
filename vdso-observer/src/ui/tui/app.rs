//! State of the interactive `top` and what each key does to it.

use std::{cmp::Ordering, time::Duration};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::{
    model::{ClockEvent, ProcessReport, Report, SystemReport},
    ui::format::{Selection, container_column, pod_column},
};

/// Columns, in screen order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Pid,
    User,
    Comm,
    Container,
    Pod,
    Vdso,
    Kernel,
    Fallback,
    Direct,
    Vsyscall,
    NoVdso,
    KernelShare,
    Excess,
    Clock,
    Flag,
}

impl Column {
    pub const ALL: [Column; 15] = [
        Column::Pid,
        Column::User,
        Column::Comm,
        Column::Container,
        Column::Pod,
        Column::Vdso,
        Column::Kernel,
        Column::Fallback,
        Column::Direct,
        Column::Vsyscall,
        Column::NoVdso,
        Column::KernelShare,
        Column::Excess,
        Column::Clock,
        Column::Flag,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Pid => "PID",
            Column::User => "USER",
            Column::Comm => "COMM",
            Column::Container => "CONTAINER",
            Column::Pod => "POD",
            Column::Vdso => "VDSO/s",
            Column::Kernel => "KERN/s",
            Column::Fallback => "FALLBK/s",
            Column::Direct => "DIRECT/s",
            Column::Vsyscall => "VSYSC/s",
            Column::NoVdso => "NOVDSO/s",
            Column::KernelShare => "KERN%",
            Column::Excess => "EXCESS",
            Column::Clock => "CLOCK",
            Column::Flag => "FLAG",
        }
    }

    /// Numbers sort largest first, names A to Z.
    fn descending_by_default(self) -> bool {
        !matches!(
            self,
            Column::Pid
                | Column::User
                | Column::Comm
                | Column::Container
                | Column::Pod
                | Column::Clock
                | Column::Flag
        )
    }

    /// Rows of one report share its window: counts order as their rates do.
    fn compare(self, a: &ProcessReport, b: &ProcessReport) -> Ordering {
        match self {
            Column::Pid => a.pid.cmp(&b.pid),
            Column::User => a.user.cmp(&b.user),
            Column::Comm => a.comm.cmp(&b.comm),
            Column::Container => container_column(a).cmp(container_column(b)),
            Column::Pod => pod_column(a).cmp(&pod_column(b)),
            Column::Vdso => a
                .vdso_calls_per_sec
                .unwrap_or(-1.0)
                .total_cmp(&b.vdso_calls_per_sec.unwrap_or(-1.0)),
            Column::Kernel => a
                .kernel_entries_per_sec
                .total_cmp(&b.kernel_entries_per_sec),
            Column::Fallback => a.by_origin.vdso_fallback.cmp(&b.by_origin.vdso_fallback),
            Column::Direct => a.by_origin.direct.cmp(&b.by_origin.direct),
            Column::Vsyscall => a
                .by_origin
                .legacy_vsyscall
                .cmp(&b.by_origin.legacy_vsyscall),
            Column::NoVdso => a.by_origin.no_vdso.cmp(&b.by_origin.no_vdso),
            Column::KernelShare => a
                .kernel_share
                .unwrap_or(-1.0)
                .total_cmp(&b.kernel_share.unwrap_or(-1.0)),
            Column::Excess => a
                .excess_cpu_seconds
                .unwrap_or(-1.0)
                .total_cmp(&b.excess_cpu_seconds.unwrap_or(-1.0)),
            Column::Clock => main_clock(a).cmp(main_clock(b)),
            Column::Flag => a.flags.cmp(&b.flags),
        }
    }
}

/// The clock with the most kernel entries, "-" when calls take none.
pub fn main_clock(process: &ProcessReport) -> &str {
    process
        .calls
        .iter()
        .filter(|c| c.clock.is_some())
        .max_by_key(|c| c.count)
        .and_then(|c| c.clock.as_deref())
        .unwrap_or("-")
}

#[derive(Debug)]
pub struct App {
    /// The machine as the newest window (or the session's start) said it.
    pub system: SystemReport,
    pub interval: Duration,
    /// The frame on screen; None until the first window ends.
    pub report: Option<Report>,
    /// The newest frame while paused.
    pub pending: Option<Report>,
    pub sort: Column,
    pub descending: bool,
    /// Applied filter: a substring of comm, a pid, or a container id prefix.
    pub filter: String,
    /// Filter being typed after `/`.
    pub editing: Option<String>,
    pub paused: bool,
    pub flagged_only: bool,
    pub help: bool,
    /// First visible row.
    pub scroll: usize,
    pub quit: bool,
    /// The newest clock event (clocksource switch, TSC unstable) since start.
    pub last_event: Option<ClockEvent>,
    /// What the command line fixed: pids, and whether getrandom-only rows show.
    pub fixed: Selection,
}

impl App {
    pub fn new(system: SystemReport, interval: Duration) -> App {
        App {
            system,
            interval,
            report: None,
            pending: None,
            sort: Column::Kernel,
            descending: true,
            filter: String::new(),
            editing: None,
            paused: false,
            flagged_only: false,
            help: false,
            scroll: 0,
            quit: false,
            last_event: None,
            fixed: Selection::default(),
        }
    }

    /// Starts from the command line's selection: -p and --show-getrandom-only
    /// hold for the whole run, --comm and --flagged-only seed the filter and the
    /// `f` toggle.
    pub fn select(&mut self, selection: Selection) {
        self.filter = selection.comm.clone().unwrap_or_default();
        self.flagged_only = selection.flagged_only;
        self.fixed = Selection {
            comm: None,
            flagged_only: false,
            ..selection
        };
    }

    /// A new window arrived.
    pub fn on_report(&mut self, report: Report) {
        if let Some(system) = &report.system {
            if let Some(event) = system.events.last() {
                self.last_event = Some(event.clone());
            }
            self.system = system.clone();
        }
        if self.paused {
            self.pending = Some(report);
        } else {
            self.report = Some(report);
        }
    }

    /// Rows to show: filtered and sorted.
    pub fn rows(&self) -> Vec<&ProcessReport> {
        let Some(report) = &self.report else {
            return Vec::new();
        };
        let filter = self.editing.as_deref().unwrap_or(&self.filter);
        let pid_filter: Option<u32> = filter.parse().ok();
        let mut rows: Vec<&ProcessReport> = report
            .processes
            .iter()
            .filter(|p| self.fixed.keeps(p))
            .filter(|p| !self.flagged_only || !p.flags.is_empty())
            .filter(|p| {
                filter.is_empty()
                    || p.comm.contains(filter)
                    || pid_filter == Some(p.pid)
                    || p.container.as_ref().is_some_and(|c| c.is_named_by(filter))
            })
            .collect();
        rows.sort_by(|a, b| {
            let order = self.sort.compare(a, b);
            let order = if self.descending {
                order.reverse()
            } else {
                order
            };
            order.then(a.pid.cmp(&b.pid))
        });
        rows
    }

    pub fn on_key(&mut self, key: KeyEvent) {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = self.editing.take().unwrap_or_default();
                    self.scroll = 0;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return;
        }
        if self.help {
            // Any key closes help; q still quits.
            self.help = false;
            if key.code != KeyCode::Char('q') {
                return;
            }
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('h') | KeyCode::Char('?') | KeyCode::F(1) => self.help = true,
            KeyCode::Char(' ') => {
                self.paused = !self.paused;
                if !self.paused
                    && let Some(report) = self.pending.take()
                {
                    self.report = Some(report);
                }
            }
            KeyCode::Char('f') => {
                self.flagged_only = !self.flagged_only;
                self.scroll = 0;
            }
            KeyCode::Char('/') => self.editing = Some(String::new()),
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('<') => self.move_sort(-1),
            KeyCode::Char('>') => self.move_sort(1),
            KeyCode::Char('R') => self.descending = !self.descending,
            KeyCode::Char('P') | KeyCode::Char('N') => self.sort_by(Column::Pid),
            KeyCode::Char('C') => self.sort_by(Column::Comm),
            KeyCode::Char('K') => self.sort_by(Column::Kernel),
            KeyCode::Char('V') => self.sort_by(Column::Vdso),
            KeyCode::Char('F') => self.sort_by(Column::KernelShare),
            KeyCode::Down | KeyCode::Char('j') => self.scroll_by(1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll_by(-1),
            KeyCode::PageDown => self.scroll_by(10),
            KeyCode::PageUp => self.scroll_by(-10),
            KeyCode::Home => self.scroll = 0,
            _ => {}
        }
    }

    fn sort_by(&mut self, column: Column) {
        if self.sort == column {
            self.descending = !self.descending;
        } else {
            self.sort = column;
            self.descending = column.descending_by_default();
        }
    }

    fn move_sort(&mut self, step: isize) {
        let at = Column::ALL
            .iter()
            .position(|c| *c == self.sort)
            .unwrap_or(0) as isize;
        let next = (at + step).clamp(0, Column::ALL.len() as isize - 1) as usize;
        self.sort = Column::ALL[next];
        self.descending = self.sort.descending_by_default();
    }

    fn scroll_by(&mut self, step: isize) {
        let last = self.rows().len().saturating_sub(1);
        self.scroll = (self.scroll as isize + step).clamp(0, last as isize) as usize;
    }
}

//! `vdso-observer daemon`: collect every interval, keep monotonic counters, write
//! the node_exporter textfile and serve `/metrics`. It keeps running through
//! failed writes and failed reads; SIGTERM/SIGINT write once more and exit 0;
//! SIGHUP re-reads the config file.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result};
use log::{debug, error, info, warn};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};
use vdso_observer_common::ProcessKey;

pub mod config;
mod http;
mod metrics;
mod notify;
mod textfile;

use self::{
    config::{DaemonConfig, Overrides},
    http::{Published, Shared},
    metrics::{Exporter, Facts},
};
use crate::{
    model::Report,
    session::{Session, SessionOptions},
};

pub struct DaemonOptions {
    pub config_file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// `daemon --check-config`: the effective configuration as TOML on stdout, or
/// what is wrong.
pub fn check_config(options: &DaemonOptions) -> Result<()> {
    let config = config::load(options.config_file.as_deref(), &options.overrides)?;
    println!("{}", config.to_toml().trim_end());
    eprintln!("vdso-observer: configuration is valid");
    warn_about_textfile_directory(&config);
    Ok(())
}

pub async fn run(options: DaemonOptions) -> Result<()> {
    let mut config = config::load(options.config_file.as_deref(), &options.overrides)?;
    warn_about_textfile_directory(&config);

    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;

    let mut session = Session::start(SessionOptions::new(&config.observer, config.thresholds))?;
    let shared: Shared = Arc::new(Mutex::new(Published {
        metrics: Arc::from(""),
        last_collection: None,
        stale_after: config.interval * 3,
    }));
    let mut server = start_server(config.listen, &shared).await?;
    // Programs attached, maps and perf events open, socket bound: from here the
    // daemon reads what it holds and needs almost no privilege.
    match session.drop_capabilities(config.textfile.is_some()) {
        Ok(kept) if kept.is_empty() => info!("capabilities dropped: none kept"),
        Ok(kept) => info!("capabilities dropped but {}", kept.join(" ")),
        Err(err) => warn!("{err:#}; running with the capabilities it started with"),
    }
    info!(
        "started: interval {}, textfile {}, listen {}",
        humantime::format_duration(config.interval),
        config
            .textfile
            .as_ref()
            .map_or("none".to_owned(), |p| p.display().to_string()),
        config.listen.map_or("none".to_owned(), |a| a.to_string())
    );

    let mut collector = Collector::new();
    // A first write right away, so a scrape soon after start finds the file.
    collector.collect(&mut session, &config, &shared);
    notify::ready();
    // systemd's watchdog hears from the loop itself: a daemon stuck in a
    // collection (the runtime has one thread) stops pinging and is restarted.
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut next = tokio::time::Instant::now() + config.interval;
    loop {
        tokio::select! {
            _ = session.sleep_until(next) => {
                // A slow collection delays the next one rather than bunching them.
                next = (next + config.interval).max(tokio::time::Instant::now());
                collector.collect(&mut session, &config, &shared);
            }
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                notify::watchdog();
            }
            _ = hangup.recv() => {
                match config::load(options.config_file.as_deref(), &options.overrides) {
                    Ok(new) => {
                        info!("SIGHUP: configuration reloaded");
                        if new.interval != config.interval {
                            next = tokio::time::Instant::now() + new.interval;
                            shared.lock().expect("published").stale_after = new.interval * 3;
                        }
                        if new.listen != config.listen {
                            if let Some((_, task)) = server.take() {
                                task.abort();
                            }
                            server = match start_server(new.listen, &shared).await {
                                Ok(server) => server,
                                Err(err) => {
                                    error!("SIGHUP: {err:#}; no HTTP endpoint until the next reload");
                                    None
                                }
                            };
                        }
                        session.set_thresholds(new.thresholds);
                        if new.observer != config.observer {
                            warn!(
                                "SIGHUP: [observer] settings changed; they take effect when the daemon restarts"
                            );
                        }
                        config = new;
                        warn_about_textfile_directory(&config);
                    }
                    Err(err) => error!("SIGHUP: {err:#}; keeping the previous configuration"),
                }
            }
            _ = interrupt.recv() => return collector.stop(&mut session, &config, &shared, "SIGINT"),
            _ = terminate.recv() => return collector.stop(&mut session, &config, &shared, "SIGTERM"),
        }
    }
}

async fn start_server(
    listen: Option<SocketAddr>,
    shared: &Shared,
) -> Result<Option<(SocketAddr, JoinHandle<()>)>> {
    let Some(address) = listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} (--listen)"))?;
    let bound = listener.local_addr().unwrap_or(address);
    info!("serving /metrics and /healthz on http://{bound}");
    Ok(Some((
        bound,
        tokio::spawn(http::serve(listener, shared.clone())),
    )))
}

fn warn_about_textfile_directory(config: &DaemonConfig) {
    if let Some(dir) = config.textfile.as_ref().and_then(|p| p.parent())
        && !dir.is_dir()
    {
        warn!(
            "textfile directory {} does not exist (yet): writes will fail and be retried every interval",
            dir.display()
        );
    }
}

/// The state carried from one window to the next.
struct Collector {
    exporter: Exporter,
    flagged: HashSet<ProcessKey>,
    textfile_failing: bool,
}

impl Collector {
    fn new() -> Collector {
        Collector {
            exporter: Exporter::new(),
            flagged: HashSet::new(),
            textfile_failing: false,
        }
    }

    fn collect(&mut self, session: &mut Session, config: &DaemonConfig, shared: &Shared) {
        let started = Instant::now();
        let (report, retired) = match session.next_window() {
            Ok(window) => window,
            Err(err) => {
                error!("reading the kernel maps failed: {err:#}; retrying next interval");
                return;
            }
        };
        self.log_newly_flagged(&report);
        for process in &retired.processes {
            self.flagged.remove(process);
        }
        if report.observer.lost.time_calls_map_full > 0 {
            warn!(
                "{} time calls were not counted: the counter map is full ({} entries); raise --map-entries",
                report.observer.lost.time_calls_map_full, report.observer.time_call_capacity
            );
        }

        for event in report.system.iter().flat_map(|s| &s.events) {
            self.exporter.count_clock_event(event.kind);
        }

        self.exporter
            .update(&report, &retired.processes, &config.series, Instant::now());
        self.exporter.collections += 1;
        let facts = Facts::of(&report);
        self.exporter.last_collection_seconds = started.elapsed().as_secs_f64();
        let mut text = self.exporter.render(&facts);
        if let Some(path) = &config.textfile {
            match textfile::write_atomic(path, &text) {
                Ok(()) => {
                    if self.textfile_failing {
                        info!("textfile {} written again", path.display());
                    }
                    self.textfile_failing = false;
                }
                Err(err) => {
                    self.exporter.textfile_write_errors += 1;
                    self.textfile_failing = true;
                    error!(
                        "writing textfile failed: {err:#}; the previous file is kept, retrying next interval"
                    );
                    text = self.exporter.render(&facts);
                }
            }
        }
        let mut published = shared.lock().expect("published");
        published.metrics = Arc::from(text);
        published.last_collection = Some(Instant::now());
        debug!(
            "collected {} processes in {:.1} ms",
            report.processes.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    /// One line per comm an interval for its processes newly flagged, with
    /// counts: a fork storm of flagged processes cannot flood the journal.
    fn log_newly_flagged(&mut self, report: &Report) {
        /// Comms named per interval; the rest are counted in one line.
        const MAX_LINES: usize = 10;
        let mut by_comm: BTreeMap<(&str, String), (usize, f64, u32)> = BTreeMap::new();
        for process in &report.processes {
            let key = ProcessKey {
                tgid: process.pid,
                exec_id: process.exec_id,
                start_boottime_ns: process.start_boottime_ns,
            };
            // Exited processes are reported once and retired at once: no need to remember them.
            if process.flags.is_empty() || (!process.exited && !self.flagged.insert(key)) {
                continue;
            }
            let entry = by_comm
                .entry((process.comm.as_str(), process.flag_words().join(",")))
                .or_insert((0, 0.0, process.pid));
            entry.0 += process.merged_processes.unwrap_or(1) as usize;
            entry.1 += process.kernel_entries_per_sec;
            if entry.2 == 0 {
                entry.2 = process.pid;
            }
        }
        let total = by_comm.len();
        let mut ranked: Vec<_> = by_comm.into_iter().collect();
        ranked.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        for ((comm, flags), (processes, rate, pid)) in ranked.iter().take(MAX_LINES) {
            if *processes == 1 && *pid != 0 {
                info!("pid {pid} ({comm}) flagged {flags}: {rate:.1} kernel entries/s for time");
            } else if *pid == 0 {
                // Only exited processes merged past the window's row limit.
                info!(
                    "{processes} processes named {comm} newly flagged {flags}: {rate:.1} kernel entries/s for time together"
                );
            } else {
                info!(
                    "{processes} processes named {comm} newly flagged {flags} (e.g. pid {pid}): {rate:.1} kernel entries/s for time together"
                );
            }
        }
        if total > MAX_LINES {
            info!(
                "{} more comms newly flagged this interval (see the metrics)",
                total - MAX_LINES
            );
        }
    }

    fn stop(
        &mut self,
        session: &mut Session,
        config: &DaemonConfig,
        shared: &Shared,
        signal: &str,
    ) -> Result<()> {
        info!("{signal}: final collection, then detaching");
        self.collect(session, config, shared);
        info!("stopped");
        Ok(())
    }
}

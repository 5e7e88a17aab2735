//! `vdso-observer daemon`: collect every interval, keep monotonic counters, write
//! the node_exporter textfile and serve `/metrics`. It keeps running through
//! failed writes and failed reads; SIGTERM/SIGINT write once more and exit 0;
//! SIGHUP re-reads the config file.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use log::{debug, error, info, warn};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use vdso_observer_common::ProcessKey;

use crate::{
    config::{self, DaemonConfig, Overrides},
    http::{self, Published, Shared},
    loader::{LoadOptions, Observer},
    metrics::{Context, Exporter},
    procfs,
    report::{Aggregator, ObserverHealthInput},
    system, textfile,
};

pub struct DaemonOptions {
    pub config_file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// `daemon --check-config`: the configuration as it would run, or what is wrong.
pub fn check_config(options: &DaemonOptions) -> Result<()> {
    let config = config::load(options.config_file.as_deref(), &options.overrides)?;
    eprintln!("vdso-observer: configuration is valid: {config:?}");
    warn_about_textfile_directory(&config);
    Ok(())
}

pub async fn run(options: DaemonOptions, load: LoadOptions) -> Result<()> {
    let mut config = config::load(options.config_file.as_deref(), &options.overrides)?;
    warn_about_textfile_directory(&config);

    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;

    let mut observer = Observer::start(load)?;
    let shared: Shared = Arc::new(Mutex::new(Published {
        metrics: String::new(),
        last_collection: None,
        stale_after: config.interval * 3,
    }));
    let mut server = start_server(config.listen, &shared).await?;
    info!(
        "started: interval {}, textfile {}, listen {}",
        humantime::format_duration(config.interval),
        config
            .textfile
            .as_ref()
            .map_or("none".to_owned(), |p| p.display().to_string()),
        config.listen.map_or("none".to_owned(), |a| a.to_string())
    );

    let mut collector = Collector::new(&observer);
    // A first write right away, so a scrape soon after start finds the file.
    collector.collect(&mut observer, &config, &shared);
    let mut ticker = new_ticker(config.interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => collector.collect(&mut observer, &config, &shared),
            _ = hangup.recv() => {
                match config::load(options.config_file.as_deref(), &options.overrides) {
                    Ok(new) => {
                        info!("SIGHUP: configuration reloaded");
                        if new.interval != config.interval {
                            ticker = new_ticker(new.interval);
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
                        config = new;
                        warn_about_textfile_directory(&config);
                    }
                    Err(err) => error!("SIGHUP: {err:#}; keeping the previous configuration"),
                }
            }
            _ = interrupt.recv() => return collector.stop(&mut observer, &config, &shared, "SIGINT"),
            _ = terminate.recv() => return collector.stop(&mut observer, &config, &shared, "SIGTERM"),
        }
    }
}

fn new_ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
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
    aggregator: Aggregator,
    exporter: Exporter,
    window_start: Instant,
    health: ObserverHealthInput,
    clocksource: Option<String>,
    flagged: HashSet<ProcessKey>,
    textfile_failing: bool,
}

impl Collector {
    fn new(observer: &Observer) -> Collector {
        Collector {
            aggregator: Aggregator::new(),
            exporter: Exporter::new(),
            window_start: Instant::now(),
            health: ObserverHealthInput {
                probes: observer.probes.clone(),
                time_call_capacity: observer.options.time_call_entries,
            },
            clocksource: None,
            flagged: HashSet::new(),
            textfile_failing: false,
        }
    }

    fn collect(&mut self, observer: &mut Observer, config: &DaemonConfig, shared: &Shared) {
        let started = Instant::now();
        let snapshot = match observer.snapshot() {
            Ok(snapshot) => snapshot,
            Err(err) => {
                error!("reading the kernel maps failed: {err:#}; retrying next interval");
                return;
            }
        };
        let window = self.window_start.elapsed();
        self.window_start = Instant::now();
        let (report, retired) =
            self.aggregator
                .window(&snapshot, window, self.health.clone(), procfs::is_running);
        if let Err(err) = observer.forget(&retired.processes, &retired.keys) {
            warn!("dropping counters of exited processes failed: {err:#}");
        }
        for process in &report.processes {
            let key = ProcessKey {
                tgid: process.pid,
                exec_id: process.exec_id,
                start_boottime_ns: process.start_boottime_ns,
            };
            if !process.flags.is_empty() && self.flagged.insert(key) {
                info!(
                    "pid {} ({}) flagged {}: {} kernel entries/s for time",
                    process.pid,
                    process.comm,
                    process.flags.join(","),
                    crate::table::rate(process.kernel_entries_per_sec)
                );
            }
        }
        for process in &retired.processes {
            self.flagged.remove(process);
        }
        if report.observer.lost.time_calls_map_full > 0 {
            warn!(
                "{} time calls were not counted: the counter map is full ({} entries); raise --map-entries",
                report.observer.lost.time_calls_map_full, report.observer.time_call_capacity
            );
        }

        let clocksource = system::clocksource();
        let current = clocksource.as_ref().map(|c| c.current.clone());
        if let (Some(before), Some(now)) = (&self.clocksource, &current)
            && before != now
        {
            self.exporter.clocksource_changes += 1;
            warn!("clocksource changed from {before} to {now}");
        }
        self.clocksource = current;

        self.exporter
            .update(&report, &retired.processes, &config.series, Instant::now());
        self.exporter.collections += 1;
        let context = Context {
            clocksource,
            vsyscall: system::vsyscall_mode(),
            probes: self.health.probes.clone(),
            map_entries: snapshot.calls.len(),
            map_capacity: self.health.time_call_capacity,
            kernel_release: kernel_release(),
            boot_settings: system::boot_settings(),
        };
        self.exporter.last_collection_seconds = started.elapsed().as_secs_f64();
        let mut text = self.exporter.render(&context);
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
                    text = self.exporter.render(&context);
                }
            }
        }
        let mut published = shared.lock().expect("published");
        published.metrics = text;
        published.last_collection = Some(Instant::now());
        debug!(
            "collected {} processes in {:.1} ms",
            report.processes.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    fn stop(
        &mut self,
        observer: &mut Observer,
        config: &DaemonConfig,
        shared: &Shared,
        signal: &str,
    ) -> Result<()> {
        info!("{signal}: final collection, then detaching");
        self.collect(observer, config, shared);
        info!("stopped");
        Ok(())
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

//! vdso-observer: per process, which time calls the vDSO answered and which
//! entered the kernel, and why.
//!
//! Layers (docs/ARCHITECTURE.md): `model` (data and pure steps) under
//! everything; `kernel` (load, attach, read) and `host` (/proc, sysfs, NSS, the
//! vDSO image) beside it; `measure` (calibration, exact counting) on those;
//! `session` joins them; `ui` and `daemon` read only the session and the model.

mod cli;
mod daemon;
mod host;
mod kernel;
mod logging;
mod measure;
mod session;
mod settings;
mod ui;

use std::process::ExitCode;

// The domain and the metric families come from the library target, which
// tests and tools read too.
use vdso_observer::{metric_families, model};

use anyhow::Result;
use clap::Parser as _;

use crate::{
    cli::{Cli, Command},
    daemon::config,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Daemon(_));
    logging::init(daemon);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if logging::to_journal() {
                log::error!("{err:#}");
            } else {
                eprintln!("vdso-observer: error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Generate { what } => cli::generate(what)?,
        Command::Completions { shell } => cli::completions(shell),
        Command::VdsoLoop {
            quick,
            coarse,
            time_call_site,
        } => {
            use measure::calibration_child::LoopPlan;
            let plan = match (quick, coarse, time_call_site) {
                (true, ..) => LoopPlan::Quick,
                (_, true, _) => LoopPlan::Coarse,
                (.., true) => LoopPlan::TimeCallSite,
                _ => LoopPlan::Full,
            };
            measure::calibration_child::run_loop(&host::vdso_image::VdsoImage::current()?, plan)?
        }
        Command::Top(args) => {
            let (settings, thresholds) = settings_of(&args.load)?;
            let top = ui::batch::TopOptions {
                once: args.once,
                batch: args.batch,
                iterations: args.iterations,
                interval: args.interval,
                json: args.json,
                selection: ui::format::Selection {
                    pids: args.pids,
                    comm: args.comm,
                    container: args.container,
                    pod: args.pod,
                    namespace: args.namespace,
                    flagged_only: args.flagged_only,
                    show_getrandom_only: args.show_getrandom_only,
                },
            };
            runtime()?.block_on(ui::batch::run(
                top,
                session::SessionOptions::new(&settings, thresholds),
            ))?
        }
        Command::Doctor { json, btf, attach } => {
            let mut settings = settings::ObserverSettings::default();
            if let Some(btf) = btf {
                settings.btf = btf;
            }
            if let Some(attach) = attach {
                settings.attach = attach;
            }
            // A short measurement: what the programs cost is part of the answer.
            settings.bpf_stats = true;
            let options = session::SessionOptions::new(&settings, Default::default());
            let diagnosis = measure::diagnose::diagnose(options.load);
            return Ok(ExitCode::from(ui::doctor::print(&diagnosis, json)?));
        }
        Command::BenchFloor { btf } => {
            let mut settings = settings::ObserverSettings::default();
            if let Some(btf) = btf {
                settings.btf = btf;
            }
            let options = session::SessionOptions::new(&settings, Default::default());
            runtime()?.block_on(async {
                let _floor = kernel::object::attach_floor(&options.load)?;
                eprintln!("vdso-observer: observing every process (empty sys_enter program only)");
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                anyhow::Ok(())
            })?
        }
        Command::Daemon(args) => {
            let options = daemon::DaemonOptions {
                config_file: args.config,
                overrides: config::Overrides {
                    interval: args.interval,
                    textfile: args.textfile,
                    listen: args.listen,
                    top_processes: args.top_processes,
                    exited_grace: args.exited_grace,
                    observer: args.load,
                },
            };
            if args.check_config {
                daemon::check_config(&options)?;
            } else {
                runtime()?.block_on(daemon::run(options))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The command line over the defaults (top has no file).
fn settings_of(
    load: &settings::ObserverOverrides,
) -> Result<(settings::ObserverSettings, model::Thresholds)> {
    let mut settings = settings::ObserverSettings::default();
    let mut thresholds = model::Thresholds::default();
    load.apply(&mut settings, &mut thresholds);
    settings.validate()?;
    Ok((settings, thresholds))
}

//! The command line: subcommands, their options, and what a given option means
//! for the settings (it wins over the daemon's file, field by field).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::settings::{
    AttachMode, ObserverOverrides, attach_mode_parser, check_interval, parse_listen,
};

#[derive(Parser)]
#[command(
    name = "vdso-observer",
    version,
    about = "Which processes make time calls that enter the kernel instead of being answered by the vDSO, and why",
    after_help = "Examples:\n  \
        sudo vdso-observer top --once                 one 3 s window, a table\n  \
        sudo vdso-observer top --once -d 10 --json    one 10 s window as JSON\n  \
        sudo vdso-observer top -b -n 5 -d 1           five 1 s frames\n  \
        sudo vdso-observer top --once --comm java     only processes whose name contains java\n  \
        sudo vdso-observer doctor                     is the clocksource readable by the vDSO? what to do\n  \
        sudo vdso-observer daemon --textfile /var/lib/prometheus/node-exporter/vdso_observer.prom\n  \
        sudo vdso-observer daemon --listen 127.0.0.1:9736 --interval 15s"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Kernel-entering time calls per process, like top: interactive on a terminal, -b for batch.
    Top(TopArgs),
    /// Run continuously and export Prometheus metrics (node_exporter textfile and/or /metrics).
    Daemon(DaemonArgs),
    /// One screen about this machine: clocksource and whether the vDSO can read it
    /// (measured), costs of each call, kernel features, kernel log, advice.
    #[command(after_help = "Exit status:\n  \
        0  the vDSO answers time calls in user space here\n  \
        1  the doctor itself failed (see the message)\n  \
        2  usage error (a mistyped flag), as for every command\n  \
        3  the clocksource is not vDSO-capable: clock reads enter the kernel\n  \
        4  processes get no vDSO (vdso=0, or none mapped)\n  \
        5  capability could not be decided")]
    Doctor {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Kernel BTF to read structure offsets from [default: /sys/kernel/btf/vmlinux].
        #[arg(long)]
        btf: Option<PathBuf>,
        /// Where time syscalls are counted while it measures (as top's --attach)
        /// [default: auto].
        #[arg(long, value_name = "MODE", value_parser = attach_mode_parser())]
        attach: Option<AttachMode>,
    },
    /// A completion script for SHELL on stdout, e.g.
    /// `vdso-observer completions bash > /etc/bash_completion.d/vdso-observer`.
    Completions { shell: clap_complete::Shell },
    /// Attach only an empty sys_enter program until SIGINT/SIGTERM (the floor
    /// `cargo xtask bench` compares with).
    #[command(hide = true, name = "bench-floor")]
    BenchFloor {
        #[arg(long)]
        btf: Option<PathBuf>,
    },
    /// The calibration child the observer runs under its sampler at start.
    #[command(hide = true, name = "vdso-loop")]
    VdsoLoop {
        #[arg(long)]
        quick: bool,
        /// Coarse-clock reads only (their cost and where their samples land).
        #[arg(long, conflicts_with = "quick")]
        coarse: bool,
        /// time() from a loop of a second shape (what the call site weighs).
        #[arg(long, conflicts_with_all = ["quick", "coarse"])]
        time_call_site: bool,
    },
    /// Write the man pages or shell completions (used by `cargo xtask dist`).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Subcommand, Clone)]
pub enum Generate {
    /// roff man pages, one per command, into DIR.
    Man { dir: PathBuf },
    /// A completion script for SHELL into DIR.
    Completions {
        shell: clap_complete::Shell,
        dir: PathBuf,
    },
    /// The seccomp profile the observer needs in a container, as DIR/vdso-observer.json
    /// (the DaemonSet's init container puts it in the kubelet's seccomp directory).
    SeccompProfile { dir: PathBuf },
}

/// deploy/seccomp/vdso-observer.json: what the binary calls, and nothing else.
pub const SECCOMP_PROFILE: &str = include_str!("../../deploy/seccomp/vdso-observer.json");

#[derive(Args, Clone)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub load: ObserverOverrides,
    /// TOML configuration file, re-read on SIGHUP (see packaging/vdso-observer.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// node_exporter textfile to write atomically every interval (must end in .prom).
    #[arg(long)]
    pub textfile: Option<PathBuf>,
    /// Serve /metrics and /healthz on this address: HOST:PORT (127.0.0.1:9736,
    /// [::1]:9736) or :PORT for every address.
    #[arg(long, value_name = "ADDRESS", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Length of each window (one collection): seconds or with a unit, as
    /// top's -d [default: 15s].
    #[arg(short = 'd', long, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Processes of a window with the most kernel entries that get pid-labelled series (default 20).
    #[arg(long)]
    pub top_processes: Option<usize>,
    /// How long an exited process keeps its series (default 5m).
    #[arg(long, value_parser = parse_interval)]
    pub exited_grace: Option<Duration>,
    /// Check the configuration, print it, and exit without loading anything.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Args, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub load: ObserverOverrides,
    /// One frame, then exit (same as -b -n 1). Without --once, -b or --json, and
    /// on a terminal, top is interactive (h for keys).
    #[arg(long)]
    pub once: bool,
    /// Batch mode: plain frames on stdout, no full screen.
    #[arg(short = 'b', long)]
    pub batch: bool,
    /// Number of frames before exiting (batch mode); 0 runs until interrupted.
    #[arg(short = 'n', long, default_value_t = 0)]
    pub iterations: u64,
    /// Length of each window: seconds ("2", "0.5") or with a unit ("5s", "1m").
    /// The daemon's option of the same name; --delay (top's habit) and
    /// --duration are the same.
    #[arg(short = 'd', long = "interval", visible_aliases = ["delay", "duration"], default_value = "3s", value_parser = parse_interval)]
    pub interval: Duration,
    /// One JSON document per frame on its own line (stable field names, exact counts).
    #[arg(long)]
    pub json: bool,
    /// Only these pids (repeatable, or comma-separated: -p 1,2).
    #[arg(short = 'p', long = "pid", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Only processes whose name contains this text.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only processes of this container: an id prefix (as `docker ps` shows it),
    /// its name, a pod UID prefix, or `host` for processes outside every container.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Only processes of this pod: its name, or NAMESPACE/NAME (names come
    /// from the container runtime's files on this node).
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
    /// Only processes of pods in this Kubernetes namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only processes with a fault flag (fallback, direct, vsyscall, no-vdso).
    #[arg(long)]
    pub flagged_only: bool,
    /// Also show processes whose only kernel entries were getrandom (glibc seeds
    /// malloc with one in every process; JSON always has them).
    #[arg(long)]
    pub show_getrandom_only: bool,
}

/// Accepts plain seconds (top's habit) or a humantime duration; the same
/// lower bound as the daemon's file.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let duration = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Duration::from_secs_f64(seconds),
        Ok(_) => return Err("must be more than 0 seconds".into()),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string())?,
    };
    check_interval(duration)?;
    Ok(duration)
}

/// `completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "vdso-observer",
        &mut std::io::stdout(),
    );
}

pub fn generate(what: Generate) -> Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory;
    let command = Cli::command();
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        Generate::Completions { shell, dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut command = command;
            clap_complete::generate_to(shell, &mut command, "vdso-observer", &dir)
                .with_context(|| format!("writing {shell} completions into {}", dir.display()))?;
        }
        Generate::SeccompProfile { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("vdso-observer.json");
            // Whole or not at all: the kubelet may read it at any moment.
            let partial = dir.join(".vdso-observer.json.partial");
            std::fs::write(&partial, SECCOMP_PROFILE)
                .and_then(|()| std::fs::rename(&partial, &path))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_accept_seconds_and_units() {
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn man_pages_and_completions_are_generated() {
        let dir = std::env::temp_dir().join(format!("vdso-gen-{}", std::process::id()));
        generate(Generate::Man { dir: dir.clone() }).unwrap();
        let page = std::fs::read_to_string(dir.join("vdso-observer.1")).unwrap();
        assert!(page.contains(".TH vdso-observer 1"), "{page}");
        let daemon = std::fs::read_to_string(dir.join("vdso-observer-daemon.1")).unwrap();
        assert!(daemon.contains("textfile"));
        generate(Generate::Completions {
            shell: clap_complete::Shell::Bash,
            dir: dir.clone(),
        })
        .unwrap();
        let bash = std::fs::read_to_string(dir.join("vdso-observer.bash")).unwrap();
        assert!(bash.contains("--flagged-only"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn listen_takes_host_and_port_or_a_port_alone() {
        assert_eq!(
            parse_listen(":9736").unwrap(),
            "0.0.0.0:9736".parse().unwrap()
        );
        assert_eq!(
            parse_listen("127.0.0.1:9736").unwrap(),
            "127.0.0.1:9736".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:9736").unwrap(),
            "[::1]:9736".parse().unwrap()
        );
        assert!(parse_listen("9736").is_err());
        assert!(parse_listen(":http").is_err());
    }

    #[test]
    fn top_and_daemon_share_the_window_option_and_pids_split_on_commas() {
        let top = Cli::try_parse_from([
            "vdso-observer",
            "top",
            "--interval",
            "2",
            "-p",
            "1,2",
            "-p",
            "7",
        ])
        .unwrap();
        let Command::Top(args) = top.command else {
            panic!("not top")
        };
        assert_eq!(args.interval, Duration::from_secs(2));
        assert_eq!(args.pids, [1, 2, 7]);
        for old in ["--delay", "--duration", "-d"] {
            let top = Cli::try_parse_from(["vdso-observer", "top", old, "5s"]).unwrap();
            let Command::Top(args) = top.command else {
                panic!("not top")
            };
            assert_eq!(args.interval, Duration::from_secs(5), "{old}");
        }
        let daemon =
            Cli::try_parse_from(["vdso-observer", "daemon", "-d", "30s", "--listen", ":9736"])
                .unwrap();
        let Command::Daemon(args) = daemon.command else {
            panic!("not daemon")
        };
        assert_eq!(args.interval, Some(Duration::from_secs(30)));
        assert_eq!(args.listen, Some("0.0.0.0:9736".parse().unwrap()));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

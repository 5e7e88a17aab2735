//! The daemon's settings: its exports, its series limits, and the observer
//! settings every front end shares, read from a TOML file (again on SIGHUP); a
//! value given on the command line wins over the file, field by field.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::model::Thresholds;
use crate::settings::parse_listen;
pub use crate::settings::{
    ObserverOverrides, ObserverSettings, ObserverValues, ThresholdValues, check_interval, defaults,
};

/// Everything the daemon needs, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub interval: Duration,
    /// node_exporter textfile to write (must end in `.prom` to be read).
    pub textfile: Option<PathBuf>,
    /// Address of the `/metrics` and `/healthz` endpoint.
    pub listen: Option<SocketAddr>,
    pub series: SeriesLimits,
    /// When a fault becomes a flag.
    pub thresholds: Thresholds,
    pub observer: ObserverSettings,
}

/// Bounds on what the metrics say per process.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesLimits {
    /// Processes with the most kernel entries in a window that get their own
    /// (pid-labelled) series, besides every flagged one.
    pub top_processes: usize,
    /// Hard cap on pid-labelled processes at once.
    pub max_processes: usize,
    /// Hard cap on distinct `comm` values; the rest are summed as `(other)`.
    pub max_comms: usize,
    /// How long an exited process keeps its series (its final value).
    pub exited_grace: Duration,
    /// How long a `comm` series stays without any increase.
    pub idle_comm_retire: Duration,
    /// Hard cap on distinct containers with series; the rest are summed as
    /// `container_id="(other)"`.
    pub max_containers: usize,
    /// How long a container's series stay without any increase (it ended, or
    /// stopped calling).
    pub idle_container_retire: Duration,
    /// Whether processes whose only kernel entries are getrandom may get pid
    /// series (they never flag; glibc's start-up makes one in every process).
    pub getrandom_only_processes: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            interval: defaults::INTERVAL,
            textfile: None,
            listen: None,
            series: SeriesLimits::default(),
            thresholds: Thresholds::default(),
            observer: ObserverSettings::default(),
        }
    }
}

impl Default for SeriesLimits {
    fn default() -> Self {
        SeriesLimits {
            top_processes: 20,
            max_processes: 200,
            max_comms: 200,
            exited_grace: Duration::from_secs(300),
            idle_comm_retire: Duration::from_secs(3600),
            max_containers: 500,
            idle_container_retire: Duration::from_secs(3600),
            getrandom_only_processes: false,
        }
    }
}

/// The file's shape; every field optional. Also what `--check-config` prints,
/// every field filled.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    textfile: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(default)]
    series: SeriesFile,
    #[serde(default)]
    thresholds: ThresholdValues,
    #[serde(default)]
    observer: ObserverValues,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SeriesFile {
    top_processes: Option<usize>,
    max_processes: Option<usize>,
    max_comms: Option<usize>,
    exited_grace: Option<String>,
    idle_comm_retire: Option<String>,
    max_containers: Option<usize>,
    idle_container_retire: Option<String>,
    getrandom_only_processes: Option<bool>,
}

/// Command-line values of the daemon, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub interval: Option<Duration>,
    pub textfile: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub top_processes: Option<usize>,
    pub exited_grace: Option<Duration>,
    pub observer: ObserverOverrides,
}

pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<DaemonConfig> {
    let mut config = DaemonConfig::default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        apply_file(&mut config, &text)
            .with_context(|| format!("config file {}", path.display()))?;
    }
    if let Some(interval) = overrides.interval {
        config.interval = interval;
    }
    if let Some(textfile) = &overrides.textfile {
        config.textfile = Some(textfile.clone());
    }
    if let Some(listen) = overrides.listen {
        config.listen = Some(listen);
    }
    if let Some(top) = overrides.top_processes {
        config.series.top_processes = top;
    }
    if let Some(grace) = overrides.exited_grace {
        config.series.exited_grace = grace;
    }
    overrides
        .observer
        .apply(&mut config.observer, &mut config.thresholds);
    validate(&config)?;
    Ok(config)
}

fn apply_file(config: &mut DaemonConfig, text: &str) -> Result<()> {
    let file: ConfigFile = toml::from_str(text)?;
    let duration = |name: &str, text: &str| -> Result<Duration> {
        let value =
            humantime::parse_duration(text).with_context(|| format!("{name} = {text:?}"))?;
        Ok(value)
    };
    if let Some(interval) = &file.interval {
        config.interval = duration("interval", interval)?;
    }
    if let Some(textfile) = file.textfile {
        config.textfile = Some(textfile);
    }
    if let Some(listen) = &file.listen {
        config.listen =
            Some(parse_listen(listen).map_err(|err| anyhow::anyhow!("listen = {err}"))?);
    }
    // Each threshold on its own: a file that sets one keeps the other as it was.
    file.thresholds.apply(&mut config.thresholds);
    let series = &mut config.series;
    if let Some(top) = file.series.top_processes {
        series.top_processes = top;
    }
    if let Some(max) = file.series.max_processes {
        series.max_processes = max;
    }
    if let Some(max) = file.series.max_comms {
        series.max_comms = max;
    }
    if let Some(grace) = &file.series.exited_grace {
        series.exited_grace = duration("series.exited_grace", grace)?;
    }
    if let Some(idle) = &file.series.idle_comm_retire {
        series.idle_comm_retire = duration("series.idle_comm_retire", idle)?;
    }
    if let Some(max) = file.series.max_containers {
        series.max_containers = max;
    }
    if let Some(idle) = &file.series.idle_container_retire {
        series.idle_container_retire = duration("series.idle_container_retire", idle)?;
    }
    if let Some(show) = file.series.getrandom_only_processes {
        series.getrandom_only_processes = show;
    }
    file.observer.apply(&mut config.observer);
    Ok(())
}

fn validate(config: &DaemonConfig) -> Result<()> {
    check_interval(config.interval).map_err(|err| anyhow::anyhow!("interval: {err}"))?;
    config.observer.validate()?;
    if let Some(path) = &config.textfile {
        if path.extension().is_none_or(|ext| ext != "prom") {
            bail!(
                "textfile {} must end in .prom: node_exporter's textfile collector reads only *.prom",
                path.display()
            );
        }
        if path.file_name().is_none() || path.parent().is_none() {
            bail!("textfile {} is not a file path", path.display());
        }
    }
    if config.textfile.is_none() && config.listen.is_none() {
        bail!("nothing to export to: give --textfile PATH, --listen ADDR, or both");
    }
    Ok(())
}

impl DaemonConfig {
    /// The effective configuration as a file that would give it (`--check-config`).
    pub fn to_toml(&self) -> String {
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let file = ConfigFile {
            interval: Some(duration(self.interval)),
            textfile: self.textfile.clone(),
            listen: self.listen.map(|a| a.to_string()),
            series: SeriesFile {
                top_processes: Some(self.series.top_processes),
                max_processes: Some(self.series.max_processes),
                max_comms: Some(self.series.max_comms),
                exited_grace: Some(duration(self.series.exited_grace)),
                idle_comm_retire: Some(duration(self.series.idle_comm_retire)),
                max_containers: Some(self.series.max_containers),
                idle_container_retire: Some(duration(self.series.idle_container_retire)),
                getrandom_only_processes: Some(self.series.getrandom_only_processes),
            },
            thresholds: ThresholdValues::of(&self.thresholds),
            observer: ObserverValues::of(&self.observer),
        };
        toml::to_string(&file).expect("the configuration serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_and_overrides() {
        let mut config = DaemonConfig::default();
        apply_file(
            &mut config,
            r#"
            interval = "5s"
            textfile = "/var/lib/node/vdso.prom"
            listen = "127.0.0.1:9736"
            [series]
            top_processes = 3
            exited_grace = "1m"
            [thresholds]
            min_rate_per_sec = 50
            min_kernel_share_percent = 1
            "#,
        )
        .unwrap();
        assert_eq!(config.interval, Duration::from_secs(5));
        assert_eq!(config.series.top_processes, 3);
        assert_eq!(config.series.exited_grace, Duration::from_secs(60));
        assert_eq!(config.series.max_comms, 200);
        assert_eq!(config.listen.unwrap().port(), 9736);
        let thresholds = config.thresholds;
        assert_eq!(thresholds.min_rate_per_sec, 50.0);
        assert_eq!(thresholds.min_kernel_share, 0.01);

        let dir = std::env::temp_dir().join(format!("vdso-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "interval = \"5s\"\ntextfile = \"/x/a.prom\"\n").unwrap();
        let overrides = Overrides {
            interval: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let loaded = load(Some(&path), &overrides).unwrap();
        assert_eq!(loaded.interval, Duration::from_secs(1));
        assert_eq!(loaded.textfile.unwrap(), Path::new("/x/a.prom"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A share is a fraction, as JSON's kernel_share, or a percent with `%`;
    /// nothing outside 0 to 1 passes, in the file or on the command line.
    #[test]
    fn kernel_shares_are_fractions_or_percents_within_range() {
        for (written, share) in [
            ("0.25", 0.25),
            ("\"25%\"", 0.25),
            ("1", 1.0),
            ("\"0%\"", 0.0),
        ] {
            let mut config = DaemonConfig::default();
            apply_file(
                &mut config,
                &format!("[thresholds]\nmin_kernel_share = {written}\n"),
            )
            .unwrap_or_else(|e| panic!("{written}: {e:#}"));
            assert_eq!(config.thresholds.min_kernel_share, share, "{written}");
        }
        for written in [
            "min_kernel_share = 1.5",
            "min_kernel_share = \"150%\"",
            "min_kernel_share = \"half\"",
            "min_kernel_share_percent = 150",
        ] {
            let mut config = DaemonConfig::default();
            let err = apply_file(&mut config, &format!("[thresholds]\n{written}\n")).unwrap_err();
            assert!(format!("{err:#}").contains("0.25"), "{written}: {err:#}");
        }
        assert_eq!("25%".parse::<crate::settings::Share>().unwrap().0, 0.25);
        assert!(
            "25".parse::<crate::settings::Share>().is_err(),
            "a percent needs its %"
        );
    }

    #[test]
    fn the_command_line_wins_field_by_field_and_check_config_round_trips() {
        let dir = std::env::temp_dir().join(format!("vdso-config-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "textfile = \"/x/a.prom\"\n\
             [thresholds]\nmin_rate_per_sec = 50\n\
             [observer]\nmap_entries = 4096\nsample_hz = 97\nexact_pids = [7]\ngovernor = false\n",
        )
        .unwrap();
        let overrides = Overrides {
            observer: ObserverOverrides {
                thresholds: ThresholdValues {
                    min_kernel_share_percent: Some(5.0),
                    ..Default::default()
                },
                observer: ObserverValues {
                    sample_hz: Some(199),
                    ..Default::default()
                },
            },
            ..Default::default()
        };
        let config = load(Some(&path), &overrides).unwrap();
        // The file's rate stays: the command line set only the share.
        assert_eq!(config.thresholds.min_rate_per_sec, 50.0);
        assert_eq!(config.thresholds.min_kernel_share, 0.05);
        assert_eq!(config.observer.map_entries, 4096);
        assert_eq!(config.observer.sample_hz, 199, "the command line wins");
        assert_eq!(config.observer.exact_pids, [7]);
        assert!(!config.observer.governor);
        // A file that sets one threshold leaves the other at its default.
        let mut only_share = DaemonConfig::default();
        apply_file(
            &mut only_share,
            "[thresholds]\nmin_kernel_share_percent = 3\n",
        )
        .unwrap();
        assert_eq!(only_share.thresholds.min_rate_per_sec, 0.0);
        assert_eq!(only_share.thresholds.min_kernel_share, 0.03);
        // --check-config prints a file that gives the same configuration.
        let text = config.to_toml();
        let mut again = DaemonConfig::default();
        apply_file(&mut again, &text).unwrap();
        assert_eq!(again, config, "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_interval_rule_everywhere() {
        assert!(check_interval(Duration::from_millis(100)).is_ok());
        assert!(check_interval(Duration::from_millis(50)).is_err());
        let mut config = DaemonConfig::default();
        apply_file(&mut config, "interval = \"50ms\"\ntextfile = \"/x/a.prom\"").unwrap();
        assert!(validate(&config).is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let mut config = DaemonConfig::default();
        let err = apply_file(&mut config, "intervall = \"5s\"").unwrap_err();
        assert!(format!("{err:#}").contains("intervall"), "{err:#}");
        let err = apply_file(&mut config, "interval = \"soon\"").unwrap_err();
        assert!(
            format!("{err:#}").contains("interval = \"soon\""),
            "{err:#}"
        );
        let overrides = Overrides {
            textfile: Some("/tmp/metrics.txt".into()),
            ..Default::default()
        };
        let err = load(None, &overrides).unwrap_err();
        assert!(err.to_string().contains("must end in .prom"), "{err}");
        let err = load(None, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("nothing to export"), "{err}");
        let err = load(Some(Path::new("/nonexistent.toml")), &Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent.toml"), "{err:#}");
    }
}

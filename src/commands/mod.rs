//! The subcommands of the `tidewatch` binary, one module each.

pub mod bench;
pub mod cluster;
pub mod demo;
pub mod evaluate;
pub mod floor;
pub mod generate;
pub mod outbox;
pub mod receiver;
pub mod replay;
pub mod serve;
pub mod soak;
pub mod train;
mod train_entities;
mod train_forecast;

use anyhow::Context;

use crate::detect::Device;
use crate::sources::{AnomalyKind, GeneratorConfig};

/// The scoring device flag (`DEFAULT_DEVICE`), shared by every command that scores.
#[derive(clap::Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceArgs {
    /// Scoring device: `auto` (the GPU when usable), `cuda` (fail without one) or `cpu`.
    #[arg(
        long,
        env = "DEFAULT_DEVICE",
        value_enum,
        default_value = "auto",
        ignore_case = true
    )]
    pub device: Device,
}

/// The synthetic generator's flags, shared by every command that can make data.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct SyntheticArgs {
    /// Generator: seed of the plant (each feature's mean, spread, autocorrelation). A
    /// model fits only data of the plant it was trained on; the shipped models: 0.
    #[arg(long, default_value_t = 0)]
    pub plant_seed: u64,
    /// Generator: seed of the noise and the anomalies (the shipped models were trained
    /// on seed 0, so the default 1 gives data they have not seen).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generator: probability per (frame, feature) that an anomaly starts.
    #[arg(long, default_value_t = 0.0)]
    pub anomaly_rate: f64,
    /// Generator: spike height in standard deviations.
    #[arg(long, default_value_t = 8.0)]
    pub spike_sigma: f32,
    /// Generator: level-shift size in standard deviations.
    #[arg(long, default_value_t = 5.0)]
    pub shift_sigma: f32,
    /// Generator: length in frames of level shifts and stuck values.
    #[arg(long, default_value_t = 20)]
    pub anomaly_len: u32,
    /// Generator: anomaly kinds to inject, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "spike_up,spike_down,level_shift,stuck"
    )]
    pub kinds: Vec<AnomalyKind>,
}

impl Default for SyntheticArgs {
    fn default() -> Self {
        SyntheticArgs {
            plant_seed: 0,
            seed: 1,
            anomaly_rate: 0.0,
            spike_sigma: 8.0,
            shift_sigma: 5.0,
            anomaly_len: 20,
            kinds: AnomalyKind::ALL.to_vec(),
        }
    }
}

impl SyntheticArgs {
    /// The generator settings for frames of `n_features` features.
    pub fn config(&self, n_features: usize) -> GeneratorConfig {
        GeneratorConfig {
            n_features,
            plant_seed: self.plant_seed,
            seed: self.seed,
            anomaly_rate: self.anomaly_rate,
            spike_sigma: self.spike_sigma,
            shift_sigma: self.shift_sigma,
            shift_len: self.anomaly_len,
            stuck_len: self.anomaly_len,
            kinds: self.kinds.clone(),
        }
    }
}

/// How alerts are raised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AlertMode {
    /// One alert per anomalous frame: seed 001's body.
    #[default]
    Frame,
    /// One event per incident open, escalation and resolve (see README, Incidents).
    Incident,
}

/// The alert-mode flags `serve`, `replay` and `demo` share.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct AlertArgs {
    /// `frame`: one alert per anomalous frame (seed 001's body); `incident`: one event per
    /// incident open, escalation and resolve, grouped by --feature-metadata.
    #[arg(long = "alerts", value_enum, default_value = "frame")]
    pub mode: AlertMode,
    /// Incident rules, a JSON file (see models/incidents.example.json); default: 3 of 5
    /// windows open, 5 clean windows resolve, seed 004's severity thresholds.
    #[arg(long, value_name = "FILE")]
    pub incident_config: Option<std::path::PathBuf>,
    /// Feature metadata, CSV or JSON: feature → asset, subsystem. Features of one
    /// asset/subsystem share incidents; a feature not listed is its own group.
    #[arg(long, value_name = "FILE")]
    pub feature_metadata: Option<std::path::PathBuf>,
    /// Incidents open when a group is anomalous in this many (k) of its last
    /// --of-windows windows (overrides the config file).
    #[arg(long, value_name = "K")]
    pub open_windows: Option<u64>,
    /// n of "k of the last n windows" (overrides the config file).
    #[arg(long, value_name = "N")]
    pub of_windows: Option<u64>,
    /// Incidents resolve after this many clean windows in a row (overrides the config
    /// file).
    #[arg(long, value_name = "M")]
    pub resolve_after: Option<u64>,
}

impl AlertArgs {
    /// The incident settings in incident mode (the file read and checked, flags applied),
    /// `None` in frame mode; `body_limit` is the receiver's.
    pub fn incidents(
        &self,
        body_limit: usize,
    ) -> anyhow::Result<Option<crate::incidents::IncidentSpec>> {
        if self.mode == AlertMode::Frame {
            anyhow::ensure!(
                self.incident_config.is_none() && self.feature_metadata.is_none(),
                "--incident-config and --feature-metadata need --alerts incident"
            );
            return Ok(None);
        }
        let mut config = match &self.incident_config {
            Some(path) => crate::incidents::IncidentConfig::load(path)?,
            None => crate::incidents::IncidentConfig::default(),
        };
        config.open_windows = self.open_windows.unwrap_or(config.open_windows);
        config.of_windows = self.of_windows.unwrap_or(config.of_windows);
        config.resolve_after = self.resolve_after.unwrap_or(config.resolve_after);
        config.check()?;
        Ok(Some(crate::incidents::IncidentSpec {
            config,
            metadata: self.feature_metadata.clone(),
            body_limit,
        }))
    }
}

/// From now on SIGINT and SIGTERM no longer end the process: a thread of its own calls
/// `on_signal` with the signal's name for each, until it returns `false`. Fails if the
/// signals cannot be caught.
pub fn on_signals(
    mut on_signal: impl FnMut(&'static str) -> bool + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("catching SIGINT")?,
            signal(SignalKind::terminate()).context("catching SIGTERM")?,
        )
    };
    std::thread::Builder::new()
        .name("tidewatch-signals".into())
        .spawn(move || loop {
            #[cfg(unix)]
            let why = runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                }
            });
            #[cfg(not(unix))]
            let why = runtime.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            });
            if !on_signal(why) {
                break;
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

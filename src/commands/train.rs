//! `tidewatch train`: fits a feature-wise one-class SVM model on normal data and saves it
//! with the command that reproduces it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::ArgGroup;

use crate::model::ModelKind;
use crate::sources::{read_matrix, Generator, GeneratorConfig};
use crate::train::{self, LearningRate, MatrixView, RffSampling, TrainConfig};

/// What `tidewatch train` fits: a one-class SVM ([`ModelKind`]) or, from a directory of
/// per-entity data, a forecaster per entity ([`crate::detect::ForecastModel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainKind {
    /// Seed 001's linear OCSVM on the raw window (see [`ModelKind::Linear`]).
    Linear,
    /// RBF-kernel OCSVM through random Fourier features (see [`ModelKind::Rff`]).
    Rff,
    /// Per entity, the forecasting-residual detector `tidewatch evaluate` runs by default
    /// (`forecast.json`), for `replay --dataflow forecast`. Needs `--data DIR`.
    Forecast,
}

impl TrainKind {
    /// The OCSVM kind fitted: the one named, or for `forecast` the linear one of the
    /// `default/` entry, which only names the frames' features for the engine (the
    /// cheapest to fit).
    pub fn ocsvm(self) -> ModelKind {
        match self {
            TrainKind::Linear | TrainKind::Forecast => ModelKind::Linear,
            TrainKind::Rff => ModelKind::Rff,
        }
    }
}

/// Flags of `tidewatch train`.
#[derive(clap::Args, Debug, Clone)]
#[command(group(ArgGroup::new("input").required(true).args(["data", "synthetic_frames"])))]
pub struct TrainArgs {
    /// Model kind: `linear` (seed 001's OCSVM on the raw window, flags departures in one
    /// direction), `rff` (RBF kernel through random Fourier features of the standardised
    /// window, flags departures in both directions) or `forecast` (with `--data DIR`: per
    /// entity, the forecaster `tidewatch evaluate` runs by default, for `replay
    /// --dataflow forecast`).
    #[arg(long, value_enum, default_value_t = TrainKind::Rff)]
    pub kind: TrainKind,
    /// Window length W: each feature is scored on its last W values.
    #[arg(long, default_value_t = 5)]
    pub window: usize,
    /// The OCSVM's ν in (0, 1]: upper bound on the fraction of training windows outside.
    #[arg(long, default_value_t = train::DEFAULT_NU)]
    pub nu: f64,
    /// SGD step-size schedule, as scikit-learn's SGDOneClassSVM.
    #[arg(long, value_enum, default_value_t = LearningRate::Optimal)]
    pub learning_rate: LearningRate,
    /// Initial step of the `constant` and `invscaling` schedules.
    #[arg(long, default_value_t = 0.01)]
    pub eta0: f64,
    /// Exponent of the `invscaling` schedule.
    #[arg(long, default_value_t = 0.5)]
    pub power_t: f64,
    /// Passes over the training windows of each feature.
    #[arg(long, default_value_t = train::DEFAULT_EPOCHS)]
    pub epochs: usize,
    /// Visit the training windows in time order instead of a fresh seeded permutation per
    /// epoch (scikit-learn's shuffle=False).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Number of random Fourier features D (`rff`).
    #[arg(long, default_value_t = train::DEFAULT_COMPONENTS)]
    pub components: usize,
    /// RBF kernel width γ on standardised windows (`rff`).
    #[arg(long, default_value_t = train::DEFAULT_GAMMA)]
    pub gamma: f64,
    /// How the random frequencies are drawn (`rff`): `orthogonal` (cosine and sine pairs
    /// of orthogonal frequencies of one length) or `gaussian` (independent normal
    /// frequencies and uniform phases, as scikit-learn's RBFSampler).
    #[arg(long, value_enum, default_value_t = RffSampling::Orthogonal)]
    pub rff_sampling: RffSampling,
    /// Seed of the random features and of the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the frames, at the end, held out from fitting: they set the threshold
    /// (with --calibrate) and measure the false-alarm rate.
    #[arg(long, default_value_t = 0.3)]
    pub heldout: f64,
    /// Calibrate each feature's scores (on its training windows) and choose the threshold
    /// for --target-far on the held-out windows; without it the model keeps the seed's
    /// threshold 0.9 and raw scores.
    #[arg(long)]
    pub calibrate: bool,
    /// Raw-score quantile that calibration maps to 1 (the median maps to 0).
    #[arg(long, default_value_t = train::DEFAULT_CALIBRATION_QUANTILE)]
    pub calibration_quantile: f64,
    /// False-alarm rate per (frame, feature) the calibrated threshold is chosen for.
    #[arg(long, default_value_t = 1e-5)]
    pub target_far: f64,
    /// Share of clean frames that may raise an alert (any feature over the threshold),
    /// instead of --target-far's per (frame, feature) rate: the threshold becomes this
    /// upper quantile of the held-out windows' largest score over all features. Needs
    /// --calibrate.
    #[arg(long, requires = "calibrate")]
    pub target_frame_far: Option<f64>,
    /// Training threads; 0 uses every available core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Training data: a matrix of normal frames, one row per frame (.npy, .csv, .jsonl,
    /// optionally .gz); or a directory of such files, one per entity, for a directory of
    /// per-entity models (see `--values`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With a directory of per-entity data: each entity's PCA reconstruction model (or
    /// forecaster) fits the first N values of each frame (default: all; SMAP: 1, the
    /// telemetry value); a forecaster weighs the other columns as context.
    #[arg(long)]
    pub values: Option<usize>,
    /// `--kind forecast`: the absolute floor on every threshold, in the data's units
    /// ([`crate::detect::ForecastConfig::min_error`]). Default: as `tidewatch evaluate`
    /// sets it, 0.05 when `DIR`'s parent holds `labeled_anomalies.csv` (Telemanom's
    /// layout, values scaled to [-1, 1]), else 0.
    #[arg(long)]
    pub min_error: Option<f32>,
    /// Train on this many frames of normal data straight from the synthetic generator.
    #[arg(long)]
    pub synthetic_frames: Option<usize>,
    /// Noise seed of the synthetic data.
    #[arg(long, default_value_t = 0, requires = "synthetic_frames")]
    pub synthetic_seed: u64,
    /// Plant seed of the synthetic data (each feature's mean, spread, autocorrelation);
    /// the model fits only data of the same plant.
    #[arg(long, default_value_t = 0, requires = "synthetic_frames")]
    pub synthetic_plant_seed: u64,
    /// Number of features of the synthetic data.
    #[arg(long, default_value_t = 25_000, requires = "synthetic_frames")]
    pub features: usize,
    /// Directory to write the model to (`model.safetensors` and `model.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// The training settings these flags ask for.
    pub fn config(&self, feature_names: Option<Vec<String>>) -> TrainConfig {
        TrainConfig {
            kind: self.kind.ocsvm(),
            window: self.window,
            nu: self.nu,
            learning_rate: self.learning_rate,
            eta0: self.eta0,
            power_t: self.power_t,
            epochs: self.epochs,
            shuffle: !self.no_shuffle,
            components: self.components,
            gamma: self.gamma,
            rff_sampling: self.rff_sampling,
            seed: self.seed,
            heldout: self.heldout,
            calibrate: self.calibrate,
            calibration_quantile: self.calibration_quantile,
            target_far: self.target_far,
            target_frame_far: self.target_frame_far,
            threads: self.threads,
            feature_names,
            progress: !self.quiet,
        }
    }

    /// The command that makes the same model again: every setting that changes the result
    /// spelled out (so a later change of a default cannot change what it means), and none
    /// that does not (threads, progress bars).
    pub fn reproducing_command(&self) -> String {
        let mut c = vec!["tidewatch".to_string(), "train".to_string()];
        let mut flag = |name: &str, value: String| {
            c.push(format!("--{name}"));
            if !value.is_empty() {
                c.push(shell_quote(&value));
            }
        };
        flag("kind", value_name(self.kind));
        flag("window", self.window.to_string());
        flag("nu", self.nu.to_string());
        flag("learning-rate", value_name(self.learning_rate));
        flag("eta0", self.eta0.to_string());
        flag("power-t", self.power_t.to_string());
        flag("epochs", self.epochs.to_string());
        if self.no_shuffle {
            flag("no-shuffle", String::new());
        }
        if self.kind == TrainKind::Rff {
            flag("components", self.components.to_string());
            flag("gamma", self.gamma.to_string());
            flag("rff-sampling", value_name(self.rff_sampling));
        }
        flag("seed", self.seed.to_string());
        flag("heldout", self.heldout.to_string());
        if self.calibrate {
            flag("calibrate", String::new());
            flag(
                "calibration-quantile",
                self.calibration_quantile.to_string(),
            );
            flag("target-far", self.target_far.to_string());
            if let Some(f) = self.target_frame_far {
                flag("target-frame-far", f.to_string());
            }
        }
        if let Some(path) = &self.data {
            flag("data", path.display().to_string());
        }
        if let Some(values) = self.values {
            flag("values", values.to_string());
        }
        if let Some(min_error) = self.min_error {
            flag("min-error", min_error.to_string());
        }
        if let Some(frames) = self.synthetic_frames {
            flag("synthetic-frames", frames.to_string());
            flag("synthetic-seed", self.synthetic_seed.to_string());
            flag(
                "synthetic-plant-seed",
                self.synthetic_plant_seed.to_string(),
            );
            flag("features", self.features.to_string());
        }
        flag("out", self.out.display().to_string());
        c.join(" ")
    }
}

fn value_name<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .expect("no skipped variants")
        .get_name()
        .to_string()
}

/// Quotes `s` for a POSIX shell when it needs it, so the recorded command can be pasted.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:,+=@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The training frames and how to describe them in the model's provenance.
struct Data {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    names: Option<Vec<String>>,
    description: String,
}

fn load_data(args: &TrainArgs) -> anyhow::Result<Data> {
    if let Some(path) = &args.data {
        let m = read_matrix(path)
            .with_context(|| format!("cannot read training data {}", path.display()))?;
        return Ok(Data {
            description: format!(
                "{} ({} frames x {} features)",
                path.display(),
                m.rows,
                m.cols
            ),
            rows: m.rows,
            cols: m.cols,
            values: m.values,
            names: m.names,
        });
    }
    let frames = args
        .synthetic_frames
        .expect("clap requires --data or --synthetic-frames");
    let mut generator = Generator::new(GeneratorConfig {
        n_features: args.features,
        plant_seed: args.synthetic_plant_seed,
        seed: args.synthetic_seed,
        anomaly_rate: 0.0,
        ..GeneratorConfig::default()
    })?;
    let mut values = Vec::with_capacity(frames * args.features);
    let mut row = Vec::with_capacity(args.features);
    for _ in 0..frames {
        generator.next_into(&mut row);
        values.extend_from_slice(&row);
    }
    Ok(Data {
        description: format!(
            "synthetic generator, normal data only: plant seed {}, seed {}, {} frames x {} \
             features",
            args.synthetic_plant_seed, args.synthetic_seed, frames, args.features
        ),
        rows: frames,
        cols: args.features,
        values,
        names: None,
    })
}

/// Trains, saves the model to `--out` and prints a summary.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.data.as_deref().filter(|d| d.is_dir()) {
        if args.kind == TrainKind::Forecast {
            return super::train_forecast::run(args, dir);
        }
        return super::train_entities::run(args, dir);
    }
    anyhow::ensure!(
        args.kind != TrainKind::Forecast,
        "--kind forecast trains one forecaster per entity: --data must be a directory of \
         per-entity files"
    );
    let started = Instant::now();
    let mut data = load_data(args)?;
    let loaded = started.elapsed();
    let cfg = args.config(data.names.take());
    let view = MatrixView::new(data.rows, data.cols, &data.values)?;
    let mut report = train::train_with_report(view, &cfg)?;
    let model = &mut report.model;
    model.meta.provenance.data = data.description.clone();
    model.meta.provenance.seed = Some(args.seed);
    model.meta.provenance.command = args.reproducing_command();
    model
        .save(&args.out)
        .with_context(|| format!("cannot save the model to {}", args.out.display()))?;

    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    println!(
        "trained {} model: {} features, window {}, {} training windows per feature \
         ({} frames), {} held-out frames",
        value_name(args.kind),
        data.cols,
        args.window,
        report.train_windows,
        report.train_frames,
        report.heldout_frames
    );
    println!(
        "time: data {:.1} s, fit {:.1} s, held-out {:.1} s on {threads} threads",
        loaded.as_secs_f64(),
        report.fit_time.as_secs_f64(),
        report.heldout_time.as_secs_f64()
    );
    let meta = &report.model.meta;
    match &meta.calibration {
        Some(c) => match args.target_frame_far {
            Some(f) => println!(
                "threshold {:.4}: calibrated for {f:e} of the held-out frames alerting (any \
                 feature) on {} held-out windows",
                meta.threshold, report.heldout_windows
            ),
            None => println!(
                "threshold {:.4}: calibrated for {:e} false alarms per (frame, feature) on {} \
                 held-out windows per feature",
                meta.threshold, c.target_false_alarm_rate, report.heldout_windows
            ),
        },
        None => println!("threshold {} (seed default, uncalibrated)", meta.threshold),
    }
    match (report.heldout_false_alarm_rate(), report.heldout_alarms) {
        (Some(rate), Some(alarms)) => println!(
            "held-out false-alarm rate at the threshold: {rate:.2e} ({alarms} of {} \
             (window, feature) pairs{})",
            report.heldout_scores,
            if meta.calibration.is_some() {
                "; the threshold was chosen on them"
            } else {
                ""
            }
        ),
        _ => println!("held-out false-alarm rate: not measured (no held-out windows)"),
    }
    if let Some(c) = &meta.calibration {
        let expected = report.heldout_scores as f64 * c.target_false_alarm_rate;
        if expected < 10.0 {
            println!(
                "note: at this target only {expected:.1} held-out scores lie above the \
                 threshold, too few to place it precisely; train on more frames or features, \
                 or raise --heldout"
            );
        }
    }
    if let Some(alarms) = report.heldout_frame_alarms {
        println!(
            "held-out frames with an alert at the threshold: {:.2e} ({alarms} of {} windows, \
             every held-out window counted)",
            alarms as f64 / report.heldout_windows.max(1) as f64,
            report.heldout_windows
        );
    }
    if report.threshold_floored {
        eprintln!(
            "warning: the calibrated threshold fell under its floor {} (degenerate training \
             data): it rests on the floor",
            crate::train::MIN_CALIBRATED_THRESHOLD
        );
    }
    if !report.flat_features.is_empty() {
        let index = crate::model::FeatureIndex::new(&meta.features, meta.n_features)
            .map_err(anyhow::Error::msg)?;
        let names: Vec<String> = report
            .flat_features
            .iter()
            .map(|&j| index.name(j))
            .collect();
        eprintln!(
            "warning: {} features did not vary on their training windows and got the median \
             scale: {}",
            names.len(),
            names.join(",")
        );
    }
    println!("saved to {}", args.out.display());
    println!("reproduce with: {}", meta.provenance.command);
    Ok(())
}

//! `tidewatch replay`: a file or the generator through a dataflow variant into sinks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use super::{DeviceArgs, SyntheticArgs};
use crate::dataflows::PipelineArgs;
use crate::model::Model;
use crate::ops::Pacing;
use crate::runtime::{self, ClusterArgs, Settings, SinkSpec, SourceFactory};
use crate::sinks::metrics_store::MetricsStore;
use crate::sinks::scores::ScoreLines;
use crate::sources::{
    self, FrameSource, Generator, GeneratorSource, KeyPolicy, MissingKeys, UnknownKeys,
};

/// Flags of `tidewatch replay`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct ReplayArgs {
    /// Model directory, or the name of one under models/.
    #[arg(long, env = "DEFAULT_MODEL_NAME", default_value = "default")]
    pub model: String,
    /// Frames to replay: .jsonl, .jsonl.gz, .csv, .npy or .npy.gz (format by extension),
    /// or a directory of `<entity>.npy[.gz]` files, one entity per file (row t of every
    /// entity, in name order, before row t + 1 of any).
    #[arg(long, conflicts_with = "generate")]
    pub input: Option<PathBuf>,
    /// CSV input: the column that names each record's entity (default: a column called
    /// entity, machine_id, source_id or channel, if there is one).
    #[arg(long, requires = "input")]
    pub entity_column: Option<String>,
    /// Replay this many frames from the synthetic generator instead of a file.
    #[arg(long, required_unless_present = "input")]
    pub generate: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub synthetic: SyntheticArgs,
    /// Generator: write the ground truth (one injected anomaly per line) here.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Frames per second to replay at (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pipeline: PipelineArgs,
    /// Windows per scoring call at most.
    #[arg(long, env = "INFERENCE_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub device: DeviceArgs,
    /// Write one alert body per anomalous frame to this JSONL file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print alert lines on stdout.
    #[arg(long)]
    pub stdout: bool,
    /// Write every scored frame's score to this CSV file (`seq,id,entity,score,flag`;
    /// `score` is the frame's largest feature score, `flag` 1 if it alerted).
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Push every scored frame's score and flag to this metrics store, by the
    /// VictoriaMetrics import API (e.g. `http://127.0.0.1:8428`).
    #[arg(long, env = "METRICS_STORE_URL")]
    pub metrics_store: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub alerts: super::AlertArgs,
    /// Most features listed in one alert (the count is always complete).
    #[arg(long, default_value_t = crate::sinks::alert::DEFAULT_MAX_FEATURES)]
    pub max_alert_features: usize,
    /// What to do with keys that name no model feature.
    #[arg(long, value_enum, default_value = "reject")]
    pub unknown_features: UnknownKeys,
    /// What to do with model features missing from a frame.
    #[arg(long, value_enum, default_value = "reject")]
    pub missing_features: MissingKeys,
    /// Print the summary as one JSON object on stdout (logs stay on stderr).
    #[arg(long)]
    pub json: bool,
    /// Log a JSON metrics line (counters, CPU, RSS, stage latencies) this often, e.g. `5s`.
    #[arg(long, env = "METRICS_INTERVAL", value_parser = humantime::parse_duration)]
    pub metrics_interval: Option<std::time::Duration>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Replays the input and prints a summary (from the process hosting worker 0).
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of frames per second, not {rate}"
        );
    }
    let path = Model::resolve(&args.model);
    let model = Arc::new(
        crate::dataflows::load_model(&args.pipeline.dataflow, &path)
            .with_context(|| format!("loading model {}", args.model))?,
    );
    let settings = Settings {
        pipeline: args.pipeline.pipeline()?.with_model_dir(path),
        batch_size: args.batch_size,
        threshold: args.pipeline.threshold,
        window: args.pipeline.window,
        stride: args.pipeline.stride,
        max_alert_features: args.max_alert_features,
        pacing: args.rate.map(Pacing::rate).unwrap_or(Pacing::Unpaced),
        stats: None,
        metrics_interval: args.metrics_interval,
        device: args.device.device,
        incidents: args
            .alerts
            .incidents(crate::sinks::webhook::CLIENT_BODY_LIMIT)?,
        controls: None,
    };
    let make_source = source_factory(args, &model);
    // the process that merges verdicts writes the scores; no other one opens the file
    let scores = match &args.scores {
        Some(path) if args.cluster.is_leader() => Some(ScoreLines::create(path)?),
        _ => None,
    };
    let store = match &args.metrics_store {
        Some(url) if args.cluster.is_leader() => {
            Some(MetricsStore::start(url, &args.pipeline.dataflow)?)
        }
        _ => None,
    };
    let sinks = SinkSpec {
        alerts_path: args.output.clone(),
        stdout: args.stdout,
        on_result: crate::sinks::combine(
            scores.as_ref().map(ScoreLines::hook),
            store.as_ref().map(MetricsStore::hook),
        ),
        on_incident: None,
    };
    let report = runtime::run(&args.cluster, model, settings, make_source, sinks)?;
    if let Some(scores) = scores {
        scores.finish()?;
    }
    let pushed = store.map(MetricsStore::finish);
    if !args.cluster.is_leader() {
        return Ok(());
    }
    let s = &report.stats;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["frames_per_second"] = report.frames_per_second().into();
        if let Some(p) = &pushed {
            v["metrics_store"] = serde_json::to_value(p)?;
        }
        // the summary is the command's result: stdout, apart from the logs on stderr
        println!("{v}");
    } else {
        eprintln!(
            "replayed {} frames ({} rejected) in {:.2} s: {:.1} frames/s; {} scored, {} anomalous frames, {} anomalous (frame, feature) pairs",
            s.frames_in,
            s.frames_rejected,
            report.seconds,
            report.frames_per_second(),
            s.frames_scored,
            s.anomalous_frames,
            s.anomalous_pairs
        );
        if args.alerts.mode == super::AlertMode::Incident {
            let i = &report.incidents;
            eprintln!(
                "incidents: {} reached info, {} warning, {} critical; {} open at the end of the input (resolved there)",
                i.info, i.warning, i.critical, i.ended
            );
        }
        if let Some(p) = &pushed {
            eprintln!(
                "metrics store: {} verdicts pushed, {} dropped",
                p.pushed, p.dropped
            );
        }
        eprint!("{}", crate::metrics::latency_table(&report.latencies));
    }
    Ok(())
}

fn source_factory(args: &ReplayArgs, model: &Model) -> SourceFactory {
    let index = model.feature_index();
    let policy = KeyPolicy {
        unknown: args.unknown_features,
        missing: args.missing_features,
    };
    match (&args.input, args.generate) {
        (Some(path), _) if crate::dataflows::reads_records(&args.pipeline.dataflow) => {
            let path = path.clone();
            runtime::on_worker_zero(move || crate::dataflows::record_file(&path))
        }
        (Some(path), _) => {
            // Process 0's workers share the file: each parses the records it takes.
            let path = path.clone();
            let entity_column = args.entity_column.clone();
            // Paced (`--rate`), decoding is not what limits: one reader keeps the pace exact.
            let readers = match args.rate {
                Some(_) => 1,
                None => args.cluster.threads.max(1),
            };
            type Opened = Option<Vec<Option<Box<dyn FrameSource>>>>;
            let opened: Mutex<Opened> = Mutex::new(None);
            Arc::new(move |slot: runtime::WorkerSlot| {
                if slot.index >= readers {
                    return Ok(None);
                }
                let mut opened = opened.lock().unwrap_or_else(|e| e.into_inner());
                if opened.is_none() {
                    let column = entity_column.as_deref();
                    let sources =
                        sources::file::open_keyed(&path, &index, policy, readers, column)?;
                    // a format read by one source alone (NPY) leaves the other workers none
                    *opened = Some(sources.into_iter().map(Some).collect());
                }
                Ok(opened
                    .as_mut()
                    .and_then(|s| s.get_mut(slot.index))
                    .and_then(Option::take))
            })
        }
        (None, frames) => {
            let config = args.synthetic.config(model.n_features());
            let truth = args.truth.clone();
            runtime::on_worker_zero(move || {
                let mut s = GeneratorSource::new(Generator::new(config.clone())?, frames);
                if let Some(t) = &truth {
                    s = s.with_truth(t)?;
                }
                Ok(Box::new(s) as Box<dyn FrameSource>)
            })
        }
    }
}

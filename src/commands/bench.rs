//! `tidewatch bench`: drives the real dataflow at full speed (or at a fixed offered rate)
//! from frames encoded beforehand exactly as seed 001's NestJS client sends them, and
//! reports throughput (frames/s, feature values/s, MB/s of wire input), CPU time and
//! memory, and receive → verdict latency.
//!
//! Two modes. In process (the default), a source cycles the ring of encoded frames and
//! inflates and decodes each one as it hands it out, the per-frame CPU work that `serve`
//! does on its HTTP threads, with no sockets in the way. With `--http`, `serve` listens
//! on loopback and the load generator posts the same ring to it: the whole path,
//! HTTP included, in one process.
//!
//! With `--kafka BROKERS`, the ring is first produced (--frames of it, default 1,000) to a
//! fresh topic, and then the dataflow reads the topic with every worker, decoding as
//! `serve --kafka-brokers` does, until it has read it all.
//!
//! Encoding is not measured: the ring is encoded before the clock starts, by the same
//! encoder as `loadgen` ([`crate::load::FrameEncoder`]).
//!
//! With `--input FILE` (JSONL), the ring is the file's records instead, each line kept as
//! written (plain JSON) and decoded in the measured loop as a generated frame is: the
//! work `replay --input FILE` does, apart from reading the file. Every record is decoded
//! once before the clock starts, and a record that does not fit the model stops the run
//! with its file and line. In process and with `--http` (the load generator posts the
//! lines as bodies); not with `--kafka`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::receiver::AlertReceiver;
use super::{DeviceArgs, SyntheticArgs};
use crate::clock;
use crate::load::{self as loadgen, Encoded, FrameEncoder, LoadgenArgs, Percentiles};
use crate::model::Model;
use crate::ops::Pacing;
use crate::resources::{cpu_seconds, kib_to_mib, minor_faults, status_kib};
use crate::runtime::{
    self, ClusterArgs, ResultHook, Settings, SinkSpec, SourceFactory, WorkerSlot,
};
use crate::server::{self, ModelSpec, ServeConfig};
use crate::sinks::webhook::WebhookConfig;
use crate::sources::ring::{RingCounters, RingSource};
use crate::sources::{
    decode_frame, inflate_if_gzip, BodyKind, FrameSource, KeyPolicy, MissingKeys, UnknownKeys,
};
use crate::stats::StageSummary;
use crate::types::FrameResult;

/// How long a run lasts when neither --frames nor --duration is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Generated frames in the ring when --ring is not given.
const DEFAULT_RING: usize = 64;

/// RSS is read from `/proc` on every this-many-th verdict: often enough to see the
/// steady state, rarely enough to cost nothing next to scoring a frame.
const RSS_EVERY: u64 = 16;

/// Flags of `tidewatch bench`.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// Model directory, or the name of one under models/.
    #[arg(long, env = "DEFAULT_MODEL_NAME", default_value = "default")]
    pub model: String,
    /// Stop after this many frames have entered the dataflow (HTTP: have been sent).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Stop after this long (e.g. `30s`); with neither this nor --frames, 10 s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Features per frame (named `feature_0`, ...); must be the model's number of
    /// features, which is the default.
    #[arg(long)]
    pub features: Option<usize>,
    /// Distinct frames sent round and round: this many generated frames, encoded before
    /// timing starts (default 64), or with --input the file's first this-many records
    /// (default: every record of the file, all held in memory). Where the ring wraps the
    /// series jump, which the model may flag.
    #[arg(long)]
    pub ring: Option<usize>,
    /// Frames from this JSONL file (`.jsonl` or `.json`, optionally `.gz`; CSV and NPY
    /// are refused) instead of the generator: each line is one body, kept as written
    /// (plain JSON), and decoded while timed as generated frames are, the work
    /// `replay --input FILE` does apart from reading the file. Every record is decoded
    /// once before timing starts; one that does not fit the model stops the run, naming
    /// its line. With --http the lines are the request bodies (serve's body limit is
    /// raised to the longest line). The generator's flags (--features, --seed,
    /// --kinds, ...) are refused with it: they would change nothing.
    #[arg(
        long,
        value_name = "FILE",
        // `SyntheticArgs` is the group clap's derive makes of the generator's flags, so
        // a flag added there is refused here too
        conflicts_with_all = ["kafka", "features", "SyntheticArgs"]
    )]
    pub input: Option<PathBuf>,
    /// What to do with keys that name no model feature (as `replay`, with its default).
    #[arg(long, value_enum, default_value = "reject")]
    pub unknown_features: UnknownKeys,
    /// What to do with model features missing from a frame (as `replay`, with its
    /// default).
    #[arg(long, value_enum, default_value = "reject")]
    pub missing_features: MissingKeys,
    /// Open loop: offer this many frames per second, evenly spaced, instead of as many
    /// as the dataflow takes; the receive → verdict latency then excludes waiting
    /// behind the source.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Through HTTP: `serve` on 127.0.0.1 and the load generator against it, in this
    /// process, instead of decoding in the dataflow's source. Unpaced, the generator
    /// sends the next frame as soon as it is answered, 429 included (the HTTP answer
    /// counts show how many were refused).
    #[arg(long)]
    pub http: bool,
    /// --http: deliver alerts to a receiver on loopback that answers like the NestJS
    /// server (as in `demo`), so that the report times alert delivery and receive →
    /// alert sent; without it alerts are not sent.
    #[arg(long, requires = "http")]
    pub alerts: bool,
    /// --alerts: deliver them through a durable outbox (appended and synced to disk
    /// before sending, as `serve` does by default) in a fresh directory under the
    /// temporary directory, removed afterwards; without it, the in-memory path.
    #[arg(long, requires = "alerts")]
    pub outbox: bool,
    /// Also measure the floor of this machine in the same run, before and after it (each
    /// this long, e.g. `3s`): the same frames inflated and decoded by the same code with a
    /// linear pass over the values, in a plain loop on `-w` threads, no dataflow; the
    /// report adds `floor_frames_per_second` and `share_of_floor`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub floor: Option<Duration>,
    /// Soak: run this long (e.g. `30m`) at --rate, sampling RSS and the receive →
    /// verdict latency every --soak-interval; the report lists the samples and how far
    /// RSS and p99 drifted.
    #[arg(long, value_parser = humantime::parse_duration, requires = "rate", conflicts_with_all = ["duration", "frames"])]
    pub soak: Option<Duration>,
    /// Soak: the length of one sample.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub soak_interval: Duration,
    /// From Kafka at these brokers: produce --frames frames (default 1,000) to a fresh
    /// topic, then time the dataflow reading them on every worker (one process).
    #[arg(long, value_name = "BROKERS", conflicts_with = "http")]
    pub kafka: Option<String>,
    /// --kafka: partitions of the fresh topic.
    #[arg(long, default_value_t = 4)]
    pub kafka_partitions: usize,
    /// --http: requests in flight at once at most.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// --http: frames accepted but not yet taken by the dataflow, at most.
    #[arg(long, env = "QUEUE_MAX_SIZE", default_value_t = 100)]
    pub queue_max_size: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pipeline: crate::dataflows::PipelineArgs,
    /// Windows per scoring call at most.
    #[arg(long, env = "INFERENCE_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub device: DeviceArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub synthetic: SyntheticArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Log a JSON metrics line (counters, CPU, RSS, stage latencies) this often, e.g. `5s`.
    #[arg(long, env = "METRICS_INTERVAL", value_parser = humantime::parse_duration)]
    pub metrics_interval: Option<Duration>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// What a bench run measured (from the process hosting worker 0).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// `in-process` or `http`.
    pub mode: &'static str,
    /// The model's directory.
    pub model: String,
    /// Features per frame.
    pub features: usize,
    /// The model's window length.
    pub window: usize,
    /// Workers in all (threads × processes), i.e. feature partitions.
    pub workers: usize,
    /// Worker threads per process.
    pub threads: usize,
    /// Processes.
    pub processes: usize,
    /// Dataflow variant.
    pub dataflow: String,
    /// Windows per scoring call at most.
    pub batch_size: usize,
    /// Where scoring ran: `cpu`, or `cuda (<GPU name>)`.
    pub device: String,
    /// Distinct frames cycled (generated and encoded beforehand, or the file's records).
    pub ring: usize,
    /// The file whose records were cycled (`--input`), or `None` for generated frames.
    pub input: Option<String>,
    /// Offered frames per second (open loop), or `None` for as fast as taken.
    pub offered_rate: Option<f64>,
    /// Frames that entered the dataflow.
    pub frames: u64,
    /// Frames with a verdict (all but the first window − 1).
    pub frames_scored: u64,
    /// Frames with at least one feature over the threshold.
    pub anomalous_frames: u64,
    /// Wall time from the first frame to the last verdict, seconds.
    pub seconds: f64,
    /// `frames / seconds`.
    pub frames_per_second: f64,
    /// Feature values per second: `frames_per_second × features`.
    pub features_per_second: f64,
    /// Bytes of the frames taken in, as on the wire: gzip for generated frames, the
    /// lines as written with --input (HTTP: frames accepted × the ring's mean frame size;
    /// refused requests are not counted).
    pub wire_bytes: u64,
    /// `wire_bytes / seconds`, in MB (10^6 bytes) per second.
    pub wire_mb_per_second: f64,
    /// Mean size of a frame of the ring as sent (gzip, or the file's line), bytes.
    pub mean_frame_bytes: f64,
    /// Mean inflated (JSON) size of a frame of the ring, bytes.
    pub mean_json_bytes: f64,
    /// CPU time of the whole process (all threads; HTTP: the load generator's too) over
    /// the run, seconds.
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds / seconds`: cores kept busy on average.
    pub cpu_cores: Option<f64>,
    /// Largest resident set size seen while frames were scored, MiB.
    pub rss_mib: Option<f64>,
    /// Peak resident set size of the process's life (`VmHWM`: model load and ring
    /// encoding included), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Minor page faults of the process over the run (warm-up included), per frame:
    /// buffers that came from the kernel as fresh pages rather than being reused.
    pub minor_faults_per_frame: Option<f64>,
    /// Receive → verdict latency over scored frames (receive: when the source handed
    /// the frame out, before decoding; HTTP: when the request arrived).
    pub latency_us: Option<Latency>,
    /// Latency of each stage of the path, recorded by the engine in this process.
    pub stages: Vec<StageSummary>,
    /// HTTP facts (with --http).
    pub http: Option<HttpFigures>,
    /// Kafka facts (with --kafka).
    pub kafka: Option<KafkaFigures>,
    /// With --soak: RSS and latency per interval, and their drift.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<super::soak::SoakReport>,
    /// With --floor: the floor's frames/s on `-w` threads (the mean of its measurements
    /// before and after the run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_frames_per_second: Option<f64>,
    /// With --floor: `frames_per_second / floor_frames_per_second`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_of_floor: Option<f64>,
}

/// What producing the frames took with --kafka (not part of the measured run).
#[derive(Clone, Debug, Serialize)]
pub struct KafkaFigures {
    /// The fresh topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: usize,
    /// Frames produced.
    pub produced: u64,
    /// Producing them took this long, seconds (confirmations included).
    pub produce_seconds: f64,
}

/// Latency percentiles in microseconds (HDR histogram, 3 significant figures).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    /// Frames measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

/// What the load generator saw with --http.
#[derive(Clone, Debug, Serialize)]
pub struct HttpFigures {
    /// Requests in flight at once at most.
    pub concurrency: usize,
    /// Requests sent (refused ones included).
    pub sent: u64,
    /// gzip bytes sent (refused requests included).
    pub sent_bytes: u64,
    /// Answers by HTTP status, and transport failures by `error: <kind>`.
    pub statuses: BTreeMap<String, u64>,
    /// Answer latency percentiles in ms (the 202 comes once a frame is queued, before
    /// it is scored).
    pub answer_latency_ms: Percentiles,
    /// With --alerts: what became of the alerts.
    pub alerts: Option<AlertFigures>,
}

/// Alerts delivered to the loopback receiver with `--http --alerts`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AlertFigures {
    /// Accepted by the receiver, as the sender counted them.
    pub sent: u64,
    /// Accepted, as the receiver counted them.
    pub received: u64,
    /// Refused by the receiver (too large, or invalid for the client).
    pub refused: u64,
    /// Retries of failed attempts.
    pub retried: u64,
    /// Given up on, into the dead-letter file.
    pub dead_lettered: u64,
    /// Whether they went through the durable outbox (`--outbox`).
    pub outbox: bool,
}

/// Runs `tidewatch bench` and prints its report (process 0 only).
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.ring == Some(0) {
        bail!("--ring must be at least 1");
    }
    if args.input.is_some() && crate::dataflows::reads_records(&args.pipeline.dataflow) {
        bail!(
            "bench --input reads frames, and the {} variant reads records: time it with `replay --input`",
            args.pipeline.dataflow
        );
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of frames per second");
    }
    let dir = Model::resolve(&args.model);
    let model = Arc::new(
        crate::dataflows::load_model(&args.pipeline.dataflow, &dir)
            .with_context(|| format!("loading model {}", dir.display()))?,
    );
    let features = args.features.unwrap_or(model.n_features());
    if features != model.n_features() {
        bail!(
            "--features {features}, but model {} has {} features: frames must match the model (train one of {features} features with `tidewatch train`)",
            dir.display(),
            model.n_features()
        );
    }
    let device = crate::detect::gpu::resolve_for(args.device.device, &model)?;
    // One set of counters for the run, so that a soak can sample it while it runs.
    let stats = Arc::new(crate::stats::Stats::default());
    let settings = Settings {
        device: device.used,
        pipeline: args.pipeline.pipeline()?.with_model_dir(dir.clone()),
        batch_size: args.batch_size,
        threshold: args.pipeline.threshold,
        window: args.pipeline.frame_window(),
        stride: args.pipeline.frame_stride(),
        event_time: args.pipeline.event_time()?,
        pacing: pacing(args),
        metrics_interval: args.metrics_interval,
        stats: Some(Arc::clone(&stats)),
        ..Settings::default()
    };
    if !args.cluster.is_leader() {
        // Scores its share of the features for the frames process 0 reads.
        runtime::run(
            &args.cluster,
            model,
            settings,
            runtime::no_input(),
            SinkSpec::default(),
        )?;
        return Ok(());
    }

    // As `replay` matches a file's keys (its flags and defaults); the body is a frame,
    // as it is for every variant that `--input` accepts.
    let policy = KeyPolicy {
        unknown: args.unknown_features,
        missing: args.missing_features,
        body: BodyKind::Frame,
    };
    let index = model.feature_index();
    let (ring, ring_facts) = match &args.input {
        Some(path) => {
            let records =
                crate::sources::file::jsonl_records(path, args.ring).context("bench --input")?;
            if records.is_empty() {
                bail!("{}: no records (every line is blank)", path.display());
            }
            let lines: Vec<usize> = records.iter().map(|r| r.line).collect();
            let ring: Vec<Encoded> = records
                .into_iter()
                .map(|r| (Bytes::from(r.body), 0))
                .collect();
            let facts = RingFacts::measure(&ring, &index, policy, |i| {
                format!("{}:{}", path.display(), lines[i])
            })
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}\n(bench --input refuses a file with a record that does not decode against the model: a run over partly bad input would time less work than the file holds)"
                )
            })?;
            (ring, facts)
        }
        None => {
            let ring = FrameEncoder::new(args.synthetic.config(features))?
                .ring(args.ring.unwrap_or(DEFAULT_RING));
            let facts = RingFacts::measure(&ring, &index, policy, |i| format!("frame {i}"))
                .context("the generated frames do not decode against the model")?;
            (ring, facts)
        }
    };
    let ring_len = ring.len();
    let floor = |ring: &[Encoded]| -> anyhow::Result<Option<f64>> {
        let Some(d) = args.floor else { return Ok(None) };
        let bodies: Vec<Bytes> = ring.iter().map(|(b, _)| b.clone()).collect();
        let threads = args.cluster.threads.max(1);
        super::floor::frames_per_second(&bodies, &index, policy, threads, d).map(Some)
    };
    let floor_before = floor(&ring)?;
    let ring_after = args.floor.map(|_| ring.clone());
    let probe = Arc::new(Probe::default());
    if args.soak.is_some() && args.soak_interval.is_zero() {
        bail!("--soak-interval must be longer than 0 s");
    }
    let soak = args
        .soak
        .map(|_| super::soak::Sampler::start(Arc::clone(&stats), args.soak_interval));
    let faults_before = minor_faults();
    let mut report = if let Some(brokers) = &args.kafka {
        run_kafka(args, brokers, &model, settings, ring, Arc::clone(&probe))?
    } else if args.http {
        let facts = &ring_facts;
        run_http(
            args,
            &model,
            settings,
            policy,
            ring,
            facts,
            Arc::clone(&probe),
        )?
    } else {
        run_in_process(args, &model, settings, policy, ring, Arc::clone(&probe))?
    };
    report.ring = ring_len;
    report.input = args.input.as_ref().map(|p| p.display().to_string());
    report.minor_faults_per_frame = faults_before
        .zip(minor_faults())
        .map(|(a, b)| b.saturating_sub(a) as f64 / report.frames.max(1) as f64);
    report.model = dir.display().to_string();
    report.device = match &device.gpu {
        Some(g) if device.used == server::Device::Cuda => format!("cuda ({})", g.name),
        _ => "cpu".into(),
    };
    report.mean_frame_bytes = ring_facts.mean_wire;
    report.mean_json_bytes = ring_facts.mean_json;
    report.soak = soak.map(super::soak::Sampler::finish);
    if let (Some(before), Some(ring)) = (floor_before, ring_after) {
        let after = floor(&ring)?.unwrap_or(before);
        let f = (before + after) / 2.0;
        report.floor_frames_per_second = Some(f);
        report.share_of_floor = Some(report.frames_per_second / f.max(1e-9));
    }
    report.latency_us = probe.latency();
    report.rss_mib = probe.rss_mib();
    // The kernel updates VmHWM lazily (per-thread RSS counters), so a fresh VmRSS sample
    // can exceed it by a few pages: the peak is at least what was seen.
    report.peak_rss_mib = match (proc_status_mib("VmHWM:"), report.rss_mib) {
        (Some(hwm), Some(rss)) => Some(hwm.max(rss)),
        (hwm, rss) => hwm.or(rss),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.table());
    }
    Ok(())
}

/// Sizes of the ring's frames; decoding each once also checks, before the clock
/// starts, that the frames fit the model (else frames would be rejected while timed,
/// and the run would time less work than it says).
struct RingFacts {
    mean_wire: f64,
    mean_json: f64,
    /// The largest frame as sent, bytes.
    max_wire: usize,
}

impl RingFacts {
    /// Decodes every frame of `ring` as the run will, keys matched as `policy` says; the
    /// first that fails is the error, named by `origin(position)`.
    fn measure(
        ring: &[Encoded],
        index: &crate::model::FeatureIndex,
        policy: KeyPolicy,
        origin: impl Fn(usize) -> String,
    ) -> anyhow::Result<RingFacts> {
        let (mut wire, mut json, mut max_wire) = (0usize, 0usize, 0usize);
        let mut values = Vec::new();
        for (i, (body, _)) in ring.iter().enumerate() {
            let inflated = inflate_if_gzip(body, crate::sources::ring::MAX_INFLATED)
                .with_context(|| origin(i))?;
            decode_frame(&inflated, index, policy, &mut values).with_context(|| origin(i))?;
            wire += body.len();
            json += inflated.len();
            max_wire = max_wire.max(body.len());
        }
        let n = ring.len().max(1) as f64;
        Ok(RingFacts {
            mean_wire: wire as f64 / n,
            mean_json: json as f64 / n,
            max_wire,
        })
    }
}

/// What the verdict hook records, on worker 0's thread.
struct Probe {
    latency: Mutex<Histogram<u64>>,
    verdicts: AtomicU64,
    last_verdict_us: AtomicU64,
    rss_kib: AtomicU64,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            // 1 µs to an hour: no latency a run can see is out of range.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            verdicts: AtomicU64::new(0),
            last_verdict_us: AtomicU64::new(0),
            rss_kib: AtomicU64::new(0),
        }
    }
}

impl Probe {
    fn hook(self: &Arc<Self>) -> ResultHook {
        let probe = Arc::clone(self);
        Arc::new(move |r: &FrameResult| probe.record(r))
    }

    fn record(&self, r: &FrameResult) {
        let now = clock::now_us();
        let latency = now.saturating_sub(r.meta.received_us).max(1);
        // Only worker 0 calls this, so the lock is never contended.
        let _ = self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(latency);
        self.last_verdict_us.fetch_max(now, Relaxed);
        if self
            .verdicts
            .fetch_add(1, Relaxed)
            .is_multiple_of(RSS_EVERY)
        {
            if let Some(kib) = status_kib("VmRSS:") {
                self.rss_kib.fetch_max(kib, Relaxed);
            }
        }
    }

    fn last_verdict_us(&self) -> Option<u64> {
        Some(self.last_verdict_us.load(Relaxed)).filter(|&t| t > 0)
    }

    fn rss_mib(&self) -> Option<f64> {
        Some(self.rss_kib.load(Relaxed))
            .filter(|&k| k > 0)
            .map(kib_to_mib)
    }

    fn latency(&self) -> Option<Latency> {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

/// How the dataflow's sources are paced for --rate: in process and from Kafka, every
/// worker of this process reads, and they take turns so that together they offer the
/// rate, evenly spaced; over HTTP the load generator offers it, and the dataflow takes
/// frames as they come.
fn pacing(args: &BenchArgs) -> Pacing {
    match args.rate {
        Some(rate) if !args.http => Pacing::Shared {
            rate,
            readers: args.cluster.threads.max(1),
        },
        _ => Pacing::Unpaced,
    }
}

/// The run's stopping rule: --frames, --duration, or the default duration.
fn limits(args: &BenchArgs) -> (Option<u64>, Option<Duration>) {
    match (args.frames, args.duration) {
        (None, None) => (None, Some(args.soak.unwrap_or(DEFAULT_DURATION))),
        limits => limits,
    }
}

/// Fields of the report both modes fill the same way.
fn base_report(
    args: &BenchArgs,
    features: usize,
    window: usize,
    mode: &'static str,
) -> BenchReport {
    BenchReport {
        mode,
        model: String::new(),
        features,
        window,
        workers: args.cluster.peers(),
        threads: args.cluster.threads.max(1),
        processes: args.cluster.processes.max(1),
        dataflow: args.pipeline.dataflow.clone(),
        batch_size: args.batch_size,
        device: String::new(),
        ring: 0,
        input: None,
        offered_rate: args.rate,
        frames: 0,
        frames_scored: 0,
        anomalous_frames: 0,
        seconds: 0.0,
        frames_per_second: 0.0,
        features_per_second: 0.0,
        wire_bytes: 0,
        wire_mb_per_second: 0.0,
        mean_frame_bytes: 0.0,
        mean_json_bytes: 0.0,
        cpu_seconds: None,
        cpu_cores: None,
        rss_mib: None,
        peak_rss_mib: None,
        minor_faults_per_frame: None,
        latency_us: None,
        stages: Vec::new(),
        http: None,
        kafka: None,
        soak: None,
        floor_frames_per_second: None,
        share_of_floor: None,
    }
}

impl BenchReport {
    /// Fills the rates from the counts, the wall time and the CPU time used.
    fn with_rates(mut self, seconds: f64, cpu_seconds: Option<f64>) -> BenchReport {
        let s = seconds.max(1e-9);
        self.seconds = seconds;
        self.frames_per_second = self.frames as f64 / s;
        self.features_per_second = self.frames_per_second * self.features as f64;
        self.wire_mb_per_second = self.wire_bytes as f64 / s / 1e6;
        self.cpu_seconds = cpu_seconds;
        self.cpu_cores = cpu_seconds.map(|c| c / s);
        self
    }

    /// The report as an aligned table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            (
                "frames",
                format!(
                    "{} in {:.2} s ({} scored, {} anomalous)",
                    self.frames, self.seconds, self.frames_scored, self.anomalous_frames
                ),
            ),
            ("frames/s", format!("{:.1}", self.frames_per_second)),
            (
                "feature values/s",
                format!("{:.0}", self.features_per_second),
            ),
            (
                "wire input",
                format!(
                    "{:.1} MB/s {} ({:.0} KB per frame, {:.0} KB of JSON)",
                    self.wire_mb_per_second,
                    if self.input.is_some() {
                        "of the file's lines"
                    } else {
                        "gzip"
                    },
                    self.mean_frame_bytes / 1e3,
                    self.mean_json_bytes / 1e3
                ),
            ),
        ];
        if let (Some(f), Some(share)) = (self.floor_frames_per_second, self.share_of_floor) {
            rows.push((
                "floor",
                format!(
                    "{f:.1} frames/s on {} threads: this run is {share:.2} of it",
                    self.threads
                ),
            ));
        }
        if let (Some(cpu), Some(cores)) = (self.cpu_seconds, self.cpu_cores) {
            rows.push(("CPU", format!("{cpu:.2} s ({cores:.2} cores)")));
        }
        if let Some(faults) = self.minor_faults_per_frame {
            rows.push(("page faults", format!("{faults:.1} minor a frame")));
        }
        let mib = |m: Option<f64>| m.map_or("n/a".to_string(), |m| format!("{m:.0} MiB"));
        rows.push((
            "RSS",
            format!(
                "{} while scoring, {} peak",
                mib(self.rss_mib),
                mib(self.peak_rss_mib)
            ),
        ));
        if let Some(l) = self.latency_us {
            let closed = if self.offered_rate.is_none() {
                " (unpaced: includes waiting behind the source)"
            } else {
                ""
            };
            rows.push((
                "receive→verdict µs",
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n = {}){closed}",
                    l.p50, l.p90, l.p99, l.p999, l.max, l.count
                ),
            ));
        }
        if let Some(h) = &self.http {
            let statuses = h
                .statuses
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            rows.push((
                "HTTP answers",
                format!(
                    "{} sent ({statuses}), concurrency {}",
                    h.sent, h.concurrency
                ),
            ));
            let l = h.answer_latency_ms;
            rows.push((
                "answer ms",
                format!(
                    "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                    l.p50, l.p90, l.p99, l.max
                ),
            ));
            if let Some(a) = h.alerts {
                rows.push((
                    "alerts",
                    format!(
                        "{} sent, {} received ({} refused), {} retried, {} dead-lettered; {}",
                        a.sent,
                        a.received,
                        a.refused,
                        a.retried,
                        a.dead_lettered,
                        if a.outbox {
                            "through the outbox"
                        } else {
                            "in memory"
                        }
                    ),
                ));
            }
        }
        if let Some(k) = &self.kafka {
            rows.push((
                "Kafka",
                format!(
                    "topic {} ({} partitions); producing {} frames beforehand took {:.2} s",
                    k.topic, k.partitions, k.produced, k.produce_seconds
                ),
            ));
        }
        let rate = self
            .offered_rate
            .map_or("unpaced".to_string(), |r| format!("offered {r} frames/s"));
        let input = self
            .input
            .as_ref()
            .map_or(String::new(), |p| format!("  input {p}\n"));
        let mut out = format!(
            "tidewatch bench ({}, {rate}): {} features, window {}, {} worker(s) ({} thread(s) × {} process(es)), dataflow {}, batch {}, ring {}\n{input}  model {}\n  device {}\n",
            self.mode,
            self.features,
            self.window,
            self.workers,
            self.threads,
            self.processes,
            self.dataflow,
            self.batch_size,
            self.ring,
            self.model,
            self.device
        );
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in rows {
            let pad = width - k.chars().count();
            let _ = writeln!(out, "  {k}{}  {v}", " ".repeat(pad));
        }
        if !self.stages.is_empty() {
            for line in crate::metrics::latency_table(&self.stages).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        if let Some(soak) = &self.soak {
            for line in soak.table().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        out.truncate(out.trim_end().len());
        out
    }
}

/// Decode + dataflow, no sockets.
fn run_in_process(
    args: &BenchArgs,
    model: &Arc<Model>,
    settings: Settings,
    policy: KeyPolicy,
    ring: Vec<Encoded>,
    probe: Arc<Probe>,
) -> anyhow::Result<BenchReport> {
    let (limit, duration) = limits(args);
    let ring: Arc<Vec<Bytes>> = Arc::new(ring.into_iter().map(|(b, _)| b).collect());
    let counters = Arc::new(RingCounters::default());
    let index = model.feature_index();
    // the workers of this process read; those of other processes only score
    let readers = args.cluster.threads.max(1);
    let factory: SourceFactory = {
        let counters = Arc::clone(&counters);
        Arc::new(move |slot: WorkerSlot| {
            if slot.index >= readers {
                return Ok(None);
            }
            Ok(Some(Box::new(RingSource::new(
                Arc::clone(&ring),
                index.clone(),
                policy,
                (slot.index as u64, readers as u64),
                limit,
                duration,
                Arc::clone(&counters),
            )) as Box<dyn FrameSource>))
        })
    };
    let sinks = SinkSpec {
        on_result: Some(probe.hook()),
        ..SinkSpec::default()
    };
    let cpu_before = cpu_seconds();
    let run = runtime::run(&args.cluster, Arc::clone(model), settings, factory, sinks)?;
    let cpu = cpu_before.zip(cpu_seconds()).map(|(a, b)| b - a);
    let mut report = base_report(args, model.n_features(), model.window(), "in-process");
    report.stages = run.latencies;
    report.frames = run.stats.frames_in;
    report.frames_scored = run.stats.frames_scored;
    report.anomalous_frames = run.stats.anomalous_frames;
    report.wire_bytes = counters.wire_bytes.load(Relaxed);
    Ok(report.with_rates(run.seconds, cpu))
}

/// `serve` on loopback and the load generator against it, in this process.
fn run_http(
    args: &BenchArgs,
    model: &Arc<Model>,
    settings: Settings,
    policy: KeyPolicy,
    ring: Vec<Encoded>,
    facts: &RingFacts,
    probe: Arc<Probe>,
) -> anyhow::Result<BenchReport> {
    let (limit, duration) = limits(args);
    let ring_mean_wire = facts.mean_wire;
    let mut config = ServeConfig::new(ModelSpec::Loaded(Arc::clone(model)));
    config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.settings = settings;
    config.key_policy = policy;
    // A file's plain JSON lines may be longer than serve's default limit (1 MiB) allows a
    // body: refusing them would time nothing.
    config.max_body_bytes = config.max_body_bytes.max(facts.max_wire);
    config.cluster = args.cluster.clone();
    config.queue_max_size = args.queue_max_size;
    // The receiver shares the load generator's runtime; serve brings its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let receiver = if args.alerts {
        Some(rt.block_on(AlertReceiver::start(Arc::new(|_: &serde_json::Value| {})))).transpose()?
    } else {
        None
    };
    let outbox_dir = args.outbox.then(|| {
        std::env::temp_dir().join(format!(
            "tidewatch-bench-outbox-{}-{}",
            std::process::id(),
            clock::unix_ms()
        ))
    });
    config.webhook = receiver.as_ref().map(|r| WebhookConfig {
        url: r.url(),
        outbox: outbox_dir
            .clone()
            .map(|dir| crate::sinks::outbox::OutboxConfig { dir, max_bytes: 0 }),
        // per run, so that runs side by side do not write into one file
        dead_letter: std::env::temp_dir().join(format!(
            "tidewatch-bench-dead-letter-{}.jsonl",
            std::process::id()
        )),
        ..WebhookConfig::default()
    });
    config.sinks = SinkSpec {
        on_result: Some(probe.hook()),
        ..SinkSpec::default()
    };
    let handle = server::start(config)?;
    handle
        .wait_ready(Duration::from_secs(600))
        .context("serve did not start")?;
    let load = LoadgenArgs {
        rate: args.rate,
        concurrency: args.concurrency.max(1),
        frames: limit,
        duration,
        features: model.n_features(),
        synthetic: args.synthetic.clone(),
        ..LoadgenArgs::to(format!("http://{}/data-enqueue", handle.addr()))
    };
    let cpu_before = cpu_seconds();
    let start_us = clock::now_us();
    let load = rt.block_on(loadgen::drive_ring(&load, ring));
    // Shut down even if the load failed, so that the dataflow's threads end.
    let served = handle.shutdown();
    let cpu = cpu_before.zip(cpu_seconds()).map(|(a, b)| b - a);
    if let Some(dir) = &outbox_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    // serve's shutdown drained the deliveries, so the receiver's counts are final.
    let received = receiver.map(|r| {
        let counts = (r.accepted(), r.refused());
        r.stop();
        counts
    });
    let load = load?;
    let served = served?;
    // From the first request to the last verdict; the server's drain is not counted.
    let sent_for = load.seconds;
    let seconds = probe.last_verdict_us().map_or(sent_for, |t| {
        (t.saturating_sub(start_us) as f64 / 1e6).max(sent_for)
    });
    let mut report = base_report(args, model.n_features(), model.window(), "http");
    report.stages = served.run.latencies.clone();
    let s = &served.run.stats;
    report.frames = s.frames_in;
    report.frames_scored = s.frames_scored;
    report.anomalous_frames = s.anomalous_frames;
    // Bytes taken in, not sent: a refused request (429) is not input, and counting
    // its bytes would credit the engine with refusing fast. The ring's frames differ in
    // size, so this is exact only over whole passes of the ring.
    report.wire_bytes = (ring_mean_wire * s.frames_in as f64).round() as u64;
    report.http = Some(HttpFigures {
        concurrency: args.concurrency.max(1),
        sent: load.sent,
        sent_bytes: (load.mean_body_bytes * load.sent as f64).round() as u64,
        statuses: load.statuses,
        answer_latency_ms: load.latency_ms,
        alerts: received.map(|(received, refused)| AlertFigures {
            sent: s.alerts_sent,
            received,
            refused,
            retried: s.alerts_retried,
            dead_lettered: s.alerts_dead_lettered,
            outbox: args.outbox,
        }),
    });
    Ok(report.with_rates(seconds, cpu))
}

/// `--kafka`: the ring produced to a fresh topic, then read by every worker of this
/// process until the topic's end.
fn run_kafka(
    args: &BenchArgs,
    brokers: &str,
    model: &Arc<Model>,
    settings: Settings,
    ring: Vec<Encoded>,
    probe: Arc<Probe>,
) -> anyhow::Result<BenchReport> {
    use crate::load::kafka::{produce, ProduceSpec};
    use crate::sources::kafka::{KafkaInput, KafkaInputConfig};
    if args.cluster.processes > 1 {
        bail!("bench --kafka runs in one process: use -w for more workers");
    }
    if args.duration.is_some() {
        bail!("bench --kafka reads a fixed number of frames: use --frames, not --duration");
    }
    let workers = args.cluster.threads.max(1);
    if args.rate.is_some() && !args.kafka_partitions.is_multiple_of(workers) {
        // Each worker reads its partitions at --rate / workers: with unequal shares of
        // partitions the workers together would not offer --rate.
        bail!(
            "bench --kafka --rate needs --kafka-partitions ({}) to be a multiple of the workers (-w {workers}), so that every worker reads an equal share",
            args.kafka_partitions
        );
    }
    let frames = args.frames.unwrap_or(1_000);
    let topic = format!(
        "tidewatch-bench-{}-{}",
        std::process::id(),
        clock::unix_ms()
    );
    let spec = ProduceSpec {
        brokers: brokers.to_string(),
        topic: topic.clone(),
        partitions: args.kafka_partitions.max(1),
        frames: Some(frames),
        duration: None,
        rate: None,
    };
    let produced = produce(&spec, |k| {
        let (body, injected) = &ring[(k % ring.len() as u64) as usize];
        (k.to_string(), body.to_vec(), *injected)
    })?;
    let mut config = KafkaInputConfig::new(brokers, &topic);
    config.group = topic.clone();
    config.until_end = true;
    let input = KafkaInput::new(config, model.feature_index(), None)?;
    let sinks = SinkSpec {
        on_result: Some(probe.hook()),
        ..SinkSpec::default()
    };
    let cpu_before = cpu_seconds();
    let run = runtime::run(
        &args.cluster,
        Arc::clone(model),
        settings,
        input.factory(),
        sinks,
    )?;
    let cpu = cpu_before.zip(cpu_seconds()).map(|(a, b)| b - a);
    let counters = input.counters();
    let mut report = base_report(args, model.n_features(), model.window(), "kafka");
    report.stages = run.latencies;
    report.frames = run.stats.frames_in;
    report.frames_scored = run.stats.frames_scored;
    report.anomalous_frames = run.stats.anomalous_frames;
    report.wire_bytes = counters.snapshot().bytes;
    report.kafka = Some(KafkaFigures {
        topic,
        partitions: spec.partitions,
        produced: produced.sent,
        produce_seconds: produced.seconds,
    });
    // From the first message taken to the last verdict: consumer start-up (metadata,
    // offsets, assignment) is not what is measured.
    let seconds = match (counters.first_message_us(), probe.last_verdict_us()) {
        (Some(first), Some(last)) if last > first => (last - first) as f64 / 1e6,
        _ => run.seconds,
    };
    Ok(report.with_rates(seconds, cpu))
}

fn proc_status_mib(name: &str) -> Option<f64> {
    status_kib(name).map(kib_to_mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchArgs {
        BenchArgs {
            model: "m".into(),
            frames: Some(20),
            duration: None,
            features: None,
            ring: Some(3),
            input: None,
            unknown_features: UnknownKeys::Reject,
            missing_features: MissingKeys::Reject,
            rate: None,
            floor: None,
            soak: None,
            soak_interval: Duration::from_secs(60),
            http: false,
            kafka: None,
            kafka_partitions: 4,
            concurrency: 4,
            queue_max_size: 100,
            pipeline: crate::dataflows::PipelineArgs::default(),
            batch_size: 64,
            device: DeviceArgs {
                device: server::Device::Cpu,
            },
            alerts: false,
            outbox: false,
            synthetic: SyntheticArgs::default(),
            json: false,
            metrics_interval: None,
            cluster: ClusterArgs::default(),
            help: None,
        }
    }

    #[test]
    fn rates_follow_from_counts() {
        let mut r = base_report(&args(), 500, 5, "in-process");
        r.frames = 20;
        r.wire_bytes = 4_000_000;
        let r = r.with_rates(2.0, Some(1.0));
        assert_eq!(r.frames_per_second, 10.0);
        assert_eq!(r.features_per_second, 5000.0);
        assert_eq!(r.wire_mb_per_second, 2.0);
        assert_eq!(r.cpu_cores, Some(0.5));
        let table = r.table();
        assert!(table.contains("frames/s"), "{table}");
        assert!(table.contains("5000"), "{table}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_figures_are_read() {
        assert!(cpu_seconds().is_some());
        assert!(proc_status_mib("VmRSS:").is_some_and(|m| m > 0.0));
        assert!(proc_status_mib("VmHWM:").is_some_and(|m| m > 0.0));
    }
}

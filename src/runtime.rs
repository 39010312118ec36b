//! Running a pipeline on timely workers: cluster flags, the per-worker environment a
//! variant builds from (inputs, detectors, parameters), and the loop that drives it to
//! completion. The runtime runs the [`Pipeline`] it is given; which variants exist, and
//! by what names, is the business of `dataflows/`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use timely::dataflow::operators::Inspect;
use timely::dataflow::{ProbeHandle, Scope};

use crate::controls::Controls;
use crate::detect::{Detector, Device};
use crate::incidents::{
    body::alert_event, EventKind, Groups, IncidentConfig, IncidentOps, IncidentSpec,
};
use crate::layout::Layout;
use crate::model::entities::EntityModels;
use crate::model::Model;
use crate::ops::{
    control_tap, frame_source, Cut, EventTime, EventWindowConfig, Live, Pacing, Progress, StatsOps,
    Stream, Time, WindowConfig,
};
use crate::sinks::file::AlertLines;
pub use crate::sinks::{IncidentHook, ResultHook, SinkSpec};
use crate::sources::FrameSource;
use crate::stats::{StageSummary, Stats, StatsSnapshot};
use crate::types::{Frame, FrameResult};

/// timely's cluster flags, spelled as in timely's own examples.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "threads", default_value_t = 1)]
    pub threads: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// This process's index, 0 ..= processes-1.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` per line, in process order (default: localhost:2101+i).
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// Report connection progress while the cluster forms.
    #[arg(short = 'r', long = "report")]
    pub report: bool,
    /// Use zero-copy serialised channels between threads of a process.
    #[arg(short = 'z', long = "zerocopy")]
    pub zerocopy: bool,
}

impl ClusterArgs {
    /// Total number of workers, and so of feature partitions.
    pub fn peers(&self) -> usize {
        self.threads.max(1) * self.processes.max(1)
    }

    /// Where this process sits in the cluster, for its [`Controls`].
    pub fn shape(&self) -> crate::controls::Shape {
        crate::controls::Shape {
            process: self.process,
            processes: self.processes.max(1),
            threads: self.threads.max(1),
        }
    }

    /// Whether this process hosts worker 0 (the source and the sinks).
    pub fn is_leader(&self) -> bool {
        self.process == 0
    }

    /// The timely configuration these flags describe.
    pub fn timely_config(&self) -> anyhow::Result<timely::Config> {
        use timely::CommunicationConfig as Comm;
        let threads = self.threads.max(1);
        if self.process >= self.processes.max(1) {
            bail!(
                "process index {} is outside 0..{} (-p must be less than -n)",
                self.process,
                self.processes
            );
        }
        let communication = if self.processes > 1 {
            let addresses = match &self.hostfile {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading hostfile {}", path.display()))?;
                    let lines: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .take(self.processes)
                        .map(String::from)
                        .collect();
                    if lines.len() < self.processes {
                        bail!(
                            "hostfile {} has {} addresses but -n is {}",
                            path.display(),
                            lines.len(),
                            self.processes
                        );
                    }
                    lines
                }
                None => (0..self.processes)
                    .map(|i| format!("localhost:{}", 2101 + i))
                    .collect(),
            };
            Comm::Cluster {
                threads,
                process: self.process,
                addresses,
                report: self.report,
                zerocopy: self.zerocopy,
            }
        } else if threads > 1 {
            if self.zerocopy {
                Comm::ProcessBinary(threads)
            } else {
                Comm::Process(threads)
            }
        } else {
            Comm::Thread
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// A variant's entry point: builds the pipeline on one worker and returns the verdicts.
pub type Build = for<'s> fn(Scope<'s, Time>, &mut Env) -> anyhow::Result<Results<'s>>;

/// A pipeline ready to run: a variant's build function and the parameters it will read
/// (`--param key=value`).
#[derive(Clone)]
pub struct Pipeline {
    /// The variant's name, for logs and reports.
    pub name: String,
    /// Builds the dataflow on one worker.
    pub build: Build,
    /// `key → value` as given; the variant reads them with [`Env::param`], and a key it
    /// does not read is an error.
    pub params: BTreeMap<String, String>,
    /// The model directory the run was given, for a variant whose models are per entity
    /// ([`Env::entity_models`]); `None` when the model did not come from a directory.
    pub model_dir: Option<PathBuf>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// The pipeline `build` makes, called `name`, with no parameters.
    pub fn new(name: impl Into<String>, build: Build) -> Pipeline {
        Pipeline {
            name: name.into(),
            build,
            params: BTreeMap::new(),
            model_dir: None,
        }
    }

    /// The same pipeline, told the model directory the run was given.
    pub fn with_model_dir(mut self, dir: PathBuf) -> Pipeline {
        self.model_dir = Some(dir);
        self
    }

    /// The same pipeline with `params` for its variant to read.
    pub fn with_params(mut self, params: BTreeMap<String, String>) -> Pipeline {
        self.params = params;
        self
    }
}

/// Pipeline settings shared by every variant. `Settings::default()` runs the default
/// variant: its `Default` is implemented in `dataflows/`, which knows the variants, so
/// that the runtime never names one.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The pipeline to run (see `dataflows::pipeline`).
    pub pipeline: Pipeline,
    /// Windows per scoring call at most (`INFERENCE_BATCH_SIZE`).
    pub batch_size: usize,
    /// Threshold override; `None` uses the model's (or the variant's default).
    pub threshold: Option<f32>,
    /// Window length override (`--window`); `None` lets the detector choose (a model's
    /// detector scores the model's window length, and refuses any other).
    pub window: Option<usize>,
    /// Window stride override; `None` lets the variant choose.
    pub stride: Option<usize>,
    /// Windows of event time (`--window 30s`) instead of frame counts; `None`: counts.
    /// Only a variant that reads them ([`Env::event_windows`]) runs with them.
    pub event_time: Option<EventTime>,
    /// How many features an alert lists at most.
    pub max_alert_features: usize,
    /// How fast the source is read.
    pub pacing: Pacing,
    /// Where the run counts frames and records stage latencies, for a caller that watches
    /// them live (`serve`'s `/metrics`); `None`: a fresh one, summed up in the report.
    pub stats: Option<Arc<Stats>>,
    /// Log one JSON metrics line this often (`METRICS_INTERVAL`); `None`: never.
    pub metrics_interval: Option<Duration>,
    /// Where to score (`DEFAULT_DEVICE`); [`run`] resolves `auto` once per process (see
    /// [`crate::detect::gpu::resolve_for`]) and logs what it chose and why.
    pub device: Device,
    /// Incident mode (`--alerts incident`): verdicts become incident events (see
    /// [`crate::incidents`]), and alert lines are incident events; `None`: one alert per
    /// anomalous frame.
    pub incidents: Option<IncidentSpec>,
    /// Model, threshold and mutes that may change while the run goes on (`serve`'s admin
    /// routes); `None`: fixed for the run. Read by [`Env::ocsvm`] and [`Env::cut`].
    pub controls: Option<Arc<Controls>>,
}

/// What a dataflow variant builds from, on one worker.
pub struct Env {
    /// The model, shared by the workers of a process.
    pub model: Arc<Model>,
    /// Pipeline settings.
    pub settings: Arc<Settings>,
    /// Run counters of this process.
    pub stats: Arc<Stats>,
    /// Which frames have their verdicts everywhere: the runtime probes the variant's
    /// results with it, and the source reads it to bound the frames in flight and to
    /// tell its upstream what has settled.
    pub progress: Progress,
    source: Option<Box<dyn FrameSource>>,
    /// The parameters the variant read so far, to find the ones it never reads.
    read: RefCell<BTreeSet<String>>,
    /// Whether the variant asked for event-time windows, to refuse them in one that
    /// would ignore them.
    read_event_time: std::cell::Cell<bool>,
    /// Whether the variant took the run's changes ([`Env::controlled_frames`]), so that
    /// changes are refused in one that would ignore them.
    took_changes: std::cell::Cell<bool>,
}

impl Env {
    /// An environment for one worker; `source` is `Some` on a worker that reads input.
    pub fn new(
        model: Arc<Model>,
        settings: Arc<Settings>,
        stats: Arc<Stats>,
        source: Option<Box<dyn FrameSource>>,
    ) -> Env {
        Env {
            model,
            settings,
            stats,
            progress: Progress::new(),
            source,
            read: RefCell::new(BTreeSet::new()),
            read_event_time: std::cell::Cell::new(false),
            took_changes: std::cell::Cell::new(false),
        }
    }

    /// The variant's parameter `key` (`--param key=value`), or `default` when it was not
    /// given. A value that does not parse as a `T` is an error naming the key and value.
    pub fn param<T>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T: std::str::FromStr,
        T::Err: fmt::Display,
    {
        self.read.borrow_mut().insert(key.to_string());
        let Some(value) = self.pipeline_params().get(key) else {
            return Ok(default);
        };
        value.parse().map_err(|e| {
            anyhow!(
                "--param {key}={value}: not a valid {} for variant {:?}: {e}",
                std::any::type_name::<T>(),
                self.pipeline_name()
            )
        })
    }

    /// An error naming the parameters given that the variant did not read: called after
    /// the variant was built, so that a misspelt key stops the run instead of being
    /// ignored.
    pub fn check_params(&self) -> anyhow::Result<()> {
        if self.settings.event_time.is_some() && !self.read_event_time.get() {
            bail!(
                "variant {:?} does not window by event time: give --window as a frame count",
                self.pipeline_name()
            );
        }
        let read = self.read.borrow();
        let unknown: Vec<&String> = self
            .pipeline_params()
            .keys()
            .filter(|k| !read.contains(*k))
            .collect();
        if let Some(first) = unknown.first() {
            let known: Vec<&str> = read.iter().map(String::as_str).collect();
            bail!(
                "variant {:?} has no parameter {first:?} (it reads: {})",
                self.pipeline_name(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
        Ok(())
    }

    fn pipeline_params(&self) -> &BTreeMap<String, String> {
        &self.settings.pipeline.params
    }

    fn pipeline_name(&self) -> &str {
        &self.settings.pipeline.name
    }

    /// The input frames (on this worker, if it reads input; empty otherwise). A variant
    /// that scores with the run's model or cuts at its threshold reads them with
    /// [`Env::controlled_frames`] instead, to follow changes made while it runs.
    pub fn frames<'s>(&mut self, scope: Scope<'s, Time>) -> Stream<'s, Frame> {
        self.frames_and_changes(scope).0
    }

    /// The input frames, and when the run's settings may change while it runs (`serve`'s
    /// admin routes), those changes, to score ([`crate::ops::ScoreOps::score_under`]) and
    /// cut ([`Env::cut`]) each frame with the settings in force for it.
    pub fn controlled_frames<'s>(
        &mut self,
        scope: Scope<'s, Time>,
    ) -> (Stream<'s, Frame>, Option<Live<'s>>) {
        self.took_changes.set(true);
        self.frames_and_changes(scope)
    }

    fn frames_and_changes<'s>(
        &mut self,
        scope: Scope<'s, Time>,
    ) -> (Stream<'s, Frame>, Option<Live<'s>>) {
        let frames = frame_source(
            scope,
            self.source.take(),
            self.settings.pacing,
            Arc::clone(&self.stats),
            Some(self.progress.clone()),
        );
        match &self.settings.controls {
            Some(c) => {
                let (frames, live) = control_tap(frames, Arc::clone(c));
                (frames, Some(live))
            }
            None => (frames, None),
        }
    }

    /// The per-entity models of the run's model directory
    /// ([`crate::model::entities`]) that this worker owns (see [`crate::ops::owner`]),
    /// and the default, each read with `load`. An error when the run was given no model
    /// directory or it holds no such models.
    pub fn entity_models<M>(
        &self,
        scope: Scope<'_, Time>,
        load: impl Fn(&std::path::Path) -> Result<M, crate::model::ModelError>,
    ) -> anyhow::Result<EntityModels<M>> {
        let Some(dir) = &self.settings.pipeline.model_dir else {
            bail!(
                "variant {:?} needs a directory of per-entity models (--model DIR)",
                self.pipeline_name()
            );
        };
        let (index, peers) = (scope.index(), scope.peers());
        EntityModels::load(dir, |key| crate::ops::owner(key, peers) == index, load)
            .with_context(|| format!("per-entity models in {}", dir.display()))
    }

    /// Where this process counts frames and records stage latencies.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The probe on the pipeline's end (see [`Env::progress`]).
    pub fn probe(&self) -> &ProbeHandle<Time> {
        self.progress.probe()
    }

    /// The model's features split over all workers.
    pub fn layout(&self, scope: Scope<'_, Time>) -> Layout {
        Layout::new(self.model.n_features(), scope.peers())
    }

    /// The features this worker's detector scores: its partition of the model's.
    pub fn features(&self, scope: Scope<'_, Time>) -> std::ops::Range<usize> {
        self.layout(scope).range(scope.index())
    }

    /// The window length `--window` asks for, else `default`: for a detector that can
    /// score any length (a model's detector has its own).
    pub fn window_or(&self, default: usize) -> usize {
        self.settings.window.unwrap_or(default)
    }

    /// The windows `detector` needs ([`Detector::needs`]), every `default_stride` frames
    /// unless `--stride` says otherwise. An error when `--window` or `--stride` ask for
    /// what the detector cannot score.
    pub fn windows<D: Detector + ?Sized>(
        &self,
        detector: &D,
        default_stride: usize,
    ) -> anyhow::Result<WindowConfig> {
        if self.settings.event_time.is_some() {
            bail!(
                "variant {:?} windows by frame count: event-time windows (--window 30s) run in a variant that reads them (telemetry, rules)",
                self.pipeline_name()
            );
        }
        let needs = detector.needs();
        if let Some(w) = self.settings.window.filter(|&w| w != needs.window) {
            bail!(
                "--window {w}: the detector scores windows of {} frames (a model's detector scores the model's window length)",
                needs.window
            );
        }
        let stride = self.settings.stride.unwrap_or(default_stride);
        if stride == 0 {
            bail!("--stride must be at least 1");
        }
        if let Some(s) = needs.stride.filter(|&s| s != stride) {
            bail!("--stride {stride}: the detector needs a stride of {s}");
        }
        Ok(WindowConfig {
            size: needs.window,
            stride,
        })
    }

    /// The event-time windows `--window 30s` asks for, resampled to the window length
    /// `detector` scores ([`Detector::needs`]); `None` when the run windows by frame
    /// count (then use [`Env::windows`]). An error for a detector that needs a window at
    /// every frame (a stride of its own), which time windows cannot give it.
    pub fn event_windows<D: Detector + ?Sized>(
        &self,
        detector: &D,
    ) -> anyhow::Result<Option<EventWindowConfig>> {
        let needs = detector.needs();
        if let (Some(s), Some(_)) = (needs.stride, self.settings.event_time) {
            bail!("event-time windows: the detector needs a window every {s} frame(s), which windows of time cannot give it");
        }
        Ok(self.event_windows_of(needs.window))
    }

    /// Event-time windows of `buckets` slots each, if `--window` asked for them (a
    /// duration): for a variant whose stage takes windows of any fixed length, such as
    /// `rules`' statistics. Reading them marks the variant as one that honours event time.
    pub fn event_windows_of(&self, buckets: usize) -> Option<EventWindowConfig> {
        self.read_event_time.set(true);
        self.settings
            .event_time
            .map(|time| EventWindowConfig { time, buckets })
    }

    /// The model's one-class SVM for this worker's partition, on the device of the
    /// settings: [`crate::detect::LinearOcSvm`] or [`crate::detect::RffOcSvm`] on the CPU,
    /// or the GPU's, which keeps the anomalies at [`Env::threshold`].
    ///
    /// # Panics
    /// When the GPU detector cannot be made (device memory, say): the device was checked
    /// usable at start-up, so this is the GPU failing, and the run reports the worker's
    /// panic with the driver's error.
    pub fn ocsvm(&self, scope: Scope<'_, Time>) -> Box<dyn Detector> {
        let range = self.layout(scope).range(scope.index());
        // `auto` only reaches here when a variant is built outside [`run`]: the CPU, as
        // nothing resolved it
        let device = match self.settings.device {
            Device::Auto => Device::Cpu,
            d => d,
        };
        let detector = match &self.settings.controls {
            Some(c) => crate::detect::Reloading::new(&c.current(), device, range.clone())
                .map(|d| Box::new(d) as Box<dyn Detector>),
            None => crate::detect::ocsvm(device, &self.model, range.clone(), self.threshold()),
        };
        detector.unwrap_or_else(|e| panic!("detector for features {range:?}: {e:#}"))
    }

    /// Where the model's scores are cut: the threshold in force (see [`Env::threshold`]),
    /// which follows the changes `live` brings ([`Env::controlled_frames`]), as do muted
    /// features.
    pub fn cut<'s>(&self, live: Option<&Live<'s>>) -> Cut<'s> {
        match live {
            Some(l) => Cut::Live {
                changes: l.clone(),
                fallback: None,
            },
            None => Cut::Fixed(self.threshold()),
        }
    }

    /// [`Env::cut`] for a detector whose scores are not the model's: `default` unless an
    /// override is set.
    pub fn cut_or<'s>(&self, live: Option<&Live<'s>>, default: f32) -> Cut<'s> {
        match live {
            Some(l) => Cut::Live {
                changes: l.clone(),
                fallback: Some(default),
            },
            None => Cut::Fixed(self.threshold_or(default)),
        }
    }

    /// The threshold in force: the override, else the model's.
    pub fn threshold(&self) -> f32 {
        self.threshold_or(self.model.meta.threshold)
    }

    /// The threshold override, else `default`: for a detector whose scores are not the
    /// model's.
    pub fn threshold_or(&self, default: f32) -> f32 {
        self.settings.threshold.unwrap_or(default)
    }

    /// Windows per scoring call at most: `INFERENCE_BATCH_SIZE` as set. A variant that
    /// knows its detector asks [`Env::batch_size_for`] instead.
    pub fn batch_size(&self) -> usize {
        self.settings.batch_size
    }

    /// Windows per scoring call for `detector` scoring `windows`: `INFERENCE_BATCH_SIZE`
    /// on a GPU, where one transfer and one launch per batch pay for themselves; on the
    /// CPU also no more than [`CPU_BATCH_BYTES`] of windows (one window at least). The
    /// CPU scorers take one window at a time whatever the batch, so a bigger batch buys
    /// nothing but a copy of every window into it and a buffer too big for the cache,
    /// which the scorer then reads back from memory: at 25,000 features and W = 5 (a
    /// 0.5 MB window) batches of 64 ran at 0.71–0.79 of the floor and batches of one at
    /// 0.87–0.88 (`bench --model LINEAR --floor 2s -w 1`, alternated, `INFERENCE_BATCH_SIZE`
    /// 64 against 1).
    pub fn batch_size_for<D: Detector + ?Sized>(
        &self,
        detector: &D,
        windows: WindowConfig,
    ) -> usize {
        let window_bytes = windows.size * detector.features().len() * std::mem::size_of::<f32>();
        batch_windows(self.batch_size(), detector.device(), window_bytes)
    }
}

/// [`Env::batch_size_for`] from the setting `max`, the device and a window's size.
fn batch_windows(max: usize, device: Device, window_bytes: usize) -> usize {
    match device {
        Device::Cpu => max.min(CPU_BATCH_BYTES / window_bytes.max(1)).max(1),
        _ => max,
    }
}

/// The most window data a CPU batch holds (see [`Env::batch_size_for`]): well inside a
/// core's L2 cache, and big enough that small windows (a telemetry entity's 30 × 25
/// values) still go 64 to a call.
pub const CPU_BATCH_BYTES: usize = 256 * 1024;

/// Which worker a source is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSlot {
    /// The worker's global index, 0 ..= peers-1 (process p's threads are
    /// `p * threads ..`).
    pub index: usize,
    /// Workers in the whole cluster.
    pub peers: usize,
}

/// Makes the source of each worker: called on every worker of every process, `None` where
/// the worker reads nothing. Sources read by several workers must say so through their
/// [`crate::sources::Sequencing`].
pub type SourceFactory =
    Arc<dyn Fn(WorkerSlot) -> anyhow::Result<Option<Box<dyn FrameSource>>> + Send + Sync>;

/// A factory for input read by worker 0 alone (files, the generator, HTTP ingest).
pub fn on_worker_zero<F>(make: F) -> SourceFactory
where
    F: Fn() -> anyhow::Result<Box<dyn FrameSource>> + Send + Sync + 'static,
{
    on_worker(0, make)
}

/// A factory for input read by the worker with global index `index` alone (each process
/// of a cluster that takes HTTP frames reads them on its own first worker).
pub fn on_worker<F>(index: usize, make: F) -> SourceFactory
where
    F: Fn() -> anyhow::Result<Box<dyn FrameSource>> + Send + Sync + 'static,
{
    Arc::new(move |slot: WorkerSlot| {
        if slot.index == index {
            make().map(Some)
        } else {
            Ok(None)
        }
    })
}

/// A factory for a process that reads no input (a follower in a cluster whose input
/// enters elsewhere).
pub fn no_input() -> SourceFactory {
    Arc::new(|_| Ok(None))
}

/// How a run went, as seen from this process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    /// Counters (verdict counts only in the process hosting worker 0).
    pub stats: StatsSnapshot,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Stage latencies recorded in this process.
    pub latencies: Vec<StageSummary>,
    /// Incident counts at the end (incident mode, in the process hosting worker 0).
    pub incidents: crate::stats::IncidentCounts,
}

impl RunReport {
    /// Frames per second that entered and were fully processed.
    pub fn frames_per_second(&self) -> f64 {
        self.stats.frames_in as f64 / self.seconds.max(1e-9)
    }
}

/// Builds `pipeline` once on a worker of its own, with no input and on the CPU, and
/// drops it: what a variant would refuse (a parameter it does not know or cannot parse,
/// windows its detector cannot score) is refused here, before any cluster forms.
pub fn check(pipeline: &Pipeline, model: &Arc<Model>, settings: &Settings) -> anyhow::Result<()> {
    let settings = Arc::new(Settings {
        pipeline: pipeline.clone(),
        device: Device::Cpu,
        stats: None,
        metrics_interval: None,
        ..settings.clone()
    });
    let (build, model) = (pipeline.build, Arc::clone(model));
    timely::execute_directly(move |worker| {
        let mut env = Env::new(model, settings, Arc::default(), None);
        let built = worker.dataflow::<Time, _, _>(|scope| -> anyhow::Result<()> {
            build(scope, &mut env)?;
            env.check_params()?;
            // A variant that reads its frames without the changes keeps the settings it
            // started with: say so to the controls, which then refuse every change
            // instead of answering that it was made.
            if let (Some(c), false) = (&env.settings.controls, env.took_changes.get()) {
                c.not_followed_by(&env.settings.pipeline.name);
            }
            Ok(())
        });
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
        built
    })
}

/// Runs the settings' pipeline over the sources until they are exhausted and every frame
/// has its verdict. Sources are made on every worker (see [`SourceFactory`]); verdicts are
/// merged, and sinks write, on worker 0 (in process 0).
pub fn run(
    cluster: &ClusterArgs,
    model: Arc<Model>,
    settings: Settings,
    make_source: SourceFactory,
    sinks: SinkSpec,
) -> anyhow::Result<RunReport> {
    let pipeline = settings.pipeline.clone();
    check(&pipeline, &model, &settings)
        .with_context(|| format!("dataflow variant {:?}", pipeline.name))?;
    let build = pipeline.build;
    if cluster.peers() > model.n_features() {
        bail!(
            "{} workers for {} features: every worker needs at least one feature",
            cluster.peers(),
            model.n_features()
        );
    }
    let config = cluster.timely_config()?;
    let mut settings = settings;
    let choice = crate::detect::gpu::resolve_for(settings.device, &model)?;
    tracing::info!(
        requested = ?choice.requested,
        device = ?choice.used,
        gpu = choice.gpu.as_ref().map(|g| g.name.as_str()),
        reason = %choice.reason,
        "scoring device"
    );
    settings.device = choice.used;
    let stats = settings.stats.clone().unwrap_or_default();
    let reporter = settings
        .metrics_interval
        .map(|every| crate::metrics::Reporter::start(Arc::clone(&stats), every));
    let incidents = settings
        .incidents
        .as_ref()
        .map(|spec| Incidents::new(spec, &settings, &model))
        .transpose()?;
    let description = describe(&settings, &model, incidents.as_ref());
    let settings = Arc::new(settings);
    let started = Instant::now();
    let worker_stats = Arc::clone(&stats);
    let guards = timely::execute(config, move |worker| -> anyhow::Result<()> {
        if worker.peers() > 1 {
            crate::agreement::agree(worker, &description)?;
        }
        let index = worker.index();
        let slot = WorkerSlot {
            index,
            peers: worker.peers(),
        };
        // A worker's set-up can fail (a file, a broker, the alert file on worker 0). It
        // still builds the dataflow (with no input), so the other workers see it finish
        // instead of waiting for it forever, and reports the failure afterwards.
        let mut failure = None;
        let (mut source, mut lines) = (None, None);
        let outputs = if index == 0 {
            let path = sinks.alerts_path.as_deref();
            AlertLines::open(path, sinks.stdout, settings.max_alert_features)
        } else {
            Ok(None)
        };
        match outputs.and_then(|o| Ok((make_source(slot)?, o))) {
            Ok((s, o)) => (source, lines) = (s, o),
            Err(e) => failure = Some(e),
        }
        // Only worker 0, where verdicts are merged, calls the sinks: the caller's hook,
        // then the alert lines (of frames, or of incidents in incident mode).
        let (lines, event_lines) = match &incidents {
            Some(_) => (None, lines.map(AlertLines::incident_hook)),
            None => (lines.map(AlertLines::hook), None),
        };
        let hook = crate::sinks::combine(sinks.on_result.clone().filter(|_| index == 0), lines);
        let incident_hook = crate::sinks::combine_incident(
            sinks.on_incident.clone().filter(|_| index == 0),
            event_lines,
        );
        let mut env = Env::new(
            Arc::clone(&model),
            Arc::clone(&settings),
            Arc::clone(&worker_stats),
            source,
        );
        let probe = worker.dataflow::<Time, _, _>(|scope| -> anyhow::Result<_> {
            let results = build(scope, &mut env)?.count_into(Arc::clone(&env.stats));
            // Every worker of every process must build the same operators (timely tracks
            // progress per operator and peer), whether or not its process has a hook: the
            // hook operator is always there, and only worker 0 has hooks to call.
            let results = results.inspect(move |r| {
                if let Some(h) = &hook {
                    h(r)
                }
            });
            if let Some(i) = &incidents {
                // Watched like the verdicts: the run ends, and a source hears that its
                // frames settled (and reads on), only once their incident events went
                // out too; the events lag the verdicts, so their frontier wakes the
                // sources too.
                env.progress
                    .watch(i.events(results.clone(), incident_hook, env.stats()));
            }
            env.progress.watch(results);
            Ok(env.probe().clone())
        })?;
        // Every source, timer and channel wakes the worker when it has work, so it sleeps
        // until then: an idle engine uses no CPU, and nothing waits for a timeout.
        while !probe.done() {
            worker.step_or_park(None);
        }
        env.progress.finish();
        failure.map_or(Ok(()), Err)
    })
    .map_err(|e| anyhow!("starting timely workers: {e}"))?;
    for (i, result) in guards.join().into_iter().enumerate() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context(format!("worker {i}"))),
            Err(panic) => bail!("worker {i} panicked: {panic}"),
        }
    }
    drop(reporter);
    Ok(RunReport {
        stats: stats.snapshot(),
        seconds: started.elapsed().as_secs_f64(),
        latencies: stats.latencies(),
        incidents: stats.incidents(),
    })
}

/// What this process is about to build, as far as every process must agree on it
/// ([`crate::agreement`]).
fn describe(settings: &Settings, model: &Model, incidents: Option<&Incidents>) -> String {
    let alerts = match incidents {
        None => "frame alerts".to_string(),
        Some(i) => {
            use std::hash::{Hash, Hasher};
            // DefaultHasher::new() has fixed keys: the same on every process.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            i.groups.rows.hash(&mut h);
            format!(
                "incident alerts {} with {} metadata rows ({:016x})",
                serde_json::to_string(&*i.config).unwrap_or_default(),
                i.groups.rows.len(),
                h.finish()
            )
        }
    };
    let p = &settings.pipeline;
    let settings_change = match settings.controls {
        Some(_) => "settings that change at run time",
        None => "fixed settings",
    };
    format!(
        "variant {} {:?}, window {:?}, stride {:?}, event time {:?}, {} features, {alerts}, {settings_change}",
        p.name,
        p.params,
        settings.window,
        settings.stride,
        settings.event_time,
        model.n_features()
    )
}

/// Incident mode, resolved for this run: the rules with the pipeline's stride, the
/// feature metadata read against the model's names.
#[derive(Clone)]
struct Incidents {
    config: Arc<IncidentConfig>,
    groups: Arc<Groups>,
    names: Arc<crate::model::FeatureIndex>,
    body_limit: usize,
}

impl Incidents {
    fn new(spec: &IncidentSpec, settings: &Settings, model: &Model) -> anyhow::Result<Incidents> {
        let names = model.feature_index();
        let groups = match &spec.metadata {
            Some(path) => Groups::load(path, &names)?,
            None => Groups::default(),
        };
        let mut config = spec.config.clone();
        config.stride = settings.stride.unwrap_or(1) as u64;
        Ok(Incidents {
            config: Arc::new(config),
            groups: Arc::new(groups),
            names: Arc::new(names),
            body_limit: spec.body_limit,
        })
    }

    /// The incident events of `results`, counted in `stats` and handed to `hook` (on
    /// worker 0, the only one they reach).
    fn events<'s>(
        &self,
        results: Stream<'s, FrameResult>,
        hook: Option<IncidentHook>,
        stats: Arc<Stats>,
    ) -> Stream<'s, crate::incidents::IncidentEvent> {
        let (config, limit) = (Arc::clone(&self.config), self.body_limit);
        results
            .incidents(
                Arc::clone(&self.config),
                Arc::clone(&self.groups),
                Arc::clone(&self.names),
            )
            .inspect(move |e| {
                let level = e.incident.severity as usize;
                match e.kind {
                    EventKind::Open => stats.incident_opened(level),
                    EventKind::Escalate => stats.incident_escalated(level),
                    EventKind::Resolve => stats.incident_resolved(e.end_of_input),
                }
                if let Some(h) = &hook {
                    h(e, &alert_event(e, &config, limit));
                }
            })
    }
}

/// The results stream type variants return.
pub type Results<'s> = Stream<'s, FrameResult>;

#[cfg(test)]
mod tests {
    use super::{batch_windows, CPU_BATCH_BYTES};
    use crate::detect::Device;

    /// On the CPU a batch holds the windows that fit in [`CPU_BATCH_BYTES`] (one at
    /// least, `INFERENCE_BATCH_SIZE` at most); on a GPU the setting alone counts.
    #[test]
    fn cpu_batches_stay_within_the_cache_budget() {
        // a 25,000-feature window of 5 frames: 500 kB, one to a batch
        assert_eq!(batch_windows(64, Device::Cpu, 500_000), 1);
        // a telemetry entity's 30 x 25 values: 3 kB, the setting's 64
        assert_eq!(batch_windows(64, Device::Cpu, 3_000), 64);
        assert_eq!(batch_windows(64, Device::Cpu, CPU_BATCH_BYTES / 4), 4);
        assert_eq!(batch_windows(64, Device::Cuda, 500_000), 64);
        assert_eq!(batch_windows(1, Device::Cpu, 0), 1);
    }
}

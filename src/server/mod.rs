//! `tidewatch serve`'s HTTP side: seed 001's ingest endpoint and probes on warp, in front
//! of a dataflow run by [`crate::runtime::run`], with alerts posted by [`crate::sinks::webhook`].
//!
//! Threads: the HTTP server and the webhook sender share one tokio runtime (its own, so a
//! library user's runtime is not involved); frames are decoded on its blocking pool; the
//! dataflow's workers run on their own threads under `runtime::run`, which a plain thread
//! waits on. Handlers hand frames to worker 0 through a bounded queue and never wait for
//! it: a full queue answers 429.
//!
//! Life cycle: [`start`] binds the port and answers probes at once (`/health/ready` says
//! 503 while the model loads); the model is loaded and the dataflow started on the
//! dataflow thread; ready means worker 0 has taken the ingest queue. [`ServerHandle::shutdown`]
//! stops accepting connections, lets requests under way finish, closes the queue so
//! the dataflow drains and stops, then gives the webhook a bounded time to deliver.

mod admin;
mod dashboard;
mod ingest;
pub mod kafka;
pub mod listen;
pub mod predict;
mod probes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::model::Model;
use crate::runtime::{self, ClusterArgs, ResultHook, RunReport, Settings, SinkSpec, SourceFactory};
use crate::sinks::kafka::{Outbox, ResultTopics};
use crate::sinks::metrics_store::{MetricsStore, PushReport};
use crate::sinks::webhook::{Webhook, WebhookConfig, WebhookStats};
use crate::sources::http::IngestSource;
use crate::sources::kafka::KafkaInput;
use crate::sources::{FrameSource, KeyPolicy};
use crate::stats::Stats;
use kafka::{KafkaReport, KafkaServeConfig};

pub use crate::detect::Device;
pub use listen::{ConnectionCounters, ConnectionLimits};

/// Which model to serve.
#[derive(Clone, Debug)]
pub enum ModelSpec {
    /// Load it from this directory on start-up (ready only once it has loaded).
    Dir(PathBuf),
    /// Serve this model, already loaded.
    Loaded(Arc<Model>),
}

/// Everything [`start`] needs.
#[derive(Clone)]
pub struct ServeConfig {
    /// Address to listen on (`APP_HOST`:`APP_PORT`); port 0 picks a free one.
    pub addr: SocketAddr,
    /// The model.
    pub model: ModelSpec,
    /// Where to score.
    pub device: Device,
    /// Pipeline settings (variant, batch size, threshold, ...).
    pub settings: Settings,
    /// timely cluster flags. This process must be process 0 (which hosts worker 0 and the
    /// sinks) unless `ingest_everywhere` is set.
    pub cluster: ClusterArgs,
    /// In a cluster, every process takes `POST /data-enqueue` and decodes its own frames
    /// (numbered by [`Sequencing::AssignedClock`](crate::sources::Sequencing)), rather
    /// than process 0 alone.
    pub ingest_everywhere: bool,
    /// Frames accepted but not yet taken by the dataflow, at most (`QUEUE_MAX_SIZE`).
    pub queue_max_size: usize,
    /// Largest request body, as sent on the wire.
    pub max_body_bytes: usize,
    /// Largest body after gzip inflation: stops gzip bombs.
    pub max_inflated_bytes: usize,
    /// Threads that decode request bodies (each holds a body and its values in memory);
    /// twice as many bodies may be handed to them at once, so that each has its next
    /// body ready.
    pub decode_concurrency: usize,
    /// How frame keys must match the model's features.
    pub key_policy: KeyPolicy,
    /// tokio worker threads for HTTP and the webhook.
    pub http_threads: usize,
    /// Where alerts are posted; `None` posts nothing.
    pub webhook: Option<WebhookConfig>,
    /// More sinks: an alert file, stdout, a verdict hook (all on worker 0).
    pub sinks: SinkSpec,
    /// On shutdown, how long everything may take in all: requests under way, scoring what
    /// was accepted, and delivering alerts; alerts still undelivered then are
    /// dead-lettered. A second signal cuts it short the same way.
    pub drain_timeout: Duration,
    /// Header timeout and connection limit.
    pub limits: ConnectionLimits,
    /// Bytes of request bodies buffered at once at most (being received or decoded);
    /// past it, 429 `uploads_full`.
    pub upload_buffer_bytes: usize,
    /// After a 2 s grace period, a body must arrive at this many bytes a second on
    /// average, or it is cut off with 408 (0: only the 30 s body timeout applies).
    pub min_body_rate: u64,
    /// Frames from Kafka instead of `POST /data-enqueue` (which then does not exist), and
    /// verdicts to Kafka topics.
    pub kafka: Option<KafkaServeConfig>,
    /// The bearer token of the admin routes (`ADMIN_TOKEN`); `None`: they do not exist.
    pub admin_token: Option<String>,
    /// Push every verdict's score to this metrics store (`METRICS_STORE_URL`; see
    /// [`crate::sinks::metrics_store`]); set on the process that merges verdicts only.
    pub metrics_store: Option<String>,
}

impl ServeConfig {
    /// The defaults of seed 001 (`0.0.0.0:9000`, queue 100, batch 64, ...) for `model`,
    /// posting alerts to the default webhook URL.
    pub fn new(model: ModelSpec) -> ServeConfig {
        ServeConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 9000)),
            model,
            device: Device::Auto,
            settings: Settings::default(),
            cluster: ClusterArgs::default(),
            ingest_everywhere: false,
            queue_max_size: 100,
            max_body_bytes: 1 << 20,
            max_inflated_bytes: 16 << 20,
            decode_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            key_policy: KeyPolicy::default(),
            http_threads: 2,
            webhook: Some(WebhookConfig::default()),
            sinks: SinkSpec::default(),
            drain_timeout: Duration::from_secs(20),
            limits: ConnectionLimits::default(),
            upload_buffer_bytes: 64 << 20,
            min_body_rate: 16 << 10,
            kafka: None,
            admin_token: None,
            metrics_store: None,
        }
    }
}

/// Counts of ingest answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpStats {
    /// 202: frames queued for scoring.
    pub accepted: u64,
    /// 4xx other than 429: requests that can never succeed as sent.
    pub rejected: u64,
    /// 429: the queue was full.
    pub throttled: u64,
    /// 503: not ready, or shutting down.
    pub unavailable: u64,
}

#[derive(Default)]
struct HttpCounters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    throttled: AtomicU64,
    unavailable: AtomicU64,
}

impl HttpCounters {
    fn snapshot(&self) -> HttpStats {
        HttpStats {
            accepted: self.accepted.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            unavailable: self.unavailable.load(Relaxed),
        }
    }
}

/// Where the server is in its life.
#[derive(Clone)]
enum Phase {
    /// Loading the model, starting the dataflow.
    Loading,
    /// Scoring.
    Ready(Arc<Ready>),
    /// Start-up or the dataflow failed; the message says why.
    Failed(Arc<str>),
    /// Shutting down or stopped.
    Stopping,
}

/// What handlers need once the dataflow runs.
struct Ready {
    ingress: Arc<ingest::Ingress>,
    /// Model and device facts for `/health/ready`.
    facts: serde_json::Value,
    /// The model, threshold and mutes in force, which the admin routes change.
    controls: Arc<crate::controls::Controls>,
    /// What the dashboard shows of the verdicts.
    board: Arc<dashboard::Board>,
}

/// State shared by handlers, the dataflow thread and the handle.
struct Shared {
    phase: watch::Sender<Phase>,
    /// The run's counters and stage latencies.
    stats: Arc<Stats>,
    http: HttpCounters,
    /// Whether shutdown began, and the queue to close: one lock, so that a dataflow that
    /// starts while shutdown begins cannot miss it.
    lifecycle: Mutex<Lifecycle>,
    /// Open, evicted and refused connections.
    connections: Arc<ConnectionCounters>,
    /// Set when shutdown must stop waiting (a second signal).
    hurry: watch::Sender<bool>,
    /// The admin routes' token; `None`: they do not exist.
    admin_token: Option<String>,
    /// The model directory given at start, which SIGHUP reloads.
    model_dir: Option<PathBuf>,
    /// Processes in the cluster (`-n`).
    processes: usize,
    /// This process's index (`-p`).
    process: usize,
}

#[derive(Default)]
struct Lifecycle {
    stopping: bool,
    ingress: Option<Arc<ingest::Ingress>>,
    /// The Kafka input, to stop on shutdown.
    kafka: Option<Arc<KafkaInput>>,
}

impl Shared {
    fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }
}

/// How a serve run went.
#[derive(Clone, Debug, Serialize)]
pub struct ServeReport {
    /// The dataflow's counters and wall time.
    pub run: RunReport,
    /// Ingest answers.
    pub http: HttpStats,
    /// Alert deliveries, if alerts were posted.
    pub webhook: Option<WebhookStats>,
    /// Deliveries to the Kafka alert topic through the outbox, if alerts went there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_alerts: Option<WebhookStats>,
    /// Kafka input and output, if frames came from Kafka.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaReport>,
    /// What reached the metrics store, if scores were pushed to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_store: Option<PushReport>,
}

/// Ends a server's drain at once (see [`ServerHandle::hurry`]).
#[derive(Clone)]
pub struct Hurry(watch::Sender<bool>);

impl Hurry {
    /// Stop waiting: requests still running are cut off and undelivered alerts are
    /// dead-lettered.
    pub fn now(&self) {
        self.0.send_replace(true);
    }
}

/// SIGINT and SIGTERM, caught (see [`ServerHandle::catch_signals`]).
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

/// A running server. Dropping it shuts it down (errors ignored); call
/// [`ServerHandle::shutdown`] to see them.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    stop_http: Option<oneshot::Sender<()>>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    dataflow: Option<std::thread::JoinHandle<anyhow::Result<RunReport>>>,
    webhook: Option<Webhook>,
    /// The outbox sender for the Kafka alert topic, if alerts go there through the file
    /// outbox.
    kafka_alerts: Option<Webhook>,
    drain_timeout: Duration,
    /// The process's Kafka producer (alerts, verdicts, dead letters), if any.
    outbox: Option<Arc<Outbox>>,
    /// Whether frames come from Kafka.
    kafka: bool,
    /// The metrics store's pusher, if scores go to one.
    metrics_store: Option<MetricsStore>,
}

/// Binds the address, starts answering, and starts loading the model and the dataflow
/// in the background (see [`ServerHandle::wait_ready`]). Fails if the address cannot be
/// bound. Call it from outside any tokio runtime: the server brings its own.
pub fn start(mut config: ServeConfig) -> anyhow::Result<ServerHandle> {
    // One set of counters and latencies for the dataflow, the handlers and the alert
    // senders, so that `/metrics` shows them all.
    let stats = config.settings.stats.clone().unwrap_or_default();
    config.settings.stats = Some(Arc::clone(&stats));
    if let Some(w) = config.webhook.as_mut() {
        w.stats = Arc::clone(&stats);
    }
    if !config.cluster.is_leader() && !config.ingest_everywhere {
        bail!(
            "the HTTP server runs in process 0 only (this is process {}) unless every process takes frames",
            config.cluster.process
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads.max(1))
        .thread_name("tidewatch-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.addr))
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let (phase, _) = watch::channel(Phase::Loading);
    let shared = Arc::new(Shared {
        phase,
        stats,
        http: HttpCounters::default(),
        lifecycle: Mutex::new(Lifecycle::default()),
        connections: Arc::default(),
        hurry: watch::channel(false).0,
        admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
        model_dir: match &config.model {
            ModelSpec::Dir(d) => Some(d.clone()),
            ModelSpec::Loaded(_) => None,
        },
        processes: config.cluster.processes.max(1),
        process: config.cluster.process,
    });
    let fds = listen::raise_fd_limit();
    let limits = ConnectionLimits {
        max_connections: listen::fit_to_fds(config.limits.max_connections, fds),
        ..config.limits
    };
    if limits.max_connections < config.limits.max_connections {
        tracing::warn!(
            wanted = config.limits.max_connections,
            max_connections = limits.max_connections,
            open_files_limit = fds,
            "the connection limit was lowered to fit the open-files limit"
        );
    }
    let webhook = match config.webhook.clone() {
        Some(w) => Some(Webhook::start(w, runtime.handle())?),
        None => None,
    };
    let outbox = match &config.kafka {
        Some(k) => k.outbox(true)?,
        None => None,
    };
    // With the file outbox on, alerts for the Kafka alert topic go through an outbox of
    // their own (beside the webhook's), as webhook alerts do; with --no-outbox they go
    // straight to the producer.
    let kafka_alerts = match (&config.kafka, &outbox) {
        (Some(k), Some(producer)) => match (&k.topics.alerts, &k.alert_outbox) {
            (Some(topic), Some(w)) => {
                let mut w = w.clone();
                w.stats = Arc::clone(&shared.stats);
                Some(Webhook::start_kafka(
                    w,
                    Arc::clone(producer),
                    topic.clone(),
                    runtime.handle(),
                )?)
            }
            _ => None,
        },
        _ => None,
    };
    // In incident mode alerts are incident events: the frame hooks send no alerts (the
    // results topic still gets every verdict), and an incident hook sends the events.
    let incident_mode = config.settings.incidents.is_some();
    let direct_alerts = kafka_alerts.is_none();
    let frame_topics = |k: &KafkaServeConfig| ResultTopics {
        alerts: k
            .topics
            .alerts
            .clone()
            .filter(|_| !incident_mode && direct_alerts),
        ..k.topics.clone()
    };
    let kafka_hook = match (&config.kafka, &outbox) {
        (Some(k), Some(outbox)) if frame_topics(k).any() => Some(crate::sinks::kafka::result_hook(
            Arc::clone(outbox),
            frame_topics(k),
            config.settings.max_alert_features,
            config
                .webhook
                .as_ref()
                .map_or(crate::sinks::webhook::CLIENT_BODY_LIMIT, |w| w.body_limit),
            Arc::clone(&shared.stats),
        )),
        _ => None,
    };
    let kafka = config.kafka.is_some();
    // `serve --dataflow machines` answers single records too
    let predictor = match (&config.model, &config.settings.pipeline.name) {
        (ModelSpec::Dir(dir), name) if crate::dataflows::reads_records(name) => Some(Arc::new(
            predict::Predictor::load(dir, config.settings.threshold)?,
        )),
        _ => None,
    };
    let (stop_http, stopped) = oneshot::channel::<()>();
    let http_task = runtime.spawn(listen::serve(
        listener,
        routes(Arc::clone(&shared), !kafka, predictor),
        limits,
        Arc::clone(&shared.connections),
        async {
            let _ = stopped.await;
        },
    ));
    let frame_alerts =
        |w: &Option<Webhook>| w.as_ref().filter(|_| !incident_mode).map(Webhook::hook);
    let hook = crate::sinks::combine(
        crate::sinks::combine(
            crate::sinks::combine(frame_alerts(&webhook), frame_alerts(&kafka_alerts)),
            kafka_hook,
        ),
        config.sinks.on_result.clone(),
    );
    let metrics_store = config
        .metrics_store
        .as_deref()
        .map(|url| MetricsStore::start(url, &config.settings.pipeline.name))
        .transpose()?;
    let hook = crate::sinks::combine(hook, metrics_store.as_ref().map(MetricsStore::hook));
    let incident_events = |w: &Option<Webhook>| -> Option<crate::sinks::IncidentHook> {
        match w {
            Some(w) if incident_mode => {
                let w = w.event_sender();
                Some(Arc::new(move |_e, event| w.send_event(event.clone())))
            }
            _ => None,
        }
    };
    let webhook_events = incident_events(&webhook);
    let kafka_events = match (&config.kafka, &outbox) {
        (Some(k), Some(outbox)) if incident_mode && direct_alerts => {
            k.topics.alerts.clone().map(|topic| {
                crate::sinks::kafka::incident_hook(
                    Arc::clone(outbox),
                    topic,
                    Arc::clone(&shared.stats),
                )
            })
        }
        _ => incident_events(&kafka_alerts),
    };
    config.sinks.on_incident = crate::sinks::combine_incident(
        crate::sinks::combine_incident(webhook_events, kafka_events),
        config.sinks.on_incident.clone(),
    );
    let dataflow_shared = Arc::clone(&shared);
    let dataflow_outbox = outbox.clone();
    let drain_timeout = config.drain_timeout;
    let dataflow = std::thread::Builder::new()
        .name("tidewatch-dataflow".into())
        .spawn(move || {
            let result = run_dataflow(config, &dataflow_shared, hook, dataflow_outbox);
            match &result {
                Ok(_) => {
                    dataflow_shared.phase.send_replace(Phase::Stopping);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::error!(error = %msg, "the dataflow stopped with an error");
                    dataflow_shared
                        .phase
                        .send_replace(Phase::Failed(msg.into()));
                }
            }
            result
        })
        .context("starting the dataflow thread")?;
    tracing::info!(%addr, "listening");
    Ok(ServerHandle {
        addr,
        shared,
        runtime: Some(runtime),
        stop_http: Some(stop_http),
        http_task: Some(http_task),
        dataflow: Some(dataflow),
        webhook,
        kafka_alerts,
        drain_timeout,
        outbox,
        kafka,
        metrics_store,
    })
}

/// On the dataflow thread: loads the model, checks the device, runs the dataflow until
/// the ingest queue closes.
fn run_dataflow(
    config: ServeConfig,
    shared: &Arc<Shared>,
    hook: Option<ResultHook>,
    outbox: Option<Arc<Outbox>>,
) -> anyhow::Result<RunReport> {
    let (model, model_path) = match &config.model {
        ModelSpec::Loaded(m) => (Arc::clone(m), None),
        ModelSpec::Dir(dir) => {
            let started = std::time::Instant::now();
            let m = crate::dataflows::load_model(&config.settings.pipeline.name, dir)
                .with_context(|| format!("loading model {}", dir.display()))?;
            tracing::info!(
                model = %dir.display(),
                kind = ?m.meta.kind,
                n_features = m.n_features(),
                window = m.window(),
                load_ms = started.elapsed().as_secs_f64() * 1000.0,
                "model loaded"
            );
            (Arc::new(m), Some(dir.clone()))
        }
    };
    let device = probes::resolve_device(config.device, &model)?;
    let facts = probes::ready_facts(&device, &config);
    let (ingress, source) = ingest::Ingress::new(&model, &config);
    let controls = Arc::new(crate::controls::Controls::new(
        Arc::clone(&model),
        model_path,
        config.settings.threshold,
        config.cluster.shape(),
    ));
    let board = Arc::new(dashboard::Board::new(&model));
    let hook = crate::sinks::combine(Some(board.hook()), hook);
    let ready = Arc::new(Ready {
        ingress: Arc::clone(&ingress),
        facts,
        controls: Arc::clone(&controls),
        board,
    });
    let factory = match &config.kafka {
        Some(kafka) => kafka_factory(kafka, &model, outbox, shared, ready)?,
        None => http_factory(source, shared, ready, ingest_worker(&config)),
    };
    let sinks = SinkSpec {
        on_result: hook,
        ..config.sinks.clone()
    };
    // the device resolved above, so that the dataflow scores where /health/ready says
    let settings = Settings {
        device: device.device(),
        controls: Some(controls),
        ..config.settings.clone()
    };
    runtime::run(&config.cluster, model, settings, factory, sinks)
}

/// Frames from Kafka on every worker; ready once worker 0 has opened its share.
fn kafka_factory(
    kafka: &KafkaServeConfig,
    model: &Model,
    outbox: Option<Arc<Outbox>>,
    shared: &Arc<Shared>,
    ready: Arc<Ready>,
) -> anyhow::Result<SourceFactory> {
    // HTTP ingest is off (its route does not exist); nothing will use this queue.
    ready.ingress.close();
    let input = kafka.input(model, outbox)?;
    {
        let mut life = shared.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        if life.stopping {
            // Shut down before we were ready: every source ends at once.
            input.stop();
        }
        life.kafka = Some(Arc::clone(&input));
    }
    let open = input.factory();
    let factory_shared = Arc::clone(shared);
    Ok(Arc::new(move |slot: runtime::WorkerSlot| {
        let source = open(slot)?;
        if slot.index == 0 {
            let life = factory_shared
                .lifecycle
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !life.stopping {
                factory_shared
                    .phase
                    .send_replace(Phase::Ready(Arc::clone(&ready)));
                tracing::info!(
                    topic = %input.config().topic,
                    brokers = %input.config().brokers,
                    "ready"
                );
            }
        }
        Ok(source)
    }))
}

/// The worker that reads this process's HTTP queue: worker 0, or with ingest on every
/// process, the first worker of this one.
fn ingest_worker(config: &ServeConfig) -> usize {
    if config.ingest_everywhere {
        config.cluster.process * config.cluster.threads.max(1)
    } else {
        0
    }
}

/// Frames from `POST /data-enqueue`, read by worker `reader`; ready once it has taken the
/// queue.
fn http_factory(
    source: IngestSource,
    shared: &Arc<Shared>,
    ready: Arc<Ready>,
    reader: usize,
) -> SourceFactory {
    let slot = Mutex::new(Some(source));
    let factory_shared = Arc::clone(shared);
    runtime::on_worker(reader, move || {
        let source = slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| anyhow!("the HTTP ingest source can be taken only once"))?;
        let mut life = factory_shared
            .lifecycle
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if life.stopping {
            // Shut down before we were ready: the queue closes at once and the run ends.
            ready.ingress.close();
        } else {
            life.ingress = Some(Arc::clone(&ready.ingress));
            factory_shared
                .phase
                .send_replace(Phase::Ready(Arc::clone(&ready)));
            tracing::info!(queue_max_size = ready.ingress.capacity(), "ready");
        }
        Ok(Box::new(source) as Box<dyn FrameSource>)
    })
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the model is loaded and the dataflow takes frames; fails with the
    /// reason if start-up failed, or after `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.shared.phase.subscribe();
        let runtime = self.runtime.as_ref().expect("running");
        let phase = runtime
            .block_on(async {
                tokio::time::timeout(timeout, rx.wait_for(|p| !matches!(p, Phase::Loading)))
                    .await
                    .map(|r| r.map(|p| p.clone()))
            })
            .map_err(|_| anyhow!("not ready after {timeout:?}"))?
            .map_err(|_| anyhow!("the server stopped while starting"))?;
        match phase {
            Phase::Ready(_) => Ok(()),
            Phase::Failed(why) => Err(anyhow!("{why}")),
            Phase::Loading | Phase::Stopping => bail!("the server stopped while starting"),
        }
    }

    /// Ingest answers so far.
    pub fn http_stats(&self) -> HttpStats {
        self.shared.http.snapshot()
    }

    /// Alert deliveries so far, if alerts are posted.
    pub fn webhook_stats(&self) -> Option<WebhookStats> {
        self.webhook.as_ref().map(Webhook::stats)
    }

    /// Starts catching SIGINT and SIGTERM (so they no longer kill the process; see
    /// [`ServerHandle::wait_for_signal`]) and SIGHUP, which reloads the model directory
    /// the server started with (see [`crate::controls`]). Call it before announcing readiness, so that a
    /// signal sent right after cannot be missed.
    pub fn catch_signals(&self) -> anyhow::Result<Signals> {
        let runtime = self.runtime.as_ref().expect("running");
        let _context = runtime.enter();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hangup = signal(SignalKind::hangup()).context("catching SIGHUP")?;
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the model");
                    admin::reload_on_hangup(Arc::clone(&shared)).await;
                }
            });
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Blocks until SIGINT or SIGTERM arrives, or the dataflow stops on its own (an
    /// error). Returns which.
    pub fn wait_for_signal(&self, signals: &mut Signals) -> &'static str {
        let mut rx = self.shared.phase.subscribe();
        let runtime = self.runtime.as_ref().expect("running");
        runtime.block_on(async {
            let failed = rx.wait_for(|p| matches!(p, Phase::Failed(_)));
            #[cfg(unix)]
            {
                tokio::select! {
                    _ = signals.interrupt.recv() => "SIGINT",
                    _ = signals.terminate.recv() => "SIGTERM",
                    _ = failed => "dataflow failure",
                }
            }
            #[cfg(not(unix))]
            {
                let _ = signals;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => "Ctrl-C",
                    _ = failed => "dataflow failure",
                }
            }
        })
    }

    /// After the first signal: a second SIGINT or SIGTERM ends the drain at once. Alerts
    /// not yet delivered are written to the dead-letter file, requests still running are
    /// cut off, and [`ServerHandle::shutdown`] returns.
    pub fn hurry_on_next_signal(&self, mut signals: Signals) {
        let hurry = self.shared.hurry.clone();
        let runtime = self.runtime.as_ref().expect("running");
        runtime.spawn(async move {
            #[cfg(unix)]
            let why = tokio::select! {
                _ = signals.interrupt.recv() => "SIGINT",
                _ = signals.terminate.recv() => "SIGTERM",
            };
            #[cfg(not(unix))]
            let why = {
                let _ = &mut signals;
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            };
            tracing::warn!(
                reason = why,
                "second signal: stopping now; undelivered alerts go to the dead-letter file"
            );
            hurry.send_replace(true);
        });
    }

    /// A switch that ends the drain at once, as a second signal does, from any thread.
    pub fn hurry(&self) -> Hurry {
        Hurry(self.shared.hurry.clone())
    }

    /// Stops accepting, lets requests under way finish (bounded), closes the queue, waits
    /// for the dataflow to score what was accepted, then for the webhook to deliver
    /// (bounded; the rest is dead-lettered).
    pub fn shutdown(mut self) -> anyhow::Result<ServeReport> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<ServeReport> {
        let Some(runtime) = self.runtime.take() else {
            bail!("already shut down");
        };
        {
            let mut life = self
                .shared
                .lifecycle
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            life.stopping = true;
            if matches!(self.shared.phase(), Phase::Ready(_) | Phase::Loading) {
                self.shared.phase.send_replace(Phase::Stopping);
            }
        }
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
        }
        // One deadline for the whole drain; a second signal ends every wait at once.
        let deadline = std::time::Instant::now() + self.drain_timeout;
        let give_up = {
            let hurry = self.shared.hurry.subscribe();
            move || {
                let mut hurry = hurry.clone();
                async move {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline.into()) => {}
                        _ = hurry.wait_for(|h| *h) => {}
                    }
                }
            }
        };
        if let Some(task) = self.http_task.take() {
            // The timer needs the runtime's context: build it inside.
            let cut = runtime.block_on(async {
                tokio::select! {
                    _ = task => false,
                    () = give_up() => true,
                }
            });
            if cut {
                tracing::warn!(
                    drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                    "requests still running at shutdown were cut off"
                );
            }
        }
        let kafka_input = {
            let mut life = self
                .shared
                .lifecycle
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(ingress) = life.ingress.take() {
                ingress.close();
            }
            life.kafka.take()
        };
        if let Some(input) = &kafka_input {
            // Each source stops reading, the dataflow drains, and the sources commit.
            input.stop();
        }
        let run = match self.dataflow.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => Err(anyhow!("the dataflow thread panicked: {panic:?}")),
            None => Err(anyhow!("no dataflow")),
        };
        // every verdict is in: push the last scores
        let metrics_store = self.metrics_store.take().map(MetricsStore::finish);
        let webhook = self
            .webhook
            .take()
            .map(|w| runtime.block_on(w.close_by(give_up())));
        let kafka_alerts = self
            .kafka_alerts
            .take()
            .map(|w| runtime.block_on(w.close_by(give_up())));
        // The sources flushed the producer before their last commits; this covers a
        // process whose workers read no partition. What is not confirmed in time is not
        // lost: its offsets were not committed, so it is read again on restart.
        let outbox = self.outbox.take();
        if let Some(o) = &outbox {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let left = if *self.shared.hurry.borrow() {
                Duration::ZERO
            } else {
                left
            };
            if !o.flush(left) {
                tracing::error!(
                    waited_ms = left.as_millis() as u64,
                    "some Kafka messages were not confirmed by the broker before the drain ended"
                );
            }
        }
        let kafka = self.kafka.then(|| KafkaReport {
            input: kafka_input
                .map(|i| i.counters().snapshot())
                .unwrap_or_default(),
            output: outbox.map(|o| o.stats()),
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
        let mut run = run?;
        // Deliveries finished after the dataflow did: count and time them too.
        run.stats = self.shared.stats.snapshot();
        run.latencies = self.shared.stats.latencies();
        let report = ServeReport {
            run,
            http: self.shared.http.snapshot(),
            webhook,
            kafka_alerts,
            kafka,
            metrics_store,
        };
        tracing::info!(report = %serde_json::to_string(&report).unwrap_or_default(), "stopped");
        Ok(report)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            let _ = self.stop();
        }
    }
}

/// The routes: `POST /data-enqueue`, `GET /health/live`, `GET /health/ready`,
/// `GET /metrics`, the dashboard (`GET /`, its assets, `GET /events`) and the admin
/// routes; anything else gets a JSON 404/405.
fn routes(
    shared: Arc<Shared>,
    ingest: bool,
    predictor: Option<Arc<predict::Predictor>>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let state = warp::any().map(move || Arc::clone(&shared));
    // With frames from Kafka the ingest route does not exist (404).
    let enqueue = warp::path!("data-enqueue")
        .and(warp::any().and_then(move || async move {
            if ingest {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        }))
        .untuple_one()
        .and(warp::post())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(ingest::enqueue);
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(probes::live);
    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .and(state.clone())
        .map(probes::ready);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(state.clone())
        .map(metrics_reply);
    let page = warp::path::end().and(warp::get()).map(dashboard::page);
    let js = warp::path!("dashboard.js")
        .and(warp::get())
        .map(|| dashboard::asset("js"));
    let css = warp::path!("dashboard.css")
        .and(warp::get())
        .map(|| dashboard::asset("css"));
    let events = warp::path!("events")
        .and(warp::get())
        .and(state.clone())
        .map(dashboard::events);
    enqueue
        .or(live)
        .unify()
        .or(ready)
        .unify()
        .or(metrics)
        .unify()
        .or(page)
        .unify()
        .or(js)
        .unify()
        .or(css)
        .unify()
        .or(events)
        .unify()
        .or(admin_routes(state))
        .unify()
        .or(predict::route(predictor))
        .unify()
        .recover(rejection)
        .unify()
}

/// `POST /admin/model`, `PUT /admin/threshold`, `PUT /admin/mutes`, `DELETE /admin/mutes`
/// (see [`admin`]); they do not exist (404) unless a token is configured.
fn admin_routes(
    state: impl Filter<Extract = (Arc<Shared>,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    let on = state.clone().and_then(|shared: Arc<Shared>| async move {
        if shared.admin_token.is_some() {
            Ok(shared)
        } else {
            Err(warp::reject::not_found())
        }
    });
    let route = move |method: warp::filters::BoxedFilter<()>, action: admin::Action| {
        method
            .and(warp::any().map(move || action))
            .and(on.clone())
            .and(warp::header::headers_cloned())
            .and(warp::body::content_length_limit(admin::MAX_BODY))
            .and(warp::body::bytes())
            .then(admin::handle)
    };
    let model = warp::path!("admin" / "model");
    let threshold = warp::path!("admin" / "threshold");
    let mutes = warp::path!("admin" / "mutes");
    route(model.and(warp::post()).boxed(), admin::Action::Model)
        .or(route(
            threshold.and(warp::put()).boxed(),
            admin::Action::Threshold,
        ))
        .unify()
        .or(route(mutes.and(warp::put()).boxed(), admin::Action::Mute))
        .unify()
        .or(route(
            mutes.and(warp::delete()).boxed(),
            admin::Action::Unmute,
        ))
        .unify()
}

/// A JSON error answer: `{"detail": ..., "error": ...}` (`detail` as the seed answered).
/// The `error` of a refusal, kept on the response so the handler can count it by reason.
#[derive(Clone, Copy, Debug)]
struct RefusalReason(&'static str);

fn error_reply(status: StatusCode, kind: &'static str, detail: &str) -> warp::reply::Response {
    let body = serde_json::json!({ "detail": detail, "error": kind });
    let mut resp = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    resp.extensions_mut().insert(RefusalReason(kind));
    resp
}

/// `GET /metrics`: counters, queue depth and stage latencies in Prometheus' text format.
fn metrics_reply(shared: Arc<Shared>) -> warp::reply::Response {
    let ingress = shared
        .lifecycle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ingress
        .clone();
    let h = shared.http.snapshot();
    let extra = crate::metrics::Extra {
        queue_depth: ingress.as_ref().map(|i| i.queued() as u64),
        queue_capacity: ingress.as_ref().map(|i| i.capacity() as u64),
        http: Some([
            ("202", h.accepted),
            ("4xx", h.rejected),
            ("429", h.throttled),
            ("503", h.unavailable),
        ]),
        connections: Some(shared.connections.snapshot()),
        process: (shared.processes > 1).then_some(shared.process),
    };
    let text = crate::metrics::prometheus(&shared.stats, &extra);
    warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
}

async fn rejection(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    let reply = if err.is_not_found() {
        error_reply(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        )
    } else {
        error_reply(StatusCode::BAD_REQUEST, "bad_request", &format!("{err:?}"))
    };
    Ok(reply)
}

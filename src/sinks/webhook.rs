//! Seed 001's alert webhook: one `POST {NESTJS_URL}{NESTJS_ANOMALY_ENDPOINT}` per
//! anomalous frame, with the body of CONTRACT.md, and one per [`AlertEvent`] handed to
//! [`Webhook::send_event`] (incident events), each delivered through the outbox.
//!
//! The dataflow never waits for the disk or the network: worker 0's hook
//! ([`Webhook::hook`]) hands each anomalous verdict to a bounded channel with `try_send`.
//! The appender thread takes what is queued, builds the bodies (capped to the receiver's
//! body limit), appends them to the outbox ([`crate::sinks::outbox`]) in one write and one
//! `fdatasync` per batch, and only then hands them to the sender task, which delivers up
//! to `concurrency` at once (one at a time per key, in order). Connect errors, timeouts,
//! 5xx, 408 and 429 are retried with exponential backoff and jitter (or after the
//! receiver's `Retry-After`) until `max_age` (or `max_retries` attempts, when set); any
//! other 4xx is final. Every attempt carries an `Idempotency-Key` that is the same across
//! retries and restarts. Delivered and given-up events are marked in the outbox, so that
//! the next start delivers again exactly what was not acknowledged. An alert given up on
//! is appended to a dead-letter JSONL file and logged as an error: never dropped silently.
//!
//! Without an outbox directory the same path runs in memory only (no disk writes): a
//! crash then loses what was not delivered, and shutdown dead-letters it.
//!
//! The same sender delivers to a Kafka alert topic ([`Webhook::start_kafka`]): an attempt
//! is one message, keyed by the event's key and carrying its idempotency key as a header,
//! that counts as delivered once the broker acknowledges it. While the event waits for
//! its append, it holds a ticket of the producer ([`KafkaOutbox::hold`]), so that a Kafka
//! source commits the offset of a frame only once its alert is on disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::clock;
use crate::sinks::alert::AlertBody;
use crate::sinks::event::AlertEvent;
use crate::sinks::kafka::Outbox as KafkaOutbox;
use crate::sinks::outbox::log::OutboxLog;
use crate::sinks::outbox::record::StoredEvent;
use crate::sinks::outbox::schedule::{Pending, Schedule};
use crate::sinks::outbox::OutboxConfig;
use crate::sinks::ResultHook;
use crate::stats::Stats;
use crate::types::FrameResult;

/// The receiving client's body limit: 100 KiB, measured after decompression.
pub const CLIENT_BODY_LIMIT: usize = 100 * 1024;

/// How many features an alert's log line quotes.
const LOGGED_TOP_SCORES: usize = 5;

/// The header every attempt carries, the same for every attempt of one event.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Events appended in one write (and one fsync) at most.
const MAX_BATCH: usize = 4096;

/// How long acknowledgements may wait to be written when no event comes.
const ACK_WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// Settings of the webhook sender.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where alerts go: `NESTJS_URL` followed by `NESTJS_ANOMALY_ENDPOINT`.
    pub url: String,
    /// Limit on one attempt, connecting included (`NESTJS_TIMEOUT`).
    pub timeout: Duration,
    /// Attempts per alert at most (`MAX_RETRIES`); 0: no limit, retries go on until
    /// `max_age`.
    pub max_retries: u32,
    /// An alert this old (since it was appended to the outbox, across restarts) is not
    /// retried again: it is dead-lettered (`--outbox-max-age`).
    pub max_age: Duration,
    /// Delay before the first retry; it doubles with every further one (`INITIAL_DELAY`).
    pub initial_delay: Duration,
    /// The delay between attempts never exceeds this, unless the receiver's
    /// `Retry-After` asks for longer.
    pub max_delay: Duration,
    /// Alerts being delivered at once at most.
    pub concurrency: usize,
    /// Alerts waiting for the appender at most; past this they are dead-lettered.
    pub queue: usize,
    /// Dead-letter JSONL file, appended to.
    pub dead_letter: PathBuf,
    /// The durable outbox; `None`: alerts wait in memory only.
    pub outbox: Option<OutboxConfig>,
    /// Largest body sent: the feature list is shortened (lowest scores first) to fit.
    pub body_limit: usize,
    /// Most features an alert lists, before the size limit applies.
    pub max_features: usize,
    /// On shutdown, how long deliveries may go on; what is undelivered then stays in the
    /// outbox for the next start (without an outbox: is dead-lettered).
    pub drain_timeout: Duration,
    /// Where deliveries are counted and timed (the run's, so that `/metrics` and the
    /// periodic log line show them).
    pub stats: Arc<Stats>,
}

impl WebhookConfig {
    /// The settings of the outbox that feeds the Kafka alert topic
    /// ([`Webhook::start_kafka`]): these, with a directory of its own (`kafka/` inside
    /// this outbox's) and a dead-letter file of its own (`kafka-<dead-letter>` beside it), so
    /// that `tidewatch outbox` works on each alone; and more deliveries at once, since the
    /// producer batches them.
    pub fn for_kafka_alerts(&self) -> WebhookConfig {
        let mut c = self.clone();
        c.outbox = self.outbox.as_ref().map(|o| OutboxConfig {
            dir: o.dir.join("kafka"),
            max_bytes: o.max_bytes,
        });
        let name = self
            .dead_letter
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        c.dead_letter = self.dead_letter.with_file_name(format!("kafka-{name}"));
        c.concurrency = KAFKA_IN_FLIGHT;
        c
    }
}

/// Alerts awaiting the broker's acknowledgement at once at most.
const KAFKA_IN_FLIGHT: usize = 1024;

/// The default `--outbox-max-age`: a day.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: join_url("http://localhost:3000", "/api/v1/alert"),
            timeout: Duration::from_secs(10),
            max_retries: 0,
            max_age: DEFAULT_MAX_AGE,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            concurrency: 8,
            queue: 1024,
            dead_letter: PathBuf::from("tidewatch-dead-letter.jsonl"),
            outbox: None,
            body_limit: CLIENT_BODY_LIMIT,
            max_features: crate::sinks::alert::DEFAULT_MAX_FEATURES,
            drain_timeout: Duration::from_secs(30),
            stats: Arc::default(),
        }
    }
}

/// `base` + `endpoint` with exactly one slash between them.
pub fn join_url(base: &str, endpoint: &str) -> String {
    let base = base.trim_end_matches('/');
    let endpoint = endpoint.trim_start_matches('/');
    format!("{base}/{endpoint}")
}

/// The delay before retry number `retry` (1 for the first): `initial · 2^(retry-1)`, at most
/// `max`, of which a random half is taken off ("equal jitter") so that senders that failed
/// together do not retry together.
pub fn backoff_delay(initial: Duration, max: Duration, retry: u32, rng: &mut impl Rng) -> Duration {
    let exp = 2f64.powi(retry.saturating_sub(1).min(62) as i32);
    let base = (initial.as_secs_f64() * exp).min(max.as_secs_f64());
    Duration::from_secs_f64(base / 2.0 + rng.random_range(0.0..=base / 2.0))
}

/// A `Retry-After` value: whole seconds, or an HTTP date (a date past gives zero).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What the sender did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    /// Alerts handed to the sender (anomalous verdicts and events).
    pub alerts: u64,
    /// Alerts the receiver accepted.
    pub delivered: u64,
    /// Alerts written to the dead-letter file.
    pub dead_lettered: u64,
    /// HTTP attempts made, first attempts included.
    pub attempts: u64,
    /// Alerts found undelivered in the outbox at start (from an earlier run).
    pub recovered: u64,
    /// Alerts still undelivered in the outbox at shutdown, for the next start.
    pub left_in_outbox: u64,
}

#[derive(Default)]
struct Counters {
    alerts: AtomicU64,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    attempts: AtomicU64,
    recovered: AtomicU64,
    left_in_outbox: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WebhookStats {
        WebhookStats {
            alerts: self.alerts.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
            recovered: self.recovered.load(Relaxed),
            left_in_outbox: self.left_in_outbox.load(Relaxed),
        }
    }
}

/// An alert on its way to the appender.
enum Job {
    /// An anomalous verdict: its body is built on the appender thread.
    Frame {
        result: FrameResult,
        latency_ms: f64,
        /// When worker 0 handed it over ([`clock::now_us`]).
        handed_us: u64,
        /// The producer ticket it holds until it is appended (Kafka only).
        ticket: Option<u64>,
    },
    /// An event with its body built.
    Event {
        event: AlertEvent,
        handed_us: u64,
        ticket: Option<u64>,
    },
}

/// The key of a frame alert (see [`AlertEvent::key`]).
pub fn frame_event_key(seq: u64) -> String {
    format!("frame-{seq}")
}

impl Job {
    /// The event to append, logging the anomaly of a frame alert (the seed's log item).
    fn into_event(self, shared: &Shared) -> (AlertEvent, u64, u64, Option<u64>) {
        let c = &shared.config;
        match self {
            Job::Frame {
                result,
                latency_ms,
                handed_us,
                ticket,
            } => {
                log_anomaly(&result, latency_ms);
                let body = AlertBody::encode(&result, latency_ms, c.max_features, c.body_limit);
                let key = match shared.transport {
                    // Kafka readers know a frame alert by its frame's id, as the alert
                    // topic has always been keyed.
                    Transport::Kafka { .. } => crate::sinks::kafka::frame_key(&result),
                    Transport::Http(_) => frame_event_key(result.seq),
                };
                let event = AlertEvent {
                    key,
                    body,
                    seq: Some(result.seq),
                    incident: None,
                };
                (event, handed_us, result.meta.received_us, ticket)
            }
            Job::Event {
                event,
                handed_us,
                ticket,
            } => (event, handed_us, 0, ticket),
        }
    }
}

/// Where attempts go.
enum Transport {
    /// `POST` to the configured URL.
    Http(reqwest::Client),
    /// A message to `topic`.
    Kafka {
        producer: Arc<KafkaOutbox>,
        topic: String,
    },
}

struct Shared {
    config: WebhookConfig,
    transport: Transport,
    /// The URL or the topic, for logs and dead letters.
    destination: String,
    counters: Counters,
    dead_letter: Mutex<Option<File>>,
}

impl Shared {
    /// A producer ticket for an event on its way to the appender (Kafka only).
    fn hold(&self) -> Option<u64> {
        match &self.transport {
            Transport::Kafka { producer, .. } => Some(producer.hold()),
            Transport::Http(_) => None,
        }
    }

    /// Lets a Kafka source commit past the event holding `ticket`: it is on disk (or dead).
    fn release(&self, ticket: Option<u64>) {
        if let (Some(t), Transport::Kafka { producer, .. }) = (ticket, &self.transport) {
            producer.release(t);
        }
    }

    /// Appends one line to the dead-letter file and logs the failure as an error.
    fn dead_letter(&self, e: &StoredEvent, attempts: u32, last_error: &str) {
        self.counters.dead_lettered.fetch_add(1, Relaxed);
        self.config
            .stats
            .alert_dead_lettered(u64::from(attempts.saturating_sub(1)));
        let ev = &e.event;
        tracing::error!(
            seq = ev.seq,
            incident = ev.incident.as_deref(),
            key = %ev.key,
            idempotency_key = %e.idempotency_key,
            attempts,
            error = last_error,
            destination = %self.destination,
            dead_letter = %self.config.dead_letter.display(),
            "alert not delivered; written to the dead-letter file"
        );
        let line = dead_letter_line(&self.destination, e, attempts, last_error);
        let mut file = self.dead_letter.lock().unwrap_or_else(|e| e.into_inner());
        let written = (|| -> std::io::Result<()> {
            if file.is_none() {
                *file = Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.config.dead_letter)?,
                );
            }
            let f = file.as_mut().expect("just opened");
            f.write_all(line.as_bytes())?;
            f.flush()
        })();
        if let Err(err) = written {
            // Nowhere left to keep it: the log line holds the whole alert instead.
            *file = None;
            tracing::error!(
                seq = ev.seq,
                error = %err,
                dead_letter = %self.config.dead_letter.display(),
                alert = %String::from_utf8_lossy(&ev.body),
                "cannot write the dead-letter file; the alert is only in this log line"
            );
        }
    }
}

/// One line of the dead-letter file: when and why, the event's identity (key, seq,
/// incident, idempotency key: `tidewatch outbox replay` re-queues it under the same key)
/// and the body as it was sent.
fn dead_letter_line(url: &str, e: &StoredEvent, attempts: u32, last_error: &str) -> String {
    let ev = &e.event;
    let seq = ev.seq.map_or("null".to_string(), |s| s.to_string());
    let incident = ev.incident.as_deref().map_or("null".into(), json_string);
    let body = String::from_utf8_lossy(&ev.body);
    // The body is JSON as built; anything else (an event from a library user) is kept as
    // a string rather than breaking the line.
    let alert = if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok() {
        body.into_owned()
    } else {
        json_string(&body)
    };
    format!(
        "{{\"dead_lettered_at\":{},\"url\":{},\"seq\":{seq},\"key\":{},\"incident\":{incident},\"idempotency_key\":{},\"appended_at\":{},\"attempts\":{attempts},\"last_error\":{},\"alert\":{alert}}}\n",
        json_string(&crate::sinks::alert::iso_ms(clock::unix_ms())),
        json_string(url),
        json_string(&ev.key),
        json_string(&e.idempotency_key),
        json_string(&crate::sinks::alert::iso_ms(e.at_ms)),
        json_string(last_error),
    )
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// An error and its causes, outermost first, joined by `": "`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Some errors repeat their source's message in their own.
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// The hook side's handle on the appender's queue.
type JobSender = Arc<Mutex<Option<std_mpsc::SyncSender<Job>>>>;

/// The running sender. Dropping it without [`Webhook::close`] abandons queued alerts
/// (those in the outbox are delivered by the next start).
pub struct Webhook {
    shared: Arc<Shared>,
    tx: JobSender,
    task: tokio::task::JoinHandle<Vec<Pending>>,
    appender: Option<std::thread::JoinHandle<u64>>,
    /// Tells the sender loop to stop delivering.
    abandon: Arc<Notify>,
}

impl Webhook {
    /// Opens the outbox (if configured; its undelivered alerts are delivered first) and
    /// starts the appender thread and the sender task on `runtime`.
    pub fn start(
        config: WebhookConfig,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Webhook> {
        let client = reqwest::Client::builder()
            // A redirect would turn the POST into a body-less GET the receiver rejects.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| {
                anyhow::anyhow!("building the webhook HTTP client: {}", error_chain(&e))
            })?;
        let destination = config.url.clone();
        Webhook::start_with(config, Transport::Http(client), destination, runtime)
    }

    /// As [`Webhook::start`], delivering to the Kafka `topic` through `producer` instead
    /// of the URL: each event is one message keyed by [`AlertEvent::key`], with its
    /// idempotency key in the header [`crate::sinks::kafka::IDEMPOTENCY_HEADER`]. Its
    /// outbox, dead-letter file, retries and drain are `config`'s; its URL is unused.
    pub fn start_kafka(
        config: WebhookConfig,
        producer: Arc<KafkaOutbox>,
        topic: String,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Webhook> {
        let destination = format!("kafka topic {topic}");
        Webhook::start_with(
            config,
            Transport::Kafka { producer, topic },
            destination,
            runtime,
        )
    }

    fn start_with(
        config: WebhookConfig,
        transport: Transport,
        destination: String,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Webhook> {
        // Found out now, not when the first alert needs it.
        let dead_letter = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.dead_letter)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot write the dead-letter file {}: {e}",
                    config.dead_letter.display()
                )
            })?;
        let (log, recovered) = match &config.outbox {
            Some(o) => {
                let (log, pending) = OutboxLog::open(&o.dir, o.max_bytes)?;
                (Some(log), pending)
            }
            None => (None, Vec::new()),
        };
        let (tx, jobs) = std_mpsc::sync_channel(config.queue.max(1));
        let (ack_tx, acks) = std_mpsc::channel();
        let (to_sender, from_appender) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config,
            transport,
            destination,
            counters: Counters::default(),
            dead_letter: Mutex::new(Some(dead_letter)),
        });
        if !recovered.is_empty() {
            tracing::info!(
                alerts = recovered.len(),
                oldest_seq = recovered[0].event.seq,
                "delivering the alerts an earlier run left in the outbox"
            );
        }
        let outstanding = recovered.len() as u64;
        shared.counters.recovered.store(outstanding, Relaxed);
        for stored in recovered {
            let _ = to_sender.send(Pending {
                stored,
                attempts: 0,
                handed_us: 0,
                received_us: 0,
            });
        }
        let abandon = Arc::new(Notify::new());
        let task = runtime.spawn(send_loop(
            Arc::clone(&shared),
            from_appender,
            ack_tx,
            Arc::clone(&abandon),
        ));
        let appender = Appender {
            shared: Arc::clone(&shared),
            log,
            next_memory_id: 1,
            jobs,
            acks,
            to_sender: Some(to_sender),
            outstanding,
        };
        let appender = std::thread::Builder::new()
            .name("tidewatch-outbox".into())
            .spawn(move || appender.run())
            .map_err(|e| anyhow::anyhow!("starting the outbox thread: {e}"))?;
        Ok(Webhook {
            shared,
            tx: Arc::new(Mutex::new(Some(tx))),
            task,
            appender: Some(appender),
            abandon,
        })
    }

    /// Queues `job` without blocking; a full or closed queue dead-letters it on the spot.
    fn offer(shared: &Shared, tx: &JobSender, job: Job) {
        shared.counters.alerts.fetch_add(1, Relaxed);
        let refused = match tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => None,
                Err(std_mpsc::TrySendError::Full(job)) => Some((
                    job,
                    "the alert queue is full (the outbox cannot keep up with the alerts)",
                )),
                Err(std_mpsc::TrySendError::Disconnected(job)) => {
                    Some((job, "the alert sender has stopped"))
                }
            },
            None => Some((job, "the alert sender is shutting down")),
        };
        if let Some((job, why)) = refused {
            let (event, _, _, ticket) = job.into_event(shared);
            shared.release(ticket);
            let stored = StoredEvent {
                id: 0,
                idempotency_key: format!("{}-unqueued", clock::run_id()),
                at_ms: clock::unix_ms(),
                event,
            };
            shared.dead_letter(&stored, 0, why);
        }
    }

    /// The verdict hook for worker 0: queues anomalous frames for the outbox without ever
    /// blocking. If the worker outpaces the disk (or the appender), the queue
    /// (`--alert-queue`) absorbs the burst; once it is full, further alerts are
    /// dead-lettered on the spot (logged as errors), never waited for.
    pub fn hook(&self) -> ResultHook {
        let shared = Arc::clone(&self.shared);
        let tx = Arc::clone(&self.tx);
        Arc::new(move |r: &FrameResult| {
            if !r.is_anomalous() {
                return;
            }
            let job = Job::Frame {
                result: r.clone(),
                latency_ms: latency_ms(r),
                handed_us: clock::now_us(),
                ticket: shared.hold(),
            };
            Webhook::offer(&shared, &tx, job);
        })
    }

    /// Queues an event (an incident's open, escalation or resolve) for delivery through
    /// the outbox, in order after the earlier events of its key. Never blocks: like the
    /// hook, a full queue dead-letters it.
    pub fn send_event(&self, event: AlertEvent) {
        self.event_sender().send_event(event)
    }

    /// A handle that queues alert events ([`Webhook::send_event`]) for this sender, for a
    /// hook that outlives the borrow of the webhook.
    pub fn event_sender(&self) -> EventSender {
        EventSender {
            shared: Arc::clone(&self.shared),
            tx: Arc::clone(&self.tx),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> WebhookStats {
        self.shared.counters.snapshot()
    }

    /// Takes no more alerts, delivers those queued, and waits for deliveries for at most
    /// the drain timeout; what is still undelivered then stays in the outbox (without an
    /// outbox: is dead-lettered).
    pub async fn close(self) -> WebhookStats {
        let timeout = self.shared.config.drain_timeout;
        self.close_by(tokio::time::sleep(timeout)).await
    }

    /// As [`Webhook::close`], but waiting for deliveries only until `give_up` resolves
    /// (a deadline, or a second signal), instead of the drain timeout.
    pub async fn close_by(
        mut self,
        give_up: impl std::future::Future<Output = ()>,
    ) -> WebhookStats {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let shared = self.shared;
        let mut task = self.task;
        let left = tokio::select! {
            left = &mut task => left.unwrap_or_default(),
            () = give_up => {
                self.abandon.notify_one();
                (&mut task).await.unwrap_or_default()
            }
        };
        // The appender ends once the sender loop (the last holder of the acknowledgement
        // channel) has.
        let left_in_outbox = match self.appender.take() {
            Some(a) => tokio::task::spawn_blocking(move || a.join().unwrap_or(0))
                .await
                .unwrap_or(0),
            None => 0,
        };
        if shared.config.outbox.is_some() {
            if left_in_outbox > 0 {
                tracing::warn!(
                    alerts = left_in_outbox,
                    outbox = %shared.config.outbox.as_ref().map(|o| o.dir.display().to_string()).unwrap_or_default(),
                    "alerts not yet delivered stay in the outbox; the next start delivers them"
                );
            }
            shared
                .counters
                .left_in_outbox
                .store(left_in_outbox, Relaxed);
        } else {
            for p in left {
                shared.dead_letter(&p.stored, p.attempts, SHUTDOWN_ERROR);
            }
        }
        shared.counters.snapshot()
    }
}

const SHUTDOWN_ERROR: &str = "shut down before the delivery finished";

/// Receive → verdict, from the frame's monotonic receive stamp.
/// Queues alert events for a [`Webhook`] ([`Webhook::event_sender`]).
#[derive(Clone)]
pub struct EventSender {
    shared: Arc<Shared>,
    tx: JobSender,
}

impl EventSender {
    /// As [`Webhook::send_event`].
    pub fn send_event(&self, event: AlertEvent) {
        let job = Job::Event {
            event,
            handed_us: clock::now_us(),
            ticket: self.shared.hold(),
        };
        Webhook::offer(&self.shared, &self.tx, job);
    }
}

fn latency_ms(r: &FrameResult) -> f64 {
    clock::now_us().saturating_sub(r.meta.received_us) as f64 / 1000.0
}

/// The thread that owns the outbox file: appends what the hooks queue (one write and one
/// fsync per batch, before the batch is handed to the sender) and the outcomes the sender
/// reports. Blocking file I/O lives here, off the workers and off the tokio runtime.
struct Appender {
    shared: Arc<Shared>,
    log: Option<OutboxLog>,
    /// Ids of events without an outbox (they only name the event in logs and keys).
    next_memory_id: u64,
    jobs: std_mpsc::Receiver<Job>,
    /// (event id, delivered: true / dead: false), from the sender.
    acks: std_mpsc::Receiver<(u64, bool)>,
    to_sender: Option<mpsc::UnboundedSender<Pending>>,
    /// Events handed to the sender and not yet reported back: while none are, no
    /// acknowledgement can come, and the thread sleeps until an alert does (an idle
    /// `serve` uses no CPU).
    outstanding: u64,
}

impl Appender {
    /// Runs until the hooks are gone and the sender has stopped; returns the events left
    /// undelivered in the outbox.
    fn run(mut self) -> u64 {
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        loop {
            if self.to_sender.is_some() {
                let next = if self.outstanding == 0 {
                    self.jobs
                        .recv()
                        .map_err(|_| std_mpsc::RecvTimeoutError::Disconnected)
                } else {
                    self.jobs.recv_timeout(ACK_WRITE_INTERVAL)
                };
                match next {
                    Ok(j) => batch.push(j),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        // No more alerts: the sender finishes what it has.
                        self.to_sender = None;
                    }
                }
                while batch.len() < MAX_BATCH {
                    match self.jobs.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
            } else {
                match self.acks.recv() {
                    Ok(a) => acks.push(a),
                    Err(_) => break,
                }
            }
            acks.extend(self.acks.try_iter());
            self.write(&mut batch, &mut acks);
        }
        self.write(&mut batch, &mut acks);
        self.log.as_ref().map_or(0, |l| l.pending() as u64)
    }

    fn write(&mut self, batch: &mut Vec<Job>, acks: &mut Vec<(u64, bool)>) {
        let now_ms = clock::unix_ms();
        let mut ready = Vec::with_capacity(batch.len());
        let mut tickets = Vec::new();
        for job in batch.drain(..) {
            let (event, handed_us, received_us, ticket) = job.into_event(&self.shared);
            tickets.push(ticket);
            let stored = match &mut self.log {
                Some(log) => match log.stage(event.clone(), None, now_ms) {
                    Ok(s) => s,
                    Err(refused) => {
                        let stored = StoredEvent {
                            id: 0,
                            idempotency_key: format!("{}-refused", clock::run_id()),
                            at_ms: now_ms,
                            event,
                        };
                        self.shared.dead_letter(&stored, 0, &refused.to_string());
                        continue;
                    }
                },
                None => {
                    let id = self.next_memory_id;
                    self.next_memory_id += 1;
                    StoredEvent {
                        id,
                        idempotency_key: format!("{}-{id}", clock::run_id()),
                        at_ms: now_ms,
                        event,
                    }
                }
            };
            ready.push(Pending {
                stored,
                attempts: 0,
                handed_us,
                received_us,
            });
        }
        self.outstanding = self.outstanding.saturating_sub(acks.len() as u64);
        if let Some(log) = &mut self.log {
            for (id, delivered) in acks.drain(..) {
                log.resolve(id, delivered);
            }
            if let Err(e) = log.commit() {
                // Delivery goes on from memory; only the crash safety of these is lost.
                tracing::error!(
                    error = %e,
                    alerts = ready.len(),
                    "cannot write the outbox; these alerts are delivered from memory only"
                );
            }
        }
        acks.clear();
        // On disk now (or dead-lettered, or memory-only by choice): offsets may move past.
        for t in tickets {
            self.shared.release(t);
        }
        for p in ready {
            let sent = match &self.to_sender {
                Some(tx) => tx.send(p).map_err(|e| e.0),
                None => Err(p),
            };
            match sent {
                Ok(()) => self.outstanding += 1,
                Err(p) => {
                    // The sender was abandoned at shutdown: the outbox keeps it for the next
                    // start; without one, it is a dead letter.
                    if self.log.is_none() {
                        self.shared.dead_letter(&p.stored, 0, SHUTDOWN_ERROR);
                    }
                }
            }
        }
    }
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    /// Worth another try (network, 5xx, 408, 429), after `after` if the receiver said.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Will not get better (another 4xx, a bad URL).
    Final(String),
}

async fn send_loop(
    shared: Arc<Shared>,
    mut incoming: mpsc::UnboundedReceiver<Pending>,
    acks: std_mpsc::Sender<(u64, bool)>,
    abandon: Arc<Notify>,
) -> Vec<Pending> {
    let concurrency = shared.config.concurrency.max(1);
    let mut schedule = Schedule::default();
    let mut flying = FuturesUnordered::new();
    let mut open = true;
    loop {
        let now = Instant::now();
        while flying.len() < concurrency {
            let Some(p) = schedule.next_due(now) else {
                break;
            };
            p.attempts += 1;
            flying.push(attempt(
                Arc::clone(&shared),
                p.stored.id,
                p.stored.event.key.clone(),
                p.stored.event.body.clone(),
                p.stored.idempotency_key.clone(),
            ));
        }
        if !open && schedule.is_empty() {
            return Vec::new();
        }
        let wake = schedule.next_wake().filter(|_| flying.len() < concurrency);
        tokio::select! {
            biased;
            _ = abandon.notified() => return schedule.drain(),
            Some((id, outcome)) = flying.next(), if !flying.is_empty() => {
                settle(&shared, &mut schedule, &acks, id, outcome);
            }
            p = incoming.recv(), if open => match p {
                Some(p) => schedule.push(p, Instant::now()),
                None => open = false,
            },
            _ = tokio::time::sleep_until(wake.unwrap_or(now).into()), if wake.is_some() => {}
        }
    }
}

/// Acts on an attempt's outcome: done (acknowledged or dead) or retried later.
fn settle(
    shared: &Shared,
    schedule: &mut Schedule,
    acks: &std_mpsc::Sender<(u64, bool)>,
    id: u64,
    outcome: Outcome,
) {
    let c = &shared.config;
    let now = Instant::now();
    let Some(p) = schedule.get_mut(id) else {
        return;
    };
    let attempts = p.attempts;
    let error = match outcome {
        Outcome::Delivered => {
            shared.counters.delivered.fetch_add(1, Relaxed);
            c.stats.alert_sent(
                u64::from(attempts.saturating_sub(1)),
                p.handed_us,
                p.received_us,
            );
            tracing::debug!(seq = p.stored.event.seq, attempts, "alert delivered");
            let _ = acks.send((id, true));
            schedule.finish(id, now);
            return;
        }
        Outcome::Final(error) => error,
        Outcome::Retry { error, after } => {
            let age = Duration::from_millis(clock::unix_ms().saturating_sub(p.stored.at_ms) as u64);
            if c.max_retries > 0 && attempts >= c.max_retries {
                error
            } else if age >= c.max_age {
                format!(
                    "{error} (older than --outbox-max-age {})",
                    humantime::format_duration(c.max_age)
                )
            } else {
                let delay = after.unwrap_or_else(|| {
                    backoff_delay(c.initial_delay, c.max_delay, attempts, &mut rand::rng())
                });
                let ev = &p.stored.event;
                tracing::warn!(
                    seq = ev.seq,
                    incident = ev.incident.as_deref(),
                    key = %ev.key,
                    attempt = attempts,
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    retry_after = after.is_some(),
                    "alert delivery failed; retrying"
                );
                schedule.retry_at(id, now + delay);
                return;
            }
        }
    };
    if let Some(p) = schedule.finish(id, now) {
        shared.dead_letter(&p.stored, attempts, &error);
        let _ = acks.send((id, false));
    }
}

/// One delivery of the event `key` with `body` and its idempotency key `idempotency`.
async fn attempt(
    shared: Arc<Shared>,
    id: u64,
    key: String,
    body: Bytes,
    idempotency: String,
) -> (u64, Outcome) {
    shared.counters.attempts.fetch_add(1, Relaxed);
    let outcome = match &shared.transport {
        Transport::Http(client) => post(client, &shared.config.url, body, idempotency).await,
        Transport::Kafka { producer, topic } => {
            match producer.deliver(topic, &key, &body, &idempotency).await {
                Ok(()) => Outcome::Delivered,
                // librdkafka has retried within its message timeout already; the outbox
                // retries again later, until --outbox-max-age.
                Err(e) if e.retriable => Outcome::Retry {
                    error: e.error,
                    after: None,
                },
                Err(e) => Outcome::Final(e.error),
            }
        }
    };
    (id, outcome)
}

/// One POST of `body` to `url`, with the event's idempotency key.
async fn post(client: &reqwest::Client, url: &str, body: Bytes, idempotency: String) -> Outcome {
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_KEY, idempotency)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Outcome::Delivered,
        Ok(mut resp) => {
            let status = resp.status();
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, SystemTime::now()));
            // the first chunk is enough to say why; an error page may be large
            let head = resp.chunk().await.ok().flatten().unwrap_or_default();
            let shown: String = String::from_utf8_lossy(&head).chars().take(200).collect();
            let error = format!("HTTP {status}: {shown}");
            let code = status.as_u16();
            if status.is_server_error() || code == 408 || code == 429 {
                Outcome::Retry { error, after }
            } else {
                Outcome::Final(error)
            }
        }
        // Connect errors, timeouts, resets while sending: the network, worth another
        // try. Anything else (a bad URL, a body error) will not get better.
        Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => Outcome::Retry {
            error: error_chain(&e),
            after: None,
        },
        Err(e) => Outcome::Final(error_chain(&e)),
    }
}

/// The seed's "input/output" log item: which frame, and its highest scores.
fn log_anomaly(r: &FrameResult, latency_ms: f64) {
    let id = r.meta.id.as_deref().map(crate::sinks::alert::cap_id);
    let mut top: Vec<_> = r.hits.iter().collect();
    let k = LOGGED_TOP_SCORES.min(top.len());
    if k > 0 && k < top.len() {
        top.select_nth_unstable_by(k - 1, |a, b| b.score.total_cmp(&a.score));
    }
    top.truncate(k);
    top.sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
    let top_scores = top
        .iter()
        .map(|h| format!("{{\"feature_idx\":{},\"score\":{}}}", h.feature, h.score))
        .collect::<Vec<_>>()
        .join(",");
    tracing::info!(
        seq = r.seq,
        id = id.as_deref(),
        timestamp = %crate::sinks::alert::iso_ms(r.meta.event_ms.unwrap_or(r.meta.received_ms)),
        num_anomalous_features = r.hits.len(),
        top_scores = %format!("[{top_scores}]"),
        latency_ms,
        "anomaly detected"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FrameMeta, Hit};

    fn result(n: u32) -> FrameResult {
        FrameResult {
            seq: 3,
            meta: FrameMeta {
                received_ms: 1_795_428_000_123,
                ..FrameMeta::default()
            },
            hits: (0..n)
                .map(|i| Hit {
                    feature: i,
                    score: 1.0 + i as f32 * 1.234_567e-3,
                })
                .collect(),
            peak: 1.0 + n as f32 * 1.234_567e-3,
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let mut rng = rand::rng();
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..100 {
            for (retry, base) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1000),
                (40, 1000),
            ] {
                let d = backoff_delay(initial, max, retry, &mut rng).as_secs_f64() * 1000.0;
                assert!(
                    d >= base as f64 / 2.0 - 1e-6 && d <= base as f64 + 1e-6,
                    "{retry}: {d}"
                );
            }
        }
    }

    #[test]
    fn bodies_fit_the_limit_and_keep_the_true_count() {
        let r = result(25_000);
        let body = AlertBody::encode(&r, 1.5, 25_000, CLIENT_BODY_LIMIT);
        assert!(body.len() <= CLIENT_BODY_LIMIT, "{}", body.len());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["num_anomalous_features"], 25_000);
        assert_eq!(v["anomaly_detected"], true);
        assert_eq!(v["latency_ms"], 1.5);
        let listed = v["anomalous_features"].as_array().unwrap();
        // Nearly all of the limit is used, and the highest scores are the ones kept.
        assert!(listed.len() > 1_000, "{}", listed.len());
        assert_eq!(listed[0]["feature_idx"], 24_999);
        let scores: Vec<f64> = listed
            .iter()
            .map(|f| f["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]));

        let small = AlertBody::encode(&result(3), 0.0, 2_000, CLIENT_BODY_LIMIT);
        let v: serde_json::Value = serde_json::from_slice(&small).unwrap();
        assert_eq!(v["anomalous_features"].as_array().unwrap().len(), 3);
        // A limit below the empty body still gives a body, with no features listed.
        let tiny = AlertBody::encode(&result(3), 0.0, 2_000, 10);
        let v: serde_json::Value = serde_json::from_slice(&tiny).unwrap();
        assert_eq!(v["anomalous_features"].as_array().unwrap().len(), 0);
        assert_eq!(v["num_anomalous_features"], 3);
    }

    /// `Retry-After` in both of its forms; a date past, or garbage, is no wait / none.
    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        // 2015-10-21T07:28:00Z is `now`; 90 s later:
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(
            join_url("http://h:3000/", "/api/v1/alert"),
            "http://h:3000/api/v1/alert"
        );
        assert_eq!(
            join_url("http://h:3000", "api/v1/alert"),
            "http://h:3000/api/v1/alert"
        );
    }
}

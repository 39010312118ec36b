//! Seed 001's alert webhook: one `POST {NESTJS_URL}{NESTJS_ANOMALY_ENDPOINT}` per
//! anomalous frame, with the body of CONTRACT.md.
//!
//! The dataflow never waits for the network: worker 0's hook ([`Webhook::hook`]) hands each
//! anomalous verdict to a bounded channel with `try_send`. A sender task on the server's
//! tokio runtime builds the body (capped to the receiver's body limit), logs the anomaly and
//! delivers up to `concurrency` alerts at once, so one slow alert does not hold up the
//! rest. Connect errors, timeouts and 5xx answers are retried with exponential backoff and
//! jitter; a 4xx is final (the client would answer it the same way again). An alert that
//! cannot be delivered, or that finds the channel full, is appended to a dead-letter JSONL
//! file and logged as an error: never dropped silently.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::clock;
use crate::sinks::alert::AlertBody;
use crate::sinks::event::AlertEvent;
use crate::sinks::ResultHook;
use crate::stats::Stats;
use crate::types::FrameResult;

/// The receiving client's body limit: 100 KiB, measured after decompression.
pub const CLIENT_BODY_LIMIT: usize = 100 * 1024;

/// How many features an alert's log line quotes.
const LOGGED_TOP_SCORES: usize = 5;

/// Settings of the webhook sender.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where alerts go: `NESTJS_URL` followed by `NESTJS_ANOMALY_ENDPOINT`.
    pub url: String,
    /// Limit on one attempt, connecting included (`NESTJS_TIMEOUT`).
    pub timeout: Duration,
    /// Attempts per alert in all (`MAX_RETRIES`; 0 counts as 1).
    pub max_retries: u32,
    /// Delay before the first retry; it doubles with every further one (`INITIAL_DELAY`).
    pub initial_delay: Duration,
    /// The delay between attempts never exceeds this.
    pub max_delay: Duration,
    /// Alerts being delivered at once at most.
    pub concurrency: usize,
    /// Alerts waiting for the sender at most; past this they are dead-lettered.
    pub queue: usize,
    /// Dead-letter JSONL file, appended to.
    pub dead_letter: PathBuf,
    /// Largest body sent: the feature list is shortened (lowest scores first) to fit.
    pub body_limit: usize,
    /// Most features an alert lists, before the size limit applies.
    pub max_features: usize,
    /// On shutdown, how long deliveries still running may take before what is left is
    /// dead-lettered.
    pub drain_timeout: Duration,
    /// Where deliveries are counted and timed (the run's, so that `/metrics` and the
    /// periodic log line show them).
    pub stats: Arc<Stats>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: join_url("http://localhost:3000", "/api/v1/alert"),
            timeout: Duration::from_secs(10),
            max_retries: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            concurrency: 8,
            queue: 1024,
            dead_letter: PathBuf::from("tidewatch-dead-letter.jsonl"),
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

/// What the sender did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    /// Anomalous verdicts handed to the sender.
    pub alerts: u64,
    /// Alerts the receiver accepted.
    pub delivered: u64,
    /// Alerts written to the dead-letter file.
    pub dead_lettered: u64,
    /// HTTP attempts made, first attempts included.
    pub attempts: u64,
}

#[derive(Default)]
struct Counters {
    alerts: AtomicU64,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    attempts: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WebhookStats {
        WebhookStats {
            alerts: self.alerts.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
        }
    }
}

/// An anomalous verdict, or an alert event, on its way to the sender.
struct Job {
    result: FrameResult,
    latency_ms: f64,
    /// When worker 0 handed it over ([`clock::now_us`]).
    handed_us: u64,
    /// An event with its body built already ([`Webhook::send_event`]); `result` then
    /// only carries its seq.
    event: Option<AlertEvent>,
}

impl Job {
    /// The body to post: the event's, or the frame's alert.
    fn body(&self, c: &WebhookConfig) -> Bytes {
        match &self.event {
            Some(e) => e.body.clone(),
            None => AlertBody::encode(&self.result, self.latency_ms, c.max_features, c.body_limit),
        }
    }
}

/// An alert being delivered, kept so that shutdown can dead-letter it if it runs out of time.
struct Pending {
    seq: u64,
    body: Bytes,
}

struct Shared {
    config: WebhookConfig,
    client: reqwest::Client,
    counters: Counters,
    dead_letter: Mutex<Option<File>>,
    /// Deliveries under way, by a private id.
    pending: Mutex<HashMap<u64, Pending>>,
}

impl Shared {
    /// Appends one line to the dead-letter file and logs the failure as an error.
    fn dead_letter(&self, seq: u64, body: &[u8], attempts: u32, last_error: &str) {
        self.counters.dead_lettered.fetch_add(1, Relaxed);
        self.config
            .stats
            .alert_dead_lettered(u64::from(attempts.saturating_sub(1)));
        tracing::error!(
            seq,
            attempts,
            error = last_error,
            url = %self.config.url,
            dead_letter = %self.config.dead_letter.display(),
            "alert not delivered; written to the dead-letter file"
        );
        let line = format!(
            "{{\"dead_lettered_at\":{},\"url\":{},\"seq\":{seq},\"attempts\":{attempts},\"last_error\":{},\"alert\":{}}}\n",
            json_string(&crate::sinks::alert::iso_ms(clock::unix_ms())),
            json_string(&self.config.url),
            json_string(last_error),
            String::from_utf8_lossy(body),
        );
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
        if let Err(e) = written {
            // Nowhere left to keep it: the log line holds the whole alert instead.
            *file = None;
            tracing::error!(
                seq,
                error = %e,
                dead_letter = %self.config.dead_letter.display(),
                alert = %String::from_utf8_lossy(body),
                "cannot write the dead-letter file; the alert is only in this log line"
            );
        }
    }
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

/// The running sender. Dropping it without [`Webhook::close`] abandons queued alerts.
pub struct Webhook {
    shared: Arc<Shared>,
    tx: Queue,
    task: tokio::task::JoinHandle<()>,
    permits: Arc<Semaphore>,
    /// Tells the sender loop to stop delivering and dead-letter what it still holds.
    abandon: Arc<Notify>,
}

impl Webhook {
    /// Starts the sender task on `runtime`.
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
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let shared = Arc::new(Shared {
            config,
            client,
            counters: Counters::default(),
            dead_letter: Mutex::new(Some(dead_letter)),
            pending: Mutex::new(HashMap::new()),
        });
        let abandon = Arc::new(Notify::new());
        let task = runtime.spawn(send_loop(
            Arc::clone(&shared),
            rx,
            Arc::clone(&permits),
            Arc::clone(&abandon),
        ));
        Ok(Webhook {
            shared,
            tx: Arc::new(Mutex::new(Some(tx))),
            task,
            permits,
            abandon,
        })
    }

    /// The verdict hook for worker 0: queues anomalous frames for delivery without ever
    /// blocking; when the queue is full the alert is dead-lettered on the spot.
    pub fn hook(&self) -> ResultHook {
        let shared = Arc::clone(&self.shared);
        let tx = Arc::clone(&self.tx);
        Arc::new(move |r: &FrameResult| {
            if !r.is_anomalous() {
                return;
            }
            shared.counters.alerts.fetch_add(1, Relaxed);
            let latency_ms = latency_ms(r);
            let job = Job {
                result: r.clone(),
                latency_ms,
                handed_us: clock::now_us(),
                event: None,
            };
            queue(&shared, &tx, job);
        })
    }

    /// Queues an alert event (an incident event) for delivery as it is, without ever
    /// blocking; when the queue is full it is dead-lettered on the spot, as frame alerts
    /// are.
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
}

/// Queues alert events for a [`Webhook`] ([`Webhook::event_sender`]).
#[derive(Clone)]
pub struct EventSender {
    shared: Arc<Shared>,
    tx: Queue,
}

impl EventSender {
    /// As [`Webhook::send_event`].
    pub fn send_event(&self, event: AlertEvent) {
        self.shared.counters.alerts.fetch_add(1, Relaxed);
        let now = clock::now_us();
        let job = Job {
            result: FrameResult {
                seq: event.seq.unwrap_or_default(),
                meta: crate::types::FrameMeta {
                    received_us: now,
                    ..Default::default()
                },
                hits: Vec::new(),
            },
            latency_ms: 0.0,
            handed_us: now,
            event: Some(event),
        };
        queue(&self.shared, &self.tx, job);
    }
}

impl Webhook {
    /// The counters so far.
    pub fn stats(&self) -> WebhookStats {
        self.shared.counters.snapshot()
    }

    /// Takes no more alerts, delivers those queued, and waits for deliveries under way for
    /// at most the drain timeout; what is still undelivered then is dead-lettered.
    pub async fn close(self) -> WebhookStats {
        let timeout = self.shared.config.drain_timeout;
        self.close_by(tokio::time::sleep(timeout)).await
    }

    /// As [`Webhook::close`], but waiting for deliveries only until `give_up` resolves
    /// (a deadline, or a second signal), instead of the drain timeout.
    pub async fn close_by(self, give_up: impl std::future::Future<Output = ()>) -> WebhookStats {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let shared = self.shared;
        let permits = self.permits;
        let mut task = self.task;
        let all = shared.config.concurrency.max(1) as u32;
        let drained = tokio::select! {
            () = async {
                // The loop ends once the channel is empty and closed; then every permit
                // coming back means every delivery has finished.
                let _ = (&mut task).await;
                let _ = permits.acquire_many(all).await;
            } => true,
            () = give_up => false,
        };
        if !drained {
            self.abandon.notify_one();
            if !task.is_finished() {
                let _ = task.await;
            }
            let left: Vec<Pending> = shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, p)| p)
                .collect();
            for p in left {
                shared.dead_letter(p.seq, &p.body, 0, SHUTDOWN_ERROR);
            }
        }
        shared.counters.snapshot()
    }
}

type Queue = Arc<Mutex<Option<mpsc::Sender<Job>>>>;

/// Hands `job` to the sender, or dead-letters it if the queue is full or closed.
fn queue(shared: &Shared, tx: &Queue, job: Job) {
    let refused = match tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(tx) => match tx.try_send(job) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(job)) => Some((
                job,
                "the alert queue is full (the receiver is too slow or down)",
            )),
            Err(mpsc::error::TrySendError::Closed(job)) => {
                Some((job, "the alert sender has stopped"))
            }
        },
        None => Some((job, "the alert sender is shutting down")),
    };
    if let Some((job, why)) = refused {
        let body = job.body(&shared.config);
        shared.dead_letter(job.result.seq, &body, 0, why);
    }
}

const SHUTDOWN_ERROR: &str = "shut down before the delivery finished";

/// Receive → verdict, from the frame's monotonic receive stamp.
fn latency_ms(r: &FrameResult) -> f64 {
    clock::now_us().saturating_sub(r.meta.received_us) as f64 / 1000.0
}

async fn send_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    permits: Arc<Semaphore>,
    abandon: Arc<Notify>,
) {
    let mut next_id = 0u64;
    loop {
        let job = tokio::select! {
            biased;
            _ = abandon.notified() => break,
            job = rx.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let body = job.body(&shared.config);
        match &job.event {
            Some(e) => tracing::info!(
                seq = e.seq,
                incident = e.incident.as_deref(),
                key = %e.key,
                "alert event queued"
            ),
            None => log_anomaly(&job),
        }
        let id = next_id;
        next_id += 1;
        let seq = job.result.seq;
        // Registered before it waits for a permit, so that an abandoned shutdown finds it.
        shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Pending {
                    seq,
                    body: body.clone(),
                },
            );
        let permit = tokio::select! {
            biased;
            _ = abandon.notified() => break,
            permit = Arc::clone(&permits).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
        };
        let shared = Arc::clone(&shared);
        let (received_us, handed_us) = (job.result.meta.received_us, job.handed_us);
        tokio::spawn(async move {
            let outcome = deliver(&shared, &body).await;
            let still_ours = shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
                .is_some();
            match outcome {
                Ok(attempts) => {
                    shared.counters.delivered.fetch_add(1, Relaxed);
                    let stats = &shared.config.stats;
                    stats.alert_sent(
                        u64::from(attempts.saturating_sub(1)),
                        handed_us,
                        received_us,
                    );
                    tracing::debug!(seq, attempts, "alert delivered");
                }
                // Otherwise a shutdown that ran out of time has dead-lettered it already.
                Err((attempts, error)) if still_ours => {
                    shared.dead_letter(seq, &body, attempts, &error)
                }
                Err(_) => {}
            }
            drop(permit);
        });
    }
    // Abandoned: what never left the queue is kept too.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        let body = job.body(&shared.config);
        shared.dead_letter(job.result.seq, &body, 0, SHUTDOWN_ERROR);
    }
}

/// The seed's "input/output" log item: which frame, and its highest scores.
fn log_anomaly(job: &Job) {
    let r = &job.result;
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
        id = r.meta.id.as_deref(),
        timestamp = %crate::sinks::alert::iso_ms(r.meta.event_ms.unwrap_or(r.meta.received_ms)),
        num_anomalous_features = r.hits.len(),
        top_scores = %format!("[{top_scores}]"),
        latency_ms = job.latency_ms,
        "anomaly detected"
    );
}

/// Posts `body` until it is accepted, a 4xx refuses it, or the attempts run out. Returns
/// the attempts made, and on failure the last error.
async fn deliver(shared: &Shared, body: &Bytes) -> Result<u32, (u32, String)> {
    let c = &shared.config;
    let attempts = c.max_retries.max(1);
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        shared.counters.attempts.fetch_add(1, Relaxed);
        let sent = shared
            .client
            .post(&c.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => return Ok(attempt),
            Ok(mut resp) => {
                let status = resp.status();
                // the first chunk is enough to say why; an error page may be large
                let head = resp.chunk().await.ok().flatten().unwrap_or_default();
                let shown: String = String::from_utf8_lossy(&head).chars().take(200).collect();
                last_error = format!("HTTP {status}: {shown}");
                if !status.is_server_error() {
                    return Err((attempt, last_error));
                }
            }
            // Connect errors, timeouts, resets while sending: the network, worth another
            // try. Anything else (a bad URL, a body error) will not get better.
            Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                last_error = error_chain(&e)
            }
            Err(e) => return Err((attempt, error_chain(&e))),
        }
        if attempt < attempts {
            let delay = backoff_delay(c.initial_delay, c.max_delay, attempt, &mut rand::rng());
            tracing::warn!(
                attempt,
                of = attempts,
                error = %last_error,
                retry_in_ms = delay.as_millis() as u64,
                "alert delivery failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
    Err((attempts, last_error))
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

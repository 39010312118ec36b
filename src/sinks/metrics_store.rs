//! Scores to a metrics store (seed 003: a dashboard reads a time-series database): every
//! verdict's score and flag, pushed to the VictoriaMetrics import API
//! (`POST <url>/api/v1/import`, one JSON line per series) once a second.
//!
//! Two series per entity (`entity` label; none for frames without one), each with a
//! `dataflow` label:
//! - `tidewatch_frame_score`: the frame's largest feature score ([`FrameResult::peak`]);
//! - `tidewatch_frame_anomalous`: 1 if it alerted, else 0.
//!
//! Samples carry the frame's event time (the client's `timestamp`) when it has one, else
//! when tidewatch received it, in ms. The store is for watching, not for alerts (those
//! have the outbox): the hook never blocks the dataflow. A full queue (the store slower
//! than the frames for 2^16 verdicts) drops samples, and a push that still fails after
//! three tries drops its batch; both are counted ([`PushReport`]) and logged.
//!
//! The JSON import API and not Prometheus remote-write: remote-write needs protobuf and
//! snappy, and the import API is plain JSON that VictoriaMetrics (Debian's
//! `victoria-metrics`) takes as it is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::ResultHook;
use crate::types::FrameResult;

/// Verdicts waiting for the pusher at most; more are dropped (and counted).
const QUEUE: usize = 1 << 16;
/// How often the pusher sends what it has.
const EVERY: Duration = Duration::from_secs(1);
/// Samples in one push at most, so a long replay's backlog goes in bounded bodies.
const MAX_BATCH: usize = 100_000;
/// Tries per push, the waits between them doubling from [`BACKOFF`].
const TRIES: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);

/// One verdict as the store records it.
struct Sample {
    entity: Option<String>,
    ms: i64,
    score: f32,
    anomalous: bool,
}

/// What the pusher did over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PushReport {
    /// Verdicts the store acknowledged (two samples each).
    pub pushed: u64,
    /// Verdicts dropped: the queue was full, or a push failed after every try.
    pub dropped: u64,
    /// Pushes the store refused or that did not reach it, counting each try.
    pub failed_tries: u64,
}

/// The pusher: a thread of its own, fed by [`MetricsStore::hook`].
pub struct MetricsStore {
    tx: Option<SyncSender<Sample>>,
    dropped: Arc<AtomicU64>,
    /// Set by [`MetricsStore::finish`]: push what is queued and stop, even if a hook is
    /// still held somewhere.
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<PushReport>>,
}

impl MetricsStore {
    /// Starts pushing to the store at `url` (e.g. `http://127.0.0.1:8428`), labelling
    /// every series with `dataflow`.
    pub fn start(url: &str, dataflow: &str) -> anyhow::Result<MetricsStore> {
        let base = url.trim_end_matches('/');
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--metrics-store takes an http(s) URL, not {url:?}"
        );
        let endpoint = format!("{base}/api/v1/import");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the metrics store's HTTP client")?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let pusher = Pusher {
            closing: Arc::clone(&closing),
            endpoint,
            client,
            dataflow: dataflow.to_string(),
            dropped: Arc::clone(&dropped),
            report: PushReport::default(),
        };
        let thread = std::thread::Builder::new()
            .name("tidewatch-metrics-store".into())
            .spawn(move || pusher.run(rx))
            .context("starting the metrics store's pusher")?;
        tracing::info!(url = %base, "pushing scores to the metrics store");
        Ok(MetricsStore {
            tx: Some(tx),
            dropped,
            closing,
            thread: Some(thread),
        })
    }

    /// A hook that queues each verdict for the pusher, never waiting.
    pub fn hook(&self) -> ResultHook {
        let tx = self.tx.clone().expect("running");
        let dropped = Arc::clone(&self.dropped);
        Arc::new(move |r: &FrameResult| {
            let sample = Sample {
                entity: r.meta.entity.clone(),
                ms: r.meta.event_ms.unwrap_or(r.meta.received_ms),
                score: r.peak,
                anomalous: r.is_anomalous(),
            };
            match tx.try_send(sample) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    if dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!("the metrics store falls behind: dropping scores (counted)");
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }

    /// Pushes what is queued (call it once the run is over: later verdicts are dropped),
    /// and says what was pushed and dropped.
    pub fn finish(mut self) -> PushReport {
        self.tx = None;
        self.closing.store(true, Ordering::Release);
        let mut report = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        report.dropped += self.dropped.load(Ordering::Relaxed);
        tracing::info!(
            pushed = report.pushed,
            dropped = report.dropped,
            failed_tries = report.failed_tries,
            "metrics store pusher done"
        );
        report
    }
}

struct Pusher {
    closing: Arc<AtomicBool>,
    endpoint: String,
    client: reqwest::Client,
    dataflow: String,
    dropped: Arc<AtomicU64>,
    report: PushReport,
}

impl Pusher {
    fn run(mut self, rx: mpsc::Receiver<Sample>) -> PushReport {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the metrics store's pusher cannot start: no scores are pushed");
                return self.report;
            }
        };
        let mut batch = Vec::new();
        let mut due = Instant::now() + EVERY;
        loop {
            // short waits, so that a finish is seen soon even while a hook is held
            let wait = due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            let mut closed = match rx.recv_timeout(wait) {
                Ok(s) => {
                    batch.push(s);
                    // take what else is there without waiting
                    batch.extend(rx.try_iter().take(MAX_BATCH - batch.len().min(MAX_BATCH)));
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            if !closed && self.closing.load(Ordering::Acquire) {
                batch.extend(rx.try_iter());
                closed = true;
            }
            if closed || batch.len() >= MAX_BATCH || Instant::now() >= due {
                if !batch.is_empty() {
                    runtime.block_on(self.push(std::mem::take(&mut batch)));
                }
                due = Instant::now() + EVERY;
            }
            if closed {
                return self.report;
            }
        }
    }

    /// Sends `batch` as one import body, trying [`TRIES`] times.
    async fn push(&mut self, batch: Vec<Sample>) {
        let n = batch.len() as u64;
        let body = import_body(&self.dataflow, &batch);
        let mut wait = BACKOFF;
        for attempt in 1..=TRIES {
            let sent = self
                .client
                .post(&self.endpoint)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    self.report.pushed += n;
                    return;
                }
                Ok(r) => {
                    self.report.failed_tries += 1;
                    tracing::warn!(
                        status = r.status().as_u16(),
                        attempt,
                        "the metrics store refused a push"
                    );
                }
                Err(e) => {
                    self.report.failed_tries += 1;
                    tracing::warn!(error = %e, attempt, "could not reach the metrics store");
                }
            }
            if attempt < TRIES {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        tracing::error!(samples = n, "dropped scores the metrics store did not take");
    }
}

/// The import API's JSON lines for `batch`: per entity, one line of scores and one of
/// flags, samples in the order they came (frame order).
fn import_body(dataflow: &str, batch: &[Sample]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Line<'a> {
        metric: BTreeMap<&'static str, &'a str>,
        values: Vec<f64>,
        timestamps: Vec<i64>,
    }
    let mut by_entity: BTreeMap<Option<&str>, Vec<&Sample>> = BTreeMap::new();
    for s in batch {
        by_entity.entry(s.entity.as_deref()).or_default().push(s);
    }
    let mut body = Vec::new();
    for (entity, samples) in by_entity {
        let timestamps: Vec<i64> = samples.iter().map(|s| s.ms).collect();
        let series = [
            (
                "tidewatch_frame_score",
                samples.iter().map(|s| f64::from(s.score)).collect(),
            ),
            (
                "tidewatch_frame_anomalous",
                samples
                    .iter()
                    .map(|s| f64::from(u8::from(s.anomalous)))
                    .collect(),
            ),
        ];
        for (name, values) in series {
            let mut metric = BTreeMap::from([("__name__", name), ("dataflow", dataflow)]);
            if let Some(e) = entity {
                metric.insert("entity", e);
            }
            let line = Line {
                metric,
                values,
                timestamps: timestamps.clone(),
            };
            // NaN (a score not known) is not JSON: serde_json writes it as null, which
            // the import API skips
            serde_json::to_writer(&mut body, &line).expect("import lines serialise");
            body.push(b'\n');
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per (entity, series), samples in frame order, the entity label only on
    /// frames that have one.
    #[test]
    fn import_lines_per_entity_and_series() {
        let s = |entity: Option<&str>, ms, score, anomalous| Sample {
            entity: entity.map(str::to_string),
            ms,
            score,
            anomalous,
        };
        let batch = [
            s(Some("A-1"), 10, 0.5, false),
            s(None, 11, 2.0, true),
            s(Some("A-1"), 12, 1.5, true),
        ];
        let body = String::from_utf8(import_body("telemetry", &batch)).unwrap();
        let lines: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                serde_json::json!({"metric": {"__name__": "tidewatch_frame_score", "dataflow": "telemetry"}, "values": [2.0], "timestamps": [11]}),
                serde_json::json!({"metric": {"__name__": "tidewatch_frame_anomalous", "dataflow": "telemetry"}, "values": [1.0], "timestamps": [11]}),
                serde_json::json!({"metric": {"__name__": "tidewatch_frame_score", "dataflow": "telemetry", "entity": "A-1"}, "values": [0.5, 1.5], "timestamps": [10, 12]}),
                serde_json::json!({"metric": {"__name__": "tidewatch_frame_anomalous", "dataflow": "telemetry", "entity": "A-1"}, "values": [0.0, 1.0], "timestamps": [10, 12]}),
            ]
        );
    }
}

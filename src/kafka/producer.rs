//! The producer side of `serve`: one [`Outbox`] per process, through which alerts,
//! verdicts and dead letters go to Kafka without ever blocking a worker.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Serialize;

use super::{client_config, MAX_MESSAGE_BYTES};
use crate::alert::Alert;
use crate::clock;
use crate::runtime::ResultHook;
use crate::types::FrameResult;
use crate::webhook::AlertBody;

/// Messages waiting in the producer at most; past it a message is refused (counted and
/// logged as an error) rather than a worker waiting.
const QUEUE_MESSAGES: usize = 100_000;

/// Tickets handed out and confirmed: every message sent gets the next ticket, and the
/// watermark is the highest ticket below which every message has been confirmed
/// (delivered, or failed and reported).
#[derive(Default)]
struct Gate {
    issued: u64,
    watermark: u64,
    /// Confirmed tickets above the watermark (confirmations come out of order across
    /// partitions).
    above: BTreeSet<u64>,
}

impl Gate {
    fn issue(&mut self) -> u64 {
        self.issued += 1;
        self.issued
    }

    fn confirm(&mut self, ticket: u64) {
        self.above.insert(ticket);
        while self.above.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
    }
}

#[derive(Default)]
struct Shared {
    gate: Mutex<Gate>,
    delivered: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn confirm(&self, ticket: u64) {
        self.gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .confirm(ticket);
    }
}

struct OutboxContext {
    shared: Arc<Shared>,
}

impl ClientContext for OutboxContext {}

impl ProducerContext for OutboxContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: usize) {
        match result {
            Ok(_) => {
                self.shared.delivered.fetch_add(1, Relaxed);
            }
            Err((e, m)) => {
                self.shared.failed.fetch_add(1, Relaxed);
                tracing::error!(
                    topic = m.topic(),
                    key = %String::from_utf8_lossy(m.key().unwrap_or_default()),
                    error = %e,
                    "a message could not be delivered to Kafka"
                );
            }
        }
        self.shared.confirm(ticket as u64);
    }
}

/// What an [`Outbox`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Messages the broker confirmed.
    pub delivered: u64,
    /// Messages librdkafka gave up on (after its retries), each logged as an error.
    pub failed: u64,
    /// Messages refused at once (queue full, too large), each logged as an error.
    pub refused: u64,
}

/// A process's Kafka producer. [`Outbox::send`] never blocks; every message gets a
/// ticket, and [`Outbox::watermark`] says up to which ticket every message has been
/// confirmed, which is what a source waits for before it commits offsets.
pub struct Outbox {
    producer: ThreadedProducer<OutboxContext>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// A producer to `brokers` (`acks=all`, small linger so alerts leave at once).
    pub fn new(brokers: &str) -> anyhow::Result<Arc<Outbox>> {
        let shared = Arc::new(Shared::default());
        let producer = client_config(brokers)
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
            .set("queue.buffering.max.messages", QUEUE_MESSAGES.to_string())
            .create_with_context(OutboxContext {
                shared: Arc::clone(&shared),
            })
            .with_context(|| format!("creating a Kafka producer for {brokers}"))?;
        Ok(Arc::new(Outbox { producer, shared }))
    }

    /// Queues `payload` for `topic`; returns its ticket, or `None` if it was refused at
    /// once (logged; its ticket is confirmed so that nothing waits for it).
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Option<u64> {
        let ticket = self
            .shared
            .gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .issue();
        let mut record = BaseRecord::with_opaque_to(topic, ticket as usize).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        match self.producer.send(record) {
            Ok(()) => Some(ticket),
            Err((e, _)) => {
                self.shared.refused.fetch_add(1, Relaxed);
                tracing::error!(
                    topic,
                    key = %String::from_utf8_lossy(key.unwrap_or_default()),
                    bytes = payload.len(),
                    error = %e,
                    "Kafka producer refused a message"
                );
                self.shared.confirm(ticket);
                None
            }
        }
    }

    /// Tickets handed out so far: a settlement stamped with it is durable once the
    /// watermark reaches it.
    pub fn issued(&self) -> u64 {
        self.shared
            .gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .issued
    }

    /// Every message with a ticket up to this has been confirmed.
    pub fn watermark(&self) -> u64 {
        self.shared
            .gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watermark
    }

    /// Waits up to `timeout` for every message sent so far to be confirmed; returns
    /// whether they were.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.issued();
        let deadline = Instant::now() + timeout;
        while self.watermark() < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // The polling thread serves the confirmations; flush only sends faster.
            let _ = self.producer.flush(left.min(Duration::from_millis(100)));
        }
        true
    }

    /// What was delivered, failed and refused so far.
    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            delivered: self.shared.delivered.load(Relaxed),
            failed: self.shared.failed.load(Relaxed),
            refused: self.shared.refused.load(Relaxed),
        }
    }
}

/// Where [`result_hook`] writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultTopics {
    /// Alert bodies of anomalous frames.
    pub alerts: Option<String>,
    /// The verdict of every frame.
    pub results: Option<String>,
}

impl ResultTopics {
    /// Whether any topic is named.
    pub fn any(&self) -> bool {
        self.alerts.is_some() || self.results.is_some()
    }
}

/// The key of a frame's messages: its id, or its seq when it has none.
pub fn frame_key(r: &FrameResult) -> String {
    r.meta.id.clone().unwrap_or_else(|| r.seq.to_string())
}

/// A verdict hook (for worker 0) that sends, keyed by frame id: to `topics.alerts` the
/// webhook's alert body of each anomalous frame (at most `max_features` features and
/// `body_limit` bytes); to `topics.results` every frame's verdict, in the same shape with
/// `anomaly_detected` true or false (the features over the threshold and their scores:
/// the dataflow carries only those out of the workers).
pub fn result_hook(
    outbox: Arc<Outbox>,
    topics: ResultTopics,
    max_features: usize,
    body_limit: usize,
) -> ResultHook {
    Arc::new(move |r: &FrameResult| {
        let latency_ms = clock::now_us().saturating_sub(r.meta.received_us) as f64 / 1000.0;
        let key = frame_key(r);
        if let (Some(topic), true) = (&topics.alerts, r.is_anomalous()) {
            let body = AlertBody::encode(r, latency_ms, max_features, body_limit);
            outbox.send(topic, Some(key.as_bytes()), &body, None);
        }
        if let Some(topic) = &topics.results {
            let mut alert = Alert::new(r, max_features);
            alert.anomaly_detected = r.is_anomalous();
            let body =
                serde_json::to_vec(&AlertBody { alert, latency_ms }).expect("verdicts serialise");
            outbox.send(topic, Some(key.as_bytes()), &body, None);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_the_oldest_ticket() {
        let mut g = Gate::default();
        let (a, b, c) = (g.issue(), g.issue(), g.issue());
        g.confirm(b);
        assert_eq!(g.watermark, 0);
        g.confirm(a);
        assert_eq!(g.watermark, 2);
        g.confirm(c);
        assert_eq!((g.watermark, g.issued), (3, 3));
        assert!(g.above.is_empty());
    }
}

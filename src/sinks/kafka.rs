//! The producer side of `serve`: one [`Outbox`] per process, through which alerts,
//! verdicts and dead letters go to Kafka without ever blocking a worker.
//!
//! An alert counts as sent (`tidewatch_alerts_sent_total`, and the `alert_delivery` and
//! `receive_to_alert_sent` stages) when the broker acknowledges it, as a webhook alert
//! does when the receiver accepts it; one the producer gives up on (after librdkafka's
//! own retries) or refuses at once counts as dead-lettered and is logged whole as an
//! error.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::clock;
use crate::kafka::client::{client_config, MAX_MESSAGE_BYTES};
use crate::sinks::alert::{Alert, AlertBody};
use crate::sinks::event::AlertEvent;
use crate::sinks::IncidentHook;
use crate::sinks::ResultHook;
use crate::stats::Stats;
use crate::types::FrameResult;

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

/// What the delivery report of one message needs.
struct Receipt {
    ticket: u64,
    /// Set for an alert: counted and timed when the broker acknowledges it.
    alert: Option<AlertReceipt>,
    /// Set for a delivery someone awaits ([`Outbox::deliver`]): told the outcome.
    done: Option<oneshot::Sender<Result<(), DeliveryError>>>,
}

/// Why [`Outbox::deliver`] did not deliver a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryError {
    /// What librdkafka said.
    pub error: String,
    /// Whether a later attempt may succeed (a broker outage, a full queue), rather than
    /// never (a message too large for the topic).
    pub retriable: bool,
}

impl DeliveryError {
    fn of(e: &KafkaError) -> DeliveryError {
        let retriable = !matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::InvalidMessage
                    | RDKafkaErrorCode::InvalidRecord
            )
        );
        DeliveryError {
            error: e.to_string(),
            retriable,
        }
    }
}

/// An alert on its way to the broker, with the stamps its delivery is timed from (as the
/// webhook times its alerts).
struct AlertReceipt {
    stats: Arc<Stats>,
    /// When the frame was received ([`clock::now_us`]; 0: unknown).
    received_us: u64,
    /// When the verdict hook handed the alert to the producer.
    handed_us: u64,
}

impl AlertReceipt {
    /// The broker acknowledged the alert. librdkafka retries on its own and does not say
    /// how often, so no retries are counted.
    fn sent(&self) {
        self.stats.alert_sent(0, self.handed_us, self.received_us);
    }

    /// The alert will never reach the topic: counted as dead-lettered, and the whole
    /// alert goes into the error line (the only place it is kept).
    fn given_up(&self, topic: &str, key: &[u8], payload: &[u8], error: &dyn std::fmt::Display) {
        self.stats.alert_dead_lettered(0);
        tracing::error!(
            topic,
            key = %String::from_utf8_lossy(key),
            error = %error,
            alert = %String::from_utf8_lossy(payload),
            "alert not delivered to Kafka; the alert is only in this log line"
        );
    }
}

struct OutboxContext {
    shared: Arc<Shared>,
}

impl ClientContext for OutboxContext {}

impl ProducerContext for OutboxContext {
    type DeliveryOpaque = Box<Receipt>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut receipt: Box<Receipt>) {
        let awaited = match receipt.done.take() {
            Some(done) => {
                let _ = done.send(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|(e, _)| DeliveryError::of(e)),
                );
                true
            }
            None => false,
        };
        match result {
            Ok(_) => {
                self.shared.delivered.fetch_add(1, Relaxed);
                if let Some(a) = &receipt.alert {
                    a.sent();
                }
            }
            Err((e, m)) => {
                self.shared.failed.fetch_add(1, Relaxed);
                let key = m.key().unwrap_or_default();
                match &receipt.alert {
                    Some(a) => a.given_up(m.topic(), key, m.payload().unwrap_or_default(), e),
                    // Awaited: the awaiting outbox logs and retries it.
                    None if awaited => {}
                    None => tracing::error!(
                        topic = m.topic(),
                        key = %String::from_utf8_lossy(key),
                        error = %e,
                        "a message could not be delivered to Kafka"
                    ),
                }
            }
        }
        self.shared.confirm(receipt.ticket);
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
        self.send_with(topic, key, payload, headers, None, None)
            .ok()
    }

    /// Sends an alert event (a frame alert or an incident event) to the alert `topic`,
    /// keyed by [`AlertEvent::key`], so that one incident's events stay in order on one
    /// partition. With `idempotency_key`, the message carries it as the header
    /// [`IDEMPOTENCY_HEADER`] (the webhook's `Idempotency-Key` for the same event), so
    /// that a reader that sees the event twice can tell. Counted in `stats` as an alert
    /// sent once the broker acknowledges it, or dead-lettered if it fails.
    pub fn send_event(
        &self,
        topic: &str,
        event: &AlertEvent,
        idempotency_key: Option<&str>,
        stats: &Arc<Stats>,
    ) -> Option<u64> {
        let headers = idempotency_key.map(idempotency_header);
        let now = clock::now_us();
        let receipt = AlertReceipt {
            stats: Arc::clone(stats),
            received_us: 0,
            handed_us: now,
        };
        self.send_with(
            topic,
            Some(event.key.as_bytes()),
            &event.body,
            headers,
            Some(receipt),
            None,
        )
        .ok()
    }

    /// Takes a ticket for a message not yet handed to the producer (an alert on its way
    /// to the file outbox): the watermark stops below it until [`Outbox::release`].
    pub fn hold(&self) -> u64 {
        self.shared
            .gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .issue()
    }

    /// Confirms a ticket taken by [`Outbox::hold`].
    pub fn release(&self, ticket: u64) {
        self.shared.confirm(ticket);
    }

    /// Sends `payload` to `topic` keyed by `key`, with `idempotency_key` in the header
    /// [`IDEMPOTENCY_HEADER`], and resolves once the broker acknowledges it or librdkafka
    /// gives up on it (after its own retries, within its message timeout). Nothing is
    /// logged or counted as an alert here: the caller (the file outbox's sender) does.
    pub async fn deliver(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let headers = idempotency_header(idempotency_key);
        let (done, outcome) = oneshot::channel();
        self.send_with(
            topic,
            Some(key.as_bytes()),
            payload,
            Some(headers),
            None,
            Some(done),
        )?;
        outcome.await.unwrap_or_else(|_| {
            Err(DeliveryError {
                error: "the Kafka producer stopped before reporting the delivery".into(),
                retriable: true,
            })
        })
    }

    /// [`Outbox::send`], and for an alert (`alert` set) counts and times it once the
    /// broker acknowledges it, or counts it dead-lettered if it is refused or fails.
    fn send_with(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        alert: Option<AlertReceipt>,
        done: Option<oneshot::Sender<Result<(), DeliveryError>>>,
    ) -> Result<u64, DeliveryError> {
        let ticket = self
            .shared
            .gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .issue();
        let awaited = done.is_some();
        let receipt = Box::new(Receipt {
            ticket,
            alert,
            done,
        });
        let mut record = BaseRecord::with_opaque_to(topic, receipt).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        match self.producer.send(record) {
            Ok(()) => Ok(ticket),
            Err((e, record)) => {
                self.shared.refused.fetch_add(1, Relaxed);
                let key = key.unwrap_or_default();
                match &record.delivery_opaque.alert {
                    Some(a) => a.given_up(topic, key, payload, &e),
                    None if awaited => {}
                    None => tracing::error!(
                        topic,
                        key = %String::from_utf8_lossy(key),
                        bytes = payload.len(),
                        error = %e,
                        "Kafka producer refused a message"
                    ),
                }
                self.shared.confirm(ticket);
                Err(DeliveryError::of(&e))
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

/// The header that carries an event's idempotency key on the alert topic.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Headers holding [`IDEMPOTENCY_HEADER`] = `key`.
fn idempotency_header(key: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(rdkafka::message::Header {
        key: IDEMPOTENCY_HEADER,
        value: Some(key),
    })
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

/// A verdict hook (for worker 0) that sends, keyed by frame id:
///
/// - to `topics.alerts` the webhook's alert body of each anomalous frame (at most
///   `max_features` features and `body_limit` bytes), counted in `stats` as sent (with
///   its `alert_delivery` and `receive_to_alert_sent` latencies) once the broker
///   acknowledges it, or as dead-lettered if the producer gives up on it;
/// - to `topics.results` every frame's verdict, anomalous or not, in the same shape:
///   `seq`, `id`, `timestamp`, `received_at`, `anomaly_detected` true or false,
///   `num_anomalous_features` (always the full count) and `anomalous_features`, the
///   features over the threshold with their scores, highest first, at most
///   `max_features` of them. Scores under the threshold are not sent: the dataflow
///   carries only the anomalies out of the workers.
pub fn result_hook(
    outbox: Arc<Outbox>,
    topics: ResultTopics,
    max_features: usize,
    body_limit: usize,
    stats: Arc<Stats>,
) -> ResultHook {
    Arc::new(move |r: &FrameResult| {
        let now = clock::now_us();
        let latency_ms = now.saturating_sub(r.meta.received_us) as f64 / 1000.0;
        let key = frame_key(r);
        if let (Some(topic), true) = (&topics.alerts, r.is_anomalous()) {
            let body = AlertBody::encode(r, latency_ms, max_features, body_limit);
            let receipt = AlertReceipt {
                stats: Arc::clone(&stats),
                received_us: r.meta.received_us,
                handed_us: now,
            };
            let _ = outbox.send_with(
                topic,
                Some(key.as_bytes()),
                &body,
                None,
                Some(receipt),
                None,
            );
        }
        if let Some(topic) = &topics.results {
            let body = verdict_body(r, latency_ms, max_features);
            outbox.send(topic, Some(key.as_bytes()), &body, None);
        }
    })
}

/// An incident hook (for worker 0) that sends every incident event to `topic`, keyed by
/// incident id: the incident mode's counterpart of [`result_hook`]'s alerts.
pub fn incident_hook(outbox: Arc<Outbox>, topic: String, stats: Arc<Stats>) -> IncidentHook {
    Arc::new(move |_e, event: &AlertEvent| {
        // one incident has several events (open, escalations, resolve): the frame makes
        // each one's key unique, the same on every retry
        let idempotency = format!("{}@{}", event.key, event.seq.unwrap_or(0));
        outbox.send_event(&topic, event, Some(&idempotency), &stats);
    })
}

/// A frame's message on the results topic: the alert body's shape, with
/// `anomaly_detected` saying whether any feature is over the threshold.
fn verdict_body(r: &FrameResult, latency_ms: f64, max_features: usize) -> Vec<u8> {
    let mut alert = Alert::new(r, max_features);
    alert.anomaly_detected = r.is_anomalous();
    serde_json::to_vec(&AlertBody {
        alert,
        latency_ms,
        run_id: crate::clock::run_id(),
    })
    .expect("verdicts serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stage;
    use crate::types::{FrameMeta, Hit};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    fn verdict(seq: u64, hits: &[(u32, f32)]) -> FrameResult {
        FrameResult {
            seq,
            meta: FrameMeta {
                received_ms: 1_795_428_000_123,
                received_us: clock::now_us(),
                id: Some(format!("f{seq}")),
                ..FrameMeta::default()
            },
            hits: hits
                .iter()
                .map(|&(feature, score)| Hit { feature, score })
                .collect(),
            peak: hits.iter().map(|h| h.1).fold(0.0, f32::max),
        }
    }

    fn stage_count(stats: &Stats, stage: Stage) -> u64 {
        stats
            .histograms()
            .into_iter()
            .find(|(s, _)| *s == stage)
            .map_or(0, |(_, h)| h.len())
    }

    /// Against librdkafka's mock broker: an alert acknowledged by the broker counts as
    /// sent, with its delivery and end-to-end latencies; verdicts on the results topic
    /// and normal frames count as no alert.
    #[test]
    fn alerts_count_as_sent_once_the_broker_acknowledges_them() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("alerts", 2, 1).unwrap();
        mock.create_topic("results", 2, 1).unwrap();
        let outbox = Outbox::new(&mock.bootstrap_servers()).unwrap();
        let stats = Arc::new(Stats::default());
        let topics = ResultTopics {
            alerts: Some("alerts".into()),
            results: Some("results".into()),
        };
        let hook = result_hook(Arc::clone(&outbox), topics, 10, 1 << 20, Arc::clone(&stats));
        hook(&verdict(1, &[(3, 1.5), (7, 2.0)]));
        hook(&verdict(2, &[]));
        hook(&verdict(3, &[(0, 9.0)]));
        assert!(outbox.flush(Duration::from_secs(30)), "the broker confirms");
        assert_eq!(outbox.stats().delivered, 5, "2 alerts and 3 verdicts");
        let s = stats.snapshot();
        assert_eq!(
            (s.alerts_sent, s.alerts_retried, s.alerts_dead_lettered),
            (2, 0, 0)
        );
        assert_eq!(stage_count(&stats, Stage::Delivery), 2);
        assert_eq!(stage_count(&stats, Stage::Alerted), 2);
    }

    /// An alert the broker refuses for good, or the producer refuses at once, counts as
    /// dead-lettered and not as sent; a failed message that is no alert counts as neither.
    #[test]
    fn alerts_that_fail_count_as_dead_lettered() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("alerts", 1, 1).unwrap();
        let outbox = Outbox::new(&mock.bootstrap_servers()).unwrap();
        let stats = Arc::new(Stats::default());
        let topics = ResultTopics {
            alerts: Some("alerts".into()),
            results: None,
        };
        let hook = result_hook(Arc::clone(&outbox), topics, 10, 1 << 20, Arc::clone(&stats));
        // A permanent error for the next two produce requests: an alert, then a dead
        // letter of the input (no alert).
        let too_large = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
        mock.request_errors(RDKafkaApiKey::Produce, &[too_large]);
        hook(&verdict(1, &[(3, 1.5)]));
        assert!(outbox.flush(Duration::from_secs(30)));
        mock.request_errors(RDKafkaApiKey::Produce, &[too_large]);
        outbox.send("alerts", Some(b"k"), b"not an alert", None);
        assert!(outbox.flush(Duration::from_secs(30)));
        assert_eq!(outbox.stats().failed, 2, "{:?}", outbox.stats());
        // Over the producer's message limit: refused at once.
        let receipt = AlertReceipt {
            stats: Arc::clone(&stats),
            received_us: clock::now_us(),
            handed_us: clock::now_us(),
        };
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        let refused = outbox.send_with("alerts", None, &huge, None, Some(receipt), None);
        assert!(!refused.expect_err("too large").retriable);
        assert_eq!(outbox.stats().refused, 1);
        // and the broker being well again, the next alert goes through
        hook(&verdict(2, &[(1, 4.0)]));
        assert!(outbox.flush(Duration::from_secs(30)));
        let s = stats.snapshot();
        assert_eq!((s.alerts_sent, s.alerts_dead_lettered), (1, 2), "{s:?}");
        assert_eq!(stage_count(&stats, Stage::Delivery), 1);
    }

    /// A verdict on the results topic says whether the frame is anomalous, how many
    /// features are, and lists them (up to the cap) with the frame's seq and id.
    #[test]
    fn verdicts_carry_seq_id_count_and_hits() {
        let normal: serde_json::Value =
            serde_json::from_slice(&verdict_body(&verdict(4, &[]), 0.5, 2)).unwrap();
        assert_eq!(normal["anomaly_detected"], false);
        assert_eq!(normal["num_anomalous_features"], 0);
        assert_eq!(normal["anomalous_features"], serde_json::json!([]));
        assert_eq!(
            (normal["seq"].as_u64(), normal["id"].as_str()),
            (Some(4), Some("f4"))
        );
        let hits = verdict(5, &[(1, 1.0), (2, 3.0), (9, 2.0)]);
        let v: serde_json::Value = serde_json::from_slice(&verdict_body(&hits, 0.5, 2)).unwrap();
        assert_eq!(v["anomaly_detected"], true);
        assert_eq!(
            v["num_anomalous_features"], 3,
            "the full count past the cap"
        );
        assert_eq!(
            v["anomalous_features"],
            serde_json::json!([{"feature_idx": 2, "score": 3.0}, {"feature_idx": 9, "score": 2.0}])
        );
        assert_eq!((v["seq"].as_u64(), v["id"].as_str()), (Some(5), Some("f5")));
    }

    /// An event goes to the alert topic keyed by its key, with its idempotency key as a
    /// header, and counts as an alert sent.
    #[test]
    fn events_are_keyed_by_their_key_with_the_idempotency_header() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Headers;
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("alerts", 1, 1).unwrap();
        let outbox = Outbox::new(&mock.bootstrap_servers()).unwrap();
        let stats = Arc::new(Stats::default());
        let event = AlertEvent {
            key: "inc-42".into(),
            body: bytes::Bytes::from_static(b"{\"incident\":\"inc-42\"}"),
            seq: Some(9),
            incident: Some("inc-42".into()),
        };
        outbox.send_event("alerts", &event, Some("abc-7"), &stats);
        assert!(outbox.flush(Duration::from_secs(30)));
        assert_eq!(stats.snapshot().alerts_sent, 1);
        let consumer: BaseConsumer = client_config(&mock.bootstrap_servers())
            .set("group.id", "t")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["alerts"]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let m = loop {
            assert!(Instant::now() < deadline, "no message");
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                break m.detach();
            }
        };
        assert_eq!(m.key(), Some(&b"inc-42"[..]));
        assert_eq!(m.payload(), Some(&event.body[..]));
        let h = m.headers().unwrap().get(0);
        assert_eq!((h.key, h.value), (IDEMPOTENCY_HEADER, Some(&b"abc-7"[..])));
    }

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

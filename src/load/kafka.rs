//! Frames to a topic: `tidewatch loadgen --kafka` and the producing half of
//! `tidewatch bench --kafka`. One message per frame, keyed by frame id, dealt to the
//! partitions round-robin; the report has the HTTP load generator's shape, with
//! delivery confirmations in place of HTTP answers.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::clock;
use crate::kafka::{binary, client_config, ensure_topic, MAX_MESSAGE_BYTES};
use crate::load::{client_json, LoadReport, Percentiles};
use crate::sources::{Generator, GeneratorConfig};

/// How frames are written into messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    /// The client's JSON (`{"id":..,"timestamp":..,"data":{..}}`), gzip-compressed.
    #[default]
    Gzip,
    /// The same JSON, uncompressed.
    Json,
    /// tidewatch's binary frame ([`binary`]).
    Binary,
}

/// Encodes generated frames as messages: `(key, payload, anomalies that start in it)`.
pub struct MessageEncoder {
    generator: Generator,
    format: WireFormat,
    id_prefix: String,
    values: Vec<f32>,
    json: String,
}

impl MessageEncoder {
    /// An encoder of frames from the generator configured by `config`, with ids
    /// `{id_prefix}{k}` for k = 0, 1, 2, ...
    pub fn new(
        config: GeneratorConfig,
        format: WireFormat,
        id_prefix: &str,
    ) -> anyhow::Result<MessageEncoder> {
        Ok(MessageEncoder {
            generator: Generator::new(config)?,
            format,
            id_prefix: id_prefix.to_string(),
            values: Vec::new(),
            json: String::new(),
        })
    }

    /// The next frame's key, payload and injected anomalies.
    pub fn next_message(&mut self) -> (String, Vec<u8>, u64) {
        let k = self.generator.frames_generated();
        let injected = self.generator.next_into(&mut self.values).len() as u64;
        let id = format!("{}{k}", self.id_prefix);
        let now = clock::unix_ms();
        let payload = match self.format {
            WireFormat::Binary => {
                let mut out = Vec::new();
                binary::encode(&self.values, k, Some(now), Some(&id), &mut out)
                    .expect("generated ids are short");
                out
            }
            WireFormat::Json | WireFormat::Gzip => {
                client_json(&self.values, &mut self.json);
                // The client's body with the optional id and timestamp in front.
                let body = format!(
                    "{{\"id\":{},\"timestamp\":{now},{}",
                    serde_json::Value::from(id.as_str()),
                    &self.json[1..]
                );
                if self.format == WireFormat::Json {
                    body.into_bytes()
                } else {
                    let mut gz = flate2::write::GzEncoder::new(
                        Vec::with_capacity(body.len() / 2),
                        flate2::Compression::default(),
                    );
                    gz.write_all(body.as_bytes()).expect("writing to memory");
                    gz.finish().expect("writing to memory")
                }
            }
        };
        (id, payload, injected)
    }
}

/// Where and how fast to produce.
#[derive(Clone, Debug)]
pub struct ProduceSpec {
    /// Bootstrap brokers.
    pub brokers: String,
    /// Target topic; created with `partitions` partitions if it does not exist.
    pub topic: String,
    /// Partitions of a topic this creates.
    pub partitions: usize,
    /// Stop after this many frames.
    pub frames: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Frames per second, evenly spaced; `None`: as fast as the producer takes them.
    pub rate: Option<f64>,
}

#[derive(Default)]
struct Tally {
    statuses: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Option<Histogram<u64>>>,
    outstanding: AtomicU64,
}

struct TallyContext(Arc<Tally>);

impl ClientContext for TallyContext {}

impl ProducerContext for TallyContext {
    /// When the message was handed over, `clock::now_us`.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        let key = match result {
            Ok(_) => {
                let us = clock::now_us().saturating_sub(sent_us as u64).max(1);
                if let Some(h) = self
                    .0
                    .latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    let _ = h.record(us);
                }
                "delivered".to_string()
            }
            Err((e, _)) => format!("error: {e}"),
        };
        *self
            .0
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
        self.0.outstanding.fetch_sub(1, Relaxed);
    }
}

/// Produces the messages `next(k)` gives (key, payload, injected anomalies) per `spec`,
/// waits for every delivery confirmation, and reports (latency: hand-over to
/// confirmation).
pub fn produce(
    spec: &ProduceSpec,
    mut next: impl FnMut(u64) -> (String, Vec<u8>, u64),
) -> anyhow::Result<LoadReport> {
    if spec.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of frames per second");
    }
    let partitions = ensure_topic(&spec.brokers, &spec.topic, spec.partitions.max(1))? as u64;
    let tally = Arc::new(Tally {
        latency: Mutex::new(Some(
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        )),
        ..Tally::default()
    });
    let producer: ThreadedProducer<TallyContext> = client_config(&spec.brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        .create_with_context(TallyContext(Arc::clone(&tally)))
        .with_context(|| format!("creating a Kafka producer for {}", spec.brokers))?;
    let limit_time = match (spec.frames, spec.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d,
    };
    let start = Instant::now();
    let (mut sent, mut bytes, mut injected) = (0u64, 0u64, 0u64);
    loop {
        let k = sent;
        if spec.frames.is_some_and(|n| k >= n) {
            break;
        }
        if let Some(rate) = spec.rate {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if limit_time.is_some_and(|l| due >= start + l) {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if limit_time.is_some_and(|l| start.elapsed() >= l) {
            break;
        }
        let (key, payload, anomalies) = next(k);
        let mut record = BaseRecord::with_opaque_to(&spec.topic, clock::now_us() as usize)
            .key(&key)
            .payload(&payload)
            .partition((k % partitions) as i32);
        tally.outstanding.fetch_add(1, Relaxed);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The producer's queue is full: wait for deliveries, then hand it over
                // again (a load generator may wait; the dataflow never does).
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    tally.outstanding.fetch_sub(1, Relaxed);
                    bail!("producing frame {k} to {}: {e}", spec.topic);
                }
            }
        }
        sent += 1;
        bytes += payload.len() as u64;
        injected += anomalies;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.outstanding.load(Relaxed) > 0 {
        if Instant::now() > deadline {
            bail!(
                "{} of {sent} messages still unconfirmed after 120 s",
                tally.outstanding.load(Relaxed)
            );
        }
        let _ = producer.flush(Duration::from_millis(100));
    }
    let seconds = start.elapsed().as_secs_f64();
    let hist = tally
        .latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("set above");
    let latency_ms = Percentiles::of_us(&hist);
    let statuses = std::mem::take(&mut *tally.statuses.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(LoadReport {
        sent,
        statuses,
        seconds,
        rate: sent as f64 / seconds.max(1e-9),
        mean_body_bytes: bytes as f64 / sent.max(1) as f64,
        injected_anomalies: injected,
        latency_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FeatureIndex;
    use crate::sources::kafka::decode_message;
    use crate::sources::KeyPolicy;

    #[test]
    fn every_format_decodes_to_the_generated_values() {
        let config = GeneratorConfig {
            n_features: 7,
            ..GeneratorConfig::default()
        };
        let mut expected = Generator::new(config.clone()).unwrap();
        let mut want = Vec::new();
        expected.next_into(&mut want);
        for format in [WireFormat::Gzip, WireFormat::Json, WireFormat::Binary] {
            let mut enc = MessageEncoder::new(config.clone(), format, "f-").unwrap();
            let (key, payload, _) = enc.next_message();
            assert_eq!(key, "f-0");
            assert_eq!(
                payload.starts_with(&[0x1f, 0x8b]),
                format == WireFormat::Gzip
            );
            let mut values = Vec::new();
            let d = decode_message(
                &payload,
                &FeatureIndex::numbered(7),
                KeyPolicy::default(),
                1 << 20,
                &mut values,
            )
            .unwrap();
            assert_eq!(d.id.as_deref(), Some("f-0"), "{format:?}");
            assert!(d.event_ms.is_some());
            // JSON prints each value as a double: it reads back as the same f32
            assert_eq!(values, want, "{format:?}");
            let (key, _, _) = enc.next_message();
            assert_eq!(key, "f-1");
        }
    }
}

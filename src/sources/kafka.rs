//! The Kafka source: one consumer per timely worker, reading the partitions that worker
//! owns, never blocking, committing offsets only once their frames have settled.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::clock;
use crate::kafka::binary;
use crate::kafka::client::{client_config, MAX_MESSAGE_BYTES, SETUP_TIMEOUT};
use crate::kafka::offsets::OffsetBook;
use crate::model::FeatureIndex;
use crate::runtime::{SourceFactory, WorkerSlot};
use crate::sinks::kafka::Outbox;
use crate::sources::{
    decode_frame, with_inflated, Decoded, FrameSource, KeyPolicy, Pull, Sequencing, SourceError,
};
use crate::types::{Frame, FrameMeta};

/// How long the last commit of a run may wait for the producer's confirmations.
const FINAL_FLUSH: Duration = Duration::from_secs(30);

/// Consumer errors (a broker restarting, say) are logged at most this often per worker.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Decodes one message's payload into `values` (model order): gzip is recognised by its
/// magic bytes and inflated (up to `max_inflated` bytes), then the tidewatch binary
/// format by its magic ([`binary`]; its id, else its seq as decimal text, is the frame id),
/// else the client's JSON. The error says what is wrong.
pub fn decode_message(
    payload: &[u8],
    index: &FeatureIndex,
    policy: KeyPolicy,
    max_inflated: usize,
    values: &mut Vec<f32>,
) -> Result<Decoded, String> {
    with_inflated(payload, max_inflated, |bytes| {
        if binary::is_binary(bytes) {
            let h = binary::decode(bytes, index.len(), values).map_err(|e| e.to_string())?;
            return Ok(Decoded {
                id: Some(h.id.map_or_else(|| h.seq.to_string(), String::from)),
                event_ms: h.event_ms,
                ..Decoded::default()
            });
        }
        decode_frame(bytes, index, policy, values).map_err(|e| e.to_string())
    })
    .map_err(|e| e.to_string())?
}

/// Settings of the Kafka input.
#[derive(Clone, Debug)]
pub struct KafkaInputConfig {
    /// Bootstrap brokers, `host:port,...`.
    pub brokers: String,
    /// The input topic.
    pub topic: String,
    /// The consumer group that holds the committed offsets.
    pub group: String,
    /// Where messages that do not decode are copied, if anywhere.
    pub dead_letter_topic: Option<String>,
    /// Messages read again before each partition's committed offset on start: the
    /// model's window - 1, so that the first window of a run is filled with frames that
    /// were already scored.
    pub rewind: u64,
    /// Stop once every partition has been read up to its end as it was at start (for
    /// benchmarks and tests); otherwise read until [`KafkaInput::stop`].
    pub until_end: bool,
    /// How frame keys must match the model's features (JSON frames).
    pub key_policy: KeyPolicy,
    /// Largest frame after gzip inflation.
    pub max_inflated: usize,
    /// Commits are sent at most this often per worker while running.
    pub commit_interval: Duration,
    /// The message key names the frame's entity (unless the frame names one itself);
    /// otherwise the key is only the frame id's fallback, as producers that key by frame
    /// id expect (`--kafka-key-is-entity`).
    pub key_is_entity: bool,
}

impl KafkaInputConfig {
    /// Defaults for `topic` on `brokers`, group [`crate::kafka::client::DEFAULT_GROUP`].
    pub fn new(brokers: &str, topic: &str) -> KafkaInputConfig {
        KafkaInputConfig {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            group: crate::kafka::client::DEFAULT_GROUP.to_string(),
            dead_letter_topic: None,
            rewind: 0,
            until_end: false,
            key_policy: KeyPolicy::default(),
            max_inflated: 16 << 20,
            commit_interval: Duration::from_millis(200),
            key_is_entity: false,
        }
    }
}

/// What the Kafka sources of a process did so far.
#[derive(Debug, Default)]
pub struct KafkaCounters {
    frames: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    /// `clock::now_us` of the first message taken (0: none yet).
    first_us: AtomicU64,
}

/// A copy of [`KafkaCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KafkaCountersSnapshot {
    /// Frames decoded and handed to the dataflow.
    pub frames: u64,
    /// Payload bytes taken, skipped messages included.
    pub bytes: u64,
    /// Messages that did not decode.
    pub skipped: u64,
    /// Of those, copied to the dead-letter topic.
    pub dead_lettered: u64,
    /// Partition offsets sent to the broker to commit (a commit that fails later is
    /// also counted in `commit_failures`, and sent again).
    pub commits: u64,
    /// Offset commits that failed (they are retried, or the messages redelivered).
    pub commit_failures: u64,
}

impl KafkaCounters {
    /// The counters now.
    pub fn snapshot(&self) -> KafkaCountersSnapshot {
        KafkaCountersSnapshot {
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            commits: self.commits.load(Relaxed),
            commit_failures: self.commit_failures.load(Relaxed),
        }
    }

    /// When the first message was taken (`clock::now_us`), if one was.
    pub fn first_message_us(&self) -> Option<u64> {
        Some(self.first_us.load(Relaxed)).filter(|&t| t > 0)
    }
}

/// The Kafka input of one process: makes the source of each of its workers, and stops
/// them all.
pub struct KafkaInput {
    config: KafkaInputConfig,
    index: FeatureIndex,
    outbox: Option<Arc<Outbox>>,
    stop: AtomicBool,
    counters: Arc<KafkaCounters>,
}

impl KafkaInput {
    /// The input for frames of the model whose features `index` names. `outbox` is the
    /// process's producer: dead letters go through it, and a source waits for its
    /// confirmations before committing (pass the one the process's Kafka sinks use).
    /// A dead-letter topic needs an outbox.
    pub fn new(
        config: KafkaInputConfig,
        index: FeatureIndex,
        outbox: Option<Arc<Outbox>>,
    ) -> anyhow::Result<Arc<KafkaInput>> {
        if config.dead_letter_topic.is_some() && outbox.is_none() {
            bail!("a dead-letter topic needs a producer");
        }
        Ok(Arc::new(KafkaInput {
            config,
            index,
            outbox,
            stop: AtomicBool::new(false),
            counters: Arc::default(),
        }))
    }

    /// Tells every source to end: each stops taking messages, and once the frames it
    /// took have settled it commits their offsets and the run ends.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    /// The counters of this process's sources.
    pub fn counters(&self) -> &KafkaCounters {
        &self.counters
    }

    /// The settings.
    pub fn config(&self) -> &KafkaInputConfig {
        &self.config
    }

    /// The source of global worker `worker` of `peers`: it reads partitions
    /// `p % peers == worker`, from `rewind` messages before each one's committed offset
    /// (or its beginning). `None` if the worker owns no partition.
    pub fn open(
        self: &Arc<Self>,
        worker: usize,
        peers: usize,
    ) -> anyhow::Result<Option<KafkaSource>> {
        let c = &self.config;
        let context = CommitContext {
            failures: Mutex::default(),
            counters: Arc::clone(&self.counters),
            worker,
        };
        let consumer: BaseConsumer<CommitContext> = client_config(&c.brokers)
            .set("group.id", &c.group)
            .set("client.id", format!("tidewatch-worker-{worker}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("fetch.message.max.bytes", MAX_MESSAGE_BYTES.to_string())
            // Prefetched messages per partition: enough to keep a worker busy, small
            // enough that many partitions per process do not fill its memory.
            .set("queued.max.messages.kbytes", "16384")
            .create_with_context(context)
            .with_context(|| format!("creating a Kafka consumer for {}", c.brokers))?;
        let md = consumer
            .fetch_metadata(Some(&c.topic), SETUP_TIMEOUT)
            .with_context(|| format!("reading metadata of topic {} from {}", c.topic, c.brokers))?;
        let topic = md.topics().iter().find(|t| t.name() == c.topic);
        let all: Vec<i32> = match topic {
            Some(t) if t.error().is_none() => t.partitions().iter().map(|p| p.id()).collect(),
            _ => Vec::new(),
        };
        if all.is_empty() {
            bail!(
                "topic {} does not exist on {} (create it, e.g. `tidewatch loadgen --kafka ...` does)",
                c.topic,
                c.brokers
            );
        }
        let mine: Vec<i32> = all
            .iter()
            .copied()
            .filter(|&p| p as usize % peers.max(1) == worker)
            .collect();
        if mine.is_empty() {
            tracing::info!(
                worker,
                partitions = all.len(),
                "no partition to read on this worker"
            );
            return Ok(None);
        }
        let mut wanted = TopicPartitionList::new();
        for &p in &mine {
            wanted.add_partition(&c.topic, p);
        }
        let committed = consumer
            .committed_offsets(wanted, SETUP_TIMEOUT)
            .with_context(|| format!("reading group {}'s committed offsets", c.group))?;
        let mut assignment = TopicPartitionList::new();
        let (mut next, mut ends, mut floor) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
        for &p in &mine {
            let (low, high) = consumer
                .fetch_watermarks(&c.topic, p, SETUP_TIMEOUT)
                .with_context(|| format!("reading the offsets of {} partition {p}", c.topic))?;
            let done = committed
                .find_partition(&c.topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let start = match done {
                Some(o) => {
                    floor.push((p, o));
                    o.saturating_sub(c.rewind as i64).clamp(low, high.max(low))
                }
                None => low,
            };
            tracing::info!(
                worker,
                topic = %c.topic,
                partition = p,
                committed = ?done,
                start,
                end = high,
                "reading partition"
            );
            assignment
                .add_partition_offset(&c.topic, p, Offset::Offset(start))
                .context("building the assignment")?;
            next.insert(p, start);
            ends.insert(p, high);
        }
        consumer
            .assign(&assignment)
            .with_context(|| format!("assigning partitions {mine:?} of {}", c.topic))?;
        Ok(Some(KafkaSource {
            consumer,
            state: State {
                input: Arc::clone(self),
                book: OffsetBook::new(floor),
                next,
                ends,
                done: false,
                finished: false,
                last_commit: Instant::now(),
                last_error_log: None,
                worker,
            },
        }))
    }
}

/// Receives the results of offset commits (served by the consumer's poll).
struct CommitContext {
    failures: Mutex<Vec<(i32, i64)>>,
    counters: Arc<KafkaCounters>,
    worker: usize,
}

impl ClientContext for CommitContext {}

impl ConsumerContext for CommitContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let failed: Vec<(i32, i64)> = offsets
            .elements()
            .iter()
            .filter(|e| result.is_err() || e.error().is_err())
            .filter_map(|e| e.offset().to_raw().map(|o| (e.partition(), o)))
            .collect();
        if failed.is_empty() {
            return;
        }
        self.counters
            .commit_failures
            .fetch_add(failed.len() as u64, Relaxed);
        let error = match &result {
            Err(e) => e.to_string(),
            Ok(()) => offsets
                .elements()
                .iter()
                .find_map(|e| e.error().err())
                .map_or_else(String::new, |e| e.to_string()),
        };
        let rebalance = matches!(
            result,
            Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::UnknownMemberId
            ))
        );
        tracing::warn!(
            worker = self.worker,
            offsets = ?failed,
            error,
            rebalance,
            "offsets not committed; they are retried, and the messages may be redelivered"
        );
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(failed);
    }
}

/// One worker's reader of its partitions (see [`KafkaInput::open`]).
pub struct KafkaSource {
    consumer: BaseConsumer<CommitContext>,
    state: State,
}

/// Everything of a [`KafkaSource`] but its consumer, so that a message (which borrows
/// the consumer) can be taken into it.
struct State {
    input: Arc<KafkaInput>,
    book: OffsetBook,
    /// Per partition, the offset after the last message taken.
    next: BTreeMap<i32, i64>,
    /// Per partition, its end when the source was opened.
    ends: BTreeMap<i32, i64>,
    /// No more messages will be taken.
    done: bool,
    /// The last commit was made.
    finished: bool,
    last_commit: Instant,
    last_error_log: Option<Instant>,
    worker: usize,
}

impl State {
    /// Turns a message into a frame, or skips it (logged, dead-lettered, booked).
    fn take(&mut self, m: &BorrowedMessage<'_>) -> Pull {
        let (p, offset) = (m.partition(), m.offset());
        let input = Arc::clone(&self.input);
        let counters = &input.counters;
        let received_us = clock::now_us();
        let _ = counters
            .first_us
            .compare_exchange(0, received_us.max(1), Relaxed, Relaxed);
        self.next.insert(p, offset + 1);
        let payload = m.payload().unwrap_or_default();
        counters.bytes.fetch_add(payload.len() as u64, Relaxed);
        let mut values = Vec::with_capacity(input.index.len());
        let decoded = if m.payload().is_none() {
            Err("message has no payload".to_string())
        } else {
            decode_message(
                payload,
                &input.index,
                input.config.key_policy,
                input.config.max_inflated,
                &mut values,
            )
        };
        match decoded {
            Ok(d) => {
                counters.frames.fetch_add(1, Relaxed);
                self.book.frame(p, offset);
                let key = m
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .map(String::from);
                // with --kafka-key-is-entity the message key names the entity unless the
                // frame itself does: Kafka keeps one key's messages in one partition, in
                // order
                let entity = d
                    .entity
                    .or_else(|| key.clone().filter(|_| input.config.key_is_entity));
                let id =
                    d.id.or(key)
                        .unwrap_or_else(|| format!("{}:{p}:{offset}", input.config.topic));
                Pull::Frame(Frame {
                    seq: 0,
                    meta: FrameMeta {
                        received_ms: clock::unix_ms(),
                        event_ms: d.event_ms.or_else(|| m.timestamp().to_millis()),
                        id: Some(id),
                        source: p as u32,
                        entity,
                        machine_id: d.machine_id,
                        received_us,
                        decoded_us: clock::now_us(),
                        ..FrameMeta::default()
                    },
                    values,
                })
            }
            Err(problem) => {
                counters.skipped.fetch_add(1, Relaxed);
                let topic = &input.config.topic;
                let dead_letter = match (&input.config.dead_letter_topic, &input.outbox) {
                    (Some(dlq), Some(outbox)) => {
                        let headers = OwnedHeaders::new()
                            .insert(Header {
                                key: "tidewatch-error",
                                value: Some(problem.as_bytes()),
                            })
                            .insert(Header {
                                key: "tidewatch-origin",
                                value: Some(format!("{topic}/{p}/{offset}").as_bytes()),
                            });
                        let sent = outbox.send(dlq, m.key(), payload, Some(headers)).is_some();
                        if sent {
                            counters.dead_lettered.fetch_add(1, Relaxed);
                        }
                        Some(dlq.as_str()).filter(|_| sent)
                    }
                    _ => None,
                };
                tracing::warn!(
                    worker = self.worker,
                    topic = %topic,
                    partition = p,
                    offset,
                    error = %problem,
                    dead_letter,
                    "skipped a Kafka message that does not decode"
                );
                if self.book.skipped(p, offset) {
                    self.checkpoint();
                }
                Pull::Bad(SourceError {
                    origin: format!("kafka topic {topic} partition {p} offset {offset}"),
                    problem,
                })
            }
        }
    }

    fn checkpoint(&mut self) {
        let ticket = self.input.outbox.as_ref().map_or(0, |o| o.issued());
        self.book.checkpoint(ticket);
    }

    fn reached_end(&self) -> bool {
        self.ends
            .iter()
            .all(|(p, &end)| self.next.get(p).is_some_and(|&n| n >= end))
    }
}

impl KafkaSource {
    /// Sends the offsets that may be committed: at most every `commit_interval` while
    /// running (async), or now and synchronously for the last commit (all of them again,
    /// so that the run's end does not depend on asynchronous commits still in flight).
    fn commit(&mut self, last: bool) {
        let st = &mut self.state;
        let failures = std::mem::take(
            &mut *self
                .consumer
                .context()
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (p, o) in failures {
            st.book.failed(p, o);
        }
        let watermark = st.input.outbox.as_ref().map_or(u64::MAX, |o| o.watermark());
        st.book.confirmed(watermark);
        if !last && st.last_commit.elapsed() < st.input.config.commit_interval {
            return;
        }
        let offsets = if last {
            st.book.to_commit_all()
        } else {
            st.book.to_commit()
        };
        if offsets.is_empty() {
            return;
        }
        let topic = &st.input.config.topic;
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in &offsets {
            if let Err(e) = tpl.add_partition_offset(topic, p, Offset::Offset(o)) {
                tracing::error!(partition = p, offset = o, error = %e, "cannot commit this offset");
            }
        }
        let mode = if last {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        st.book.sent(&offsets);
        st.last_commit = Instant::now();
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::warn!(
                worker = st.worker,
                offsets = ?offsets,
                error = %e,
                "offsets not committed; they are retried, and the messages may be redelivered"
            );
            st.input
                .counters
                .commit_failures
                .fetch_add(offsets.len() as u64, Relaxed);
            for (p, o) in offsets {
                st.book.failed(p, o);
            }
        } else {
            st.input
                .counters
                .commits
                .fetch_add(offsets.len() as u64, Relaxed);
            if last {
                tracing::info!(worker = st.worker, offsets = ?offsets, "committed the last offsets");
            }
        }
    }
}

impl FrameSource for KafkaSource {
    fn pull(&mut self) -> Pull {
        if self.state.done {
            return Pull::Done;
        }
        self.commit(false);
        let st = &mut self.state;
        if st.input.stop.load(Relaxed) || (st.input.config.until_end && st.reached_end()) {
            st.done = true;
            return Pull::Done;
        }
        let Some(polled) = self.consumer.poll(Duration::ZERO) else {
            return Pull::Idle;
        };
        match polled {
            Ok(m) => st.take(&m),
            Err(e) => {
                let now = Instant::now();
                if st
                    .last_error_log
                    .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_INTERVAL)
                {
                    st.last_error_log = Some(now);
                    tracing::warn!(worker = st.worker, error = %e, "Kafka consumer error");
                }
                Pull::Idle
            }
        }
    }

    fn sequencing(&self) -> Sequencing {
        Sequencing::Clock
    }

    fn settled(&mut self, n: u64) {
        let st = &mut self.state;
        if st.book.settle(n) {
            st.checkpoint();
        }
        if st.done && !st.finished && st.book.unsettled() == 0 {
            // The end of the run: wait (bounded) for the producer to confirm what this
            // process sent, then commit synchronously.
            if let Some(outbox) = &st.input.outbox {
                if !outbox.flush(FINAL_FLUSH) {
                    tracing::error!(
                        worker = st.worker,
                        "the Kafka producer did not confirm every message in time; \
                         offsets after them stay uncommitted and will be read again"
                    );
                }
            }
            self.commit(true);
            self.state.finished = true;
        } else {
            self.commit(false);
        }
    }
}

impl KafkaInput {
    /// A source factory that opens this input on every worker. A worker that cannot open
    /// it stops the input in this process, so that the run ends and reports the error
    /// instead of the other workers reading on.
    pub fn factory(self: &Arc<Self>) -> SourceFactory {
        let input = Arc::clone(self);
        Arc::new(
            move |slot: WorkerSlot| match input.open(slot.index, slot.peers) {
                Ok(s) => Ok(s.map(|s| Box::new(s) as Box<dyn FrameSource>)),
                Err(e) => {
                    input.stop();
                    Err(e.context(format!("opening the Kafka input on worker {}", slot.index)))
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::kafka::{produce, ProduceSpec};
    use rdkafka::mocking::MockCluster;

    fn frame_json(k: u64) -> Vec<u8> {
        format!(r#"{{"id":"f{k}","data":{{"feature_0":{k},"feature_1":0.5,"feature_2":-1}}}}"#)
            .into_bytes()
    }

    /// Pulls until the source ends; returns frame ids and the number of skipped messages.
    fn drain(source: &mut KafkaSource) -> (Vec<String>, usize) {
        let (mut ids, mut bad) = (Vec::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "the source did not end: {ids:?}");
            match source.pull() {
                Pull::Frame(f) => ids.push(f.meta.id.unwrap()),
                Pull::Bad(e) => {
                    assert!(e.origin.contains("partition 1 offset 2"), "{e}");
                    bad += 1;
                }
                Pull::Idle => std::thread::sleep(Duration::from_millis(5)),
                Pull::Done => return (ids, bad),
            }
        }
    }

    /// Against librdkafka's mock broker: partitions are dealt to workers, a poison
    /// message is skipped and dead-lettered, the last commit happens once everything
    /// settled, and a new run resumes `rewind` messages before the committed offsets.
    #[test]
    fn reads_skips_commits_and_resumes_before_the_committed_offset() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("frames", 2, 1).unwrap();
        mock.create_topic("dlq", 1, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let spec = ProduceSpec {
            brokers: brokers.clone(),
            topic: "frames".into(),
            partitions: 2,
            frames: Some(12),
            duration: None,
            rate: None,
        };
        // message 5 (partition 1, offset 2) is poison
        let report = produce(&spec, |k| {
            let payload = if k == 5 {
                b"{not json".to_vec()
            } else {
                frame_json(k)
            };
            (format!("f{k}"), payload, 0)
        })
        .unwrap();
        assert_eq!(report.statuses.get("delivered"), Some(&12));

        let outbox = Outbox::new(&brokers).unwrap();
        let mut config = KafkaInputConfig::new(&brokers, "frames");
        config.group = "g".into();
        config.dead_letter_topic = Some("dlq".into());
        config.until_end = true;
        config.rewind = 2;
        let input = KafkaInput::new(
            config.clone(),
            FeatureIndex::numbered(3),
            Some(Arc::clone(&outbox)),
        )
        .unwrap();
        assert!(
            input.open(2, 3).unwrap().is_none(),
            "worker 2 of 3 owns no partition"
        );
        let mut source = input.open(0, 1).unwrap().expect("owns both partitions");
        let (ids, bad) = drain(&mut source);
        assert_eq!((ids.len(), bad), (11, 1));
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| id[1..].parse::<u64>().unwrap());
        let expected: Vec<String> = (0..12)
            .filter(|&k| k != 5)
            .map(|k| format!("f{k}"))
            .collect();
        assert_eq!(sorted, expected);
        // nothing is committed before the frames settle; then all of it (the poison
        // message's copy to the dead-letter topic may or may not be confirmed by now: the
        // mock broker answers on its own thread)
        assert_eq!(input.counters().snapshot().commits, 0);
        source.settled(11);
        let c = input.counters().snapshot();
        assert_eq!((c.frames, c.skipped, c.dead_lettered), (11, 1, 1));
        assert_eq!(
            outbox.stats().delivered,
            1,
            "the poison message was dead-lettered"
        );
        assert_eq!(c.commits, 2, "one commit per partition: {c:?}");
        drop(source);

        // A new run (same group) re-reads 2 messages before each committed offset.
        let input = KafkaInput::new(config, FeatureIndex::numbered(3), Some(outbox)).unwrap();
        let mut source = input.open(0, 1).unwrap().unwrap();
        let (mut ids, bad) = drain(&mut source);
        ids.sort();
        // partition 0 holds f0 f2 .. f10, partition 1 f1 f3 (f5 poison) f7 f9 f11
        assert_eq!(
            (ids, bad),
            (
                vec!["f10".to_string(), "f11".into(), "f8".into(), "f9".into()],
                0
            )
        );
    }
}

//! Kafka in and out: frames from a topic on every worker of every process, alerts and
//! verdicts to topics, and a producer of frames for load and benchmarks.
//!
//! - [`KafkaInput`] makes one [`KafkaSource`] per timely worker: partition `p` of the
//!   input topic is read by global worker `p % peers`, so the partitions are spread over
//!   the workers of all processes with no group rebalancing (a worker with no partition
//!   reads nothing and holds nothing back). Frames are stamped with the clock
//!   ([`crate::sources::Sequencing::Clock`]).
//! - At-least-once: a partition's offset is committed only once every message before it
//!   has settled (its frame's verdict is everywhere and its alert was handed to the
//!   sinks) and, for sinks writing to Kafka from the same process, the producer has
//!   confirmed those messages ([`OffsetBook`], [`Outbox`]). On start each partition is
//!   read again from `window - 1` messages before its committed offset, so that the first
//!   window of the new run holds frames that were already scored: no frame goes unscored
//!   across a restart (some are scored twice).
//! - A message that does not decode is logged with its partition and offset, copied to
//!   the dead-letter topic if one is configured, and skipped; its offset is committed
//!   like any other.
//! - [`result_hook`] writes the webhook's alert body, keyed by frame id, to the alert
//!   topic, and optionally every frame's verdict to a results topic.
//! - Messages hold one frame: the client's JSON (gzip or plain, recognised by the gzip
//!   magic bytes) or the compact binary format of [`binary`].

pub mod binary;
pub mod client;
pub mod offsets;

use std::sync::Arc;

use anyhow::bail;

use crate::model::Model;
use crate::runtime::{SourceFactory, WorkerSlot};
use crate::sources::{FrameSource, KeyPolicy};

pub use crate::sinks::kafka::{result_hook, Outbox, OutboxStats, ResultTopics};
pub use crate::sources::kafka::{
    decode_message, KafkaCounters, KafkaCountersSnapshot, KafkaInput, KafkaInputConfig, KafkaSource,
};
pub use client::{
    client_config, ensure_topic, partition_count, DEFAULT_GROUP, MAX_MESSAGE_BYTES, SETUP_TIMEOUT,
};
pub use offsets::OffsetBook;

/// The alert topic when none is named.
pub const DEFAULT_ALERTS_TOPIC: &str = "anomaly-alerts";

/// `tidewatch serve`'s Kafka flags, each with its environment variable.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KafkaArgs {
    /// Read frames from Kafka at these bootstrap brokers (`host:port,...`) instead of
    /// taking them over HTTP; every worker of every process reads its share of the
    /// partitions.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic the frames are read from (required with --kafka-brokers).
    #[arg(long, env = "KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// Consumer group whose committed offsets say where reading resumes.
    #[arg(long, env = "KAFKA_GROUP", default_value = DEFAULT_GROUP)]
    pub kafka_group: String,
    /// Messages that do not decode are copied to this topic (they are always logged and
    /// skipped).
    #[arg(long, env = "KAFKA_DEAD_LETTER_TOPIC")]
    pub kafka_dead_letter_topic: Option<String>,
    /// Topic the alerts go to (the webhook's body, keyed by frame id); empty: none.
    #[arg(long, env = "ALERTS_KAFKA_TOPIC", default_value = DEFAULT_ALERTS_TOPIC)]
    pub alerts_kafka_topic: String,
    /// Topic every frame's verdict goes to, anomalous or not (for downstream storage, as
    /// seed 003's inference-results), keyed by frame id: the alert body's shape with
    /// `anomaly_detected` true or false, the count of features over the threshold, and
    /// those features with their scores (at most --max-alert-features of them).
    #[arg(long, env = "RESULTS_KAFKA_TOPIC")]
    pub results_kafka_topic: Option<String>,
}

impl KafkaArgs {
    /// Whether Kafka input was asked for.
    pub fn enabled(&self) -> bool {
        self.kafka_brokers.is_some()
    }

    /// Checks that the flags make sense together.
    pub fn validate(&self) -> anyhow::Result<()> {
        let named = |t: &Option<String>| t.as_deref().is_some_and(|s| !s.trim().is_empty());
        match (&self.kafka_brokers, named(&self.kafka_topic)) {
            (Some(b), _) if b.trim().is_empty() => bail!("--kafka-brokers is empty"),
            (Some(_), false) => bail!("--kafka-brokers needs --kafka-topic (the input topic)"),
            (None, _)
                if named(&self.kafka_topic)
                    || self.kafka_dead_letter_topic.is_some()
                    || self.results_kafka_topic.is_some() =>
            {
                bail!("Kafka topics were given but no --kafka-brokers (KAFKA_BROKERS)")
            }
            _ => {}
        }
        if self.kafka_group.trim().is_empty() {
            bail!("--kafka-group is empty");
        }
        Ok(())
    }

    /// What `serve` needs for Kafka, or `None` without --kafka-brokers. JSON frames are
    /// decoded with `key_policy` and inflated up to `max_inflated` bytes, as over HTTP.
    pub fn to_config(
        &self,
        key_policy: KeyPolicy,
        max_inflated: usize,
    ) -> anyhow::Result<Option<KafkaServeConfig>> {
        self.validate()?;
        let (Some(brokers), Some(topic)) = (&self.kafka_brokers, &self.kafka_topic) else {
            return Ok(None);
        };
        let mut input = KafkaInputConfig::new(brokers.trim(), topic.trim());
        input.group = self.kafka_group.trim().to_string();
        input.dead_letter_topic = self
            .kafka_dead_letter_topic
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from);
        input.key_policy = key_policy;
        input.max_inflated = max_inflated;
        Ok(Some(KafkaServeConfig {
            input,
            topics: self.result_topics(),
        }))
    }

    /// The output topics these flags name.
    pub fn result_topics(&self) -> ResultTopics {
        ResultTopics {
            alerts: Some(self.alerts_kafka_topic.trim())
                .filter(|t| !t.is_empty())
                .map(String::from),
            results: self
                .results_kafka_topic
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from),
        }
    }
}

/// What a process's Kafka input and output did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KafkaReport {
    /// The sources of this process.
    pub input: KafkaCountersSnapshot,
    /// The producer of this process (alerts, verdicts, dead letters), if it had one.
    pub output: Option<OutboxStats>,
}

/// `serve`'s Kafka settings: where frames come from and where verdicts go.
#[derive(Clone, Debug)]
pub struct KafkaServeConfig {
    /// The input (its `rewind` is set from the model by [`KafkaServeConfig::input`]).
    pub input: KafkaInputConfig,
    /// The output topics (written by the process hosting worker 0).
    pub topics: ResultTopics,
}

impl KafkaServeConfig {
    /// The process's producer, if anything is to be produced from this process: the
    /// output topics (`leader`: the process hosting worker 0) or dead letters.
    /// Topics it writes that do not exist yet are created, with as many partitions as
    /// the input topic, so that a missing topic fails start-up rather than every send.
    pub fn outbox(&self, leader: bool) -> anyhow::Result<Option<Arc<Outbox>>> {
        let c = &self.input;
        let mut topics: Vec<&String> = c.dead_letter_topic.iter().collect();
        if leader {
            topics.extend(self.topics.alerts.iter().chain(&self.topics.results));
        }
        if topics.is_empty() {
            return Ok(None);
        }
        let partitions = partition_count(&c.brokers, &c.topic)?.unwrap_or(1);
        for t in topics {
            ensure_topic(&c.brokers, t, partitions)?;
        }
        Outbox::new(&c.brokers).map(Some)
    }

    /// The input for `model`, after checking that the topic exists (so that a typo fails
    /// start-up with a message instead of on every worker). Each partition is re-read
    /// from `window - 1` messages before its committed offset.
    pub fn input(
        &self,
        model: &Model,
        outbox: Option<Arc<Outbox>>,
    ) -> anyhow::Result<Arc<KafkaInput>> {
        let c = &self.input;
        if partition_count(&c.brokers, &c.topic)?.is_none() {
            bail!("topic {} does not exist on {}", c.topic, c.brokers);
        }
        let mut config = c.clone();
        config.rewind = model.window().saturating_sub(1) as u64;
        KafkaInput::new(config, model.feature_index(), outbox)
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

//! `serve`'s Kafka: frames from a topic on every worker of every process, alerts and
//! verdicts to topics. The flags are [`crate::settings::KafkaArgs`]; the client is in
//! `crate::kafka`.
//!
//! - [`KafkaInput`] makes one [`crate::sources::kafka::KafkaSource`] per timely worker:
//!   partition `p` of the input topic is read by global worker `p % peers`, so the
//!   partitions are spread over the workers of all processes with no group rebalancing (a
//!   worker with no partition reads nothing and holds nothing back). Frames are stamped
//!   with the clock ([`crate::sources::Sequencing::Clock`]).
//! - At-least-once: a partition's offset is committed only once every message before it has
//!   settled (its frame's verdict is everywhere and its alert was handed to the sinks) and,
//!   for sinks writing to Kafka from the same process, the producer has confirmed those
//!   messages ([`crate::kafka::OffsetBook`], [`Outbox`]). On start each partition is read
//!   again from `window - 1` messages before its committed offset, so that the first window
//!   of the new run holds frames that were already scored: no frame goes unscored across a
//!   restart (some are scored twice).
//! - A message that does not decode is logged with its partition and offset, copied to the
//!   dead-letter topic if one is configured, and skipped; its offset is committed like any
//!   other.
//! - [`crate::sinks::kafka::result_hook`] writes the webhook's alert body, keyed by frame
//!   id, to the alert topic, and optionally every frame's verdict to a results topic.
//! - Messages hold one frame: the client's JSON (gzip or plain, recognised by the gzip
//!   magic bytes) or the compact binary format of [`crate::kafka::binary`].

use std::sync::Arc;

use anyhow::bail;

use crate::kafka::{ensure_topic, partition_count};
use crate::model::Model;
use crate::sinks::kafka::{Outbox, OutboxStats, ResultTopics};
use crate::sources::kafka::{KafkaCountersSnapshot, KafkaInput, KafkaInputConfig};

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
    /// The file outbox alerts for the alert topic go through
    /// ([`crate::sinks::webhook::WebhookConfig::for_kafka_alerts`]); `None`
    /// (`--no-outbox`): they go straight to the producer.
    pub alert_outbox: Option<crate::sinks::webhook::WebhookConfig>,
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

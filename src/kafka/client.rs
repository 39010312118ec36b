//! The Kafka client every tidewatch component shares: its configuration, the limits it
//! works within, and topic administration. The source (`sources/kafka.rs`), the sink
//! (`sinks/kafka.rs`) and the load generator (`load/kafka.rs`) build on it and on nothing
//! else of each other's.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

/// The consumer group when none is named.
pub const DEFAULT_GROUP: &str = "tidewatch";

/// How long set-up calls to the broker (metadata, offsets, topic creation) may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest message produced or fetched: a 25,000-feature frame is about 0.3 MB as gzip
/// JSON and 0.9 MB plain, over librdkafka's 1 MB default.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A client configuration for `brokers` with the settings every tidewatch client shares.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        // librdkafka's logs go through `log` into tracing; errors also come back as
        // results, so its own log lines are kept to warnings.
        .set("log_level", "4")
        .set("socket.keepalive.enable", "true");
    c
}

/// The number of partitions of `topic`, or `None` if the broker does not know it.
pub fn partition_count(brokers: &str, topic: &str) -> anyhow::Result<Option<usize>> {
    let consumer: BaseConsumer = client_config(brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .context("creating a Kafka client")?;
    let md = consumer
        .fetch_metadata(Some(topic), SETUP_TIMEOUT)
        .with_context(|| format!("reading metadata of topic {topic} from {brokers}"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None => Ok(Some(t.partitions().len()).filter(|&n| n > 0)),
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            Ok(None)
        }
        Some(e) => bail!("topic {topic} on {brokers}: {}", RDKafkaErrorCode::from(e)),
    }
}

/// Creates `topic` with `partitions` partitions unless it exists; returns its partition
/// count (an existing topic keeps its own).
pub fn ensure_topic(brokers: &str, topic: &str, partitions: usize) -> anyhow::Result<usize> {
    if let Some(n) = partition_count(brokers, topic)? {
        return Ok(n);
    }
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .context("creating a Kafka admin client")?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(SETUP_TIMEOUT));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the admin client")?;
    let results = runtime
        .block_on(async {
            tokio::time::timeout(SETUP_TIMEOUT, admin.create_topics([&new], &opts)).await
        })
        .map_err(|_| anyhow::anyhow!("creating topic {topic} on {brokers} timed out"))?
        .with_context(|| format!("creating topic {topic} on {brokers}"))?;
    for r in results {
        match r {
            Ok(_) => {}
            // Created meanwhile by someone else: fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name} on {brokers}: {code}"),
        }
    }
    // The broker may take a moment to serve metadata of a new topic.
    let deadline = std::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        if let Some(n) = partition_count(brokers, topic)? {
            return Ok(n);
        }
        if std::time::Instant::now() > deadline {
            bail!("topic {topic} was created on {brokers} but does not show in its metadata");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! `tidewatch serve`'s settings: seed 001's environment variables, a `.env` file, and CLI
//! flags of the same meaning. Precedence: flags, then the process environment, then `.env`
//! (which [`load_dotenv`] copies into the environment only where a variable is unset),
//! then the seed's defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::kafka::DEFAULT_GROUP;
use crate::model::Model;
use crate::runtime::{ClusterArgs, Settings, SinkSpec};
use crate::server::kafka::KafkaServeConfig;
use crate::server::{ModelSpec, ServeConfig};
use crate::sinks::kafka::ResultTopics;
use crate::sinks::webhook::{join_url, WebhookConfig, CLIENT_BODY_LIMIT};
use crate::sources::kafka::KafkaInputConfig;
use crate::sources::{KeyPolicy, MissingKeys, UnknownKeys};

/// Loads `.env` from the current directory (or the nearest parent that has one) into the
/// process environment, leaving variables that are already set alone. Returns the file
/// read, if any. Call it before parsing flags, so that clap's `env` fallbacks see it.
pub fn load_dotenv() -> anyhow::Result<Option<PathBuf>> {
    match dotenvy::dotenv() {
        Ok(path) => Ok(Some(path)),
        Err(e) if e.not_found() => Ok(None),
        Err(e) => Err(e).context("reading .env"),
    }
}

/// Flags of `tidewatch serve`, each with its environment variable.
#[derive(clap::Args, Clone, Debug)]
#[command(disable_help_flag = true)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "APP_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Port to listen on (0: any free port).
    #[arg(long, env = "APP_PORT", default_value_t = 9000)]
    pub port: u16,
    /// Base URL of the alert receiver (the NestJS server).
    #[arg(long, env = "NESTJS_URL", default_value = "http://localhost:3000")]
    pub nestjs_url: String,
    /// Path of the alert endpoint on that server.
    #[arg(long, env = "NESTJS_ANOMALY_ENDPOINT", default_value = "/api/v1/alert")]
    pub nestjs_anomaly_endpoint: String,
    /// Seconds one alert attempt may take, connecting included.
    #[arg(long, env = "NESTJS_TIMEOUT", default_value_t = 10.0)]
    pub nestjs_timeout: f64,
    /// Frames accepted but not yet scored, at most; past it, 429.
    #[arg(long, env = "QUEUE_MAX_SIZE", default_value_t = 100)]
    pub queue_max_size: usize,
    /// Windows per scoring call at most (a lone frame is scored without waiting).
    #[arg(long, env = "INFERENCE_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: usize,
    /// Model directory, or the name of one under models/.
    #[arg(long, env = "DEFAULT_MODEL_NAME", default_value = "default")]
    pub model: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub device: crate::commands::DeviceArgs,
    /// Attempts per alert at most; 0: no limit, an alert is retried until it is older
    /// than --outbox-max-age.
    #[arg(long, env = "MAX_RETRIES", default_value_t = 0)]
    pub max_retries: u32,
    /// The durable alert outbox: every alert is appended here (and synced to disk)
    /// before it is sent, and what was not delivered is sent again on the next start.
    #[arg(long, env = "OUTBOX_DIR", default_value = crate::sinks::outbox::DEFAULT_DIR)]
    pub outbox_dir: PathBuf,
    /// Keep alerts in memory only (no outbox): a crash loses what was not delivered.
    #[arg(long)]
    pub no_outbox: bool,
    /// Alerts are retried until they are this old (counted from when they entered the
    /// outbox, across restarts); then they are dead-lettered.
    #[arg(long, env = "OUTBOX_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub outbox_max_age: Duration,
    /// Bytes the outbox may hold on disk; past it, new alerts are dead-lettered at once
    /// (0: no limit).
    #[arg(long, env = "OUTBOX_MAX_BYTES", default_value_t = crate::sinks::outbox::DEFAULT_MAX_BYTES)]
    pub outbox_max_bytes: u64,
    /// Seconds before the first alert retry; doubled for each further one, with jitter.
    #[arg(long, env = "INITIAL_DELAY", default_value_t = 1.0)]
    pub initial_delay: f64,
    /// Seconds between alert attempts at most.
    #[arg(long, env = "MAX_DELAY", default_value_t = 30.0)]
    pub max_delay: f64,
    /// Alerts that cannot be delivered are appended to this JSONL file.
    #[arg(
        long,
        env = "DEAD_LETTER_PATH",
        default_value = "tidewatch-dead-letter.jsonl"
    )]
    pub dead_letter: PathBuf,
    /// Alerts being delivered at once at most.
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 8)]
    pub webhook_concurrency: usize,
    /// Alerts waiting for delivery at most; past it they are dead-lettered.
    #[arg(long, default_value_t = 1024)]
    pub alert_queue: usize,
    /// Largest alert body in bytes (the NestJS client refuses more than 100 KiB).
    #[arg(long, default_value_t = CLIENT_BODY_LIMIT)]
    pub alert_body_limit: usize,
    /// Most features listed in one alert (the count is always complete).
    #[arg(long, default_value_t = crate::sinks::alert::DEFAULT_MAX_FEATURES)]
    pub max_alert_features: usize,
    /// Log a JSON metrics line (counters, CPU, RSS, stage latencies) this often; `0s`
    /// turns it off.
    #[arg(long, env = "METRICS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub metrics_interval: std::time::Duration,
    /// Do not post alerts at all (they still go to --output / --stdout).
    #[arg(long)]
    pub no_webhook: bool,
    /// Largest request body on the wire, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest request body after gzip inflation, in bytes (stops gzip bombs).
    #[arg(long, env = "MAX_INFLATED_BYTES", default_value_t = 16 << 20)]
    pub max_inflated_bytes: usize,
    /// Longest wait for a request's headers, on a new connection or an idle keep-alive
    /// one; the connection is closed after it.
    #[arg(long, env = "HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Connections open at once at most (lowered to fit the open-files limit, which is
    /// raised to its hard limit at start). At the limit the longest-idle connection is
    /// closed; with none idle, a new one gets 503 at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = crate::server::listen::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Bytes of request bodies received or decoded at once at most; past it, 429
    /// `uploads_full`.
    #[arg(long, env = "UPLOAD_BUFFER_BYTES", default_value_t = 64 << 20)]
    pub upload_buffer_bytes: usize,
    /// Slowest body upload, in bytes a second on average after a 2 s grace; slower ones
    /// are cut off with 408 (0: only the 30 s body timeout).
    #[arg(long, env = "MIN_BODY_RATE", default_value_t = 16 << 10)]
    pub min_body_rate: u64,
    /// On SIGINT/SIGTERM, how long the drain may take in all (requests under way, scoring
    /// what was accepted, delivering alerts); what is still undelivered then goes to the
    /// dead-letter file. A second signal ends the drain at once.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// What to do with keys that name no model feature.
    #[arg(long, value_enum, default_value = "reject")]
    pub unknown_features: UnknownKeys,
    /// What to do with model features missing from a frame.
    #[arg(long, value_enum, default_value = "reject")]
    pub missing_features: MissingKeys,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pipeline: crate::dataflows::PipelineArgs,
    /// Also write one alert body per anomalous frame to this JSONL file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also print alert lines on stdout.
    #[arg(long)]
    pub stdout: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub alerts: crate::commands::AlertArgs,
    /// tokio threads serving HTTP and sending alerts.
    #[arg(long, default_value_t = 2)]
    pub http_threads: usize,
    /// Bearer token of the admin routes (`POST /admin/model`, `PUT /admin/threshold`,
    /// `PUT|DELETE /admin/mutes`); unset or empty: those routes do not exist (404).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Push every scored frame's score and flag to this metrics store, by the
    /// VictoriaMetrics import API (e.g. `http://127.0.0.1:8428`).
    #[arg(long, env = "METRICS_STORE_URL")]
    pub metrics_store: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    /// In a cluster (`-n 2` or more): where HTTP frames enter. `process-0`: process 0
    /// alone takes `POST /data-enqueue`, and the others only score. `every-process`: each
    /// process listens and decodes its own frames, process p on `APP_PORT + p` (or line p
    /// of `--ingest-addrs`), and only feature partitions travel between processes; frames
    /// are ordered into windows by their receive time (the `seq` each 202 names).
    #[arg(long, env = "INGEST", value_enum, default_value = "process-0")]
    pub ingest: Ingest,
    /// With `--ingest every-process`: a file of one `host:port` per line, in process
    /// order, that process p listens on (instead of `APP_HOST:APP_PORT + p`).
    #[arg(long, env = "INGEST_ADDRS")]
    pub ingest_addrs: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Where HTTP frames enter a cluster (see [`ServeArgs::ingest`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ingest {
    /// Process 0 alone takes frames.
    #[default]
    #[value(name = "process-0")]
    Process0,
    /// Every process takes frames on an address of its own.
    EveryProcess,
}

impl ServeArgs {
    /// Whether this process takes HTTP frames of its own in a cluster.
    pub fn ingests_everywhere(&self) -> bool {
        self.ingest == Ingest::EveryProcess && self.cluster.processes > 1
    }

    /// The address this process listens on: `APP_HOST:APP_PORT`, or with ingest on every
    /// process, `APP_PORT + p` (port 0 stays 0: any free port) or line p of the file.
    fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        let p = self.cluster.process;
        if !self.ingests_everywhere() {
            return Ok(SocketAddr::new(self.host, self.port));
        }
        if let Some(path) = &self.ingest_addrs {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --ingest-addrs {}", path.display()))?;
            let line = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .nth(p)
                .with_context(|| {
                    format!(
                        "--ingest-addrs {} has no line for process {p}",
                        path.display()
                    )
                })?;
            return line.parse().with_context(|| {
                format!(
                    "--ingest-addrs {}: line {p} ({line:?}) is not host:port",
                    path.display()
                )
            });
        }
        let port = match self.port {
            0 => 0,
            port => u16::try_from(usize::from(port) + p)
                .ok()
                .with_context(|| format!("APP_PORT {port} + process {p} is past 65535"))?,
        };
        Ok(SocketAddr::new(self.host, port))
    }
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(s) {
        Ok(d) if s.is_finite() => Ok(d),
        _ => bail!("{name} must be a non-negative number of seconds, not {s}"),
    }
}

impl ServeArgs {
    /// The server configuration these settings describe. The model is named, not loaded:
    /// the server loads it while already answering probes.
    pub fn to_config(&self) -> anyhow::Result<ServeConfig> {
        if self.nestjs_timeout <= 0.0 {
            bail!(
                "NESTJS_TIMEOUT must be positive, not {}",
                self.nestjs_timeout
            );
        }
        if self.batch_size == 0 {
            bail!("INFERENCE_BATCH_SIZE must be at least 1");
        }
        // a variant with per-entity models reads them from the model directory
        let pipeline = self
            .pipeline
            .pipeline()?
            .with_model_dir(Model::resolve(&self.model));
        let webhook = WebhookConfig {
            url: join_url(&self.nestjs_url, &self.nestjs_anomaly_endpoint),
            timeout: seconds("NESTJS_TIMEOUT", self.nestjs_timeout)?,
            max_retries: self.max_retries,
            initial_delay: seconds("INITIAL_DELAY", self.initial_delay)?,
            max_delay: seconds("MAX_DELAY", self.max_delay)?,
            concurrency: self.webhook_concurrency.max(1),
            queue: self.alert_queue.max(1),
            dead_letter: self.dead_letter.clone(),
            max_age: self.outbox_max_age,
            outbox: (!self.no_outbox).then(|| crate::sinks::outbox::OutboxConfig {
                dir: self.outbox_dir.clone(),
                max_bytes: self.outbox_max_bytes,
            }),
            body_limit: self.alert_body_limit,
            max_features: self.max_alert_features,
            ..WebhookConfig::default()
        };
        if !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://")) {
            bail!(
                "NESTJS_URL must start with http:// or https:// (got {:?})",
                self.nestjs_url
            );
        }
        let mut config = ServeConfig::new(ModelSpec::Dir(Model::resolve(&self.model)));
        config.addr = self.listen_addr()?;
        config.ingest_everywhere = self.ingests_everywhere();
        config.device = self.device.device;
        config.settings = Settings {
            device: self.device.device,
            pipeline,
            batch_size: self.batch_size,
            threshold: self.pipeline.threshold,
            window: self.pipeline.window,
            stride: self.pipeline.stride,
            max_alert_features: self.max_alert_features,
            metrics_interval: Some(self.metrics_interval).filter(|d| !d.is_zero()),
            incidents: self.alerts.incidents(self.alert_body_limit)?,
            ..Settings::default()
        };
        config.cluster = self.cluster.clone();
        config.queue_max_size = self.queue_max_size.max(1);
        config.max_body_bytes = self.max_body_bytes;
        config.max_inflated_bytes = self.max_inflated_bytes;
        config.key_policy = KeyPolicy {
            unknown: self.unknown_features,
            missing: self.missing_features,
        };
        config.kafka = self
            .kafka
            .to_config(config.key_policy, self.max_inflated_bytes)?;
        config.http_threads = self.http_threads.max(1);
        config.limits = crate::server::ConnectionLimits {
            header_timeout: self.header_timeout,
            max_connections: self.max_connections.max(1),
        };
        config.upload_buffer_bytes = self.upload_buffer_bytes.max(1);
        config.min_body_rate = self.min_body_rate;
        config.drain_timeout = self.drain_timeout;
        // Verdicts meet on worker 0, so only process 0 sends alerts or writes them.
        let leader = self.cluster.is_leader();
        if let Some(k) = config.kafka.as_mut() {
            k.alert_outbox = webhook.outbox.is_some().then(|| webhook.for_kafka_alerts());
        }
        config.webhook = (!self.no_webhook && leader).then_some(webhook);
        config.admin_token = self.admin_token.clone().filter(|t| !t.is_empty());
        config.metrics_store = self.metrics_store.clone().filter(|_| leader);
        config.sinks = SinkSpec {
            alerts_path: self.output.clone().filter(|_| leader),
            stdout: self.stdout && leader,
            on_result: None,
            on_incident: None,
        };
        if config.ingest_everywhere && config.kafka.is_some() {
            bail!(
                "--ingest every-process is for HTTP frames; with Kafka every worker reads already"
            );
        }
        Ok(config)
    }
}

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
    /// The message key names the frame's entity (per-entity windows and models) when the
    /// frame names none; without it the key is only the frame id's fallback.
    #[arg(long, env = "KAFKA_KEY_IS_ENTITY")]
    pub kafka_key_is_entity: bool,
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
        input.key_is_entity = self.kafka_key_is_entity;
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
            alert_outbox: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Device;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let cli = Cli::try_parse_from([
            "t",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--nestjs-url",
            "http://10.0.0.1:3000/",
            "--device",
            "CPU",
            "--initial-delay",
            "0.05",
        ])
        .unwrap();
        let c = cli.serve.to_config().unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:0");
        assert_eq!(c.device, Device::Cpu);
        let w = c.webhook.unwrap();
        assert_eq!(w.url, "http://10.0.0.1:3000/api/v1/alert");
        assert_eq!(w.initial_delay, Duration::from_millis(50));
        let cli = Cli::try_parse_from(["t", "--nestjs-url", "localhost:3000"]).unwrap();
        assert!(cli.serve.to_config().is_err());
        let cli = Cli::try_parse_from(["t", "--initial-delay=-1"]).unwrap();
        assert!(cli.serve.to_config().is_err());
    }
}

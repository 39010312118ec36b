//! `tidewatch loadgen`: sends frames the way seed 001's NestJS client does (25,000
//! features as compact JSON, gzip, `Content-Type: application/x-www-form-urlencoded`, no
//! `Content-Encoding`, keep-alive) at a fixed rate or as fast as the server answers, and
//! reports status counts and latency percentiles. With `--kafka`, it produces the
//! frames to a Kafka topic instead (see [`kafka`]).

pub mod kafka;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::commands::SyntheticArgs;
use crate::sources::{Generator, GeneratorConfig};

/// Flags of `tidewatch loadgen`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadgenArgs {
    /// The ingest endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9000/data-enqueue")]
    pub url: String,
    /// Frames per second, spread evenly (default: as fast as the server answers).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests in flight at once at most.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Stop after this many frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Stop after this long (e.g. `30s`); with neither this nor --frames, 10 s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Features per frame (named `feature_0`, `feature_1`, ...).
    #[arg(long, default_value_t = 25_000)]
    pub features: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub synthetic: SyntheticArgs,
    /// Encode this many frames up front and send them round and round (for rates one
    /// encoding thread cannot keep up with); 0 encodes each frame as it is sent. Where
    /// the ring wraps, the series jump, which a model may flag.
    #[arg(long, default_value_t = 0)]
    pub ring: usize,
    /// Seconds to wait for an answer (the NestJS client waits 50).
    #[arg(long, default_value_t = 50.0)]
    pub timeout: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Produce the frames to Kafka at these bootstrap brokers (`host:port,...`) instead
    /// of posting them over HTTP; the report counts delivery confirmations.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// --kafka: the topic (created with --kafka-partitions partitions if it is missing).
    #[arg(long, default_value = "tidewatch-frames")]
    pub kafka_topic: String,
    /// --kafka: partitions of a topic that has to be created; frames are dealt to the
    /// partitions round-robin.
    #[arg(long, default_value_t = 4)]
    pub kafka_partitions: usize,
    /// --kafka: message format: the client's JSON gzip-compressed, plain, or tidewatch's
    /// binary frame.
    #[arg(long, value_enum, default_value = "gzip")]
    pub kafka_format: crate::load::kafka::WireFormat,
    /// --kafka: frame ids (JSON `"id"`, binary header, message key) are this prefix and
    /// the frame number.
    #[arg(long, default_value = "frame-")]
    pub id_prefix: String,
}

impl LoadgenArgs {
    /// Defaults for sending to `url` (what `demo` starts from).
    pub fn to(url: String) -> LoadgenArgs {
        LoadgenArgs {
            url,
            rate: None,
            concurrency: 1,
            frames: None,
            duration: None,
            features: 25_000,
            synthetic: SyntheticArgs::default(),
            ring: 0,
            timeout: 50.0,
            json: false,
            kafka: None,
            kafka_topic: "tidewatch-frames".to_string(),
            kafka_partitions: 4,
            kafka_format: crate::load::kafka::WireFormat::Gzip,
            id_prefix: "frame-".to_string(),
        }
    }
}

/// What a load run saw.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// Requests sent (answered or not).
    pub sent: u64,
    /// Answers by HTTP status, and transport failures by `error: <kind>`.
    pub statuses: BTreeMap<String, u64>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Requests per second.
    pub rate: f64,
    /// Mean compressed frame size in bytes.
    pub mean_body_bytes: f64,
    /// Anomalies that start in the frames sent.
    pub injected_anomalies: u64,
    /// Answer latency percentiles in ms (answered requests only).
    pub latency_ms: Percentiles,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of a histogram of microseconds, in milliseconds (zeros if empty).
    pub fn of_us(hist: &hdrhistogram::Histogram<u64>) -> Percentiles {
        if hist.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(hist.value_at_quantile(0.5)),
            p90: ms(hist.value_at_quantile(0.9)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(hist.max()),
        }
    }
}

impl LoadReport {
    /// The report as a few human lines.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "sent {} frames in {:.2} s ({:.1} frames/s, {:.0} KB gzip each, {} anomalies injected)\n",
            self.sent,
            self.seconds,
            self.rate,
            self.mean_body_bytes / 1000.0,
            self.injected_anomalies
        );
        for (status, n) in &self.statuses {
            let _ = writeln!(s, "  {status}: {n}");
        }
        let l = self.latency_ms;
        let _ = write!(
            s,
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.max
        );
        s
    }
}

/// Runs `tidewatch loadgen`.
pub fn run(args: &LoadgenArgs) -> anyhow::Result<()> {
    if let Some(brokers) = &args.kafka {
        let report = run_kafka(args, brokers)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.summary());
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(drive(args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

/// `loadgen --kafka`: the same frames, one message each, keyed by frame id.
fn run_kafka(args: &LoadgenArgs, brokers: &str) -> anyhow::Result<LoadReport> {
    use crate::load::kafka::{produce, MessageEncoder, ProduceSpec};
    check(args)?;
    let mut encoder = MessageEncoder::new(
        args.synthetic.config(args.features),
        args.kafka_format,
        &args.id_prefix,
    )?;
    let spec = ProduceSpec {
        brokers: brokers.to_string(),
        topic: args.kafka_topic.clone(),
        partitions: args.kafka_partitions,
        frames: args.frames,
        duration: args.duration,
        rate: args.rate,
    };
    if args.ring > 0 {
        // Ids repeat where the ring wraps, as the frames do.
        let ring: Vec<_> = (0..args.ring).map(|_| encoder.next_message()).collect();
        produce(&spec, |k| ring[(k % ring.len() as u64) as usize].clone())
    } else {
        produce(&spec, |_| encoder.next_message())
    }
}

/// Frames ready to send: either encoded on the fly by one thread, or a fixed ring.
enum Feed {
    Live(tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Encoded>>),
    Ring(Vec<Encoded>),
}

/// A frame's bytes as the NestJS client sends them, and the number of anomalies that
/// start in it.
pub type Encoded = (Bytes, u64);

impl Feed {
    async fn get(&self, k: u64) -> Option<Encoded> {
        match self {
            Feed::Live(rx) => rx.lock().await.recv().await,
            Feed::Ring(ring) => Some(ring[(k % ring.len() as u64) as usize].clone()),
        }
    }
}

/// Writes `values` as the NestJS client's JSON body into `json` (cleared first):
/// compact `{"data":{"feature_0":..,"feature_1":..}}` in index order, each value printed
/// as a double (up to 17 significant digits, like JavaScript's `Math.random()` output).
pub fn client_json(values: &[f32], json: &mut String) {
    json.clear();
    json.push_str("{\"data\":{");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, "\"feature_{i}\":{}", *v as f64);
    }
    json.push_str("}}");
}

/// The bytes the NestJS client sends for a frame of `values`: gzip (default level) of
/// [`client_json`]. `json` is scratch space, kept by the caller so that a stream of
/// frames reuses one buffer.
pub fn client_body(values: &[f32], json: &mut String) -> Bytes {
    client_json(values, json);
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(json.len() / 2),
        flate2::Compression::default(),
    );
    gz.write_all(json.as_bytes()).expect("writing to memory");
    Bytes::from(gz.finish().expect("writing to memory"))
}

/// Generates frames and encodes them as the NestJS client does (shared by `loadgen`,
/// `bench` and the decode benches, so all of them measure the same bytes).
pub struct FrameEncoder {
    generator: Generator,
    values: Vec<f32>,
    json: String,
}

impl FrameEncoder {
    /// An encoder of frames from the generator configured by `config`.
    pub fn new(config: GeneratorConfig) -> anyhow::Result<FrameEncoder> {
        Ok(FrameEncoder {
            generator: Generator::new(config)?,
            values: Vec::new(),
            json: String::new(),
        })
    }

    /// The next frame as the client's bytes ([`client_body`]), and the anomalies that
    /// start in it.
    pub fn encode_next(&mut self) -> Encoded {
        let injected = self.generator.next_into(&mut self.values).len() as u64;
        (client_body(&self.values, &mut self.json), injected)
    }

    /// The next `n` frames, for sending round and round.
    pub fn ring(&mut self, n: usize) -> Vec<Encoded> {
        (0..n).map(|_| self.encode_next()).collect()
    }
}

/// Fails on flags `drive` cannot run with, before any frame is encoded.
fn check(args: &LoadgenArgs) -> anyhow::Result<()> {
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of frames per second");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    Ok(())
}

/// Sends frames per `args` and reports; `async` so that `demo` can run it beside a server.
pub async fn drive(args: &LoadgenArgs) -> anyhow::Result<LoadReport> {
    check(args)?;
    let mut encoder = FrameEncoder::new(args.synthetic.config(args.features))?;
    let feed = if args.ring > 0 {
        let ring = tokio::task::spawn_blocking({
            let n = args.ring;
            move || encoder.ring(n)
        })
        .await?;
        Feed::Ring(ring)
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(args.concurrency.max(1) * 2);
        std::thread::Builder::new()
            .name("loadgen-encoder".into())
            .spawn(move || {
                // Ends when the senders are done and drop the receiver.
                while tx.blocking_send(encoder.encode_next()).is_ok() {}
            })
            .context("starting the encoder thread")?;
        Feed::Live(tokio::sync::Mutex::new(rx))
    };
    send(args, feed).await
}

/// Like [`drive`], but sends the frames of `ring` round and round, encoded beforehand
/// by the caller (so that encoding them is not part of what the caller measures);
/// `args.ring`, `args.features` and the generator flags are not used.
pub async fn drive_ring(args: &LoadgenArgs, ring: Vec<Encoded>) -> anyhow::Result<LoadReport> {
    check(args)?;
    if ring.is_empty() {
        bail!("the ring of frames to send is empty");
    }
    send(args, Feed::Ring(ring)).await
}

/// Sends the frames of `feed` per `args` and reports.
async fn send(args: &LoadgenArgs, feed: Feed) -> anyhow::Result<LoadReport> {
    let concurrency = args.concurrency.max(1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.timeout))
        .pool_max_idle_per_host(concurrency)
        .build()
        .context("building the HTTP client")?;
    let limit_frames = args.frames;
    let limit_time = match (args.frames, args.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d,
    };
    let shared = Arc::new((feed, AtomicU64::new(0)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let shared = Arc::clone(&shared);
        let client = client.clone();
        let url = args.url.clone();
        let rate = args.rate;
        tasks.push(tokio::spawn(async move {
            let (feed, counter) = &*shared;
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            let (mut bytes, mut sent, mut injected) = (0u64, 0u64, 0u64);
            loop {
                let k = counter.fetch_add(1, Ordering::Relaxed);
                if limit_frames.is_some_and(|n| k >= n) {
                    break;
                }
                let due = rate.map(|r| start + Duration::from_secs_f64(k as f64 / r));
                if let (Some(due), Some(limit)) = (due, limit_time) {
                    if due >= start + limit {
                        break;
                    }
                }
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                if limit_time.is_some_and(|l| start.elapsed() >= l) {
                    break;
                }
                let Some((body, anomalies)) = feed.get(k).await else {
                    break;
                };
                bytes += body.len() as u64;
                injected += anomalies;
                sent += 1;
                let t0 = Instant::now();
                let answer = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("connection", "keep-alive")
                    .body(body)
                    .send()
                    .await;
                let key = match answer {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        // Read the answer so the connection can be reused.
                        let _ = resp.bytes().await;
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                        status.to_string()
                    }
                    Err(e) if e.is_timeout() => "error: timeout".to_string(),
                    Err(e) if e.is_connect() => "error: connect".to_string(),
                    Err(_) => "error: other".to_string(),
                };
                *statuses.entry(key).or_default() += 1;
            }
            (hist, statuses, bytes, sent, injected)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let mut statuses = BTreeMap::new();
    let (mut bytes, mut sent, mut injected) = (0u64, 0u64, 0u64);
    for t in tasks {
        let (h, s, b, n, i) = t.await?;
        injected += i;
        hist.add(&h).expect("same bounds");
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        bytes += b;
        sent += n;
    }
    let seconds = start.elapsed().as_secs_f64();
    let latency_ms = Percentiles::of_us(&hist);
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

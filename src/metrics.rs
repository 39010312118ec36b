//! Showing a run's counters and stage latencies: the Prometheus text of `GET /metrics`,
//! the periodic JSON log line, and the table printed when a run ends.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::resources;
use crate::stats::{StageSummary, Stats};

/// Quantiles every stage is exported with.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Facts outside [`Stats`] that `/metrics` shows when there are any.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extra {
    /// Frames waiting in the ingest queue.
    pub queue_depth: Option<u64>,
    /// The ingest queue's capacity.
    pub queue_capacity: Option<u64>,
    /// Ingest answers: (status code or class, count).
    pub http: Option<[(&'static str, u64); 4]>,
    /// HTTP connections: open now, and accepted, evicted (idle, to make room) and refused
    /// (503 at the limit) since start.
    pub connections: Option<Connections>,
    /// This process's index in a cluster (`-p`), labelled on every series; `None` for a
    /// process on its own.
    pub process: Option<usize>,
}

/// HTTP connection counts for [`Extra`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Connections {
    /// Open now.
    pub open: u64,
    /// The limit.
    pub max: u64,
    /// Accepted since start.
    pub accepted: u64,
    /// Closed while idle to make room for a new one.
    pub evicted: u64,
    /// Answered 503 at the limit.
    pub refused: u64,
}

/// Upper bounds of the stage-latency histogram buckets, in microseconds: 1-2.5-5 steps
/// from 10 µs to 60 s, covering what the HDR histograms record (a stage under 10 µs lands
/// in the first bucket, one over a minute in `+Inf`). Fixed, so that the buckets of every
/// process and every scrape add up.
pub const BUCKETS_US: [u64; 21] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// How many latencies of `h` are at or under each of [`BUCKETS_US`], then all of them
/// (`+Inf`): a Prometheus histogram's cumulative buckets, for `/metrics` and the
/// dashboard alike.
pub fn bucket_counts(h: &hdrhistogram::Histogram<u64>) -> [u64; BUCKETS_US.len() + 1] {
    let mut counts = [0; BUCKETS_US.len() + 1];
    if !h.is_empty() {
        for (n, le) in counts.iter_mut().zip(BUCKETS_US) {
            // count_between is inclusive of both ends, in HDR's equivalent ranges
            *n = h.count_between(0, le);
        }
    }
    counts[BUCKETS_US.len()] = h.len();
    counts
}

/// The stage latencies as a Prometheus histogram in seconds
/// (`tidewatch_stage_latency_seconds_bucket{stage,le}`): unlike the summaries' quantiles,
/// buckets from several processes or scrapes can be summed before a quantile is taken.
fn histograms(out: &mut String, stages: &[(crate::stats::Stage, hdrhistogram::Histogram<u64>)]) {
    let name = "tidewatch_stage_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} latency of each stage of a frame's path\n# TYPE {name} histogram"
    );
    for (stage, h) in stages {
        let label = stage.name();
        let counts = bucket_counts(h);
        for (le, n) in BUCKETS_US.iter().zip(counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{stage=\"{label}\",le=\"{}\"}} {n}",
                *le as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{stage=\"{label}\",le=\"+Inf\"}} {}",
            h.len()
        );
        let sum = h.mean() * h.len() as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{stage=\"{label}\"}} {sum:.6}");
        let _ = writeln!(out, "{name}_count{{stage=\"{label}\"}} {}", h.len());
    }
}

/// `text` (an exposition) with `process="<p>"` first among every sample's labels, so
/// that the series of a cluster's processes stay apart when one Prometheus scrapes them
/// all, and sum by `process` or across it.
pub fn with_process_label(text: &str, process: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else {
            // every name this module writes is a plain identifier, and values have no
            // braces or spaces: the name ends at the first `{` or space
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let (name, rest) = line.split_at(end);
            out.push_str(name);
            match rest.strip_prefix('{') {
                Some(labels) => {
                    let _ = write!(out, "{{process=\"{process}\",{labels}");
                }
                None => {
                    let _ = write!(out, "{{process=\"{process}\"}}{rest}");
                }
            }
        }
        out.push('\n');
    }
    out
}

/// The Prometheus text exposition (format 0.0.4) of `stats` and `extra`.
pub fn prometheus(stats: &Stats, extra: &Extra) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let s = stats.snapshot();
    let counters: [(&str, &str, u64); 10] = [
        (
            "tidewatch_frames_accepted_total",
            "frames that entered the dataflow",
            s.frames_in,
        ),
        (
            "tidewatch_frames_scored_total",
            "frames with a verdict",
            s.frames_scored,
        ),
        (
            "tidewatch_anomalous_frames_total",
            "frames with at least one feature over the threshold",
            s.anomalous_frames,
        ),
        (
            "tidewatch_anomalous_features_total",
            "(frame, feature) pairs over the threshold",
            s.anomalous_pairs,
        ),
        (
            "tidewatch_alerts_sent_total",
            "alerts accepted by their receiver",
            s.alerts_sent,
        ),
        (
            "tidewatch_alerts_retried_total",
            "alert delivery attempts beyond the first",
            s.alerts_retried,
        ),
        (
            "tidewatch_alerts_dead_lettered_total",
            "alerts given up on and written to the dead letters",
            s.alerts_dead_lettered,
        ),
        (
            "tidewatch_records_undecodable_total",
            "records a source could not decode",
            s.frames_rejected,
        ),
        (
            "tidewatch_frames_late_total",
            "frames older than their entity's watermark, left out of every event-time window",
            s.frames_late,
        ),
        (
            "tidewatch_frames_untimed_total",
            "frames without a timestamp, left out of every event-time window",
            s.frames_untimed,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let incidents = stats.incidents();
    let open = incidents.open;
    let name = "tidewatch_incidents_open";
    let _ = writeln!(
        out,
        "# HELP {name} incidents open now (--alerts incident)\n# TYPE {name} gauge\n{name} {open}"
    );
    let name = "tidewatch_incidents_total";
    let _ = writeln!(
        out,
        "# HELP {name} incidents that reached each severity (an escalated incident counts at every level it reached)\n# TYPE {name} counter"
    );
    for (severity, n) in incidents.by_severity() {
        let _ = writeln!(out, "{name}{{severity=\"{severity}\"}} {n}");
    }
    let name = "tidewatch_frames_rejected_total";
    let _ = writeln!(
        out,
        "# HELP {name} frames refused, by reason\n# TYPE {name} counter"
    );
    for (reason, n) in stats.rejected_by_reason() {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
    if let Some(http) = extra.http {
        let name = "tidewatch_http_ingest_answers_total";
        let _ = writeln!(
            out,
            "# HELP {name} answers to POST /data-enqueue, by status\n# TYPE {name} counter"
        );
        for (code, n) in http {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
        }
    }
    if let Some(c) = extra.connections {
        for (name, help, kind, v) in [
            (
                "tidewatch_http_connections_open",
                "HTTP connections open now",
                "gauge",
                c.open,
            ),
            (
                "tidewatch_http_connections_max",
                "HTTP connections open at once at most",
                "gauge",
                c.max,
            ),
            (
                "tidewatch_http_connections_accepted_total",
                "HTTP connections accepted",
                "counter",
                c.accepted,
            ),
            (
                "tidewatch_http_connections_evicted_total",
                "idle HTTP connections closed to make room for new ones",
                "counter",
                c.evicted,
            ),
            (
                "tidewatch_http_connections_refused_total",
                "HTTP connections answered 503 at the connection limit",
                "counter",
                c.refused,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
    for (name, help, value) in [
        (
            "tidewatch_queue_depth",
            "frames waiting in the ingest queue",
            extra.queue_depth,
        ),
        (
            "tidewatch_queue_capacity",
            "the ingest queue's capacity",
            extra.queue_capacity,
        ),
    ] {
        if let Some(v) = value {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }
    let name = "tidewatch_stage_latency_microseconds";
    let _ = writeln!(
        out,
        "# HELP {name} latency of each stage of a frame's path, in microseconds, in this process since it started (quantiles cannot be combined across processes or scrapes: use tidewatch_stage_latency_seconds)\n# TYPE {name} summary"
    );
    let mut maxes = String::new();
    for (stage, h) in stats.histograms() {
        let label = stage.name();
        for q in QUANTILES {
            let _ = writeln!(
                out,
                "{name}{{stage=\"{label}\",quantile=\"{q}\"}} {}",
                h.value_at_quantile(q)
            );
        }
        let sum = h.mean() * h.len() as f64;
        let _ = writeln!(out, "{name}_sum{{stage=\"{label}\"}} {sum:.0}");
        let _ = writeln!(out, "{name}_count{{stage=\"{label}\"}} {}", h.len());
        let _ = writeln!(
            maxes,
            "tidewatch_stage_latency_max_microseconds{{stage=\"{label}\"}} {}",
            h.max()
        );
    }
    let name = "tidewatch_stage_latency_max_microseconds";
    let _ = write!(
        out,
        "# HELP {name} largest latency recorded per stage\n# TYPE {name} gauge\n{maxes}"
    );
    histograms(&mut out, &stats.histograms());
    let r = resources::sample();
    if let Some(cpu) = resources::cpu_seconds() {
        let name = "process_cpu_seconds_total";
        let _ = writeln!(
            out,
            "# HELP {name} user and system CPU time\n# TYPE {name} counter\n{name} {cpu:.3}"
        );
    }
    if let Some(mib) = r.rss_mib {
        let name = "process_resident_memory_bytes";
        let bytes = (mib * 1024.0 * 1024.0) as u64;
        let _ = writeln!(
            out,
            "# HELP {name} resident set size\n# TYPE {name} gauge\n{name} {bytes}"
        );
    }
    if let Some(g) = crate::detect::gpu::sample() {
        gpu_gauges(&mut out, &g);
    }
    match extra.process {
        Some(p) => with_process_label(&out, p),
        None => out,
    }
}

/// The GPU scoring runs on: memory and utilisation gauges, labelled with the device.
fn gpu_gauges(out: &mut String, g: &crate::detect::gpu::GpuSample) {
    let labels = format!(
        "gpu=\"{}\",name=\"{}\"",
        g.ordinal,
        g.name.replace(['"', '\\'], "_")
    );
    let gauges = [
        (
            "tidewatch_gpu_memory_used_bytes",
            "device memory in use (all processes)",
            Some(g.memory_used_bytes),
        ),
        (
            "tidewatch_gpu_memory_total_bytes",
            "device memory",
            Some(g.memory_total_bytes),
        ),
        (
            "tidewatch_gpu_utilization_percent",
            "percent of the last sample period a kernel ran (NVML)",
            g.utilization_percent.map(u64::from),
        ),
        (
            "tidewatch_gpu_memory_utilization_percent",
            "percent of the last sample period device memory was read or written (NVML)",
            g.memory_utilization_percent.map(u64::from),
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {v}"
            );
        }
    }
}

/// The end-of-run table: one row per stage that recorded something, in microseconds.
pub fn latency_table(latencies: &[StageSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "stage (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for l in latencies {
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            l.stage.name(),
            l.count,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us
        );
    }
    out
}

/// The periodic metrics line's latency field: `{"stage": {"p50": .., "p99": .., "max": ..}}`.
fn latency_json(latencies: &[StageSummary]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for l in latencies {
        map.insert(
            l.stage.name().to_string(),
            serde_json::json!({"count": l.count, "p50": l.p50_us, "p90": l.p90_us, "p99": l.p99_us, "p999": l.p999_us, "max": l.max_us}),
        );
    }
    serde_json::Value::Object(map)
}

/// Logs one metrics line (counters, resources, stage percentiles).
pub fn log_line(stats: &Stats) {
    let s = stats.snapshot();
    let r = resources::sample();
    let gpu = crate::detect::gpu::sample();
    tracing::info!(
        target: "tidewatch::metrics",
        frames_in = s.frames_in,
        frames_scored = s.frames_scored,
        anomalous_frames = s.anomalous_frames,
        records_undecodable = s.frames_rejected,
        frames_late = s.frames_late,
        frames_untimed = s.frames_untimed,
        alerts_sent = s.alerts_sent,
        alerts_retried = s.alerts_retried,
        alerts_dead_lettered = s.alerts_dead_lettered,
        cpu_percent = r.cpu_percent,
        rss_mib = r.rss_mib,
        gpu_memory_used_mib = gpu.as_ref().map(|g| g.memory_used_bytes >> 20),
        gpu_memory_total_mib = gpu.as_ref().map(|g| g.memory_total_bytes >> 20),
        gpu_utilization_percent = gpu.as_ref().and_then(|g| g.utilization_percent),
        latency_us = %latency_json(&stats.latencies()),
        "metrics"
    );
}

/// A thread that logs [`log_line`] every interval until dropped.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts logging `stats` every `every`.
    pub fn start(stats: Arc<Stats>, every: Duration) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tidewatch-metrics".into())
            .spawn(move || loop {
                std::thread::park_timeout(every);
                if flag.load(Relaxed) {
                    return;
                }
                log_line(&stats);
            })
            .ok();
        Reporter { stop, thread }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stage;

    /// The exposition has every counter and one summary per stage with the quantiles a
    /// scraper expects, and lines Prometheus can parse (name{labels} value).
    #[test]
    fn prometheus_text_has_counters_and_summaries() {
        let stats = Stats::default();
        stats.frame_in();
        stats.frame_scored(2);
        stats.refused("bad_json");
        stats.record(Stage::Decode, 1200);
        stats.alert_sent(1, 0, 0);
        stats.frame_late();
        stats.frame_late();
        stats.frame_untimed();
        let text = prometheus(
            &stats,
            &Extra {
                queue_depth: Some(3),
                queue_capacity: Some(100),
                http: Some([("202", 1), ("4xx", 1), ("429", 0), ("503", 0)]),
                connections: Some(Connections {
                    open: 2,
                    max: 10,
                    accepted: 5,
                    evicted: 1,
                    refused: 1,
                }),
                process: None,
            },
        );
        for line in [
            "tidewatch_frames_accepted_total 1",
            "tidewatch_anomalous_features_total 2",
            "tidewatch_frames_rejected_total{reason=\"bad_json\"} 1",
            "tidewatch_http_ingest_answers_total{code=\"4xx\"} 1",
            "tidewatch_alerts_sent_total 1",
            "tidewatch_alerts_retried_total 1",
            "tidewatch_frames_late_total 2",
            "tidewatch_frames_untimed_total 1",
            "tidewatch_queue_depth 3",
            "tidewatch_http_connections_open 2",
            "tidewatch_http_connections_evicted_total 1",
            "tidewatch_stage_latency_microseconds_count{stage=\"decode\"} 1",
            "tidewatch_stage_latency_max_microseconds{stage=\"decode\"} 1200",
            "tidewatch_stage_latency_seconds_bucket{stage=\"decode\",le=\"0.001\"} 0",
            "tidewatch_stage_latency_seconds_bucket{stage=\"decode\",le=\"0.0025\"} 1",
            "tidewatch_stage_latency_seconds_bucket{stage=\"decode\",le=\"+Inf\"} 1",
            "tidewatch_stage_latency_seconds_count{stage=\"decode\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains(
            "tidewatch_stage_latency_microseconds{stage=\"decode\",quantile=\"0.99\"} 120"
        ));
        let mut gpu = String::new();
        gpu_gauges(
            &mut gpu,
            &crate::detect::gpu::GpuSample {
                ordinal: 0,
                name: "NVIDIA H100".into(),
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 80 << 30,
                utilization_percent: Some(37),
                memory_utilization_percent: None,
            },
        );
        for line in [
            "tidewatch_gpu_memory_used_bytes{gpu=\"0\",name=\"NVIDIA H100\"} 1073741824",
            "tidewatch_gpu_utilization_percent{gpu=\"0\",name=\"NVIDIA H100\"} 37",
        ] {
            assert!(gpu.lines().any(|l| l == line), "missing {line:?} in\n{gpu}");
        }
        assert!(
            !gpu.contains("memory_utilization"),
            "no NVML figure, no gauge:\n{gpu}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(
                name.starts_with("tidewatch_") || name.starts_with("process_"),
                "{line}"
            );
        }
    }

    /// In a cluster every sample carries its process, labelled or not before, and the
    /// comments are left alone.
    #[test]
    fn every_series_gets_the_process_label() {
        let stats = Stats::default();
        stats.record(Stage::Score, 300);
        let text = prometheus(
            &stats,
            &Extra {
                queue_depth: Some(1),
                process: Some(2),
                ..Extra::default()
            },
        );
        for line in [
            "tidewatch_frames_accepted_total{process=\"2\"} 0",
            "tidewatch_queue_depth{process=\"2\"} 1",
            "tidewatch_stage_latency_seconds_bucket{process=\"2\",stage=\"score\",le=\"0.0005\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("{process=\"2\""), "{line}");
        }
        assert!(text.contains("# TYPE tidewatch_stage_latency_seconds histogram"));
    }
}

//! Counters and per-stage latency histograms of a run, shared by the workers (and the
//! HTTP and alert threads) of one process.
//!
//! Latencies are recorded in microseconds into HDR histograms (3 significant figures).
//! Each thread records into its own shard, so workers never wait on each other; readers
//! (`/metrics`, the periodic log line, the end-of-run table) merge the shards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A stage of a frame's path whose latency is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Receive → decoded (inflate and JSON decode).
    Decode,
    /// Decoded → entered the dataflow (the ingest queue).
    Queue,
    /// Entered the dataflow → its window's scoring began (window and batch wait).
    Wait,
    /// One scoring call (a batch of windows of one partition).
    Score,
    /// Scored → verdict merged and handed to the sinks (threshold, merge, hand-off).
    Sink,
    /// Alert handed to the sender → accepted by the receiver, retries included.
    Delivery,
    /// End to end: receive → verdict.
    Scored,
    /// End to end: receive → alert accepted by the receiver.
    Alerted,
}

impl Stage {
    /// Every stage, in path order.
    pub const ALL: [Stage; 8] = [
        Stage::Decode,
        Stage::Queue,
        Stage::Wait,
        Stage::Score,
        Stage::Sink,
        Stage::Delivery,
        Stage::Scored,
        Stage::Alerted,
    ];

    /// The name used in metrics labels, logs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Queue => "queue",
            Stage::Wait => "window_batch_wait",
            Stage::Score => "score",
            Stage::Sink => "threshold_to_sink",
            Stage::Delivery => "alert_delivery",
            Stage::Scored => "receive_to_scored",
            Stage::Alerted => "receive_to_alert_sent",
        }
    }

    /// What the stage measures, for `# HELP` and tables.
    pub fn help(self) -> &'static str {
        match self {
            Stage::Decode => "receive to decoded",
            Stage::Queue => "decoded to entered the dataflow",
            Stage::Wait => "entered the dataflow to scoring began",
            Stage::Score => "one scoring call (a batch of one partition)",
            Stage::Sink => "scored to verdict handed to the sinks",
            Stage::Delivery => "alert handed to the sender to accepted, retries included",
            Stage::Scored => "end to end: receive to verdict",
            Stage::Alerted => "end to end: receive to alert accepted",
        }
    }
}

/// A stage is written as its [`Stage::name`], as in metrics labels.
impl Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Shards of the histograms: threads beyond this many share shards (still correct, a
/// little contention).
const SHARDS: usize = 16;

/// Latencies above an hour are recorded as an hour.
const MAX_RECORDED_US: u64 = 3_600_000_000;

/// Histograms of one shard, one per [`Stage`].
type Shard = Vec<Histogram<u64>>;

fn new_shard() -> Shard {
    Stage::ALL
        .iter()
        .map(|_| Histogram::new(3).expect("3 significant figures are valid"))
        .collect()
}

/// The shard this thread records into, fixed on first use.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// What a run has done so far. Counters are per process; the merged verdicts (and so
/// the scored/anomaly counts) live in the process that hosts worker 0.
#[derive(Debug)]
pub struct Stats {
    frames_in: AtomicU64,
    frames_rejected: AtomicU64,
    frames_late: AtomicU64,
    frames_untimed: AtomicU64,
    frames_scored: AtomicU64,
    anomalous_frames: AtomicU64,
    anomalous_pairs: AtomicU64,
    alerts_sent: AtomicU64,
    alerts_retried: AtomicU64,
    alerts_dead_lettered: AtomicU64,
    rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    shards: Vec<Mutex<Shard>>,
    incidents_open: AtomicU64,
    incidents_ended: AtomicU64,
    /// Incidents that reached each severity: info, warning, critical.
    incidents_reached: [AtomicU64; 3],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            frames_in: AtomicU64::new(0),
            frames_rejected: AtomicU64::new(0),
            frames_late: AtomicU64::new(0),
            frames_untimed: AtomicU64::new(0),
            frames_scored: AtomicU64::new(0),
            anomalous_frames: AtomicU64::new(0),
            anomalous_pairs: AtomicU64::new(0),
            alerts_sent: AtomicU64::new(0),
            alerts_retried: AtomicU64::new(0),
            alerts_dead_lettered: AtomicU64::new(0),
            rejected_by_reason: Mutex::new(BTreeMap::new()),
            shards: (0..SHARDS).map(|_| Mutex::new(new_shard())).collect(),
            incidents_open: AtomicU64::new(0),
            incidents_ended: AtomicU64::new(0),
            incidents_reached: Default::default(),
        }
    }
}

/// Incident counts (`--alerts incident`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IncidentCounts {
    /// Open now.
    pub open: u64,
    /// Resolved because the input ended while they were open.
    pub ended: u64,
    /// Incidents that reached info (every incident opens at some level).
    pub info: u64,
    /// Incidents that reached warning.
    pub warning: u64,
    /// Incidents that reached critical.
    pub critical: u64,
}

impl IncidentCounts {
    /// `(severity, count)`, lowest severity first.
    pub fn by_severity(&self) -> [(&'static str, u64); 3] {
        [
            ("info", self.info),
            ("warning", self.warning),
            ("critical", self.critical),
        ]
    }
}

/// A copy of [`Stats`]' counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Frames that entered the dataflow.
    pub frames_in: u64,
    /// Records that could not be decoded and were skipped.
    pub frames_rejected: u64,
    /// Frames older than their entity's watermark under event-time windows: left out of
    /// every window (counted in the process whose worker owns the entity).
    pub frames_late: u64,
    /// Frames without a timestamp under event-time windows: left out of every window.
    pub frames_untimed: u64,
    /// Frames with a verdict (every frame that ends a window).
    pub frames_scored: u64,
    /// Frames with at least one feature over the threshold.
    pub anomalous_frames: u64,
    /// (frame, feature) pairs over the threshold.
    pub anomalous_pairs: u64,
    /// Alerts accepted by their receiver (webhook or topic).
    pub alerts_sent: u64,
    /// Alert delivery attempts beyond the first.
    pub alerts_retried: u64,
    /// Alerts given up on and written to the dead letters.
    pub alerts_dead_lettered: u64,
}

/// Percentiles of one stage, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StageSummary {
    /// The stage.
    pub stage: Stage,
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest value recorded.
    pub max_us: u64,
}

impl StageSummary {
    fn of(stage: Stage, h: &Histogram<u64>) -> StageSummary {
        StageSummary {
            stage,
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl Stats {
    /// A frame entered the dataflow.
    pub fn frame_in(&self) {
        self.frames_in.fetch_add(1, Relaxed);
    }

    /// A record a source read was rejected, for `reason` (a short stable label).
    pub fn frame_rejected_for(&self, reason: &'static str) {
        self.frames_rejected.fetch_add(1, Relaxed);
        self.refused(reason);
    }

    /// A frame was refused before it reached a source (an HTTP answer other than 202),
    /// for `reason` (`bad_json`, `queue_full`, ...): counted by reason only.
    pub fn refused(&self, reason: &'static str) {
        *self
            .rejected_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// A record a source could not decode was skipped.
    pub fn frame_rejected(&self) {
        self.frame_rejected_for("undecodable_record");
    }

    /// A frame came later than its entity's watermark and was left out of every window.
    pub fn frame_late(&self) {
        self.frames_late.fetch_add(1, Relaxed);
    }

    /// A frame without a timestamp met event-time windows and was left out of them.
    pub fn frame_untimed(&self) {
        self.frames_untimed.fetch_add(1, Relaxed);
    }

    /// A frame got its verdict, with `pairs` anomalous features.
    pub fn frame_scored(&self, pairs: usize) {
        self.frames_scored.fetch_add(1, Relaxed);
        if pairs > 0 {
            self.anomalous_frames.fetch_add(1, Relaxed);
            self.anomalous_pairs.fetch_add(pairs as u64, Relaxed);
        }
    }

    /// An alert was accepted by its receiver (webhook or broker) after `retries` retries,
    /// now: counted, with its delivery (from `handed_us`, when it was handed to the
    /// sender) and receive → alert sent (from `received_us`) times. Stamps are
    /// [`crate::clock::now_us`]; 0 = unknown, not timed.
    pub fn alert_sent(&self, retries: u64, handed_us: u64, received_us: u64) {
        self.alerts_sent.fetch_add(1, Relaxed);
        self.alerts_retried.fetch_add(retries, Relaxed);
        let now = crate::clock::now_us();
        self.record_since(Stage::Delivery, handed_us, now);
        self.record_since(Stage::Alerted, received_us, now);
    }

    /// An alert was given up on (dead-lettered) after `retries` retries.
    pub fn alert_dead_lettered(&self, retries: u64) {
        self.alerts_dead_lettered.fetch_add(1, Relaxed);
        self.alerts_retried.fetch_add(retries, Relaxed);
    }

    /// Counts an incident opened at severity `level` (0 info, 1 warning, 2 critical).
    pub fn incident_opened(&self, level: usize) {
        self.incidents_open.fetch_add(1, Relaxed);
        self.incident_escalated(level);
    }

    /// Counts an incident that reached severity `level` (as [`Stats::incident_opened`]).
    pub fn incident_escalated(&self, level: usize) {
        self.incidents_reached[level.min(2)].fetch_add(1, Relaxed);
    }

    /// Counts an incident resolved; `end_of_input`: because the input ended.
    pub fn incident_resolved(&self, end_of_input: bool) {
        self.incidents_open.fetch_sub(1, Relaxed);
        if end_of_input {
            self.incidents_ended.fetch_add(1, Relaxed);
        }
    }

    /// Incidents open now, and how many reached each severity.
    pub fn incidents(&self) -> IncidentCounts {
        let reached = |i: usize| self.incidents_reached[i].load(Relaxed);
        IncidentCounts {
            open: self.incidents_open.load(Relaxed),
            ended: self.incidents_ended.load(Relaxed),
            info: reached(0),
            warning: reached(1),
            critical: reached(2),
        }
    }

    /// Records `us` microseconds for `stage`.
    pub fn record(&self, stage: Stage, us: u64) {
        let mut shard = self.shards[my_shard()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // `record` grows the histogram as needed (`saturating_record` would clamp to its
        // current, small, range); allocating all of an hour's range up front would cost
        // megabytes over every stage and shard.
        let _ = shard[stage as usize].record(us.min(MAX_RECORDED_US));
    }

    /// Records the time from `since_us` (a [`crate::clock::now_us`] stamp; 0 = unknown,
    /// nothing recorded) to `now_us` for `stage`.
    pub fn record_since(&self, stage: Stage, since_us: u64, now_us: u64) {
        if since_us != 0 {
            self.record(stage, now_us.saturating_sub(since_us));
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            frames_in: self.frames_in.load(Relaxed),
            frames_rejected: self.frames_rejected.load(Relaxed),
            frames_late: self.frames_late.load(Relaxed),
            frames_untimed: self.frames_untimed.load(Relaxed),
            frames_scored: self.frames_scored.load(Relaxed),
            anomalous_frames: self.anomalous_frames.load(Relaxed),
            anomalous_pairs: self.anomalous_pairs.load(Relaxed),
            alerts_sent: self.alerts_sent.load(Relaxed),
            alerts_retried: self.alerts_retried.load(Relaxed),
            alerts_dead_lettered: self.alerts_dead_lettered.load(Relaxed),
        }
    }

    /// Rejections and refusals so far, by reason.
    pub fn rejected_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.rejected_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every stage's histogram, merged over the shards.
    pub fn histograms(&self) -> Vec<(Stage, Histogram<u64>)> {
        let mut merged = new_shard();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (m, h) in merged.iter_mut().zip(shard.iter()) {
                m.add(h).expect("auto-resizing histograms merge");
            }
        }
        Stage::ALL.into_iter().zip(merged).collect()
    }

    /// Percentiles of every stage that has recorded something.
    pub fn latencies(&self) -> Vec<StageSummary> {
        self.histograms()
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(s, h)| StageSummary::of(*s, h))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values recorded from several threads land in one merged histogram per stage, with
    /// percentiles to 3 significant figures.
    #[test]
    fn shards_merge_into_percentiles() {
        let stats = std::sync::Arc::new(Stats::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let stats = std::sync::Arc::clone(&stats);
                std::thread::spawn(move || {
                    for v in 1..=250u64 {
                        stats.record(Stage::Score, t * 250 + v);
                    }
                    stats.record(Stage::Alerted, 5_000_000 + t);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        stats.record_since(Stage::Decode, 0, 99); // unknown start: not recorded
        let l = stats.latencies();
        assert_eq!(l.len(), 2);
        let s = l[0];
        assert_eq!((s.stage, s.count, s.max_us), (Stage::Score, 1000, 1000));
        // large values are kept, not clamped to a small initial range
        assert!((4_995_000..=5_005_000).contains(&l[1].p50_us), "{:?}", l[1]);
        assert!((499..=501).contains(&s.p50_us), "{s:?}");
        assert!((989..=991).contains(&s.p99_us), "{s:?}");
    }

    #[test]
    fn rejections_count_by_reason() {
        let stats = Stats::default();
        stats.frame_rejected_for("bad_json");
        stats.frame_rejected_for("bad_json");
        stats.frame_rejected();
        assert_eq!(stats.snapshot().frames_rejected, 3);
        let by = stats.rejected_by_reason();
        assert_eq!(by["bad_json"], 2);
        assert_eq!(by["undecodable_record"], 1);
    }
}

//! Counters of a run, shared by the workers of one process.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a run has done so far. Counters are per process; the merged verdicts (and so
/// the scored/anomaly counts) live in the process that hosts worker 0.
#[derive(Debug, Default)]
pub struct Stats {
    frames_in: AtomicU64,
    frames_rejected: AtomicU64,
    frames_scored: AtomicU64,
    anomalous_frames: AtomicU64,
    anomalous_pairs: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Frames that entered the dataflow.
    pub frames_in: u64,
    /// Records that could not be decoded and were skipped.
    pub frames_rejected: u64,
    /// Frames with a verdict (every frame that ends a window).
    pub frames_scored: u64,
    /// Frames with at least one feature over the threshold.
    pub anomalous_frames: u64,
    /// (frame, feature) pairs over the threshold.
    pub anomalous_pairs: u64,
}

impl Stats {
    /// A frame entered the dataflow.
    pub fn frame_in(&self) {
        self.frames_in.fetch_add(1, Relaxed);
    }

    /// A record was rejected.
    pub fn frame_rejected(&self) {
        self.frames_rejected.fetch_add(1, Relaxed);
    }

    /// A frame got its verdict, with `pairs` anomalous features.
    pub fn frame_scored(&self, pairs: usize) {
        self.frames_scored.fetch_add(1, Relaxed);
        if pairs > 0 {
            self.anomalous_frames.fetch_add(1, Relaxed);
            self.anomalous_pairs.fetch_add(pairs as u64, Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            frames_in: self.frames_in.load(Relaxed),
            frames_rejected: self.frames_rejected.load(Relaxed),
            frames_scored: self.frames_scored.load(Relaxed),
            anomalous_frames: self.anomalous_frames.load(Relaxed),
            anomalous_pairs: self.anomalous_pairs.load(Relaxed),
        }
    }
}

use std::sync::Arc;

use timely::dataflow::operators::Inspect;

use super::Stream;
use crate::stats::{Stage, Stats};
use crate::types::FrameResult;

/// Counts verdicts into the run's [`Stats`].
pub trait StatsOps<'s> {
    /// Counts every verdict passing by and records its latencies (entered → scoring
    /// began, scored → here, the hand-off to the sinks that follow, and receive →
    /// verdict), and passes it on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use timely::dataflow::operators::ToStream;
    /// use tidewatch::ops::StatsOps;
    /// use tidewatch::stats::Stats;
    /// use tidewatch::types::{FrameMeta, FrameResult, Hit};
    ///
    /// let stats = Arc::new(Stats::default());
    /// let counted = Arc::clone(&stats);
    /// timely::example(move |scope| {
    ///     let quiet = FrameResult { seq: 0, meta: FrameMeta::default(), hits: vec![], peak: 0.0 };
    ///     let loud = FrameResult { seq: 1, meta: FrameMeta::default(), hits: vec![Hit { feature: 2, score: 5.0 }], peak: 5.0 };
    ///     vec![quiet, loud].to_stream(scope).container::<Vec<_>>().count_into(counted);
    /// });
    /// let s = stats.snapshot();
    /// assert_eq!((s.frames_scored, s.anomalous_frames, s.anomalous_pairs), (2, 1, 1));
    /// ```
    fn count_into(self, stats: Arc<Stats>) -> Stream<'s, FrameResult>;
}

impl<'s> StatsOps<'s> for Stream<'s, FrameResult> {
    fn count_into(self, stats: Arc<Stats>) -> Stream<'s, FrameResult> {
        self.inspect(move |r| {
            stats.frame_scored(r.hits.len());
            let now = crate::clock::now_us();
            stats.record_since(Stage::Wait, r.meta.entered_us, r.meta.scoring_us);
            stats.record_since(Stage::Sink, r.meta.scored_us, now);
            stats.record_since(Stage::Scored, r.meta.received_us, now);
        })
    }
}

use std::io::Write;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Inspect;

use super::Stream;
use crate::sinks::alert::Alert;
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
    ///     let quiet = FrameResult { seq: 0, meta: FrameMeta::default(), hits: vec![] };
    ///     let loud = FrameResult { seq: 1, meta: FrameMeta::default(), hits: vec![Hit { feature: 2, score: 5.0 }] };
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

/// Writes verdicts out.
pub trait SinkOps<'s> {
    /// Writes one JSON line (the [`Alert`] body, listing at most `max_features`) per
    /// anomalous frame to `out`, flushing after each activation. Workers given `None`
    /// write nothing (verdicts are merged on worker 0 anyway).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::ToStream;
    /// use tidewatch::ops::SinkOps;
    /// use tidewatch::types::{FrameMeta, FrameResult, Hit};
    ///
    /// /// A writer into a shared buffer.
    /// struct Shared(Arc<Mutex<Vec<u8>>>);
    /// impl Write for Shared {
    ///     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(b) }
    ///     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
    /// }
    ///
    /// let buffer = Arc::new(Mutex::new(Vec::new()));
    /// let out = Shared(Arc::clone(&buffer));
    /// timely::example(move |scope| {
    ///     let quiet = FrameResult { seq: 0, meta: FrameMeta::default(), hits: vec![] };
    ///     let loud = FrameResult { seq: 1, meta: FrameMeta::default(), hits: vec![Hit { feature: 2, score: 5.0 }] };
    ///     vec![quiet, loud]
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .sink_alert_lines(Some(Box::new(out)), 10);
    /// });
    /// let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    /// assert_eq!(text.lines().count(), 1, "one line per anomalous frame");
    /// let alert: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    /// assert_eq!((alert["seq"].as_u64(), alert["num_anomalous_features"].as_u64()), (Some(1), Some(1)));
    /// ```
    fn sink_alert_lines(self, out: Option<Box<dyn Write>>, max_features: usize);
}

impl<'s> SinkOps<'s> for Stream<'s, FrameResult> {
    fn sink_alert_lines(self, out: Option<Box<dyn Write>>, max_features: usize) {
        let mut out = out;
        self.sink(Pipeline, "AlertLines", move |(input, _frontier)| {
            input.for_each_stamp(|_cap, data| {
                for batch in data {
                    for result in batch.drain(..).filter(FrameResult::is_anomalous) {
                        let Some(w) = out.as_mut() else { continue };
                        let line = serde_json::to_string(&Alert::new(&result, max_features))
                            .expect("alerts serialise");
                        if let Err(e) = writeln!(w, "{line}") {
                            tracing::error!(error = %e, seq = result.seq, "could not write an alert line");
                        }
                    }
                }
            });
            if let Some(w) = out.as_mut() {
                if let Err(e) = w.flush() {
                    tracing::error!(error = %e, "could not flush alert lines");
                }
            }
        });
    }
}

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

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use super::Stream;
use crate::model::Scorer;
use crate::types::{Batch, Hit, PartHits, Scored};

/// Scores batches of windows.
pub trait ScoreOps<'s> {
    /// Scores every window of every batch with `scorer` (`[B][W][F_part] -> [B][F_part]`).
    fn score(self, scorer: Scorer) -> Stream<'s, Scored>;
}

impl<'s> ScoreOps<'s> for Stream<'s, Batch> {
    fn score(self, scorer: Scorer) -> Stream<'s, Scored> {
        self.unary(Pipeline, "Score", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for b in batch.drain(..) {
                            let mut scores = vec![0f32; b.len() * scorer.width()];
                            scorer.score(&b.data, &mut scores);
                            session.give(Scored {
                                part: b.part,
                                lo: scorer.lo() as u32,
                                seqs: b.seqs,
                                metas: b.metas,
                                scores,
                            });
                        }
                    }
                });
            }
        })
    }
}

/// Turns scores into the features over a threshold.
pub trait ThresholdOps<'s> {
    /// One [`PartHits`] per window with at least one score `>= threshold`, and one for
    /// every window that carries frame metadata (partition 0), so that the merge hears of
    /// every scored frame.
    fn threshold(self, threshold: f32) -> Stream<'s, PartHits>;
}

impl<'s> ThresholdOps<'s> for Stream<'s, Scored> {
    fn threshold(self, threshold: f32) -> Stream<'s, PartHits> {
        self.unary(Pipeline, "Threshold", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for s in batch.drain(..) {
                            let width = s.scores.len().checked_div(s.seqs.len()).unwrap_or(0);
                            let log = BatchLog::start(&s);
                            let mut anomalous = 0usize;
                            for (i, (seq, meta)) in s.seqs.into_iter().zip(s.metas).enumerate() {
                                let row = &s.scores[i * width..(i + 1) * width];
                                let hits: Vec<Hit> = row
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, &score)| score >= threshold)
                                    .map(|(j, &score)| Hit {
                                        feature: s.lo + j as u32,
                                        score,
                                    })
                                    .collect();
                                anomalous += hits.len();
                                if !hits.is_empty() || meta.is_some() {
                                    session.give(PartHits { seq, meta, hits });
                                }
                            }
                            if let Some(log) = log {
                                log.finish(anomalous);
                            }
                        }
                    }
                });
            }
        })
    }
}

/// The seed's per-batch log line (latency from receive to inference done, batch size,
/// anomalous features, resource use), one per scored batch and never per frame. Only
/// partition 0 logs at info (it carries the frames' metadata, so it knows latencies);
/// the other partitions log at debug, so -w 16 does not mean 16 lines a frame.
struct BatchLog {
    part: u32,
    size: usize,
    /// Receive → now over the batch's frames, in ms (partition 0 only: it carries the
    /// frames' metadata).
    latency_ms: Option<(f64, f64)>,
}

impl BatchLog {
    /// Taken right after scoring, before thresholding; `None` when info is not logged.
    fn start(s: &Scored) -> Option<BatchLog> {
        let enabled = if s.part == 0 {
            tracing::enabled!(tracing::Level::INFO)
        } else {
            tracing::enabled!(tracing::Level::DEBUG)
        };
        if !enabled {
            return None;
        }
        let now = crate::clock::now_us();
        let latency_ms = s
            .metas
            .iter()
            .flatten()
            .map(|m| now.saturating_sub(m.received_us) as f64 / 1000.0)
            .fold(None, |acc: Option<(f64, f64)>, l| match acc {
                None => Some((l, l)),
                Some((lo, hi)) => Some((lo.min(l), hi.max(l))),
            });
        Some(BatchLog {
            part: s.part,
            size: s.seqs.len(),
            latency_ms,
        })
    }

    fn finish(self, anomalous: usize) {
        if self.part != 0 {
            tracing::debug!(
                partition = self.part,
                batch_size = self.size,
                anomalous_features = anomalous,
                "batch scored"
            );
            return;
        }
        let r = crate::resources::sample();
        tracing::info!(
            partition = self.part,
            batch_size = self.size,
            anomalous_features = anomalous,
            latency_ms_min = self.latency_ms.map(|l| l.0),
            latency_ms_max = self.latency_ms.map(|l| l.1),
            cpu_percent = r.cpu_percent,
            rss_mib = r.rss_mib,
            mem_available_mib = r.mem_available_mib,
            mem_total_mib = r.mem_total_mib,
            "batch scored"
        );
    }
}

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use std::sync::Arc;

use super::Stream;
use crate::clock;
use crate::detect::gpu::{BatchScores, ScoringBackend};
use crate::stats::{Stage, Stats};
use crate::types::{Batch, Hit, PartHits, Scored};

/// Scores batches of windows.
pub trait ScoreOps<'s> {
    /// Scores every window of every batch with `scorer` (`[B][W][F_part] -> [B][F_part]`):
    /// a CPU [`crate::model::Scorer`] or a [`ScoringBackend`] (the GPU's thresholds on the
    /// device and sends only the anomalies on, in [`Scored::compacted`]). Records into
    /// `stats` how long each call took and (on partition 0, which carries the frames'
    /// metadata) how long each window waited for it.
    fn score<S: Into<ScoringBackend>>(self, scorer: S, stats: Arc<Stats>) -> Stream<'s, Scored>;
}

impl<'s> ScoreOps<'s> for Stream<'s, Batch> {
    fn score<S: Into<ScoringBackend>>(self, scorer: S, stats: Arc<Stats>) -> Stream<'s, Scored> {
        let mut scorer = scorer.into();
        self.unary(Pipeline, "Score", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for mut b in batch.drain(..) {
                            let began = clock::now_us();
                            let (scores, compacted) = match scorer.score_batch(&b.data) {
                                BatchScores::All(scores) => (scores, None),
                                BatchScores::Compacted(c) => (Vec::new(), Some(c)),
                            };
                            let done = clock::now_us();
                            stats.record(Stage::Score, done - began);
                            for m in b.metas.iter_mut().flatten() {
                                stats.record_since(Stage::Wait, m.entered_us, began);
                                m.scored_us = done;
                            }
                            session.give(Scored {
                                part: b.part,
                                lo: scorer.lo() as u32,
                                seqs: b.seqs,
                                metas: b.metas,
                                scores,
                                compacted,
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
    /// every scored frame. Batches thresholded on the device ([`Scored::compacted`]) give
    /// the same hits, provided the device's threshold was not above this one (which
    /// [`crate::runtime::Env::scorer`] ensures: it passes the same threshold).
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
                            if let Some(c) = &s.compacted {
                                assert!(
                                    c.threshold <= threshold,
                                    "scores were thresholded at {} on the device, above the threshold {threshold}",
                                    c.threshold
                                );
                            }
                            // the device's hits, by window: a cursor over them
                            let mut device_hits = s.compacted.as_ref().map(|c| c.hits.as_slice());
                            for (i, (seq, meta)) in s.seqs.into_iter().zip(s.metas).enumerate() {
                                let hits: Vec<Hit> = match &mut device_hits {
                                    Some(rest) => {
                                        let n = rest.iter().take_while(|h| h.0 as usize == i).count();
                                        let (mine, later) = rest.split_at(n);
                                        *rest = later;
                                        mine.iter()
                                            .filter(|h| h.2 >= threshold)
                                            .map(|&(_, j, score)| Hit {
                                                feature: s.lo + j,
                                                score,
                                            })
                                            .collect()
                                    }
                                    None => s.scores[i * width..(i + 1) * width]
                                        .iter()
                                        .enumerate()
                                        .filter(|(_, &score)| score >= threshold)
                                        .map(|(j, &score)| Hit {
                                            feature: s.lo + j as u32,
                                            score,
                                        })
                                        .collect(),
                                };
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

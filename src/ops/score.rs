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
                            for ((seq, meta), row) in s
                                .seqs
                                .into_iter()
                                .zip(s.metas)
                                .zip(s.scores.chunks_exact(width.max(1)))
                            {
                                let hits: Vec<Hit> = row
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, &score)| score >= threshold)
                                    .map(|(j, &score)| Hit {
                                        feature: s.lo + j as u32,
                                        score,
                                    })
                                    .collect();
                                if !hits.is_empty() || meta.is_some() {
                                    session.give(PartHits { seq, meta, hits });
                                }
                            }
                        }
                    }
                });
            }
        })
    }
}

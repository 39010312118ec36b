use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use std::sync::Arc;

use super::{Parts, Stream};
use crate::clock;
use crate::controls::{Controls, Knobs, Watch};
use crate::detect::{Detector, Scores};
use crate::stats::{Stage, Stats};
use crate::types::{Batch, Hit, PartHits, Scored, Seq};

/// Scores batches of windows.
pub trait ScoreOps<'s> {
    /// What comes out: scores, in the same shape as the input (a stream, or [`Parts`]).
    type Output;

    /// Scores every window of every batch with `detector` (`[B][W][F_part] ->
    /// [B][F_part]`), any [`Detector`]: the CPU's one-class SVMs, the GPU's (which
    /// threshold on the device and send only the anomalies on, in
    /// [`Scored::compacted`]), or a variant's own. Records into `stats` how long each call
    /// took.
    ///
    /// A stateful detector ([`crate::detect::Needs::stateful`]) must see each window once
    /// and in frame order; the operator checks that it does.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::ops::Range;
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::detect::{Detector, Needs, Scores};
    /// use tidewatch::ops::ScoreOps;
    /// use tidewatch::stats::Stats;
    /// use tidewatch::types::Batch;
    ///
    /// /// The sum of each window, one feature.
    /// struct Sum;
    /// impl Detector for Sum {
    ///     fn needs(&self) -> Needs { Needs { window: 3, stride: None, stateful: false } }
    ///     fn features(&self) -> Range<usize> { 4..5 }
    ///     fn score(&mut self, windows: &[f32]) -> Scores {
    ///         Scores::All(windows.chunks(3).map(|w| w.iter().sum()).collect())
    ///     }
    /// }
    ///
    /// let scored = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&scored);
    /// timely::example(move |scope| {
    ///     let batch = Batch { seqs: vec![2, 3], data: vec![1.0, 2.0, 3.0, 2.0, 3.0, 4.0], ..Batch::default() };
    ///     Some(batch)
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .score(Sum, Arc::new(Stats::default()))
    ///         .inspect(move |s| sink.lock().unwrap().push((s.lo, s.seqs.clone(), s.scores.clone())));
    /// });
    /// assert_eq!(*scored.lock().unwrap(), vec![(4, vec![2, 3], vec![6.0, 9.0])]);
    /// ```
    fn score<D: Detector + 'static>(self, detector: D, stats: Arc<Stats>) -> Self::Output;
}

impl<'s> ScoreOps<'s> for Parts<'s, Batch> {
    type Output = Parts<'s, Scored>;

    fn score<D: Detector + 'static>(self, detector: D, stats: Arc<Stats>) -> Parts<'s, Scored> {
        self.map(|s| s.score(detector, stats))
    }
}

impl<'s> ScoreOps<'s> for Stream<'s, Batch> {
    type Output = Stream<'s, Scored>;

    fn score<D: Detector + 'static>(self, detector: D, stats: Arc<Stats>) -> Stream<'s, Scored> {
        let mut detector = detector;
        let lo = detector.features().start as u32;
        let stateful = detector.needs().stateful;
        self.unary(Pipeline, "Score", move |_cap, _info| {
            // the last window scored, for a stateful detector's order check
            let mut last: Option<Seq> = None;
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for b in batch.drain(..) {
                            if stateful {
                                for &seq in &b.seqs {
                                    assert!(
                                        last.is_none_or(|l| l < seq),
                                        "a stateful detector got window {seq} after {last:?}: windows must come once, in frame order"
                                    );
                                    last = Some(seq);
                                }
                            }
                            let began = clock::now_us();
                            let (scores, compacted) = match detector.score(&b.data) {
                                Scores::All(scores) => (scores, None),
                                Scores::Compacted(c) => (Vec::new(), Some(c)),
                            };
                            let done = clock::now_us();
                            stats.record(Stage::Score, done - began);
                            session.give(Scored {
                                part: b.part,
                                lo,
                                seqs: b.seqs,
                                received_us: b.received_us,
                                began_us: began,
                                scored_us: done,
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
    /// What comes out: reports, in the same shape as the input (a stream, or [`Parts`]).
    type Output;

    /// One [`PartHits`] per window scored, with the features whose score is
    /// `>= threshold` (often none), so that the merge hears from every partition about
    /// every scored frame. Batches thresholded on the device ([`Scored::compacted`]) give
    /// the same hits, provided the device's threshold was not above this one (which
    /// [`crate::runtime::Env::ocsvm`] ensures: it passes the same threshold).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::ops::ThresholdOps;
    /// use tidewatch::types::Scored;
    ///
    /// let hits = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&hits);
    /// timely::example(move |scope| {
    ///     // two windows of features 10 and 11
    ///     let scored = Scored { lo: 10, seqs: vec![7, 8], scores: vec![0.1, 2.0, 0.3, 0.2], ..Scored::default() };
    ///     Some(scored)
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .threshold(0.9)
    ///         .inspect(move |p| sink.lock().unwrap().push((p.seq, p.hits.len())));
    /// });
    /// assert_eq!(*hits.lock().unwrap(), vec![(7, 1), (8, 0)]);
    /// ```
    fn threshold(self, threshold: impl Into<Cut>) -> Self::Output;
}

/// Where a batch's scores are cut: at a fixed threshold, or at the one in force in a
/// run's [`Controls`] (read once per batch), which also mutes features.
#[derive(Clone, Debug)]
pub enum Cut {
    /// Scores `>= threshold` are anomalies.
    Fixed(f32),
    /// The threshold and mutes of `controls`; `fallback` is the variant's own threshold
    /// when no override is set (`None`: the model's).
    Live {
        /// The run's controls.
        controls: Arc<Controls>,
        /// The threshold without an override.
        fallback: Option<f32>,
    },
}

impl From<f32> for Cut {
    fn from(threshold: f32) -> Cut {
        Cut::Fixed(threshold)
    }
}

/// A [`Cut`] as one operator reads it: the threshold and muted features for each batch.
enum Cutter {
    Fixed(f32),
    Live(Watch, Option<f32>),
}

impl Cutter {
    fn new(cut: Cut) -> Cutter {
        match cut {
            Cut::Fixed(t) => Cutter::Fixed(t),
            Cut::Live { controls, fallback } => Cutter::Live(Watch::new(controls), fallback),
        }
    }

    /// The threshold for the next batch, and the muted features (`None`: none).
    fn next(&mut self) -> (f32, Option<Arc<Knobs>>) {
        match self {
            Cutter::Fixed(t) => (*t, None),
            Cutter::Live(watch, fallback) => {
                let (knobs, _) = watch.get();
                let muted = (!knobs.muted.is_empty()).then(|| Arc::clone(knobs));
                (knobs.threshold_or(*fallback), muted)
            }
        }
    }

    fn live(&self) -> bool {
        matches!(self, Cutter::Live(..))
    }
}

impl<'s> ThresholdOps<'s> for Parts<'s, Scored> {
    type Output = Parts<'s, PartHits>;

    fn threshold(self, threshold: impl Into<Cut>) -> Parts<'s, PartHits> {
        let cut = threshold.into();
        self.map(|s| s.threshold(cut.clone()))
    }
}

impl<'s> ThresholdOps<'s> for Stream<'s, Scored> {
    type Output = Stream<'s, PartHits>;

    fn threshold(self, threshold: impl Into<Cut>) -> Stream<'s, PartHits> {
        let mut cutter = Cutter::new(threshold.into());
        self.unary(Pipeline, "Threshold", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for s in batch.drain(..) {
                            let width = s.scores.len().checked_div(s.seqs.len()).unwrap_or(0);
                            let log = BatchLog::start(&s);
                            let mut anomalous = 0usize;
                            let (mut threshold, muted) = cutter.next();
                            if let Some(c) = &s.compacted {
                                if cutter.live() {
                                    // Scored on the device just before the threshold was
                                    // lowered: cut this batch where the device did, the
                                    // next one at the new threshold.
                                    threshold = threshold.max(c.threshold);
                                }
                                assert!(
                                    c.threshold <= threshold,
                                    "scores were thresholded at {} on the device, above the threshold {threshold}",
                                    c.threshold
                                );
                            }
                            // the device's hits, by window: a cursor over them
                            let mut device_hits = s.compacted.as_ref().map(|c| c.hits.as_slice());
                            for (i, seq) in s.seqs.into_iter().enumerate() {
                                let live = |f: u32| muted.as_ref().is_none_or(|k| !k.is_muted(f));
                                let (hits, peak): (Vec<Hit>, f32) = match &mut device_hits {
                                    Some(rest) => {
                                        let n = rest.iter().take_while(|h| h.0 as usize == i).count();
                                        let (mine, later) = rest.split_at(n);
                                        *rest = later;
                                        let mine = mine.iter().filter(|h| live(s.lo + h.1));
                                        // the device kept only scores over its threshold:
                                        // below it, the peak is not known (NaN)
                                        let peak = mine.clone().map(|h| h.2).fold(f32::NAN, f32::max);
                                        let hits = mine
                                            .filter(|h| h.2 >= threshold)
                                            .map(|&(_, j, score)| Hit {
                                                feature: s.lo + j,
                                                score,
                                            })
                                            .collect();
                                        (hits, peak)
                                    }
                                    None => {
                                        let row = &s.scores[i * width..(i + 1) * width];
                                        let mut hits = Vec::new();
                                        let mut peak = f32::NAN;
                                        // One pass makes the cut and finds the frame's largest
                                        // score; mutes are rare, and checked only when set.
                                        for (j, &score) in row.iter().enumerate() {
                                            let feature = s.lo + j as u32;
                                            if muted.is_some() && !live(feature) {
                                                continue;
                                            }
                                            peak = peak.max(score);
                                            if score >= threshold {
                                                hits.push(Hit { feature, score });
                                            }
                                        }
                                        (hits, peak)
                                    }
                                };
                                anomalous += hits.len();
                                session.give(PartHits {
                                    seq,
                                    began_us: s.began_us,
                                    scored_us: s.scored_us,
                                    hits,
                                    peak,
                                    evidence: Vec::new(),
                                });
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
/// partition 0 logs at info; the other partitions log at debug, so -w 16 does not mean
/// 16 lines a frame.
struct BatchLog {
    part: u32,
    size: usize,
    /// Receive → now over the batch's frames, in ms (when their receive times are known).
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
            .received_us
            .iter()
            .filter(|&&r| r != 0)
            .map(|&r| now.saturating_sub(r) as f64 / 1000.0)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use timely::dataflow::operators::{Inspect, ToStream};

    use super::*;
    use crate::types::Compacted;

    /// Runs one scored batch through the threshold operator cut by `cut`; returns each
    /// window's anomalous features.
    fn cut_batch(scored: Scored, cut: Cut) -> Vec<Vec<u32>> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        timely::example(move |scope| {
            Some(scored)
                .to_stream(scope)
                .container::<Vec<_>>()
                .threshold(cut)
                .inspect(move |p| {
                    sink.lock()
                        .unwrap()
                        .push(p.hits.iter().map(|h| h.feature).collect())
                });
        });
        let v = out.lock().unwrap().clone();
        v
    }

    /// A live cut follows the controls' threshold and mutes; a batch thresholded on the
    /// device just before the threshold was lowered is cut where the device cut it
    /// (rather than failing), and muted features drop out of device hits too.
    #[test]
    fn a_live_cut_follows_threshold_and_mutes() {
        let model = Arc::new(crate::controls::test_model::tiny(4, 1));
        let controls = Arc::new(Controls::new(model, None, Some(1.0)));
        let live = || Cut::Live {
            controls: Arc::clone(&controls),
            fallback: None,
        };
        let scored = || Scored {
            lo: 0,
            seqs: vec![7],
            scores: vec![0.5, 1.5, 2.5, 3.5],
            ..Scored::default()
        };
        assert_eq!(cut_batch(scored(), live()), vec![vec![1, 2, 3]]);
        controls.set_threshold(Some(3.0));
        assert_eq!(cut_batch(scored(), live()), vec![vec![3]]);
        controls.set_threshold(Some(0.0));
        controls.set_muted(&[2]).unwrap();
        assert_eq!(cut_batch(scored(), live()), vec![vec![0, 1, 3]]);
        let device = Scored {
            lo: 0,
            seqs: vec![7],
            compacted: Some(Compacted {
                threshold: 2.0,
                hits: vec![(0, 2, 2.5), (0, 3, 3.5)],
            }),
            ..Scored::default()
        };
        assert_eq!(cut_batch(device, live()), vec![vec![3]]);
    }
}

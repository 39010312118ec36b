use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use std::sync::Arc;

use super::control::{gated, Live, Schedule};
use super::{Parts, Stream};
use crate::clock;
use crate::controls::Knobs;
use crate::detect::{score_data, Detector, Scores};
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
    ///     let batch = Batch { seqs: vec![2, 3], data: vec![1.0, 2.0, 3.0, 2.0, 3.0, 4.0].into(), ..Batch::default() };
    ///     Some(batch)
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .score(Sum, Arc::new(Stats::default()))
    ///         .inspect(move |s| sink.lock().unwrap().push((s.lo, s.seqs.clone(), s.scores.clone())));
    /// });
    /// assert_eq!(*scored.lock().unwrap(), vec![(4, vec![2, 3], vec![6.0, 9.0])]);
    /// ```
    fn score<D: Detector + 'static>(self, detector: D, stats: Arc<Stats>) -> Self::Output;

    /// [`ScoreOps::score`], with the settings changes of `live`: each window is scored by
    /// the model in force for its frame ([`Detector::follow`]), and a batch waits until
    /// every change that applies to its frames has arrived. Without changes (`None`), the
    /// same as [`ScoreOps::score`].
    fn score_under<D: Detector + 'static>(
        self,
        detector: D,
        stats: Arc<Stats>,
        live: Option<&Live<'s>>,
    ) -> Self::Output;
}

impl<'s> ScoreOps<'s> for Parts<'s, Batch> {
    type Output = Parts<'s, Scored>;

    fn score<D: Detector + 'static>(self, detector: D, stats: Arc<Stats>) -> Parts<'s, Scored> {
        self.map(|s| s.score(detector, stats))
    }

    fn score_under<D: Detector + 'static>(
        self,
        detector: D,
        stats: Arc<Stats>,
        live: Option<&Live<'s>>,
    ) -> Parts<'s, Scored> {
        self.map(|s| s.score_under(detector, stats, live))
    }
}

impl<'s> ScoreOps<'s> for Stream<'s, Batch> {
    type Output = Stream<'s, Scored>;

    fn score<D: Detector + 'static>(self, detector: D, stats: Arc<Stats>) -> Stream<'s, Scored> {
        let mut scorer = Scorer::new(detector, stats);
        self.unary(Pipeline, "Score", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for b in batch.drain(..) {
                            session.give(scorer.score(b));
                        }
                    }
                });
            }
        })
    }

    fn score_under<D: Detector + 'static>(
        self,
        detector: D,
        stats: Arc<Stats>,
        live: Option<&Live<'s>>,
    ) -> Stream<'s, Scored> {
        let Some(live) = live.cloned() else {
            return self.score(detector, stats);
        };
        let mut scorer = Scorer::new(detector, stats);
        let mut followed = live.initial.version;
        gated(self, live, "ScoreLive", move |b, schedule, give| {
            let mut score = |b: Batch, knobs: &Arc<Knobs>| {
                if knobs.version != followed {
                    scorer.detector.follow(knobs);
                    followed = knobs.version;
                }
                give(scorer.score(b));
            };
            let first = b.seqs.first().map_or(0, |&s| schedule.span(s));
            if b.seqs.iter().all(|&s| schedule.span(s) == first) {
                score(b, schedule.knobs(first));
            } else {
                for (span, piece) in split_at_changes(b, schedule) {
                    score(piece, schedule.knobs(span));
                }
            }
        })
    }
}

/// A detector and what scoring with it records.
struct Scorer<D> {
    detector: D,
    stats: Arc<Stats>,
    lo: u32,
    stateful: bool,
    /// the last window scored, for a stateful detector's order check
    last: Option<Seq>,
}

impl<D: Detector> Scorer<D> {
    fn new(detector: D, stats: Arc<Stats>) -> Scorer<D> {
        Scorer {
            lo: detector.features().start as u32,
            stateful: detector.needs().stateful,
            detector,
            stats,
            last: None,
        }
    }

    fn score(&mut self, b: Batch) -> Scored {
        if self.stateful {
            for &seq in &b.seqs {
                let last = self.last;
                assert!(
                    last.is_none_or(|l| l < seq),
                    "a stateful detector got window {seq} after {last:?}: windows must come once, in frame order"
                );
                self.last = Some(seq);
            }
        }
        let began = clock::now_us();
        let (scores, compacted) = match score_data(&mut self.detector, &b.data) {
            Scores::All(scores) => (scores, None),
            Scores::Compacted(c) => (Vec::new(), Some(c)),
        };
        let done = clock::now_us();
        self.stats.record(Stage::Score, done - began);
        Scored {
            part: b.part,
            lo: self.lo,
            seqs: b.seqs,
            received_us: b.received_us,
            began_us: began,
            scored_us: done,
            scores,
            compacted,
        }
    }
}

/// `b` cut into runs of windows whose frames have the same settings, each with its span
/// of `schedule`: only a batch that straddles a change is cut, so this allocates once
/// per change and partition.
fn split_at_changes(b: Batch, schedule: &Schedule) -> Vec<(usize, Batch)> {
    let mut pieces: Vec<(usize, Batch)> = Vec::new();
    for (i, &seq) in b.seqs.iter().enumerate() {
        let span = schedule.span(seq);
        if pieces.last().is_none_or(|(s, _)| *s != span) {
            pieces.push((
                span,
                Batch {
                    part: b.part,
                    ..Batch::default()
                },
            ));
        }
        let piece = &mut pieces.last_mut().expect("pushed").1;
        piece.seqs.push(seq);
        if let Some(&r) = b.received_us.get(i) {
            piece.received_us.push(r);
        }
        piece.data.push_window_of(&b.data, i, b.seqs.len());
    }
    pieces
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
    fn threshold(self, threshold: impl Into<Cut<'s>>) -> Self::Output;
}

/// Where a batch's scores are cut: at a fixed threshold, or at the one in force for each
/// frame in a run's changing settings, which also mute features.
#[derive(Clone)]
pub enum Cut<'s> {
    /// Scores `>= threshold` are anomalies.
    Fixed(f32),
    /// The threshold and mutes in force for each frame, as `changes` say; `fallback` is
    /// the variant's own threshold when no override is set (`None`: the model's).
    Live {
        /// The run's settings and their changes.
        changes: Live<'s>,
        /// The threshold without an override.
        fallback: Option<f32>,
    },
}

impl From<f32> for Cut<'_> {
    fn from(threshold: f32) -> Self {
        Cut::Fixed(threshold)
    }
}

impl<'s> ThresholdOps<'s> for Parts<'s, Scored> {
    type Output = Parts<'s, PartHits>;

    fn threshold(self, threshold: impl Into<Cut<'s>>) -> Parts<'s, PartHits> {
        let cut = threshold.into();
        self.map(|s| s.threshold(cut.clone()))
    }
}

impl<'s> ThresholdOps<'s> for Stream<'s, Scored> {
    type Output = Stream<'s, PartHits>;

    fn threshold(self, threshold: impl Into<Cut<'s>>) -> Stream<'s, PartHits> {
        let (live, fallback) = match threshold.into() {
            Cut::Fixed(t) => {
                return self.unary(Pipeline, "Threshold", move |_cap, _info| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let mut session = output.session(&cap);
                            for batch in data {
                                for s in batch.drain(..) {
                                    cut_scored(s, |_| (t, None), false, |p| session.give(p));
                                }
                            }
                        });
                    }
                })
            }
            Cut::Live { changes, fallback } => (changes, fallback),
        };
        gated(self, live, "ThresholdLive", move |s, schedule, give| {
            let knobs_for = |seq| {
                let k = schedule.at(seq);
                let muted = (!k.muted.is_empty()).then_some(&**k);
                (k.threshold_or(fallback), muted)
            };
            cut_scored(s, knobs_for, true, give);
        })
    }
}

/// One [`PartHits`] for each window of `s`, handed to `emit`; `knobs_for` gives each
/// window's threshold and the settings that mute features (`None`: none muted). `live`:
/// the threshold may have changed since the device compacted at its own.
fn cut_scored<'k>(
    s: Scored,
    mut knobs_for: impl FnMut(Seq) -> (f32, Option<&'k Knobs>),
    live: bool,
    mut emit: impl FnMut(PartHits),
) {
    let width = s.scores.len().checked_div(s.seqs.len()).unwrap_or(0);
    let log = BatchLog::start(&s);
    let mut anomalous = 0usize;
    // the device's hits, by window: a cursor over them
    let mut device_hits = s.compacted.as_ref().map(|c| c.hits.as_slice());
    for (i, seq) in s.seqs.into_iter().enumerate() {
        let (mut threshold, muted) = knobs_for(seq);
        if let Some(c) = &s.compacted {
            if live {
                // Scored on the device at another threshold (a GPU detector follows the
                // threshold between batches): cut where the device did, if higher.
                threshold = threshold.max(c.threshold);
            }
            assert!(
                c.threshold <= threshold,
                "scores were thresholded at {} on the device, above the threshold {threshold}",
                c.threshold
            );
        }
        let live_feature = |f: u32| muted.is_none_or(|k| !k.is_muted(f));
        let (hits, peak): (Vec<Hit>, f32) = match &mut device_hits {
            Some(rest) => {
                let n = rest.iter().take_while(|h| h.0 as usize == i).count();
                let (mine, later) = rest.split_at(n);
                *rest = later;
                let mine = mine.iter().filter(|h| live_feature(s.lo + h.1));
                // the device kept only scores over its threshold: below it, the peak is
                // not known (NaN)
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
                // mutes are rare: only then is the peak taken feature by feature
                let peak = match muted {
                    None => row_max(row),
                    Some(_) => row
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| live_feature(s.lo + *j as u32))
                        .fold(f32::NAN, |m, (_, &x)| m.max(x)),
                };
                // A clean window (the common case) has no score at the threshold: the
                // SIMD peak says so, and the scalar scan for hits is skipped.
                let hits: Vec<Hit> = if peak >= threshold {
                    row.iter()
                        .enumerate()
                        .filter(|(_, &score)| score >= threshold)
                        .map(|(j, &score)| Hit {
                            feature: s.lo + j as u32,
                            score,
                        })
                        .filter(|h| live_feature(h.feature))
                        .collect()
                } else {
                    Vec::new()
                };
                (hits, peak)
            }
        };
        anomalous += hits.len();
        emit(PartHits {
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

/// The largest of `row` (NaN when it has no number), in lanes of 8 that the compiler
/// turns into SIMD maxima: `f32::max`, NaN-aware, does not vectorise, and a scalar pass
/// over a 25,000-feature frame cost 3 % of the default variant's throughput.
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (lane, &x) in lanes.iter_mut().zip(c) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    let m = lanes
        .into_iter()
        .chain(rest.iter().copied())
        .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m });
    if m == f32::NEG_INFINITY && !row.contains(&f32::NEG_INFINITY) {
        f32::NAN
    } else {
        m
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

    /// The lane-wise maximum is the plain one, NaNs ignored, for any length.
    #[test]
    fn row_max_is_the_largest_number() {
        for n in [0usize, 1, 7, 8, 9, 17, 25_000] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 - 500.0).collect();
            let plain = row.iter().copied().fold(f32::NAN, f32::max);
            assert_eq!(row_max(&row).to_bits(), plain.to_bits(), "n = {n}");
        }
        assert_eq!(row_max(&[f32::NAN, 2.0, f32::NAN]), 2.0);
        assert!(row_max(&[f32::NAN; 9]).is_nan());
        assert_eq!(row_max(&[f32::NEG_INFINITY]), f32::NEG_INFINITY);
    }

    use std::sync::Arc;

    use super::*;
    use crate::controls::{Change, Controls, Shape};
    use crate::types::Compacted;

    /// Each window's anomalous features when `s` is cut with `knobs_for`.
    fn cut<'k>(s: Scored, knobs_for: impl FnMut(Seq) -> (f32, Option<&'k Knobs>)) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        cut_scored(s, knobs_for, true, |p| {
            out.push(p.hits.iter().map(|h| h.feature).collect())
        });
        out
    }

    /// A live cut takes each window's threshold and mutes from the settings for its
    /// frame; a batch thresholded on the device at a higher threshold is cut where the
    /// device cut it (rather than failing), and muted features drop out of device hits.
    #[test]
    fn a_live_cut_takes_each_frames_threshold_and_mutes() {
        let model = Arc::new(crate::controls::test_model::tiny(4, 1));
        let controls = Controls::new(model, None, Some(1.0), Shape::default());
        let k0 = controls.current();
        let k1 = k0.after(&Change::Threshold(Some(3.0)), None);
        let k2 = k1
            .after(&Change::Threshold(Some(0.0)), None)
            .after(&Change::Mutes(vec![2]), None);
        let scored = Scored {
            lo: 0,
            seqs: vec![7, 8, 9],
            scores: [0.5, 1.5, 2.5, 3.5].repeat(3),
            ..Scored::default()
        };
        let by_frame = |seq: Seq| {
            let k = match seq {
                7 => &*k0,
                8 => &k1,
                _ => &k2,
            };
            (k.threshold_or(None), (!k.muted.is_empty()).then_some(k))
        };
        assert_eq!(
            cut(scored, by_frame),
            vec![vec![1, 2, 3], vec![3], vec![0, 1, 3]]
        );
        let device = Scored {
            lo: 0,
            seqs: vec![7],
            compacted: Some(Compacted {
                threshold: 2.0,
                hits: vec![(0, 2, 2.5), (0, 3, 3.5)],
            }),
            ..Scored::default()
        };
        assert_eq!(cut(device, |_| (0.0, Some(&k2))), vec![vec![3]]);
    }
}

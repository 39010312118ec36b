use std::collections::BTreeMap;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{Parts, Stream, Time};
use crate::types::{FrameMeta, FrameResult, Hit, PartHits, Seq};

/// A frame waiting for its verdict: the earliest capability among what arrived about it,
/// its metadata (from the split), and the partitions' reports so far.
struct Pending {
    cap: Capability<Time>,
    meta: Option<FrameMeta>,
    reports: usize,
    began_us: u64,
    scored_us: u64,
    hits: Vec<Hit>,
    peak: f32,
}

/// Merges what every partition found in a frame into one verdict.
pub trait MergeOps<'s> {
    /// Gathers on worker 0 the frames' metadata and the partitions' [`PartHits`], and
    /// emits one [`FrameResult`] per scored frame, in frame order and stamped with its
    /// seq, once the frontier has passed the frame.
    ///
    /// A frame no partition reported was not scored (no window ended at it) and gets no
    /// verdict. A frame some partitions reported but not all, or reported without its
    /// metadata, means a stage lost records: the merge panics, naming the frame, rather
    /// than drop a verdict in silence.
    ///
    /// # Examples
    ///
    /// The whole chain on one worker, with a detector of one's own:
    ///
    /// ```
    /// use std::ops::Range;
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::detect::{Detector, Needs, Scores};
    /// use tidewatch::layout::Layout;
    /// use tidewatch::ops::{BatchOps, MergeOps, ScoreOps, SplitOps, ThresholdOps, WindowConfig, WindowOps};
    /// use tidewatch::stats::Stats;
    /// use tidewatch::types::Frame;
    ///
    /// /// Scores a frame's value itself.
    /// struct Raw(Range<usize>);
    /// impl Detector for Raw {
    ///     fn needs(&self) -> Needs { Needs { window: 1, stride: None, stateful: false } }
    ///     fn features(&self) -> Range<usize> { self.0.clone() }
    ///     fn score(&mut self, windows: &[f32]) -> Scores { Scores::All(windows.to_vec()) }
    /// }
    ///
    /// let verdicts = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&verdicts);
    /// timely::example(move |scope| {
    ///     (0..4u64)
    ///         .map(|seq| Frame { seq, values: vec![0.0, seq as f32], ..Frame::default() })
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .split_features(Layout::new(2, 1))
    ///         .window(WindowConfig { size: 1, stride: 1 })
    ///         .batch(64)
    ///         .score(Raw(0..2), Arc::new(Stats::default()))
    ///         .threshold(2.0)
    ///         .merge_frames()
    ///         .inspect(move |r| sink.lock().unwrap().push((r.seq, r.hits.len())));
    /// });
    /// assert_eq!(*verdicts.lock().unwrap(), vec![(0, 0), (1, 0), (2, 1), (3, 1)]);
    /// ```
    fn merge_frames(self) -> Stream<'s, FrameResult>;
}

impl<'s> MergeOps<'s> for Parts<'s, PartHits> {
    fn merge_frames(self) -> Stream<'s, FrameResult> {
        let parts = self.parts;
        // One worker sees every verdict, so sinks write frames in order without a second
        // merge; a report is a few words unless it has hits, so this is cheap traffic.
        let metas_to_zero = Exchange::new(|_: &(Seq, FrameMeta)| 0);
        let hits_to_zero = Exchange::new(|_: &PartHits| 0);
        self.metas.binary_frontier(
            self.data,
            metas_to_zero,
            hits_to_zero,
            "MergeFrames",
            move |_cap, _info| {
                let mut open: BTreeMap<Seq, Pending> = BTreeMap::new();
                move |(metas, metas_frontier), (reports, reports_frontier), output| {
                    metas.for_each_stamp(|cap, data| {
                        let Some(time) = cap.least().copied() else {
                            return;
                        };
                        for batch in data {
                            for (seq, meta) in batch.drain(..) {
                                let p = open.entry(seq).or_insert_with(|| Pending::new(&cap));
                                if time < *p.cap.time() {
                                    p.cap = cap.retain_least(0).expect("stamped");
                                }
                                p.meta = Some(meta);
                            }
                        }
                    });
                    reports.for_each_stamp(|cap, data| {
                        let Some(time) = cap.least().copied() else {
                            return;
                        };
                        for batch in data {
                            for part in batch.drain(..) {
                                let p = open
                                    .entry(part.seq)
                                    .or_insert_with(|| Pending::new(&cap));
                                if time < *p.cap.time() {
                                    p.cap = cap.retain_least(0).expect("stamped");
                                }
                                p.reports += 1;
                                p.began_us = match p.began_us {
                                    0 => part.began_us,
                                    b => b.min(part.began_us),
                                };
                                p.scored_us = p.scored_us.max(part.scored_us);
                                p.hits.extend(part.hits);
                                p.peak = p.peak.max(part.peak);
                            }
                        }
                    });
                    while let Some(entry) = open.first_entry() {
                        let seq = *entry.key();
                        if metas_frontier.less_equal(&seq) || reports_frontier.less_equal(&seq) {
                            break;
                        }
                        let p = entry.remove();
                        // no window ended at this frame: it has no verdict
                        if p.reports == 0 {
                            continue;
                        }
                        assert_eq!(
                            p.reports, parts,
                            "frame {seq}: {} of {parts} partitions reported it; a stage between split and merge lost or repeated windows",
                            p.reports
                        );
                        let Some(mut meta) = p.meta else {
                            panic!("frame {seq} was scored but its metadata never reached the merge");
                        };
                        meta.scoring_us = p.began_us;
                        meta.scored_us = p.scored_us;
                        let mut hits = p.hits;
                        hits.sort_unstable_by_key(|h| h.feature);
                        // Stamped with the frame's own seq, not the earliest report's time:
                        // operators downstream take their input sorted by stamp, so this is
                        // what keeps verdicts (and alert lines) in frame order when several
                        // are waiting at once.
                        let cap = p.cap.delayed(&seq.max(*p.cap.time()));
                        output.session(&cap).give(FrameResult {
                            seq,
                            meta,
                            hits,
                            peak: p.peak,
                        });
                    }
                }
            },
        )
    }
}

impl Pending {
    fn new(cap: &timely::dataflow::operators::InputCapability<Time>) -> Pending {
        Pending {
            cap: cap.retain_least(0).expect("stamped"),
            meta: None,
            reports: 0,
            began_us: 0,
            scored_us: 0,
            hits: Vec::new(),
            peak: f32::NAN,
        }
    }
}

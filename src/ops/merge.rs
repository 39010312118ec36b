use std::collections::BTreeMap;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{Stream, Time};
use crate::types::{FrameMeta, FrameResult, Hit, PartHits, Seq};

/// A frame waiting for every partition: the earliest capability among its reports, the
/// metadata (from partition 0) and the hits so far.
type Pending = (Capability<Time>, Option<FrameMeta>, Vec<Hit>);

/// Merges what every partition found in a frame into one verdict.
pub trait MergeOps<'s> {
    /// Gathers [`PartHits`] on worker 0 and emits one [`FrameResult`] per scored frame,
    /// in frame order and stamped with its seq, once the frontier says every partition
    /// has reported it.
    fn merge_frames(self) -> Stream<'s, FrameResult>;
}

impl<'s> MergeOps<'s> for Stream<'s, PartHits> {
    fn merge_frames(self) -> Stream<'s, FrameResult> {
        // One worker sees every verdict, so sinks write frames in order without a
        // second merge; anomalies are few, so this is cheap traffic.
        let to_zero = Exchange::new(|_: &PartHits| 0);
        self.unary_frontier(to_zero, "MergeFrames", |_cap, _info| {
            let mut open: BTreeMap<Seq, Pending> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(time) = cap.least().copied() else {
                        return;
                    };
                    for batch in data {
                        for part in batch.drain(..) {
                            let entry = open.entry(part.seq).or_insert_with(|| {
                                (cap.retain_least(0).expect("stamped"), None, Vec::new())
                            });
                            if time < *entry.0.time() {
                                entry.0 = cap.retain_least(0).expect("stamped");
                            }
                            if part.meta.is_some() {
                                entry.1 = part.meta;
                            }
                            entry.2.extend(part.hits);
                        }
                    }
                });
                while let Some(entry) = open.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (seq, (cap, meta, mut hits)) = entry.remove_entry();
                    // Partition 0 reports every frame it scores; without its report the
                    // frame was not scored (it had no complete window).
                    let Some(meta) = meta else { continue };
                    hits.sort_unstable_by_key(|h| h.feature);
                    // Stamped with the frame's own seq, not the earliest report's time:
                    // operators downstream take their input sorted by stamp, so this is
                    // what keeps verdicts (and alert lines) in frame order when several
                    // are waiting at once.
                    let cap = cap.delayed(&seq.max(*cap.time()));
                    output.session(&cap).give(FrameResult { seq, meta, hits });
                }
            }
        })
    }
}

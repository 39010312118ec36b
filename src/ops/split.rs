use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Exchange;

use super::Stream;
use crate::layout::Layout;
use crate::types::{Frame, Slice};

/// Splits frames by feature partition and sends each slice to the worker that owns it.
pub trait SplitOps<'s> {
    /// One [`Slice`] per partition of `layout`; slice `p` goes to worker `p`. Partition 0
    /// carries the frame's metadata.
    fn split_features(self, layout: Layout) -> Stream<'s, Slice>;
}

impl<'s> SplitOps<'s> for Stream<'s, Frame> {
    fn split_features(self, layout: Layout) -> Stream<'s, Slice> {
        self.unary(Pipeline, "SplitFeatures", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for frame in batch.drain(..) {
                            assert_eq!(
                                frame.values.len(),
                                layout.n_features,
                                "frame {} has the wrong number of values",
                                frame.seq
                            );
                            if layout.parts == 1 {
                                session.give(Slice {
                                    seq: frame.seq,
                                    part: 0,
                                    meta: Some(frame.meta),
                                    values: frame.values,
                                });
                                continue;
                            }
                            for part in 1..layout.parts {
                                session.give(Slice {
                                    seq: frame.seq,
                                    part: part as u32,
                                    meta: None,
                                    values: frame.values[layout.range(part)].to_vec(),
                                });
                            }
                            // Partition 0 is the front of the frame: it keeps the frame's
                            // own buffer instead of a copy.
                            let mut values = frame.values;
                            values.truncate(layout.range(0).end);
                            session.give(Slice {
                                seq: frame.seq,
                                part: 0,
                                meta: Some(frame.meta),
                                values,
                            });
                        }
                    }
                });
            }
        })
        // Routing is `part % peers` (or `part & (peers-1)`): part p lands on worker p.
        .exchange(|s: &Slice| s.part as u64)
    }
}

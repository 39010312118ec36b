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
                            let mut meta = Some(frame.meta);
                            for part in 0..layout.parts {
                                session.give(Slice {
                                    seq: frame.seq,
                                    part: part as u32,
                                    meta: meta.take(),
                                    values: frame.values[layout.range(part)].to_vec(),
                                });
                            }
                        }
                    }
                });
            }
        })
        // Routing is `part % peers` (or `part & (peers-1)`): part p lands on worker p.
        .exchange(|s: &Slice| s.part as u64)
    }
}

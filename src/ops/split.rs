use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Exchange;
use timely::progress::operate::FrontierInterest;

use super::{Parts, Stream};
use crate::layout::Layout;
use crate::types::{key_of, Frame, FrameMeta, Seq, Slice};

/// Splits frames by feature partition and sends each slice to the worker that owns it.
pub trait SplitOps<'s> {
    /// One [`Slice`] per partition of `layout`; slice `p` goes to worker `p`. The frames'
    /// metadata leaves on a stream of its own ([`Parts::metas`]), which the merge reads:
    /// no stage in between carries it, so none can lose it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::layout::Layout;
    /// use tidewatch::ops::SplitOps;
    /// use tidewatch::types::Frame;
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&seen);
    /// timely::example(move |scope| {
    ///     let frame = Frame { seq: 0, values: vec![1.0, 2.0, 3.0], ..Frame::default() };
    ///     let parts = Some(frame)
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .split_features(Layout::new(3, 2));
    ///     parts.data.inspect(move |s| sink.lock().unwrap().push((s.part, s.values.clone())));
    /// });
    /// let mut slices = seen.lock().unwrap().clone();
    /// slices.sort_by_key(|s| s.0);
    /// assert_eq!(slices, vec![(0, vec![1.0]), (1, vec![2.0, 3.0])]);
    /// ```
    fn split_features(self, layout: Layout) -> Parts<'s, Slice>;
}

impl<'s> SplitOps<'s> for Stream<'s, Frame> {
    fn split_features(self, layout: Layout) -> Parts<'s, Slice> {
        let mut builder = OperatorBuilder::new("SplitFeatures".to_owned(), self.scope());
        let mut input = builder.new_input(self, Pipeline);
        builder.set_notify_for(0, FrontierInterest::Never);
        let (slices_out, slices) = builder.new_output();
        let (metas_out, metas) = builder.new_output();
        let mut slices_out = OutputBuilder::from(slices_out);
        let mut metas_out = OutputBuilder::from(metas_out);
        builder.build(move |_caps| {
            move |_frontiers| {
                let mut slices_out = slices_out.activate();
                let mut metas_out = metas_out.activate();
                input.for_each_stamp(|cap, data| {
                    let mut slices = slices_out.session(&cap);
                    let mut metas = metas_out.session(&cap);
                    for batch in data {
                        for frame in batch.drain(..) {
                            assert_eq!(
                                frame.values.len(),
                                layout.n_features,
                                "frame {} has the wrong number of values",
                                frame.seq
                            );
                            let (seq, received_us) = (frame.seq, frame.meta.received_us);
                            let entity = key_of(&frame.meta);
                            metas.give((seq, frame.meta));
                            for part in 1..layout.parts {
                                slices.give(Slice {
                                    seq,
                                    part: part as u32,
                                    received_us,
                                    entity,
                                    values: frame.values[layout.range(part)].to_vec(),
                                });
                            }
                            // Partition 0 is the front of the frame: it keeps the frame's
                            // own buffer instead of a copy.
                            let mut values = frame.values;
                            values.truncate(layout.range(0).end);
                            slices.give(Slice {
                                seq,
                                part: 0,
                                received_us,
                                entity,
                                values,
                            });
                        }
                    }
                });
            }
        });
        let metas: Stream<'s, (Seq, FrameMeta)> = metas;
        Parts {
            // Routing is `part % peers` (or `part & (peers-1)`): part p lands on worker p.
            data: slices.exchange(|s: &Slice| s.part as u64),
            metas,
            parts: layout.parts,
        }
    }
}

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Exchange;
use timely::progress::operate::FrontierInterest;

use super::{Parts, Stream};
use crate::layout::Layout;
use crate::types::{key_of, EntityKey, Frame, FrameMeta, Seq, Slice};

/// How [`cut_frames`] routes what it cuts: `part % peers` of the worker it goes to.
pub(crate) type Route<T> = fn(&T) -> u64;

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
        let route = slice_part;
        cut_frames(
            self,
            "SplitFeatures",
            layout.parts,
            route,
            move |cut, give| {
                assert_eq!(
                    cut.values.len(),
                    layout.n_features,
                    "frame {} has the wrong number of values",
                    cut.seq
                );
                for part in 1..layout.parts {
                    give(cut.slice(part, cut.values[layout.range(part)].to_vec()));
                }
                // Partition 0 is the front of the frame: it keeps the frame's own buffer
                // instead of a copy.
                let mut values = std::mem::take(&mut cut.values);
                values.truncate(layout.range(0).end);
                give(cut.slice(0, values));
            },
        )
    }
}

/// The route of a slice: to the worker of its partition.
pub(crate) fn slice_part(s: &Slice) -> u64 {
    s.part as u64
}

/// A frame being cut into slices: what every slice of it carries, and its values. The
/// metadata is the frame's own until the cut takes what it needs (event-time windows
/// take the event time and entity name); what is left leaves on [`Parts::metas`].
pub(crate) struct Cut {
    pub seq: Seq,
    pub received_us: u64,
    pub entity: EntityKey,
    pub values: Vec<f32>,
    pub meta: FrameMeta,
}

impl Cut {
    /// The slice for partition `part` holding `values`.
    pub fn slice(&self, part: usize, values: Vec<f32>) -> Slice {
        Slice {
            seq: self.seq,
            part: part as u32,
            received_us: self.received_us,
            entity: self.entity,
            values,
        }
    }
}

/// The operator the splits share: `cut` turns each frame into records (slices, handed to
/// `give`), which go to worker `route(record) % peers`; then the frame's metadata leaves
/// on [`Parts::metas`].
pub(crate) fn cut_frames<'s, T>(
    frames: Stream<'s, Frame>,
    name: &str,
    parts: usize,
    route: Route<T>,
    mut cut: impl FnMut(&mut Cut, &mut dyn FnMut(T)) + 'static,
) -> Parts<'s, T>
where
    T: timely::ExchangeData,
{
    let mut builder = OperatorBuilder::new(name.to_owned(), frames.scope());
    let mut input = builder.new_input(frames, Pipeline);
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
                        let mut c = Cut {
                            seq: frame.seq,
                            received_us: frame.meta.received_us,
                            entity: key_of(&frame.meta),
                            values: frame.values,
                            meta: frame.meta,
                        };
                        cut(&mut c, &mut |s| slices.give(s));
                        metas.give((c.seq, c.meta));
                    }
                }
            });
        }
    });
    let metas: Stream<'s, (Seq, FrameMeta)> = metas;
    Parts {
        // Routing is `part % peers` (or `part & (peers-1)`): part p lands on worker p.
        data: slices.exchange(route),
        metas,
        parts,
    }
}

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{Parts, Stream, Time};
use crate::types::{Batch, Window};

/// Groups windows into batches for one scoring call each.
pub trait BatchOps<'s> {
    /// What comes out: batches, in the same shape as the input (a stream, or [`Parts`]).
    type Output;

    /// Packs up to `max` windows into one [`Batch`] (their frames still shared where the
    /// windows share them: [`crate::types::WindowData`]). A batch is sent when it is
    /// full or when the input has nothing more right now, so a lone frame is never held
    /// back waiting for company. Each batch is stamped with its earliest window's time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::ops::BatchOps;
    /// use tidewatch::types::Window;
    ///
    /// let sizes = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&sizes);
    /// timely::example(move |scope| {
    ///     (0..5u64)
    ///         .map(|seq| Window { seq, part: 0, received_us: 0, entity: 0, data: vec![1.0, 2.0].into() })
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .batch(2)
    ///         .inspect(move |b| sink.lock().unwrap().push((b.seqs.clone(), b.data.len())));
    /// });
    /// let sizes = sizes.lock().unwrap();
    /// assert_eq!(sizes[0], (vec![0, 1], 4));
    /// assert_eq!(sizes.iter().map(|b| b.0.len()).sum::<usize>(), 5);
    /// ```
    fn batch(self, max: usize) -> Self::Output;
}

impl<'s> BatchOps<'s> for Parts<'s, Window> {
    type Output = Parts<'s, Batch>;

    fn batch(self, max: usize) -> Parts<'s, Batch> {
        self.map(|s| s.batch(max))
    }
}

impl<'s> BatchOps<'s> for Stream<'s, Window> {
    type Output = Stream<'s, Batch>;

    fn batch(self, max: usize) -> Stream<'s, Batch> {
        let max = max.max(1);
        self.unary(Pipeline, "Batch", move |_cap, _info| {
            let mut open: Option<(Capability<Time>, Batch)> = None;
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    for batch in data {
                        for window in batch.drain(..) {
                            let (held, b) = open.get_or_insert_with(|| {
                                let held = cap.retain_least(0).expect("stamped input");
                                let b = Batch {
                                    part: window.part,
                                    ..Batch::default()
                                };
                                (held, b)
                            });
                            if cap.least().is_some_and(|t| t < held.time()) {
                                *held = cap.retain_least(0).expect("stamped input");
                            }
                            debug_assert_eq!(b.part, window.part, "one worker, one partition");
                            b.seqs.push(window.seq);
                            b.received_us.push(window.received_us);
                            // frames stay shared; a lone window (the common case at
                            // low rates) moves in; room for the rest of the batch at
                            // once where values are copied, since growing by doubling
                            // copies a batch of large windows again and again
                            let rest = (max - b.len()) * window.data.len();
                            b.data.append(window.data, rest);
                            if b.len() >= max {
                                let (held, full) = open.take().expect("just filled");
                                output.session(&held).give(full);
                            }
                        }
                    }
                });
                // the input is drained: whatever waits goes now
                if let Some((held, partial)) = open.take() {
                    output.session(&held).give(partial);
                }
            }
        })
    }
}

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{Stream, Time};
use crate::types::{Batch, Window};

/// Groups windows into batches for one scoring call each.
pub trait BatchOps<'s> {
    /// Packs up to `max` windows into one contiguous [`Batch`]. A batch is sent when it is
    /// full or when the input has nothing more right now, so a lone frame is never held
    /// back waiting for company. Each batch is stamped with its earliest window's time.
    fn batch(self, max: usize) -> Stream<'s, Batch>;
}

impl<'s> BatchOps<'s> for Stream<'s, Window> {
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
                            b.metas.push(window.meta);
                            if b.data.is_empty() {
                                // a lone window (the common case at low rates) moves in
                                b.data = window.data;
                            } else {
                                b.data.extend_from_slice(&window.data);
                            }
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

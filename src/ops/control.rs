//! The control stream: changes to a run's settings as events in the dataflow, stamped
//! with the frame from which they apply (see [`crate::controls`]).
//!
//! [`control_tap`] passes the frames through and, on the first worker of each process,
//! holds a capability at the frames' frontier, at which it sends that process's control
//! messages; they are broadcast to every worker, which turns commits into the next
//! [`Knobs`] ([`Changes`]). An operator that reads them holds a record until the
//! changes' frontier has passed its last frame ([`Gate`]): then every change that applies
//! to it has arrived, and [`Schedule::at`] says which settings score each frame.

use std::collections::VecDeque;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::progress::frontier::MutableAntichain;

use super::{Stream, Time};
use crate::controls::{Controls, Knobs, Msg};
use crate::types::{Frame, Seq};

/// The settings each worker moves to, each stamped with the frame it applies from.
pub type Changes<'s> = Stream<'s, Arc<Knobs>>;

/// A run's changing settings as a stage reads them: those at the start, and the changes.
#[derive(Clone)]
pub struct Live<'s> {
    /// The changes, as they come into force on this worker.
    pub changes: Changes<'s>,
    /// The settings before the first change.
    pub initial: Arc<Knobs>,
}

/// `frames`, unchanged, and the changes of `controls` as they come into force (see the
/// module's docs). Passing the frames through (rather than reading a second copy) costs
/// no copy of a frame.
pub fn control_tap<'s>(
    frames: Stream<'s, Frame>,
    controls: Arc<Controls>,
) -> (Stream<'s, Frame>, Live<'s>) {
    let scope = frames.scope();
    let index = scope.index();
    let sends = controls.relay().sends(index);
    let mut builder = OperatorBuilder::new("ControlTap".to_owned(), scope);
    let info = builder.operator_info();
    let mut input = builder.new_input(frames, Pipeline);
    let (frames_out, passed) = builder.new_output();
    let (msgs_out, msgs) = builder.new_output();
    let mut frames_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Frame>>>::from(frames_out);
    let mut msgs_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Msg>>>::from(msgs_out);
    if sends {
        let wake = scope.worker().sync_activator_for(info.address.to_vec());
        controls.relay().attach(wake);
    }
    let relay_controls = Arc::clone(&controls);
    builder.build(move |mut caps| {
        // the messages' output; the frames go out at their own times
        let mut held = caps.pop().filter(|_| sends);
        let mut outgoing: Vec<Msg> = Vec::new();
        move |frontiers| {
            let mut out = frames_out.activate();
            input.for_each_stamp(|cap, data| out.session(&cap).give_containers(data));
            let Some(cap) = held.as_mut() else {
                return;
            };
            let relay = relay_controls.relay();
            match frontiers[0].frontier().first() {
                Some(t) => cap.downgrade(t),
                None => {
                    held = None;
                    relay.close();
                    return;
                }
            }
            relay.take(&mut outgoing);
            if !outgoing.is_empty() {
                msgs_out
                    .activate()
                    .session(&*cap)
                    .give_iterator(outgoing.drain(..));
            }
        }
    });
    let initial = controls.current();
    let mut knobs = Arc::clone(&initial);
    let changes = msgs
        .broadcast()
        .unary(Pipeline, "ControlApply", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else {
                        return;
                    };
                    for msg in data.flat_map(|c| c.drain(..)) {
                        if controls.on_message(index, time, &msg, &mut knobs) {
                            output.session(&cap).give(Arc::clone(&knobs));
                        }
                    }
                });
            }
        });
    (passed, Live { changes, initial })
}

/// The settings in force for each frame: the ones at the start, then each change from
/// the frame it is stamped with.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// `(first frame, settings)`, ascending.
    spans: Vec<(Time, Arc<Knobs>)>,
}

impl Schedule {
    /// `initial` for every frame until a change arrives.
    pub fn new(initial: Arc<Knobs>) -> Schedule {
        Schedule {
            spans: vec![(Time::MIN, initial)],
        }
    }

    /// `knobs` from frame `from` on.
    pub fn add(&mut self, from: Time, knobs: Arc<Knobs>) {
        // Commits come from one worker, in order: a later one never has an earlier frame.
        let at = self.spans.partition_point(|(t, _)| *t <= from);
        self.spans.insert(at, (from, knobs));
    }

    /// Which span frame `seq` is in (an index for [`Schedule::knobs`]).
    pub fn span(&self, seq: Seq) -> usize {
        self.spans
            .partition_point(|(t, _)| *t <= seq)
            .saturating_sub(1)
    }

    /// The settings of span `span`.
    pub fn knobs(&self, span: usize) -> &Arc<Knobs> {
        &self.spans[span].1
    }

    /// The settings that score frame `seq`.
    pub fn at(&self, seq: Seq) -> &Arc<Knobs> {
        self.knobs(self.span(seq))
    }

    /// Forgets the settings of frames before `floor`, which will not be seen again.
    fn forget_before(&mut self, floor: Time) {
        let superseded = self.spans.partition_point(|(t, _)| *t <= floor);
        if superseded > 1 {
            self.spans.drain(..superseded - 1);
        }
    }
}

/// A record about frames, whose last (greatest) frame a [`Gate`] must know.
pub trait Framed {
    /// The greatest frame it is about, `None` if none.
    fn last_seq(&self) -> Option<Seq>;
}

impl Framed for crate::types::Batch {
    fn last_seq(&self) -> Option<Seq> {
        self.seqs.iter().copied().max()
    }
}

impl Framed for crate::types::Scored {
    fn last_seq(&self) -> Option<Seq> {
        self.seqs.iter().copied().max()
    }
}

/// Holds records until every change that applies to their frames has arrived; an
/// operator with a data input and a [`Changes`] input keeps one.
pub struct Gate<D> {
    /// The settings for each frame.
    pub schedule: Schedule,
    held: VecDeque<(Capability<Time>, D)>,
}

impl<D: Framed> Gate<D> {
    /// A gate starting from `initial` settings.
    pub fn new(initial: Arc<Knobs>) -> Gate<D> {
        Gate {
            schedule: Schedule::new(initial),
            held: VecDeque::new(),
        }
    }

    /// Takes the changes that arrived.
    pub fn changes<P>(
        &mut self,
        input: &mut timely::dataflow::operators::generic::InputHandleCore<Time, Vec<Arc<Knobs>>, P>,
    ) where
        P: timely::communication::Pull<timely::dataflow::channels::Message<Time, Vec<Arc<Knobs>>>>,
    {
        input.for_each(|cap, data| {
            if let Some(&t) = cap.least() {
                for k in data.drain(..) {
                    self.schedule.add(t, k);
                }
            }
        });
    }

    /// Queues `record`, which came with `cap`.
    pub fn hold(&mut self, cap: Capability<Time>, record: D) {
        self.held.push_back((cap, record));
    }

    /// Hands `release` each held record, in arrival order, whose frames the changes'
    /// frontier `changes` has passed; then forgets settings older than anything still to
    /// come (`data`: the records' frontier).
    pub fn release(
        &mut self,
        changes: &MutableAntichain<Time>,
        data: &MutableAntichain<Time>,
        mut release: impl FnMut(&Capability<Time>, D, &Schedule),
    ) {
        while let Some((_, record)) = self.held.front() {
            if record.last_seq().is_some_and(|s| changes.less_equal(&s)) {
                break;
            }
            let (cap, record) = self.held.pop_front().expect("a front");
            release(&cap, record, &self.schedule);
        }
        let floor = self
            .held
            .iter()
            .map(|(c, _)| *c.time())
            .chain(data.frontier().first().copied())
            .min();
        match floor {
            Some(f) => self.schedule.forget_before(f),
            None => self.schedule.forget_before(Time::MAX),
        }
    }
}

/// `input`'s records, each handed to `each` with the settings [`Schedule`] once every
/// change that applies to its frames has arrived ([`Gate`]); what `each` gives goes out
/// at the record's time. The one operator that holds records for the changes of `live`:
/// the score and threshold operators each say only what they do with a record.
pub fn gated<'s, D, O>(
    input: Stream<'s, D>,
    live: Live<'s>,
    name: &str,
    mut each: impl FnMut(D, &Schedule, &mut dyn FnMut(O)) + 'static,
) -> Stream<'s, O>
where
    D: Framed + Clone + 'static,
    O: Clone + 'static,
{
    let Live { changes, initial } = live;
    let mut gate = Gate::new(initial);
    input.binary_frontier(changes, Pipeline, Pipeline, name, move |_cap, _info| {
        move |(input, frontier), (changes, changed), output| {
            gate.changes(changes);
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                for record in data.drain(..) {
                    gate.hold(cap.clone(), record);
                }
            });
            gate.release(changed, frontier, |cap, record, schedule| {
                let mut session = output.session(cap);
                each(record, schedule, &mut |o| session.give(o));
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controls::{Change, Controls, Shape};

    /// Each frame gets the settings of the last change at or before it, and forgetting
    /// old frames keeps the settings of the frames still to come.
    #[test]
    fn a_schedule_gives_each_frame_the_last_change_before_it() {
        let model = Arc::new(crate::controls::test_model::tiny(4, 1));
        let c = Controls::new(model, None, Some(1.0), Shape::default());
        let k0 = c.current();
        let k1 = Arc::new(k0.after(&Change::Threshold(Some(2.0)), None));
        let k2 = Arc::new(k1.after(&Change::Threshold(Some(3.0)), None));
        let mut s = Schedule::new(k0);
        s.add(20, Arc::clone(&k2));
        s.add(10, k1);
        let threshold = |s: &Schedule, seq| s.at(seq).threshold_or(None);
        assert_eq!(
            [5, 9, 10, 19, 20, 99].map(|q| threshold(&s, q)),
            [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
        );
        s.forget_before(15);
        assert_eq!([15, 25].map(|q| threshold(&s, q)), [2.0, 3.0]);
        s.forget_before(Time::MAX);
        assert_eq!((s.spans.len(), threshold(&s, 0)), (1, 3.0));
    }
}

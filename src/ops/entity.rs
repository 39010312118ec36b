//! Entity-sharded pipelines: each frame goes whole to the worker that owns its entity
//! (by [`EntityKey`], the same on every process), where the entity's windows and its own
//! detector live. The verdicts do not depend on how many workers or processes there are:
//! an entity's frames all meet on one worker, in frame order.

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use super::{Parts, Stream};
use crate::clock;
use crate::detect::{score_data, Detector, Scores};
use crate::stats::{Stage, Stats};
use crate::types::{EntityKey, Frame, Scored, Slice, Timed, Window};

/// The worker, of `peers`, that owns entity `key`.
pub fn owner(key: EntityKey, peers: usize) -> usize {
    (key % peers.max(1) as u64) as usize
}

/// Sends whole frames to the worker of their entity.
pub trait SplitEntitiesOps<'s> {
    /// One [`Slice`] per frame, holding all its values, sent to worker
    /// [`owner`]`(entity, peers)` (frames without an entity share one worker). The
    /// frames' metadata leaves on a stream of its own, as with
    /// [`crate::ops::SplitOps::split_features`]; the merge waits for one report per
    /// frame.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::ops::SplitEntitiesOps;
    /// use tidewatch::types::{entity_key, Frame, FrameMeta};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&seen);
    /// timely::example(move |scope| {
    ///     let meta = FrameMeta { entity: Some("P-1".into()), ..FrameMeta::default() };
    ///     let frame = Frame { seq: 0, meta, values: vec![1.0, 2.0] };
    ///     let parts = Some(frame).to_stream(scope).container::<Vec<_>>().split_entities();
    ///     parts.data.inspect(move |s| sink.lock().unwrap().push((s.entity, s.values.clone())));
    /// });
    /// assert_eq!(*seen.lock().unwrap(), vec![(entity_key("P-1"), vec![1.0, 2.0])]);
    /// ```
    fn split_entities(self) -> Parts<'s, Slice>;

    /// As [`SplitEntitiesOps::split_entities`], each slice with its frame's event time
    /// and entity name: the input of [`crate::ops::EventWindowOps::event_window`].
    fn split_entities_timed(self) -> Parts<'s, Timed>;
}

impl<'s> SplitEntitiesOps<'s> for Stream<'s, Frame> {
    fn split_entities(self) -> Parts<'s, Slice> {
        let peers = self.scope().peers();
        let route = super::split::slice_part;
        super::split::cut_frames(self, "SplitEntities", 1, route, move |cut, give| {
            let values = std::mem::take(&mut cut.values);
            give(cut.slice(owner(cut.entity, peers), values));
        })
    }

    fn split_entities_timed(self) -> Parts<'s, Timed> {
        let peers = self.scope().peers();
        let route: super::split::Route<Timed> = |t| t.slice.part as u64;
        super::split::cut_frames(self, "SplitEntitiesTimed", 1, route, move |cut, give| {
            let values = std::mem::take(&mut cut.values);
            give(Timed {
                event_ms: cut.meta.event_ms,
                entity: cut.meta.entity.clone(),
                slice: cut.slice(owner(cut.entity, peers), values),
            });
        })
    }
}

/// Scores each entity's windows with a detector of its own.
pub trait ScoreEntitiesOps<'s> {
    /// What comes out: scores, in the same shape as the input.
    type Output;

    /// Scores every window with the detector of its entity, made by `detector_for` the
    /// first time the entity is seen on this worker and kept for the run, so that a
    /// stateful detector's state is per (entity, feature). One [`Scored`] per window;
    /// records scoring time into `stats`.
    fn score_entities<F>(self, detector_for: F, stats: Arc<Stats>) -> Self::Output
    where
        F: FnMut(EntityKey) -> Box<dyn Detector> + 'static;
}

impl<'s> ScoreEntitiesOps<'s> for Parts<'s, Window> {
    type Output = Parts<'s, Scored>;

    fn score_entities<F>(self, detector_for: F, stats: Arc<Stats>) -> Parts<'s, Scored>
    where
        F: FnMut(EntityKey) -> Box<dyn Detector> + 'static,
    {
        self.map(|w| w.score_entities(detector_for, stats))
    }
}

impl<'s> ScoreEntitiesOps<'s> for Stream<'s, Window> {
    type Output = Stream<'s, Scored>;

    fn score_entities<F>(self, mut detector_for: F, stats: Arc<Stats>) -> Stream<'s, Scored>
    where
        F: FnMut(EntityKey) -> Box<dyn Detector> + 'static,
    {
        self.unary(Pipeline, "ScoreEntities", move |_cap, _info| {
            let mut detectors: HashMap<EntityKey, Box<dyn Detector>> = HashMap::new();
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for w in batch.drain(..) {
                            let detector = detectors
                                .entry(w.entity)
                                .or_insert_with(|| detector_for(w.entity));
                            let began = clock::now_us();
                            let (scores, compacted) = match score_data(detector, &w.data) {
                                Scores::All(scores) => (scores, None),
                                Scores::Compacted(c) => (Vec::new(), Some(c)),
                            };
                            let done = clock::now_us();
                            stats.record(Stage::Score, done - began);
                            session.give(Scored {
                                part: w.part,
                                lo: detector.features().start as u32,
                                seqs: vec![w.seq],
                                received_us: vec![w.received_us],
                                began_us: began,
                                scored_us: done,
                                scores,
                                compacted,
                            });
                        }
                    }
                });
            }
        })
    }
}

//! The stages of a tidewatch dataflow, each an extension trait on timely streams, usable
//! on its own: source → split → window → batch → score → threshold → merge → stats; the
//! verdicts then go to the sinks (`crate::sinks`), hooks the runtime calls on worker 0.
//!
//! Logical time is the frame's sequence number. Operators keep one invariant: a record
//! about frame `seq` is never stamped with a time later than `seq`, so "the frontier has
//! passed `seq`" means "everything about frames up to `seq` has arrived".
//!
//! Between split and merge, a pipeline is a [`Parts`]: the per-partition records and,
//! beside them, the frames' metadata on a stream of its own. Each stage trait is
//! implemented for a plain stream (to test or reuse the stage alone) and for [`Parts`],
//! where it maps the records and passes the metadata around itself; a new stage does the
//! same with [`Parts::map`], and cannot lose a verdict by forgetting to carry metadata.

mod batch;
pub mod control;
mod entity;
mod event_window;
mod merge;
mod score;
mod source;
mod split;
mod stats;
mod window;

pub use batch::BatchOps;
pub use control::{control_tap, Changes, Live};
pub use entity::{owner, ScoreEntitiesOps, SplitEntitiesOps};
pub use event_window::{EventTime, EventWindowConfig, EventWindowOps};
pub use merge::MergeOps;
pub use score::{Cut, ScoreOps, ThresholdOps};
pub use source::{frame_source, Pacing, Progress, MAX_IN_FLIGHT};
pub use split::SplitOps;
pub use stats::StatsOps;
pub use window::{WindowConfig, WindowOps};

/// The time of every tidewatch stream: the frame sequence number.
pub type Time = crate::types::Seq;

/// A timely stream of vectors of `D` at tidewatch's time.
pub type Stream<'s, D> = timely::dataflow::StreamVec<'s, Time, D>;

/// A frame's records on their way from split to merge: what each partition holds
/// (`data`, on the partition's worker) and the frames' metadata beside it (`metas`), which
/// the merge joins back to the partitions' reports.
pub struct Parts<'s, D> {
    /// Each partition's records.
    pub data: Stream<'s, D>,
    /// `(seq, metadata)` of every frame split.
    pub metas: Stream<'s, (crate::types::Seq, crate::types::FrameMeta)>,
    /// Partitions the frames were split into: the merge waits for a report from each.
    pub parts: usize,
}

impl<'s, D: 'static> Parts<'s, D> {
    /// The records through `stage`, the metadata around it: how a new stage joins the
    /// chain between split and merge.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::core::Map;
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::layout::Layout;
    /// use tidewatch::ops::SplitOps;
    /// use tidewatch::types::Frame;
    ///
    /// let seen = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    /// let sink = Arc::clone(&seen);
    /// let meta_sink = Arc::clone(&seen);
    /// timely::example(move |scope| {
    ///     let frame = Frame { seq: 7, values: vec![-1.0, 2.0], ..Frame::default() };
    ///     let parts = Some(frame)
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .split_features(Layout::new(2, 1))
    ///         // a stage of one's own: clip negative values
    ///         .map(|slices| {
    ///             slices
    ///                 .map(|mut s| {
    ///                     s.values.iter_mut().for_each(|v| *v = v.max(0.0));
    ///                     s
    ///                 })
    ///                 .container::<Vec<_>>()
    ///         });
    ///     parts.data.inspect(move |s| sink.lock().unwrap().0.push(s.values.clone()));
    ///     parts.metas.inspect(move |(seq, _)| meta_sink.lock().unwrap().1.push(*seq));
    /// });
    /// assert_eq!(*seen.lock().unwrap(), (vec![vec![0.0, 2.0]], vec![7]));
    /// ```
    pub fn map<E>(self, stage: impl FnOnce(Stream<'s, D>) -> Stream<'s, E>) -> Parts<'s, E> {
        Parts {
            data: stage(self.data),
            metas: self.metas,
            parts: self.parts,
        }
    }
}

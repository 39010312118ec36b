//! The stages of a tidewatch dataflow, each an extension trait on timely streams, usable
//! on its own: source → split → window → batch → score → threshold → merge → sinks.
//!
//! Logical time is the frame's sequence number. Operators keep one invariant: a record
//! about frame `seq` is never stamped with a time later than `seq`, so "the frontier has
//! passed `seq`" means "everything about frames up to `seq` has arrived".

mod batch;
mod merge;
mod score;
mod sinks;
mod source;
mod split;
mod window;

pub use batch::BatchOps;
pub use merge::MergeOps;
pub use score::{ScoreOps, ThresholdOps};
pub use sinks::{SinkOps, StatsOps};
pub use source::{frame_source, Pacing, Progress, MAX_IN_FLIGHT};
pub use split::SplitOps;
pub use window::{WindowConfig, WindowOps};

/// The time of every tidewatch stream: the frame sequence number.
pub type Time = crate::types::Seq;

/// A timely stream of vectors of `D` at tidewatch's time.
pub type Stream<'s, D> = timely::dataflow::StreamVec<'s, Time, D>;

use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::{ProbeHandle, Scope};

use super::{Stream, Time};
use crate::source::{FrameSource, Pull};
use crate::stats::Stats;
use crate::types::Frame;

/// How fast a source is read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// As fast as the dataflow takes frames.
    Unpaced,
    /// At most this many frames per second, evenly spaced.
    Rate(f64),
}

/// Frames pulled in one activation at most, so a fast source leaves the worker time to
/// score what it already produced.
const PULLS_PER_ACTIVATION: usize = 64;

/// How soon to ask an idle push source again (push sources do not wake the worker yet).
const IDLE_RECHECK: Duration = Duration::from_millis(1);

/// Frames admitted at most before the oldest of them has its verdict everywhere. With
/// several workers or processes a slower one would otherwise let slices pile up in the
/// exchange channels without bound while the source keeps reading (and an HTTP queue
/// never fills, so clients never hear 429).
pub const MAX_IN_FLIGHT: u64 = 128;

/// A stream of frames read from `source` on this worker, each stamped with its sequence
/// number (0, 1, 2, ... in the order the source gives them, unless the source assigns
/// them itself). A worker given no source releases its capability at once and
/// contributes nothing, so frames can enter on one worker while every worker keeps the
/// frontier moving. With `progress` (a probe on the pipeline's end), at most
/// [`MAX_IN_FLIGHT`] frames are in the dataflow at once.
pub fn frame_source<'s>(
    scope: Scope<'s, Time>,
    source: Option<Box<dyn FrameSource>>,
    pacing: Pacing,
    stats: Arc<Stats>,
    progress: Option<ProbeHandle<Time>>,
) -> Stream<'s, Frame> {
    let src = source;
    timely::dataflow::operators::generic::operator::source(
        scope,
        "FrameSource",
        move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut src = src;
            let assigned = src.as_ref().is_some_and(|s| s.assigns_seq());
            let mut cap = src.as_ref().map(|_| cap);
            let mut next: Time = 0;
            let mut started: Option<Instant> = None;
            move |output| {
                let (Some(c), Some(s)) = (cap.as_mut(), src.as_mut()) else {
                    cap = None;
                    return;
                };
                let start = *started.get_or_insert_with(Instant::now);
                for _ in 0..PULLS_PER_ACTIVATION {
                    if let Some(p) = &progress {
                        if next >= MAX_IN_FLIGHT && p.less_than(&(next - MAX_IN_FLIGHT)) {
                            activator.activate_after(IDLE_RECHECK);
                            return;
                        }
                    }
                    if let Pacing::Rate(rate) = pacing {
                        let due = start + Duration::from_secs_f64(next as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            activator.activate_after(due - now);
                            return;
                        }
                    }
                    match s.pull() {
                        Pull::Frame(mut frame) => {
                            if assigned {
                                assert!(frame.seq >= next, "source seqs must increase");
                                next = frame.seq;
                                c.downgrade(&next);
                            } else {
                                frame.seq = next;
                            }
                            stats.frame_in();
                            output.session(&*c).give(frame);
                            next += 1;
                            c.downgrade(&next);
                        }
                        Pull::Bad(err) => {
                            stats.frame_rejected();
                            tracing::warn!(error = %err, "skipped a record that does not decode");
                        }
                        Pull::Idle => {
                            activator.activate_after(IDLE_RECHECK);
                            return;
                        }
                        Pull::Done => {
                            cap = None;
                            src = None;
                            return;
                        }
                    }
                }
                activator.activate();
            }
        },
    )
}

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::{ProbeHandle, Scope};

use super::{Stream, Time};
use crate::source::{FrameSource, Pull, Sequencing};
use crate::stats::{Stage, Stats};
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
/// Under [`Sequencing::Clock`] it is also how far an idle worker's time may lag the clock.
const IDLE_RECHECK: Duration = Duration::from_millis(1);

/// Frames admitted at most, per reading worker, before the oldest of them has its verdict
/// everywhere. With several workers or processes a slower one would otherwise let slices
/// pile up in the exchange channels without bound while the source keeps reading (and an
/// HTTP queue never fills, so clients never hear 429).
pub const MAX_IN_FLIGHT: usize = 64;

/// What the source operators of one worker share with the runtime: the probe on the
/// pipeline's end (which frames have their verdicts everywhere) and the sources that ran
/// out, kept until the run is over so they can be told that all their frames settled.
#[derive(Clone, Default)]
pub struct Progress {
    probe: ProbeHandle<Time>,
    finished: Rc<RefCell<Vec<Exhausted>>>,
}

/// A source that ran out, with the number of frames it yielded.
type Exhausted = (Box<dyn FrameSource>, u64);

impl Progress {
    /// A probe with no exhausted sources yet.
    pub fn new() -> Progress {
        Progress::default()
    }

    /// The probe the runtime attaches to the variant's results.
    pub fn probe(&self) -> &ProbeHandle<Time> {
        &self.probe
    }

    /// Tells every exhausted source that all the frames it yielded have settled. Call once
    /// the dataflow is complete.
    pub fn finish(&self) {
        for (mut source, yielded) in self.finished.borrow_mut().drain(..) {
            source.settled(yielded);
        }
    }
}

/// Logical times a source may stamp, following its [`Sequencing`] on worker `index` of
/// `peers`.
struct Numbering {
    rule: Sequencing,
    index: u64,
    peers: u64,
    /// Frames yielded so far.
    yielded: u64,
    /// The least time the next frame may have; the source's capability sits here.
    next: Time,
}

impl Numbering {
    fn new(rule: Sequencing, index: usize, peers: usize) -> Numbering {
        let (index, peers) = (index as u64, peers.max(1) as u64);
        let next = match rule {
            Sequencing::Interleaved => index,
            _ => 0,
        };
        Numbering {
            rule,
            index,
            peers,
            yielded: 0,
            next,
        }
    }

    /// The first time at or after `us` that belongs to this worker (`≡ index mod peers`),
    /// so that clock-stamped frames of different workers never share a time.
    fn own_slot(&self, us: u64) -> Time {
        let slot = us - us % self.peers + self.index;
        if slot < us {
            slot + self.peers
        } else {
            slot
        }
    }

    fn clock(&self) -> Time {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.own_slot(us).max(self.next)
    }

    /// The time of the next frame; `carried` is the seq the frame came with.
    fn stamp(&mut self, carried: Time) -> Time {
        let (seq, step) = match self.rule {
            Sequencing::Dense => (self.yielded, 1),
            Sequencing::Assigned => {
                assert!(carried >= self.next, "source seqs must increase");
                (carried, 1)
            }
            Sequencing::Interleaved => (self.yielded * self.peers + self.index, self.peers),
            Sequencing::Clock => (self.clock(), self.peers),
        };
        self.yielded += 1;
        self.next = seq + step;
        seq
    }

    /// Where an idle source's capability may move: under [`Sequencing::Clock`], the clock.
    fn idle(&mut self) -> Time {
        if self.rule == Sequencing::Clock {
            self.next = self.clock();
        }
        self.next
    }
}

/// A stream of frames read from `source` on this worker, each stamped with a logical time
/// (its `seq`) as the source's [`Sequencing`] says. A worker given no source releases its
/// capability at once and contributes nothing, so frames can enter on one worker, or on
/// several, while every worker keeps the frontier moving. With `progress`, at most
/// [`MAX_IN_FLIGHT`] frames of this source are in the dataflow at once, and the source
/// hears which of its frames have settled ([`FrameSource::settled`]).
pub fn frame_source<'s>(
    scope: Scope<'s, Time>,
    source: Option<Box<dyn FrameSource>>,
    pacing: Pacing,
    stats: Arc<Stats>,
    progress: Option<Progress>,
) -> Stream<'s, Frame> {
    let (index, peers) = (scope.index(), scope.peers());
    let src = source;
    timely::dataflow::operators::generic::operator::source(
        scope,
        "FrameSource",
        move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut src = src;
            let mut numbering = Numbering::new(
                src.as_ref().map_or(Sequencing::Dense, |s| s.sequencing()),
                index,
                peers,
            );
            let mut cap = src.as_ref().map(|_| {
                let mut cap = cap;
                cap.downgrade(&numbering.next);
                cap
            });
            // times of frames yielded whose verdicts are not yet everywhere, oldest first
            let mut in_flight: VecDeque<Time> = VecDeque::new();
            let mut settled: u64 = 0;
            let mut started: Option<Instant> = None;
            move |output| {
                let (Some(c), Some(s)) = (cap.as_mut(), src.as_mut()) else {
                    cap = None;
                    return;
                };
                if let Some(p) = &progress {
                    let before = settled;
                    while in_flight.front().is_some_and(|t| !p.probe.less_equal(t)) {
                        in_flight.pop_front();
                        settled += 1;
                    }
                    if settled > before {
                        s.settled(settled);
                    }
                }
                let start = *started.get_or_insert_with(Instant::now);
                for _ in 0..PULLS_PER_ACTIVATION {
                    if progress.is_some() && in_flight.len() >= MAX_IN_FLIGHT {
                        activator.activate_after(IDLE_RECHECK);
                        return;
                    }
                    if let Pacing::Rate(rate) = pacing {
                        let due = start + Duration::from_secs_f64(numbering.yielded as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            c.downgrade(&numbering.idle());
                            activator.activate_after(due - now);
                            return;
                        }
                    }
                    match s.pull() {
                        Pull::Frame(mut frame) => {
                            let m = &mut frame.meta;
                            m.entered_us = crate::clock::now_us();
                            if m.received_us != 0 {
                                stats.record_since(Stage::Decode, m.received_us, m.decoded_us);
                            }
                            stats.record_since(Stage::Queue, m.decoded_us, m.entered_us);
                            frame.seq = numbering.stamp(frame.seq);
                            c.downgrade(&frame.seq);
                            stats.frame_in();
                            in_flight.push_back(frame.seq);
                            output.session(&*c).give(frame);
                            c.downgrade(&numbering.next);
                        }
                        Pull::Bad(err) => {
                            stats.frame_rejected();
                            tracing::warn!(error = %err, "skipped a record that does not decode");
                        }
                        Pull::Idle => {
                            c.downgrade(&numbering.idle());
                            activator.activate_after(IDLE_RECHECK);
                            return;
                        }
                        Pull::Done => {
                            cap = None;
                            if let (Some(s), Some(p)) = (src.take(), &progress) {
                                p.finished.borrow_mut().push((s, numbering.yielded));
                            }
                            return;
                        }
                    }
                }
                activator.activate();
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_slots_are_unique_per_worker_and_never_go_back() {
        let mut a = Numbering::new(Sequencing::Clock, 1, 3);
        for us in [0u64, 1, 2, 3, 4, 100] {
            let t = a.own_slot(us);
            assert!(t >= us && t < us + 3 && t % 3 == 1, "{us} -> {t}");
        }
        let t1 = a.stamp(0);
        let t2 = a.stamp(0);
        assert!(t2 > t1 && t1 % 3 == 1 && t2 % 3 == 1);
        assert!(a.idle() >= t2 + 3);
    }

    #[test]
    fn interleaved_numbering_deals_round_robin() {
        let mut b = Numbering::new(Sequencing::Interleaved, 1, 2);
        assert_eq!(b.next, 1);
        assert_eq!([b.stamp(0), b.stamp(0), b.stamp(0)], [1, 3, 5]);
        let mut d = Numbering::new(Sequencing::Dense, 0, 1);
        assert_eq!([d.stamp(9), d.stamp(9)], [0, 1]);
    }
}

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{ProbeHandle, Scope};
use timely::progress::Antichain;
use timely::scheduling::{Activator, SyncActivator};

use super::{Stream, Time};
use crate::sources::{FrameSource, Pull, Sequencing};
use crate::stats::{Stage, Stats};
use crate::types::Frame;

/// How fast a source is read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// As fast as the dataflow takes frames.
    Unpaced,
    /// At most `rate` frames per second in all from `readers` workers that read in turn
    /// (workers `0 .. readers`, as [`Sequencing::Interleaved`] deals frames): worker `i`'s
    /// `n`-th frame is due `(n * readers + i) / rate` seconds after it starts, so that
    /// together they offer `rate`, evenly spaced, instead of `readers` frames at once.
    /// One reader ([`Pacing::rate`]): its `n`-th frame is due at `n / rate`.
    Shared {
        /// Frames per second, all readers together.
        rate: f64,
        /// Workers reading.
        readers: usize,
    },
}

impl Pacing {
    /// At most `rate` frames per second from one reader, evenly spaced.
    pub fn rate(rate: f64) -> Pacing {
        Pacing::Shared { rate, readers: 1 }
    }

    /// When the `n`-th frame of worker `index` is due, counted from its start; `None`
    /// unpaced.
    fn due(&self, n: u64, index: usize) -> Option<Duration> {
        let Pacing::Shared { rate, readers } = *self else {
            return None;
        };
        let readers = readers.max(1) as u64;
        let slot = n * readers + index as u64 % readers;
        Some(Duration::from_secs_f64(slot as f64 / rate))
    }
}

/// Frames pulled in one activation at most, so a fast source leaves the worker time to
/// score what it already produced.
const PULLS_PER_ACTIVATION: usize = 64;

/// How soon to ask an idle source again when it cannot wake its worker
/// ([`FrameSource::wake_with`]). Under [`Sequencing::Clock`] it is also how far an idle
/// worker's time may lag the clock, so such a source is asked this often even if it wakes
/// its worker: the other workers' frames wait for its time to pass theirs.
const IDLE_RECHECK: Duration = Duration::from_millis(1);

/// Frames admitted at most, per reading worker, before the oldest of them has its verdict
/// everywhere. With several workers or processes a slower one would otherwise let slices
/// pile up in the exchange channels without bound while the source keeps reading (and an
/// HTTP queue never fills, so clients never hear 429).
pub const MAX_IN_FLIGHT: usize = 64;

/// What the source operators of one worker share with the runtime: the probe on the
/// pipeline's end (which frames have their verdicts everywhere), the sources that ran
/// out, kept until the run is over so they can be told that all their frames settled,
/// and the source operators to wake when that frontier moves.
#[derive(Clone, Default)]
pub struct Progress {
    probe: ProbeHandle<Time>,
    finished: Rc<RefCell<Vec<Exhausted>>>,
    sources: Rc<RefCell<Vec<Activator>>>,
    /// Whether [`Progress::watch`] follows the pipeline's end; if not, a source that has
    /// [`MAX_IN_FLIGHT`] frames out looks again on a timer.
    watched: Rc<std::cell::Cell<bool>>,
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

    /// Probes `results`, the pipeline's end, with [`Progress::probe`], and wakes this
    /// worker's source operators whenever their frontier moves: frames settled, so a
    /// source hears of it ([`FrameSource::settled`]) and, if it had [`MAX_IN_FLIGHT`]
    /// frames out, reads on, at once rather than at its next frame or timer.
    pub fn watch<'s, D: 'static>(&self, results: Stream<'s, D>) -> Stream<'s, D> {
        use timely::dataflow::operators::Probe;
        let sources = Rc::clone(&self.sources);
        self.watched.set(true);
        results.probe_with(&self.probe).unary_frontier(
            Pipeline,
            "WakeSources",
            move |_cap, _info| {
                let mut seen: Antichain<Time> = Antichain::from_elem(Time::MIN);
                move |(input, frontier), output| {
                    input.for_each(|cap, data| output.session(&cap).give_container(data));
                    if frontier.frontier() != seen.borrow() {
                        seen = frontier.frontier().to_owned();
                        for source in sources.borrow().iter() {
                            source.activate();
                        }
                    }
                }
            },
        )
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
        crate::clock::own_slot(us, self.index, self.peers)
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
            Sequencing::Assigned | Sequencing::AssignedClock => {
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

    /// Where an idle source's capability may move: under [`Sequencing::Clock`], the
    /// clock; under [`Sequencing::AssignedClock`], as far as the source promises.
    fn idle(&mut self, source: &mut dyn FrameSource) -> Time {
        match self.rule {
            Sequencing::Clock => self.next = self.clock(),
            Sequencing::AssignedClock => {
                if let Some(floor) = source.idle_floor() {
                    self.next = self.next.max(floor);
                }
            }
            _ => {}
        }
        self.next
    }
}

/// Wakes a source operator from another thread (an HTTP handler that queued a frame).
struct WakeOperator(SyncActivator);

impl Wake for WakeOperator {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Fails only once the worker is gone, when there is nothing left to wake.
        let _ = self.0.activate();
    }
}

/// A stream of frames read from `source` on this worker, each stamped with a logical time
/// (its `seq`) as the source's [`Sequencing`] says. A worker given no source releases its
/// capability at once and contributes nothing, so frames can enter on one worker, or on
/// several, while every worker keeps the frontier moving. With `progress`, at most
/// [`MAX_IN_FLIGHT`] frames of this source are in the dataflow at once, and the source
/// hears which of its frames have settled ([`FrameSource::settled`]) as soon as
/// [`Progress::watch`] sees them settle.
///
/// The operator runs only when there is something to do: a frame is due ([`Pacing`]),
/// the source woke it ([`FrameSource::wake_with`]), or frames settled. Only a source that
/// cannot wake it, or whose time follows the clock ([`Sequencing::Clock`],
/// [`Sequencing::AssignedClock`]), is polled while idle.
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
            let activator = scope.activator_for(Rc::clone(&info.address));
            let mut src = src;
            // Whether an idle source must be asked again on a timer: it cannot wake this
            // operator, or its time must follow the clock while idle.
            let poll_when_idle = src.as_mut().is_some_and(|s| {
                let sync = scope.worker().sync_activator_for(info.address.to_vec());
                let wakes = s.wake_with(Waker::from(Arc::new(WakeOperator(sync))));
                !wakes
                    || matches!(
                        s.sequencing(),
                        Sequencing::Clock | Sequencing::AssignedClock
                    )
            });
            if let (Some(p), Some(_)) = (&progress, &src) {
                p.sources.borrow_mut().push(activator.clone());
            }
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
            // the due time a timer is already set for, so that activations before it (a
            // frame settled) do not set more
            let mut alarm: Option<Instant> = None;
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
                    if let Some(p) = progress
                        .as_ref()
                        .filter(|_| in_flight.len() >= MAX_IN_FLIGHT)
                    {
                        if !p.watched.get() {
                            activator.activate_after(IDLE_RECHECK);
                        }
                        return;
                    }
                    if let Some(after) = pacing.due(numbering.yielded, index) {
                        let due = start + after;
                        let now = Instant::now();
                        if due > now {
                            c.downgrade(&numbering.idle(&mut **s));
                            if alarm != Some(due) {
                                activator.activate_after(due - now);
                                alarm = Some(due);
                            }
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
                            c.downgrade(&numbering.idle(&mut **s));
                            if poll_when_idle {
                                activator.activate_after(IDLE_RECHECK);
                            }
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{channel, Receiver, TryRecvError};
    use std::sync::{Condvar, Mutex};
    use timely::dataflow::operators::Inspect;

    #[test]
    fn shared_pacing_deals_the_rate_in_turn() {
        let shared = Pacing::Shared {
            rate: 2.0,
            readers: 2,
        };
        let due = |n, i| shared.due(n, i).unwrap().as_secs_f64();
        assert_eq!(
            [due(0, 0), due(0, 1), due(1, 0), due(1, 1)],
            [0.0, 0.5, 1.0, 1.5]
        );
        assert_eq!(
            Pacing::rate(2.0).due(3, 1),
            Some(Duration::from_secs_f64(1.5))
        );
        assert_eq!(Pacing::Unpaced.due(3, 0), None);
    }

    /// What the pushing thread and the test see of a [`Pushed`] source.
    #[derive(Default)]
    struct Shared {
        waker: Mutex<Option<Waker>>,
        settled: Mutex<u64>,
        settled_moved: Condvar,
        idle_pulls: AtomicUsize,
    }

    impl Shared {
        fn wake(&self) {
            if let Some(w) = self.waker.lock().unwrap().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// A push source fed by another thread, which wakes the dataflow after each frame.
    struct Pushed {
        rx: Receiver<Frame>,
        shared: Arc<Shared>,
    }

    impl FrameSource for Pushed {
        fn pull(&mut self) -> Pull {
            match self.rx.try_recv() {
                Ok(f) => Pull::Frame(f),
                Err(TryRecvError::Empty) => {
                    self.shared.idle_pulls.fetch_add(1, Ordering::Relaxed);
                    Pull::Idle
                }
                Err(TryRecvError::Disconnected) => Pull::Done,
            }
        }

        fn settled(&mut self, n: u64) {
            *self.shared.settled.lock().unwrap() = n;
            self.shared.settled_moved.notify_all();
        }

        fn wake_with(&mut self, waker: Waker) -> bool {
            *self.shared.waker.lock().unwrap() = Some(waker);
            true
        }
    }

    /// A source that wakes its worker is asked again only when woken or when its frames
    /// settle: the worker sleeps in between (no timer), and still hears every frame, every
    /// settlement (the pushing thread ends the input only after all three settled) and
    /// the end of the input.
    #[test]
    fn a_waking_source_is_not_polled_and_hears_its_frames_settle() {
        const FRAMES: u64 = 3;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = channel();
        let source = Pushed {
            rx,
            shared: Arc::clone(&shared),
        };
        let pusher = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for _ in 0..FRAMES {
                    // idle a while first, so that a source polled on a timer would show it
                    std::thread::sleep(Duration::from_millis(20));
                    tx.send(Frame::default()).unwrap();
                    shared.wake();
                }
                let mut settled = shared.settled.lock().unwrap();
                while *settled < FRAMES {
                    settled = shared.settled_moved.wait(settled).unwrap();
                }
                drop(settled);
                drop(tx);
                shared.wake();
            })
        };
        // execute_directly wants a Sync closure, and a receiver is not
        let source = Mutex::new(Some(Box::new(source) as Box<dyn FrameSource>));
        let (done, finished) = channel();
        std::thread::spawn(move || {
            let seqs = timely::execute_directly(move |worker| {
                let progress = Progress::new();
                let seen = Rc::new(RefCell::new(Vec::new()));
                let probe = worker.dataflow::<Time, _, _>(|scope| {
                    let sink = Rc::clone(&seen);
                    let frames = frame_source(
                        scope,
                        source.lock().unwrap().take(),
                        Pacing::Unpaced,
                        Arc::new(Stats::default()),
                        Some(progress.clone()),
                    )
                    .inspect(move |f| sink.borrow_mut().push(f.seq));
                    progress.watch(frames);
                    progress.probe().clone()
                });
                while !probe.done() {
                    worker.step_or_park(None);
                }
                progress.finish();
                let seqs = seen.borrow().clone();
                seqs
            });
            let _ = done.send(seqs);
        });
        let seqs = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the dataflow never finished: a wake-up was lost");
        pusher.join().unwrap();
        assert_eq!(seqs, (0..FRAMES).collect::<Vec<_>>());
        assert_eq!(*shared.settled.lock().unwrap(), FRAMES);
        // Woken once per frame and once per frontier move; a timer would have asked about
        // every millisecond of the 60 ms idle.
        let idle = shared.idle_pulls.load(Ordering::Relaxed);
        assert!(
            idle <= 4 * FRAMES as usize + 2,
            "asked {idle} times while idle"
        );
    }

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
        let (_queue, mut unused) = crate::sources::http::IngestQueue::new(1);
        assert!(a.idle(&mut unused) >= t2 + 3);
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

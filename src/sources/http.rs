//! The HTTP ingest queue as a source: handlers (in `server/`) number decoded frames and
//! queue them with [`IngestQueue::enqueue`]; worker 0 pulls them through [`IngestSource`].
//! Nothing here waits: a full or closed queue refuses at once, and the dataflow is woken
//! by a doorbell rather than by polling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use super::{FrameSource, Pull, Sequencing};
use crate::types::{Frame, Seq};

/// The sending side of the ingest queue, shared by all handlers. Dropped without
/// [`IngestQueue::close`], it closes the queue all the same.
pub struct IngestQueue {
    capacity: usize,
    /// Frames queued and not yet pulled by the dataflow (the channel does not say).
    queued: Arc<AtomicUsize>,
    /// Numbering and sending under one lock, so that frames enter the queue in seq order
    /// (the source requires increasing seqs) and a refused frame uses up no seq.
    queue: Arc<Mutex<Option<Queue>>>,
    /// Wakes worker 0 for each frame queued and when the queue closes.
    doorbell: Arc<Doorbell>,
}

struct Queue {
    tx: SyncSender<Frame>,
    /// The least seq the next frame may get.
    next: Seq,
    /// `Some((index, points))` when this is ingest point `index` of `points` in a cluster
    /// and seqs come from the clock ([`Sequencing::AssignedClock`]); `None`: 0, 1, 2, ...
    clocked: Option<(u64, u64)>,
}

impl Queue {
    /// The seq a frame queued now gets (without using it up).
    fn next_seq(&self) -> Seq {
        match self.clocked {
            None => self.next,
            Some((index, points)) => {
                let slot = crate::clock::own_slot(crate::clock::now_us(), index, points);
                slot.max(self.next)
            }
        }
    }

    /// How far seqs move on after `seq` is used.
    fn step(&self) -> Seq {
        self.clocked.map_or(1, |(_, points)| points)
    }
}

/// The dataflow's waker, once worker 0 has built its source; rung from the handlers.
#[derive(Default)]
struct Doorbell(Mutex<Option<Waker>>);

impl Doorbell {
    fn ring(&self) {
        if let Some(w) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }

    fn hang(&self, waker: Waker) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
    }
}

/// The dataflow side of the ingest queue: worker 0 pulls decoded frames from it.
pub struct IngestSource {
    rx: Receiver<Frame>,
    queued: Arc<AtomicUsize>,
    doorbell: Arc<Doorbell>,
    /// The sender's numbering, for [`FrameSource::idle_floor`] (clocked queues only).
    floor: Option<Arc<Mutex<Option<Queue>>>>,
}

impl FrameSource for IngestSource {
    fn pull(&mut self) -> Pull {
        match self.rx.try_recv() {
            Ok(frame) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Pull::Frame(frame)
            }
            Err(TryRecvError::Empty) => Pull::Idle,
            // Only once the queue is empty: every accepted frame is scored.
            Err(TryRecvError::Disconnected) => Pull::Done,
        }
    }

    fn sequencing(&self) -> Sequencing {
        if self.floor.is_some() {
            Sequencing::AssignedClock
        } else {
            Sequencing::Assigned
        }
    }

    /// Reserves the clock's present slot under the sender's lock, so that no frame can be
    /// numbered below it later; but only when no frame is queued, since a queued frame has
    /// a smaller seq and has not been pulled yet (senders count a frame under the lock
    /// before it enters the channel).
    fn idle_floor(&mut self) -> Option<Seq> {
        let mut queue = self
            .floor
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let q = queue.as_mut()?;
        if self.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        q.next = q.next_seq();
        Some(q.next)
    }

    /// Frames queued before this are pulled at the source's first activation, which
    /// every operator gets; later ones ring.
    fn wake_with(&mut self, waker: Waker) -> bool {
        self.doorbell.hang(waker);
        true
    }
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue holds `capacity` frames not yet pulled: try again later.
    Full,
    /// The queue was closed (shutting down): no frame will be taken any more.
    Closed,
}

impl IngestQueue {
    /// A queue of at most `capacity` frames (at least one) and the source that drains it.
    pub fn new(capacity: usize) -> (IngestQueue, IngestSource) {
        Self::with_numbering(capacity, None)
    }

    /// As [`IngestQueue::new`], for ingest point `index` of `points` in a cluster: seqs are
    /// clock slots of this point's own ([`Sequencing::AssignedClock`]), so that frames
    /// taken by several processes fall into one order without talking to each other.
    pub fn clocked(capacity: usize, index: usize, points: usize) -> (IngestQueue, IngestSource) {
        let points = points.max(1) as u64;
        Self::with_numbering(capacity, Some((index as u64 % points, points)))
    }

    fn with_numbering(capacity: usize, clocked: Option<(u64, u64)>) -> (IngestQueue, IngestSource) {
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel(capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let doorbell = Arc::new(Doorbell::default());
        let queue = Arc::new(Mutex::new(Some(Queue {
            tx,
            next: 0,
            clocked,
        })));
        let source = IngestSource {
            rx,
            queued: Arc::clone(&queued),
            doorbell: Arc::clone(&doorbell),
            floor: clocked.map(|_| Arc::clone(&queue)),
        };
        let queue = IngestQueue {
            capacity,
            queued,
            queue,
            doorbell,
        };
        (queue, source)
    }

    /// Closes the queue: later frames are refused ([`Refusal::Closed`]); the dataflow
    /// finishes what was queued and then sees the end of its input.
    pub fn close(&self) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if queue.is_some() {
            // Rung once the sender is gone, so that the source, woken, sees the end.
            drop(queue);
            self.doorbell.ring();
        }
    }

    /// The most frames the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frames queued and not yet pulled by the dataflow.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether a frame queued now would be refused as [`Refusal::Full`] (a hint: only
    /// [`IngestQueue::enqueue`] says for certain).
    pub fn is_full(&self) -> bool {
        self.queued() >= self.capacity
    }

    /// Numbers `frame`, queues it and wakes the dataflow; `Err` says why it was refused.
    pub fn enqueue(&self, frame: Frame) -> Result<Seq, Refusal> {
        let seq = self.send(frame)?;
        self.doorbell.ring();
        Ok(seq)
    }

    fn send(&self, mut frame: Frame) -> Result<Seq, Refusal> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = queue.as_mut() else {
            return Err(Refusal::Closed);
        };
        let seq = q.next_seq();
        frame.seq = seq;
        // Counted before sending, so the source's decrement can never come first, and
        // under the lock, so the source's idle floor never passes a queued frame.
        self.queued.fetch_add(1, Ordering::AcqRel);
        match q.tx.try_send(frame) {
            Ok(()) => {
                q.next = seq + q.step();
                Ok(seq)
            }
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => Refusal::Full,
                    TrySendError::Disconnected(_) => Refusal::Closed,
                })
            }
        }
    }
}

impl Drop for IngestQueue {
    /// Dropped without [`IngestQueue::close`] (the server never became ready), the queue
    /// still ends, and the source must hear of it.
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FrameMeta;

    fn frame() -> Frame {
        Frame {
            seq: 0,
            meta: FrameMeta::default(),
            values: vec![0.0],
        }
    }

    /// Ingest point 1 of 2: seqs are clock slots ≡ 1 (mod 2), strictly increasing, and an
    /// idle floor never passes a frame that is queued but not yet pulled.
    #[test]
    fn clocked_seqs_are_own_slots_and_the_idle_floor_waits_for_queued_frames() {
        let (queue, mut source) = IngestQueue::clocked(8, 1, 2);
        assert_eq!(source.sequencing(), Sequencing::AssignedClock);
        let before = crate::clock::now_us();
        let a = queue.enqueue(frame()).unwrap();
        let b = queue.enqueue(frame()).unwrap();
        assert!(a >= before && a % 2 == 1 && b > a && b % 2 == 1, "{a} {b}");
        assert_eq!(source.idle_floor(), None, "two frames are still queued");
        for expected in [a, b] {
            let Pull::Frame(f) = source.pull() else {
                panic!("a queued frame")
            };
            assert_eq!(f.seq, expected);
        }
        let floor = source
            .idle_floor()
            .expect("nothing queued: the clock moves on");
        assert!(floor > b && floor % 2 == 1);
        let c = queue.enqueue(frame()).unwrap();
        assert!(c >= floor, "no frame is numbered below a floor given out");
    }

    #[test]
    fn an_unclocked_queue_numbers_densely_and_promises_nothing() {
        let (queue, mut source) = IngestQueue::new(4);
        assert_eq!(source.sequencing(), Sequencing::Assigned);
        assert_eq!(queue.enqueue(frame()), Ok(0));
        assert_eq!(queue.enqueue(frame()), Ok(1));
        assert_eq!(source.idle_floor(), None);
    }
}

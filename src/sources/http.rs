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
    queue: Mutex<Option<Queue>>,
    /// Wakes worker 0 for each frame queued and when the queue closes.
    doorbell: Arc<Doorbell>,
}

struct Queue {
    tx: SyncSender<Frame>,
    next: Seq,
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
        Sequencing::Assigned
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
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel(capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let doorbell = Arc::new(Doorbell::default());
        let queue = IngestQueue {
            capacity,
            queued: Arc::clone(&queued),
            queue: Mutex::new(Some(Queue { tx, next: 0 })),
            doorbell: Arc::clone(&doorbell),
        };
        let source = IngestSource {
            rx,
            queued,
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
        frame.seq = q.next;
        // Counted before sending, so the source's decrement can never come first.
        self.queued.fetch_add(1, Ordering::Relaxed);
        match q.tx.try_send(frame) {
            Ok(()) => {
                q.next += 1;
                Ok(q.next - 1)
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

//! Which Kafka offsets may be committed: the book-keeping behind at-least-once.
//!
//! A source records every message it takes, in pull order: the frames it yielded and
//! the messages it skipped (poison). The dataflow says how many of the yielded frames
//! have settled (their verdicts are everywhere and their alerts were handed to the
//! sinks); a skipped message settles as soon as everything taken before it has. A
//! partition may then be committed up to its last settled message + 1.
//!
//! Sinks that write to Kafka from this process hand their messages to a producer, which
//! confirms them later; each settlement is therefore stamped with a *ticket*, the number
//! of messages the producer had been given by then, and becomes committable only once the
//! producer has confirmed every message up to that ticket
//! ([`crate::sinks::kafka::Outbox`]). A crash between the hand-over and the confirmation
//! then redelivers the frames instead of losing their alerts.

use std::collections::{BTreeMap, VecDeque};

/// One message taken from a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    partition: i32,
    offset: i64,
    /// A yielded frame (settles when the dataflow says so), or a skipped message.
    frame: bool,
}

/// The messages taken and not yet settled, and the offsets that may be committed.
#[derive(Debug, Default)]
pub struct OffsetBook {
    /// Unsettled messages, in pull order.
    queue: VecDeque<Entry>,
    /// Frames the dataflow has said settled (the largest `n` seen).
    settled_frames: u64,
    /// Frames popped from the queue so far.
    popped_frames: u64,
    /// Per partition, the offset after the last settled message (only ever grows).
    settled: BTreeMap<i32, i64>,
    /// Settlements waiting for the producer: (ticket, positions at that point).
    waiting: VecDeque<(u64, BTreeMap<i32, i64>)>,
    /// Per partition, the offset after the last message whose settlement is durable.
    durable: BTreeMap<i32, i64>,
    /// Per partition, what was last sent to the broker (or was committed at start).
    sent: BTreeMap<i32, i64>,
    /// Per partition, what was committed at start.
    floor: BTreeMap<i32, i64>,
}

impl OffsetBook {
    /// An empty book for partitions whose committed offsets at start are `committed`:
    /// nothing at or below them is committed again (a source that re-reads messages
    /// before them must not move the group's offset back).
    pub fn new(committed: impl IntoIterator<Item = (i32, i64)>) -> OffsetBook {
        let floor: BTreeMap<i32, i64> = committed.into_iter().collect();
        OffsetBook {
            sent: floor.clone(),
            floor,
            ..OffsetBook::default()
        }
    }

    /// A frame was yielded from `partition` at `offset`.
    pub fn frame(&mut self, partition: i32, offset: i64) {
        self.queue.push_back(Entry {
            partition,
            offset,
            frame: true,
        });
    }

    /// A message at `offset` was skipped (it does not decode). Returns whether
    /// positions moved (it settles at once if nothing before it is unsettled).
    pub fn skipped(&mut self, partition: i32, offset: i64) -> bool {
        self.queue.push_back(Entry {
            partition,
            offset,
            frame: false,
        });
        self.advance()
    }

    /// The first `n` yielded frames have settled. Returns whether positions moved.
    pub fn settle(&mut self, n: u64) -> bool {
        self.settled_frames = self.settled_frames.max(n);
        self.advance()
    }

    fn advance(&mut self) -> bool {
        let mut moved = false;
        while let Some(e) = self.queue.front().copied() {
            if e.frame {
                if self.popped_frames >= self.settled_frames {
                    break;
                }
                self.popped_frames += 1;
            }
            self.queue.pop_front();
            let next = self.settled.entry(e.partition).or_insert(i64::MIN);
            if e.offset + 1 > *next {
                *next = e.offset + 1;
                moved = true;
            }
        }
        moved
    }

    /// Stamps the current positions with `ticket`: they become durable once the
    /// producer has confirmed everything up to it ([`OffsetBook::confirmed`]).
    pub fn checkpoint(&mut self, ticket: u64) {
        match self.waiting.back_mut() {
            Some((t, positions)) if *t == ticket => positions.clone_from(&self.settled),
            _ => self.waiting.push_back((ticket, self.settled.clone())),
        }
    }

    /// The producer has confirmed every message up to `watermark`.
    pub fn confirmed(&mut self, watermark: u64) {
        while self.waiting.front().is_some_and(|(t, _)| *t <= watermark) {
            let (_, positions) = self.waiting.pop_front().expect("checked");
            self.durable = positions;
        }
    }

    /// Offsets to commit now: partitions whose durable position passed what was sent.
    pub fn to_commit(&self) -> Vec<(i32, i64)> {
        self.durable
            .iter()
            .filter(|(p, &o)| self.sent.get(p).is_none_or(|&s| o > s))
            .map(|(&p, &o)| (p, o))
            .collect()
    }

    /// Every durable position past what was committed at start, sent or not: for a last,
    /// synchronous commit that must not depend on earlier asynchronous ones.
    pub fn to_commit_all(&self) -> Vec<(i32, i64)> {
        self.durable
            .iter()
            .filter(|(p, &o)| self.floor.get(p).is_none_or(|&f| o > f))
            .map(|(&p, &o)| (p, o))
            .collect()
    }

    /// `offsets` were sent to the broker.
    pub fn sent(&mut self, offsets: &[(i32, i64)]) {
        for &(p, o) in offsets {
            self.sent.insert(p, o);
        }
    }

    /// A commit of `offset` on `partition` failed: send it again next time unless a
    /// later one went out meanwhile.
    pub fn failed(&mut self, partition: i32, offset: i64) {
        if self.sent.get(&partition) == Some(&offset) {
            self.sent.insert(partition, i64::MIN);
        }
    }

    /// Whether every message taken has settled and its settlement is durable.
    pub fn all_durable(&self) -> bool {
        self.queue.is_empty() && self.waiting.is_empty()
    }

    /// Messages taken and not yet settled.
    pub fn unsettled(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settles `n` frames with everything confirmed at once.
    fn settle_now(b: &mut OffsetBook, n: u64) -> Vec<(i32, i64)> {
        b.settle(n);
        b.checkpoint(0);
        b.confirmed(0);
        let c = b.to_commit();
        b.sent(&c);
        c
    }

    #[test]
    fn commits_each_partition_up_to_its_last_settled_message() {
        let mut b = OffsetBook::new([]);
        for (p, o) in [(0, 10), (1, 5), (0, 11), (1, 6), (0, 12)] {
            b.frame(p, o);
        }
        assert_eq!(settle_now(&mut b, 0), vec![]);
        assert_eq!(settle_now(&mut b, 1), vec![(0, 11)]);
        assert_eq!(settle_now(&mut b, 3), vec![(0, 12), (1, 6)]);
        // nothing new: nothing to send again
        assert_eq!(settle_now(&mut b, 3), vec![]);
        assert_eq!(settle_now(&mut b, 5), vec![(0, 13), (1, 7)]);
        assert!(b.all_durable());
    }

    #[test]
    fn a_skipped_message_settles_once_everything_before_it_has() {
        let mut b = OffsetBook::new([]);
        // poison first: settles at once
        assert!(b.skipped(2, 0));
        b.frame(2, 1);
        b.skipped(2, 2);
        b.skipped(3, 9);
        b.frame(2, 3);
        assert_eq!(settle_now(&mut b, 0), vec![(2, 1)]);
        // frame 1 settles, and with it the two poison messages after it
        assert_eq!(settle_now(&mut b, 1), vec![(2, 3), (3, 10)]);
        assert_eq!(b.unsettled(), 1);
        assert_eq!(settle_now(&mut b, 2), vec![(2, 4)]);
    }

    #[test]
    fn settlements_wait_for_the_producer() {
        let mut b = OffsetBook::new([]);
        b.frame(0, 0);
        b.frame(0, 1);
        b.settle(1);
        b.checkpoint(5); // the alert of frame 0 was message 5 of the producer
        b.settle(2);
        b.checkpoint(7);
        b.confirmed(4);
        assert_eq!(b.to_commit(), vec![]);
        assert!(!b.all_durable());
        b.confirmed(6);
        assert_eq!(b.to_commit(), vec![(0, 1)]);
        b.confirmed(7);
        assert_eq!(b.to_commit(), vec![(0, 2)]);
        assert!(b.all_durable());
    }

    #[test]
    fn messages_read_again_never_move_the_committed_offset_back() {
        // committed 100 at start; the source re-reads from 96 to refill the window
        let mut b = OffsetBook::new([(0, 100)]);
        for o in 96..103 {
            b.frame(0, o);
        }
        assert_eq!(settle_now(&mut b, 4), vec![]);
        assert_eq!(settle_now(&mut b, 5), vec![(0, 101)]);
        assert_eq!(b.to_commit_all(), vec![(0, 101)]);
    }

    #[test]
    fn a_failed_commit_is_sent_again() {
        let mut b = OffsetBook::new([]);
        b.frame(1, 0);
        assert_eq!(settle_now(&mut b, 1), vec![(1, 1)]);
        b.failed(1, 1);
        assert_eq!(b.to_commit(), vec![(1, 1)]);
        b.sent(&[(1, 1)]);
        // a failure of an older commit does not undo a newer one
        b.frame(1, 1);
        assert_eq!(settle_now(&mut b, 2), vec![(1, 2)]);
        b.failed(1, 1);
        assert_eq!(b.to_commit(), vec![]);
    }
}

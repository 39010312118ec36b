//! Windows of event time (`--window 30s`): per entity, a window covers the frames whose
//! timestamps fall in `[end - span, end)`, windows end every stride on a grid aligned to
//! the Unix epoch (`--stride 10s` ends them at :00, :10, :20 ... UTC), and a window is
//! scored once its entity's watermark (the latest timestamp seen minus the lateness
//! bound) has passed its end. A frame older than the watermark is late: counted, logged
//! and left out of every window.
//!
//! The watermark is the entity's, not the stream's: an entity's frames all meet on the
//! worker that owns it, in frame order, so its watermark is the same for any number of
//! workers and processes, and one entity whose clock runs ahead never makes another's
//! frames late.
//!
//! Detectors score fixed-length arrays, so a window is resampled to the detector's
//! window length W: bucket `i` of W ends at `end - span + (i + 1) * span / W` and holds
//! the value of the latest frame before that end (sample and hold, carried from before
//! the window when a bucket has no frame of its own; the window's first frame where the
//! entity has none before).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{Parts, Stream, Time};
use crate::stats::Stats;
use crate::types::{EntityKey, Seq, Slice, Timed, Window};

/// The event-time windows a run asks for (`--window 30s --stride 10s --lateness 5s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTime {
    /// What a window spans, in ms.
    pub span_ms: i64,
    /// Between the ends of consecutive windows, in ms; ends are its multiples since the
    /// Unix epoch.
    pub stride_ms: i64,
    /// How far behind its entity's latest timestamp a frame may be and still be
    /// windowed, in ms.
    pub lateness_ms: i64,
}

/// Event-time windows as a detector takes them: [`EventTime`] resampled to `buckets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventWindowConfig {
    /// The windows' span, stride and lateness bound.
    pub time: EventTime,
    /// Values per feature in a window: the detector's window length (W).
    pub buckets: usize,
}

impl EventWindowConfig {
    /// The first window end after `ts` on the stride's grid.
    fn end_after(&self, ts: i64) -> i64 {
        let s = self.time.stride_ms;
        ts.div_euclid(s).saturating_add(1).saturating_mul(s)
    }

    /// The end of the first window whose last stride holds `ts` (for windows shorter
    /// than their stride, the window itself); `None` for a frame in a gap between
    /// windows. A window is scored only when its last stride holds a frame: its verdict
    /// is that frame's, and no two windows share one.
    fn first_end_holding(&self, ts: i64) -> Option<i64> {
        let end = self.end_after(ts);
        let tail = self.time.stride_ms.min(self.time.span_ms);
        (ts >= end - tail).then_some(end)
    }
}

/// One entity's event-time state: its frames still needed, sorted by (timestamp, seq),
/// its latest timestamp, and the end of the next window to score.
#[derive(Default)]
struct Lane {
    frames: VecDeque<(i64, Slice)>,
    max_ts: Option<i64>,
    next_end: Option<i64>,
    /// The end of the last window scored: no frame before it is still open.
    emitted: Option<i64>,
}

impl Lane {
    /// The entity's watermark: its latest timestamp minus the lateness bound.
    fn watermark(&self, cfg: &EventWindowConfig) -> Option<i64> {
        self.max_ts.map(|m| m.saturating_sub(cfg.time.lateness_ms))
    }

    /// Takes a frame stamped `ts`, or refuses it as late with the watermark it missed.
    /// (A frame at or after the watermark can never fall in a window already scored: a
    /// window is scored only once the watermark has reached its end.)
    fn accept(&mut self, ts: i64, slice: Slice, cfg: &EventWindowConfig) -> Result<(), i64> {
        if let Some(w) = self.watermark(cfg).filter(|&w| ts < w) {
            return Err(w);
        }
        let at = self
            .frames
            .partition_point(|(t, s)| (*t, s.seq) < (ts, slice.seq));
        self.frames.insert(at, (ts, slice));
        self.max_ts = Some(self.max_ts.map_or(ts, |m| m.max(ts)));
        if let Some(end) = cfg.first_end_holding(ts) {
            self.next_end = Some(self.next_end.map_or(end, |n| n.min(end)));
        }
        Ok(())
    }

    /// Scores (hands to `out`) every window ending at or before `watermark`, oldest
    /// first, and forgets the frames no later window needs.
    fn close_until(&mut self, watermark: i64, cfg: &EventWindowConfig, out: &mut Vec<Window>) {
        let (span, stride) = (cfg.time.span_ms, cfg.time.stride_ms);
        while let Some(end) = self.next_end.filter(|&e| e <= watermark) {
            out.push(self.window_ending(end, cfg));
            self.emitted = Some(end);
            let after = self.frames.partition_point(|(t, _)| *t < end);
            self.next_end = self
                .frames
                .iter()
                .skip(after)
                .find_map(|(t, _)| cfg.first_end_holding(*t));
            // the latest frame before the next window's start stays: its value carries
            // into that window's first buckets
            let start = end.saturating_add(stride).saturating_sub(span);
            while self.frames.len() >= 2 && self.frames[1].0 < start {
                self.frames.pop_front();
            }
        }
    }

    /// The smallest seq of a frame that may yet carry a window's verdict (one at or
    /// after the last window scored); `None` when there is none.
    fn min_open_seq(&self) -> Option<Seq> {
        let from = self
            .emitted
            .map_or(0, |e| self.frames.partition_point(|(t, _)| *t < e));
        self.frames.iter().skip(from).map(|(_, s)| s.seq).min()
    }

    /// The window ending at `end`, resampled to `cfg.buckets` values per feature; its
    /// verdict is its latest frame's.
    fn window_ending(&self, end: i64, cfg: &EventWindowConfig) -> Window {
        let (span, w) = (cfg.time.span_ms, cfg.buckets as i64);
        let start = end.saturating_sub(span);
        let last = self.frames.partition_point(|(t, _)| *t < end);
        let (_, at) = &self.frames[last.checked_sub(1).expect("a scored window holds a frame")];
        let width = at.values.len();
        let mut data = Vec::with_capacity(cfg.buckets * width);
        let mut before = 0;
        for i in 1..=w {
            let bucket_end = start.saturating_add(i.saturating_mul(span) / w);
            while before < self.frames.len() && self.frames[before].0 < bucket_end {
                before += 1;
            }
            // the latest frame before the bucket's end, else (no frame of the entity
            // yet) the window's first
            let (_, s) = &self.frames[before.saturating_sub(1)];
            assert_eq!(
                s.values.len(),
                width,
                "slices of one partition differ in width"
            );
            data.extend_from_slice(&s.values);
        }
        Window {
            seq: at.seq,
            part: at.part,
            received_us: at.received_us,
            entity: at.entity,
            data: data.into(),
        }
    }
}

/// Logs a kind of event at most once a second, with how many went unlogged between:
/// a burst of late frames must not flood the log. (Written here: `tracing` has no rate
/// limit of its own, and this is a dozen lines.)
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    quiet: u64,
}

impl Throttle {
    /// `Some(events not logged since the last log)` when this one may be logged.
    fn pass(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            self.quiet += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.quiet))
    }
}

/// An entity's lane and the capability its open frames hold: a window's verdict is
/// its latest frame's, so the frame's time is held until its window is scored.
#[derive(Default)]
struct Held {
    lane: Lane,
    cap: Option<Capability<Time>>,
}

/// Windows of event time.
pub trait EventWindowOps<'s> {
    /// What comes out: windows, in the same shape as the input.
    type Output;

    /// Windows each entity's slices by their timestamps (see the [module](self)), and
    /// emits each window, stamped with the seq of its latest frame, once the entity's
    /// watermark has passed its end, or when the input ends. Late frames and frames
    /// without a timestamp are counted in `stats`, logged (at most once a second each)
    /// and left out.
    ///
    /// # Examples
    ///
    /// Windows of 2 s ending every 2 s, resampled to 2 values; the frame at 1.5 s comes
    /// after the one at 3.5 s but within the 2 s lateness bound, the one at 0.5 s after
    /// the watermark passed 2 s:
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::ops::{EventTime, EventWindowConfig, EventWindowOps};
    /// use tidewatch::stats::Stats;
    /// use tidewatch::types::{Slice, Timed};
    ///
    /// let at = [(0, 1_000), (1, 3_500), (2, 1_500), (3, 6_000), (4, 500)];
    /// let timed: Vec<Timed> = at
    ///     .iter()
    ///     .map(|&(seq, ms)| Timed {
    ///         event_ms: Some(ms),
    ///         entity: None,
    ///         slice: Slice { seq, part: 0, received_us: 0, entity: 0, values: vec![seq as f32] },
    ///     })
    ///     .collect();
    /// let time = EventTime { span_ms: 2_000, stride_ms: 2_000, lateness_ms: 2_000 };
    /// let stats = Arc::new(Stats::default());
    /// let counted = Arc::clone(&stats);
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let out = Arc::clone(&seen);
    /// timely::example(move |scope| {
    ///     timed
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .event_window(EventWindowConfig { time, buckets: 2 }, counted)
    ///         .inspect(move |w| out.lock().unwrap().push((w.seq, w.data.to_flat().to_vec())));
    /// });
    /// let mut windows = seen.lock().unwrap().clone();
    /// windows.sort_by_key(|w| w.0);
    /// // [0, 2 s): frames 0 (1.0 s) and 2 (1.5 s), scored as frame 2's verdict;
    /// // [2, 4 s): frame 1 (3.5 s), its first bucket carrying frame 2's value;
    /// // [6, 8 s): frame 3 (6.0 s) in both buckets, scored when the input ends
    /// assert_eq!(
    ///     windows,
    ///     vec![(1, vec![2.0, 1.0]), (2, vec![0.0, 2.0]), (3, vec![3.0, 3.0])]
    /// );
    /// assert_eq!(stats.snapshot().frames_late, 1);
    /// ```
    fn event_window(self, cfg: EventWindowConfig, stats: Arc<Stats>) -> Self::Output;
}

impl<'s> EventWindowOps<'s> for Parts<'s, Timed> {
    type Output = Parts<'s, Window>;

    fn event_window(self, cfg: EventWindowConfig, stats: Arc<Stats>) -> Parts<'s, Window> {
        self.map(|s| s.event_window(cfg, stats))
    }
}

impl<'s> EventWindowOps<'s> for Stream<'s, Timed> {
    type Output = Stream<'s, Window>;

    fn event_window(self, cfg: EventWindowConfig, stats: Arc<Stats>) -> Stream<'s, Window> {
        assert!(
            cfg.buckets > 0 && cfg.time.span_ms > 0 && cfg.time.stride_ms > 0,
            "event-time windows need a span, a stride and a bucket"
        );
        self.unary_frontier(Pipeline, "EventWindow", move |_cap, _info| {
            // slices that arrived but whose time the frontier has not passed yet: an
            // entity's frames are taken in frame order, as count windows take them
            let mut pending: BTreeMap<Seq, (Capability<Time>, Timed)> = BTreeMap::new();
            let mut lanes: HashMap<EntityKey, Held> = HashMap::new();
            let (mut late_log, mut untimed_log) = (Throttle::default(), Throttle::default());
            let mut ready = Vec::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(cap) = cap.retain_least(output.output_index()) else {
                        return;
                    };
                    for batch in data {
                        for timed in batch.drain(..) {
                            pending.insert(timed.slice.seq, (cap.clone(), timed));
                        }
                    }
                });
                let mut closing: Vec<EntityKey> = Vec::new();
                while let Some(entry) = pending.first_entry() {
                    let seq = *entry.key();
                    if frontier.less_equal(&seq) {
                        break;
                    }
                    let (cap, timed) = entry.remove();
                    let Some(ts) = timed.event_ms else {
                        stats.frame_untimed();
                        if let Some(quiet) = untimed_log.pass() {
                            tracing::warn!(
                                seq,
                                entity = timed.entity.as_deref().unwrap_or(""),
                                unlogged_since = quiet,
                                "a frame without a timestamp: event-time windows leave it out"
                            );
                        }
                        continue;
                    };
                    let key = timed.slice.entity;
                    let held = lanes.entry(key).or_default();
                    if let Err(watermark) = held.lane.accept(ts, timed.slice, &cfg) {
                        stats.frame_late();
                        if let Some(quiet) = late_log.pass() {
                            tracing::warn!(
                                seq,
                                entity = timed.entity.as_deref().unwrap_or(""),
                                timestamp_ms = ts,
                                watermark_ms = watermark,
                                unlogged_since = quiet,
                                "a late frame: older than its entity's watermark, left out of every window"
                            );
                        }
                        continue;
                    }
                    if held.cap.is_none() {
                        held.cap = Some(cap);
                    }
                    closing.push(key);
                }
                let end_of_input = frontier.is_empty();
                let keys: Vec<EntityKey> = if end_of_input {
                    lanes.keys().copied().collect()
                } else {
                    closing.sort_unstable();
                    closing.dedup();
                    closing
                };
                for key in keys {
                    let Some(held) = lanes.get_mut(&key) else {
                        continue;
                    };
                    let watermark = match end_of_input {
                        true => i64::MAX,
                        false => held.lane.watermark(&cfg).unwrap_or(i64::MIN),
                    };
                    held.lane.close_until(watermark, &cfg, &mut ready);
                    if !ready.is_empty() {
                        let cap = held.cap.as_mut().expect("an open frame holds its time");
                        for window in ready.drain(..) {
                            output.session(&cap.delayed(&window.seq)).give(window);
                        }
                        match held.lane.min_open_seq() {
                            Some(seq) => cap.downgrade(&seq),
                            None => held.cap = None,
                        }
                    }
                }
                if end_of_input {
                    // every window is scored: no frame may hold its time any longer
                    lanes.clear();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(span_ms: i64, stride_ms: i64, lateness_ms: i64, buckets: usize) -> EventWindowConfig {
        EventWindowConfig {
            time: EventTime {
                span_ms,
                stride_ms,
                lateness_ms,
            },
            buckets,
        }
    }

    fn slice(seq: Seq) -> Slice {
        Slice {
            seq,
            part: 0,
            received_us: 0,
            entity: 7,
            values: vec![seq as f32],
        }
    }

    /// Windows scored at one step: `(seq of the verdict, values)`.
    type Step = Vec<(Seq, Vec<f32>)>;

    /// Feeds `(seq, ts)` in order; `(seq of each window's verdict, its values)` of the
    /// windows scored after each frame and at the end, and the late frames' seqs.
    fn run(c: &EventWindowConfig, frames: &[(Seq, i64)]) -> (Vec<Step>, Vec<Seq>) {
        let mut lane = Lane::default();
        let (mut steps, mut late) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        for &(seq, ts) in frames {
            match lane.accept(ts, slice(seq), c) {
                Ok(()) => lane.close_until(lane.watermark(c).unwrap(), c, &mut out),
                Err(_) => late.push(seq),
            }
            steps.push(out.drain(..).map(|w| (w.seq, w.data.into_flat())).collect());
        }
        lane.close_until(i64::MAX, c, &mut out);
        steps.push(out.drain(..).map(|w| (w.seq, w.data.into_flat())).collect());
        (steps, late)
    }

    /// Windows of 30 s every 10 s, lateness 5 s, resampled to 3 buckets of 10 s; frames
    /// at 2, 9, 14, 27, 41 and 70 s. Window ends are 10, 20, 30, ...; the windows that are
    /// scored end at 10 (frames at 2 and 9), 20 (adds 14), 30 (adds 27) and 50 (41 in its
    /// last stride), each when a frame 5 s past its end arrives; 80 at the end of input.
    /// The window ending at 40 has no frame in its last stride [30, 40): not scored.
    #[test]
    fn a_small_series_lands_in_the_hand_checked_windows() {
        let c = cfg(30_000, 10_000, 5_000, 3);
        let frames = [
            (0, 2_000),
            (1, 9_000),
            (2, 14_000),
            (3, 27_000),
            (4, 41_000),
            (5, 70_000),
        ];
        let (steps, late) = run(&c, &frames);
        assert!(late.is_empty());
        let e = |v: &[(Seq, Vec<f32>)]| v.to_vec();
        // after 2 s, 9 s: watermark 4 s, nothing ends
        assert_eq!(e(&steps[0]), vec![]);
        assert_eq!(e(&steps[1]), vec![]);
        // 14 s: watermark 9 s < 10 s
        assert_eq!(e(&steps[2]), vec![]);
        // 27 s: watermark 22 s: the windows ending at 10 s ([-20, 10): buckets end at
        // -10, 0, 10: backfilled 0, 0, then frame 1) and 20 s ([-10, 20): buckets end at
        // 0, 10, 20: frame 0 backfilled, frame 1, frame 2)
        assert_eq!(
            e(&steps[3]),
            vec![(1, vec![0.0, 0.0, 1.0]), (2, vec![0.0, 1.0, 2.0])]
        );
        // 41 s: watermark 36 s: the window ending at 30 s ([0, 30): 1, 2, 3)
        assert_eq!(e(&steps[4]), vec![(3, vec![1.0, 2.0, 3.0])]);
        // 70 s: watermark 65 s: 40 s skipped; 50 s ([20, 50): frame 3 carried into
        // [20, 30) and [30, 40), frame 4 in [40, 50)); 60 s has no frame in [50, 60)
        assert_eq!(e(&steps[5]), vec![(4, vec![3.0, 3.0, 4.0])]);
        // the end of input: 80 s ([50, 80): frame 4 carried, then frame 5 in [70, 80))
        assert_eq!(e(&steps[6]), vec![(5, vec![4.0, 4.0, 5.0])]);
    }

    /// A frame within the lateness bound lands where its timestamp says, whatever its
    /// arrival; one past the bound is refused and changes no window.
    #[test]
    fn out_of_order_frames_within_the_bound_are_windowed_by_timestamp() {
        let c = cfg(10_000, 10_000, 5_000, 2);
        // frame 1 (12 s) arrives before frame 2 (8 s): the watermark is 7 s, so 8 s is
        // in time and belongs to [0, 10)
        let (steps, late) = run(&c, &[(0, 1_000), (1, 12_000), (2, 8_000), (3, 16_000)]);
        assert!(late.is_empty());
        assert_eq!(steps[3], vec![(2, vec![0.0, 2.0])]);
        assert_eq!(steps[4], vec![(3, vec![1.0, 3.0])]);
        // at 4 s after 16 s, the watermark is 11 s: late, and the windows are as without it
        let (with_late, late) = run(
            &c,
            &[(0, 1_000), (1, 12_000), (2, 8_000), (3, 16_000), (4, 4_000)],
        );
        assert_eq!(late, vec![4]);
        let flat = |s: Vec<Step>| s.into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(flat(with_late), flat(steps));
    }

    /// Windows shorter than their stride leave gaps; a frame in a gap is in no window.
    #[test]
    fn gapped_windows_skip_frames_between_them() {
        let c = cfg(5_000, 10_000, 0, 1);
        let (steps, _) = run(&c, &[(0, 2_000), (1, 6_000), (2, 13_000)]);
        let all: Vec<_> = steps.into_iter().flatten().collect();
        // [5, 10) holds frame 1; frames 0 (2 s) and 2 (13 s) are in the gaps [0, 5)
        // and [10, 15)
        assert_eq!(all, vec![(1, vec![1.0])]);
    }

    #[test]
    fn ends_are_aligned_to_the_stride_since_the_epoch() {
        let c = cfg(30_000, 10_000, 0, 1);
        assert_eq!(c.end_after(0), 10_000);
        assert_eq!(c.end_after(9_999), 10_000);
        assert_eq!(c.end_after(-1), 0);
        assert_eq!(c.first_end_holding(25_000), Some(30_000));
    }

    #[test]
    fn throttle_passes_once_a_second() {
        let mut t = Throttle::default();
        assert_eq!(t.pass(), Some(0));
        assert_eq!(t.pass(), None);
        assert_eq!(t.pass(), None);
        assert_eq!(t.quiet, 2);
    }
}

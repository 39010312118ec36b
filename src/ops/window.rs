use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use super::{Parts, Stream, Time};
use crate::types::{EntityKey, Seq, Slice, Window, WindowData, NO_ENTITY};

/// Sliding windows over consecutive frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// Frames per window (W).
    pub size: usize,
    /// Frames between the ends of consecutive windows (S); 1 scores every frame.
    pub stride: usize,
}

impl WindowConfig {
    /// Whether a window ends at the frame with ordinal `n` (0 for the first frame the
    /// window operator closes, then 1, 2, ...): the first ends at `size - 1`, then every
    /// `stride` frames. With densely numbered frames the ordinal is the seq.
    pub fn ends_at(&self, n: u64) -> bool {
        let w = self.size as u64;
        n + 1 >= w && (n + 1 - w).is_multiple_of(self.stride.max(1) as u64)
    }
}

/// Sliding windows by logical time.
pub trait WindowOps<'s> {
    /// What comes out: windows, in the same shape as the input (a stream, or [`Parts`]).
    type Output;

    /// Emits, for every frame at which a window ends, that frame's slice and the W-1
    /// frames before it in seq order as one [`Window`], once the frontier has passed the
    /// frame's seq. Slices may arrive in any order the frontier allows. Seqs need not be
    /// consecutive (frames read by several workers are numbered with gaps): a window is
    /// the W most recent frames, and the stride counts frames, not seqs. Frames of
    /// different entities ([`Slice::entity`]) are windowed apart: a window holds the W
    /// most recent frames of one entity, and the stride counts that entity's frames.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use tidewatch::ops::{WindowConfig, WindowOps};
    /// use tidewatch::types::Slice;
    ///
    /// let ends = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&ends);
    /// timely::example(move |scope| {
    ///     (0..6u64)
    ///         .map(|seq| Slice { seq, part: 0, received_us: 0, entity: 0, values: vec![seq as f32] })
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .window(WindowConfig { size: 3, stride: 2 })
    ///         .inspect(move |w| sink.lock().unwrap().push((w.seq, w.data.to_flat().to_vec())));
    /// });
    /// assert_eq!(
    ///     *ends.lock().unwrap(),
    ///     vec![(2, vec![0.0, 1.0, 2.0]), (4, vec![2.0, 3.0, 4.0])]
    /// );
    /// ```
    fn window(self, cfg: WindowConfig) -> Self::Output;
}

impl<'s> WindowOps<'s> for Parts<'s, Slice> {
    type Output = Parts<'s, Window>;

    fn window(self, cfg: WindowConfig) -> Parts<'s, Window> {
        self.map(|s| s.window(cfg))
    }
}

impl<'s> WindowOps<'s> for Stream<'s, Slice> {
    type Output = Stream<'s, Window>;

    fn window(self, cfg: WindowConfig) -> Stream<'s, Window> {
        assert!(cfg.size > 0, "window size must be at least 1");
        self.unary_frontier(Pipeline, "Window", move |_cap, _info| {
            // slices that arrived but whose time the frontier has not passed yet
            let mut pending: BTreeMap<Seq, (Capability<Time>, Slice)> = BTreeMap::new();
            // each entity's recent slices and count of closed frames; frames without an
            // entity share the lane of `NO_ENTITY`, kept out of the map so that unkeyed
            // streams pay no lookup
            let mut unkeyed = Lane::new(cfg.size);
            let mut keyed: HashMap<EntityKey, Lane> = HashMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(cap) = cap.retain_least(output.output_index()) else {
                        return;
                    };
                    for batch in data {
                        for slice in batch.drain(..) {
                            debug_assert!(cap.time() <= &slice.seq, "slice stamped after its seq");
                            pending.insert(slice.seq, (cap.clone(), slice));
                        }
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let seq = *entry.key();
                    if frontier.less_equal(&seq) {
                        break;
                    }
                    let (cap, slice) = entry.remove();
                    let lane = match slice.entity {
                        NO_ENTITY => &mut unkeyed,
                        key => keyed.entry(key).or_insert_with(|| Lane::new(cfg.size)),
                    };
                    if let Some(window) = lane.push(slice, &cfg) {
                        output.session(&cap).give(window);
                    }
                }
            }
        })
    }
}

/// Windows of at least this many values share their frames ([`WindowData::Frames`]);
/// smaller ones are copied into one buffer. Sharing costs an allocation per frame and per
/// window, and a detector without [`crate::detect::Detector::score_frames`] copies the
/// frames anyway, so below this size (16 KiB: a few microseconds of copying) the copy is
/// the cheaper of the two; a 25,000-feature window is far above it, a telemetry entity's
/// 30 × 25 values far below.
const SHARED_WINDOW_VALUES: usize = 4096;

/// One entity's window state: the last (up to W) slices already closed, oldest first,
/// and the frames closed so far (the ordinal the stride counts).
struct Lane {
    history: History,
    closed: u64,
}

/// A lane's last slices: owned, and copied into each window, or shared with the windows
/// (large windows, [`SHARED_WINDOW_VALUES`]). Decided by the first slice's width.
enum History {
    Owned(VecDeque<Vec<f32>>),
    Shared(VecDeque<Arc<Vec<f32>>>),
}

impl History {
    fn len(&self) -> usize {
        match self {
            History::Owned(h) => h.len(),
            History::Shared(h) => h.len(),
        }
    }

    fn width(&self) -> Option<usize> {
        match self {
            History::Owned(h) => h.front().map(Vec::len),
            History::Shared(h) => h.front().map(|f| f.len()),
        }
    }

    fn pop_front(&mut self) {
        match self {
            History::Owned(h) => drop(h.pop_front()),
            History::Shared(h) => drop(h.pop_front()),
        }
    }

    fn push_back(&mut self, values: Vec<f32>) {
        match self {
            History::Owned(h) => h.push_back(values),
            History::Shared(h) => h.push_back(Arc::new(values)),
        }
    }

    /// The window of every slice held, oldest first.
    fn window(&self) -> WindowData {
        match self {
            History::Owned(h) => {
                let mut data = Vec::with_capacity(h.iter().map(Vec::len).sum());
                for values in h {
                    data.extend_from_slice(values);
                }
                WindowData::Flat(data)
            }
            History::Shared(h) => WindowData::Frames(h.iter().cloned().collect()),
        }
    }
}

impl Lane {
    fn new(size: usize) -> Lane {
        Lane {
            history: History::Owned(VecDeque::with_capacity(size)),
            closed: 0,
        }
    }

    /// Closes `slice`; the window ending at it, if one does.
    fn push(&mut self, slice: Slice, cfg: &WindowConfig) -> Option<Window> {
        let ordinal = self.closed;
        self.closed += 1;
        if self.history.len() == cfg.size {
            self.history.pop_front();
        }
        let Slice {
            seq,
            part,
            received_us,
            entity,
            values,
        } = slice;
        match self.history.width() {
            Some(width) => assert_eq!(
                width,
                values.len(),
                "slices of one partition differ in width"
            ),
            None if matches!(self.history, History::Owned(_))
                && cfg.size * values.len() >= SHARED_WINDOW_VALUES =>
            {
                self.history = History::Shared(VecDeque::with_capacity(cfg.size));
            }
            None => {}
        }
        self.history.push_back(values);
        if self.history.len() < cfg.size || !cfg.ends_at(ordinal) {
            return None;
        }
        Some(Window {
            seq,
            part,
            received_us,
            entity,
            data: self.history.window(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large windows refer to the lane's frames, each frame shared by every window it is
    /// part of; small ones are copied into one buffer. Both hold the same values.
    #[test]
    fn large_windows_share_their_frames() {
        let cfg = WindowConfig { size: 3, stride: 1 };
        let slice = |seq: u64, width: usize| Slice {
            seq,
            part: 0,
            received_us: 0,
            entity: 0,
            values: vec![seq as f32; width],
        };
        let wide = SHARED_WINDOW_VALUES / 3 + 1;
        let mut lane = Lane::new(cfg.size);
        let windows: Vec<Window> = (0..5)
            .filter_map(|s| lane.push(slice(s, wide), &cfg))
            .collect();
        assert_eq!(windows.len(), 3);
        let frames: Vec<&Vec<Arc<Vec<f32>>>> = windows
            .iter()
            .map(|w| match &w.data {
                WindowData::Frames(f) => f,
                WindowData::Flat(_) => panic!("a large window was copied"),
            })
            .collect();
        // frame 2 is the last of window 2, the middle of window 3, the first of window 4
        assert!(Arc::ptr_eq(&frames[0][2], &frames[1][1]));
        assert!(Arc::ptr_eq(&frames[1][1], &frames[2][0]));
        let mut want = vec![2.0; wide];
        want.extend(vec![3.0; wide]);
        want.extend(vec![4.0; wide]);
        assert_eq!(windows[2].data, want);

        let mut lane = Lane::new(cfg.size);
        let small: Vec<Window> = (0..4)
            .filter_map(|s| lane.push(slice(s, 2), &cfg))
            .collect();
        assert!(matches!(small[0].data, WindowData::Flat(_)));
        assert_eq!(small[1].data, vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn window_ends() {
        let w5 = WindowConfig { size: 5, stride: 1 };
        assert!(!w5.ends_at(3));
        assert!(w5.ends_at(4) && w5.ends_at(5));
        let w30 = WindowConfig {
            size: 30,
            stride: 10,
        };
        let ends: Vec<u64> = (0..60).filter(|&s| w30.ends_at(s)).collect();
        assert_eq!(ends, vec![29, 39, 49, 59]);
    }
}

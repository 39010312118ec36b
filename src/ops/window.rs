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

/// One entity's window state: the last (up to W) slices already closed, oldest first,
/// and the frames closed so far (the ordinal the stride counts). Each slice's values are
/// kept shared, so that every window it is part of refers to them rather than copying
/// them ([`WindowData::Frames`]).
struct Lane {
    history: VecDeque<Arc<Vec<f32>>>,
    closed: u64,
}

impl Lane {
    fn new(size: usize) -> Lane {
        Lane {
            history: VecDeque::with_capacity(size),
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
        if let Some(first) = self.history.front() {
            assert_eq!(
                first.len(),
                values.len(),
                "slices of one partition differ in width"
            );
        }
        self.history.push_back(Arc::new(values));
        if self.history.len() < cfg.size || !cfg.ends_at(ordinal) {
            return None;
        }
        Some(Window {
            seq,
            part,
            received_us,
            entity,
            data: WindowData::Frames(self.history.iter().cloned().collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::WindowConfig;

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

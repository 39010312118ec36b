//! The records that flow through a tidewatch dataflow.
//!
//! Logical time is the frame's sequence number ([`Seq`]). A frame is split once into one
//! [`Slice`] per feature partition; each worker windows, batches and scores its own slices
//! and reports, for every window it scored, what it found ([`PartHits`]) to the merge.
//! The frame's metadata ([`FrameMeta`]) goes from the split to the merge on a stream of
//! its own, so that no stage in between has to carry it.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A frame's sequence number: its timely logical time.
pub type Seq = u64;

/// An entity's name hashed to 64 bits ([`entity_key`]): the same on every process and in
/// every run, so that sharding and per-entity state never depend on arrival order.
pub type EntityKey = u64;

/// The key of frames that name no entity: they share one window and one detector per
/// feature, as before entities existed.
pub const NO_ENTITY: EntityKey = 0;

/// The [`EntityKey`] of `name`: 64-bit FNV-1a, moved off [`NO_ENTITY`]. Written out
/// rather than taken from `std::hash`, whose hashers promise no stable output across
/// Rust releases, and a cluster may run binaries built by different ones.
pub fn entity_key(name: &str) -> EntityKey {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if h == NO_ENTITY {
        1
    } else {
        h
    }
}

/// The key of a frame's entity, [`NO_ENTITY`] when it names none.
pub fn key_of(meta: &FrameMeta) -> EntityKey {
    meta.entity.as_deref().map_or(NO_ENTITY, entity_key)
}

/// What identifies a frame to the outside world; carried to its alert.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameMeta {
    /// When tidewatch received (or read) the frame, in Unix milliseconds.
    pub received_ms: i64,
    /// The event time the client gave (`"timestamp"`: ISO 8601 or epoch ms), in Unix ms.
    pub event_ms: Option<i64>,
    /// The client's own frame id (`"id"`), if it sent one.
    pub id: Option<String>,
    /// Which source produced the frame (an HTTP server, a file, a Kafka partition).
    pub source: u32,
    /// The entity the frame observes (a machine, a channel), if it names one: windows,
    /// detector state and models are then per (entity, feature). Echoed in alerts.
    /// (Never skipped when serialised: frames cross processes in bincode, which has no
    /// field names to tell a skipped field from the next one.)
    #[serde(default)]
    pub entity: Option<String>,
    /// The machine a machine record is about (the `machines` variant's key; its alerts
    /// carry it as `machine_id`).
    #[serde(default)]
    pub machine_id: Option<String>,
    /// When the frame was received ([`crate::clock::now_us`]); 0 if unknown.
    pub received_us: u64,
    /// When it was decoded; 0 if unknown.
    #[serde(default)]
    pub decoded_us: u64,
    /// When it entered the dataflow; 0 until then.
    #[serde(default)]
    pub entered_us: u64,
    /// When the first partition began scoring it; 0 until then.
    #[serde(default)]
    pub scoring_us: u64,
    /// When the last partition had scored it; 0 until then.
    #[serde(default)]
    pub scored_us: u64,
}

/// One observation of every feature, in model feature order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Sequence number, assigned once the frame was accepted.
    pub seq: Seq,
    /// Identity and timing facts for alerts and latency.
    pub meta: FrameMeta,
    /// One value per model feature, index i = model feature i.
    pub values: Vec<f32>,
}

/// The features of one frame owned by one partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    /// The frame's sequence number.
    pub seq: Seq,
    /// The partition (and so the worker) that owns these features.
    pub part: u32,
    /// When the frame was received ([`FrameMeta::received_us`]), for the per-batch log.
    pub received_us: u64,
    /// The frame's [`EntityKey`] ([`NO_ENTITY`] for a frame without one).
    #[serde(default)]
    pub entity: EntityKey,
    /// Values of features `lo..lo + values.len()` of the partition's range (as one
    /// byte string between processes: [`crate::packed`]).
    #[serde(with = "crate::packed")]
    pub values: Vec<f32>,
}

/// A [`Slice`] on its way to event-time windows ([`crate::ops::EventWindowOps`]): with
/// its frame's event time and entity name, which count windows never need and so never
/// carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    /// The frame's event time ([`FrameMeta::event_ms`]), in Unix ms.
    #[serde(default)]
    pub event_ms: Option<i64>,
    /// The frame's entity ([`FrameMeta::entity`]), for the log of a late frame.
    #[serde(default)]
    pub entity: Option<String>,
    /// The frame's values.
    pub slice: Slice,
}

/// W consecutive slices of one partition, ending at frame `seq`, time-major `[W][F_part]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Sequence number of the window's last frame: the frame the window scores.
    pub seq: Seq,
    /// Owning partition.
    pub part: u32,
    /// When the last frame was received.
    pub received_us: u64,
    /// The entity of the window's frames ([`NO_ENTITY`] for frames without one).
    #[serde(default)]
    pub entity: EntityKey,
    /// `W * F_part` values, oldest frame first.
    pub data: WindowData,
}

/// Up to `INFERENCE_BATCH_SIZE` windows of one partition, `[B][W][F_part]`, scored in one
/// call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Owning partition.
    pub part: u32,
    /// The last frame of each window, in batch order.
    pub seqs: Vec<Seq>,
    /// When each window's last frame was received.
    pub received_us: Vec<u64>,
    /// `B * W * F_part` values.
    pub data: WindowData,
}

impl Batch {
    /// Number of windows in the batch.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether the batch holds no window.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// The values of one or more windows, time-major: `[W][F_part]` per window, window after
/// window. Either in one buffer, or as the frames themselves (`F_part` values each),
/// shared with the window operator's history: consecutive sliding windows hold W - 1
/// frames in common, and sharing them, rather than copying each window out, saves
/// copying W frames per window (about 3 % of a worker's time at W = 5, 25,000 features).
/// Two `WindowData` are equal when they hold the same values, however held; between
/// processes they travel as the flat values.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "Vec<f32>", into = "Vec<f32>")]
pub enum WindowData {
    /// Every value in one buffer.
    Flat(Vec<f32>),
    /// One frame per entry, oldest first within each window.
    Frames(Vec<Arc<Vec<f32>>>),
}

impl Default for WindowData {
    fn default() -> WindowData {
        WindowData::Flat(Vec::new())
    }
}

impl From<Vec<f32>> for WindowData {
    fn from(values: Vec<f32>) -> WindowData {
        WindowData::Flat(values)
    }
}

impl From<WindowData> for Vec<f32> {
    fn from(data: WindowData) -> Vec<f32> {
        data.into_flat()
    }
}

impl PartialEq for WindowData {
    fn eq(&self, other: &WindowData) -> bool {
        self.len() == other.len() && self.to_flat() == other.to_flat()
    }
}

impl PartialEq<Vec<f32>> for WindowData {
    fn eq(&self, other: &Vec<f32>) -> bool {
        self.len() == other.len() && *self.to_flat() == **other
    }
}

impl WindowData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            WindowData::Flat(v) => v.len(),
            WindowData::Frames(f) => f.iter().map(|r| r.len()).sum(),
        }
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        match self {
            WindowData::Flat(v) => v.is_empty(),
            WindowData::Frames(f) => f.iter().all(|r| r.is_empty()),
        }
    }

    /// The values in one slice: borrowed when they are in one buffer, copied out of the
    /// frames otherwise.
    pub fn to_flat(&self) -> Cow<'_, [f32]> {
        match self {
            WindowData::Flat(v) => Cow::Borrowed(v),
            WindowData::Frames(f) => Cow::Owned(f.iter().flat_map(|r| r.iter().copied()).collect()),
        }
    }

    /// The values in one buffer, moved out when they already are.
    pub fn into_flat(self) -> Vec<f32> {
        match self {
            WindowData::Flat(v) => v,
            frames => frames.to_flat().into_owned(),
        }
    }

    /// Appends `other`'s windows after these. Frames stay shared when both hold frames;
    /// otherwise the values are copied into one buffer, with room reserved for
    /// `reserve` more values beyond `other`'s when it has to grow (a batch's remaining
    /// windows, so that a batch of large windows is not copied again as it doubles).
    pub fn append(&mut self, other: WindowData, reserve: usize) {
        let holds_none = match self {
            WindowData::Flat(v) => v.is_empty(),
            WindowData::Frames(f) => f.is_empty(),
        };
        if holds_none {
            *self = other;
            return;
        }
        match (&mut *self, other) {
            (WindowData::Frames(a), WindowData::Frames(b)) => a.extend(b),
            (WindowData::Flat(a), b) => {
                if a.capacity() - a.len() < b.len() {
                    a.reserve(b.len() + reserve);
                }
                a.extend_from_slice(&b.to_flat());
            }
            (WindowData::Frames(_), b) => {
                let mut flat = std::mem::take(self).into_flat();
                flat.reserve(b.len() + reserve);
                flat.extend_from_slice(&b.to_flat());
                *self = WindowData::Flat(flat);
            }
        }
    }

    /// Appends window `i` of `from`, which holds `windows` windows of equal size.
    pub fn push_window_of(&mut self, from: &WindowData, i: usize, windows: usize) {
        match from {
            WindowData::Flat(v) => {
                let size = v.len().checked_div(windows).unwrap_or(0);
                self.append(WindowData::Flat(v[i * size..(i + 1) * size].to_vec()), 0);
            }
            WindowData::Frames(f) => {
                let rows = f.len().checked_div(windows).unwrap_or(0);
                self.append(WindowData::Frames(f[i * rows..(i + 1) * rows].to_vec()), 0);
            }
        }
    }
}

/// Scores of a batch: `[B][F_part]`, one per feature of the partition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Owning partition.
    pub part: u32,
    /// Global index of the partition's first feature.
    pub lo: u32,
    /// The last frame of each window.
    pub seqs: Vec<Seq>,
    /// When each window's last frame was received.
    pub received_us: Vec<u64>,
    /// When scoring the batch began ([`crate::clock::now_us`]).
    pub began_us: u64,
    /// When it was scored.
    pub scored_us: u64,
    /// `B * F_part` scores; empty when the scorer thresholded them itself (`compacted`).
    pub scores: Vec<f32>,
    /// The anomalies alone, when the scorer thresholded on its device (the GPU) so that
    /// only they came back; `None`: every score is in `scores`.
    #[serde(default)]
    pub compacted: Option<Compacted>,
}

/// Scores at or over a threshold, picked out where they were computed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Compacted {
    /// The threshold applied: every score `>= threshold` of the batch is in `hits`, no
    /// other.
    pub threshold: f32,
    /// `(window in the batch, feature offset in the partition, score)`, by window and
    /// then by feature.
    pub hits: Vec<(u32, u32, f32)>,
}

/// A feature over the threshold: global feature index and its score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Global (model) feature index.
    pub feature: u32,
    /// The feature's (calibrated) anomaly score.
    pub score: f32,
}

/// What one partition found in one frame it scored. Every partition reports every window
/// it scored, anomalous or not, so the merge knows when a frame's verdict is complete.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartHits {
    /// The frame.
    pub seq: Seq,
    /// When this partition began scoring the frame's window.
    pub began_us: u64,
    /// When it had scored it.
    pub scored_us: u64,
    /// Features of this partition over the threshold.
    pub hits: Vec<Hit>,
    /// The largest score among this partition's unmuted features in the window (NaN when
    /// not known: a GPU that returned only the scores over its threshold, none of them).
    pub peak: f32,
    /// The rules that fired on the frame (the `rules` variant; empty for the others).
    /// Never skipped when serialised: reports cross processes in bincode.
    #[serde(default)]
    pub evidence: Vec<Evidence>,
}

/// A rule that fired on a frame's window: which rule, on which statistic of which
/// feature, the value and the threshold it crossed (the `rules` variant's alert
/// evidence, seed 004's `{"p99_violation": {"value", "threshold"}}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The rule's name in the rule file.
    pub rule: String,
    /// The statistic it tests (`mean`, `p95`, `cusum`, ...).
    pub stat: String,
    /// Global (model) feature index.
    pub feature: u32,
    /// The statistic's value over the window.
    pub value: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// Whether the rule fires above the threshold (else below).
    pub above: bool,
    /// What the rule adds to the frame's rule score.
    pub weight: f64,
}

/// The verdict on one scored frame, merged over all partitions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameResult {
    /// The frame.
    pub seq: Seq,
    /// Identity and timing of the frame.
    pub meta: FrameMeta,
    /// Every feature over the threshold, in ascending feature order.
    pub hits: Vec<Hit>,
    /// The frame's score: the largest of its features' scores (unmuted), whether or not
    /// it is over the threshold, as written by `replay --scores` and pushed to a metrics
    /// store. NaN when no partition knew it (see [`PartHits::peak`]).
    pub peak: f32,
    /// The rules that fired on the frame, in rule-file order (the `rules` variant; empty
    /// for the others). Never skipped when serialised (bincode between processes).
    #[serde(default)]
    pub evidence: Vec<Evidence>,
}

impl FrameResult {
    /// Whether any feature of the frame is over the threshold.
    pub fn is_anomalous(&self) -> bool {
        !self.hits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are FNV-1a (its published test vectors), so they are the same in every
    /// process and build; no name maps to the key of frames without one.
    #[test]
    fn entity_keys_are_stable() {
        assert_eq!(entity_key(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(entity_key("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(entity_key("foobar"), 0x8594_4171_f739_67e8);
        assert_ne!(entity_key("A-1"), entity_key("A-2"));
        let meta = FrameMeta {
            entity: Some("P-1".into()),
            ..FrameMeta::default()
        };
        assert_eq!(key_of(&meta), entity_key("P-1"));
        assert_eq!(key_of(&FrameMeta::default()), NO_ENTITY);
    }

    /// Windows held as shared frames are the same values as the flat buffer: they compare
    /// equal, travel between processes as the flat values, and a batch of them stays
    /// shared (no copy) unless it mixes with flat windows.
    #[test]
    fn window_data_is_the_same_values_however_held() {
        let a = Arc::new(vec![1.0f32, 2.0]);
        let b = Arc::new(vec![3.0f32, 4.0]);
        let c = Arc::new(vec![5.0f32, 6.0]);
        let w1 = WindowData::Frames(vec![Arc::clone(&a), Arc::clone(&b)]);
        let w2 = WindowData::Frames(vec![Arc::clone(&b), Arc::clone(&c)]);
        assert_eq!(w1, WindowData::Flat(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(w1, vec![1.0, 2.0, 3.0, 4.0]);
        assert_ne!(w1, w2);
        assert_eq!(w1.len(), 4);

        let json = serde_json::to_string(&w1).unwrap();
        assert_eq!(json, "[1.0,2.0,3.0,4.0]");
        let back: WindowData = serde_json::from_str(&json).unwrap();
        assert!(matches!(back, WindowData::Flat(_)));
        assert_eq!(back, w1);

        let mut batch = WindowData::default();
        batch.append(w1.clone(), 0);
        batch.append(w2.clone(), 0);
        let WindowData::Frames(frames) = &batch else {
            panic!("a batch of shared windows was copied")
        };
        assert_eq!(frames.len(), 4);
        assert!(
            Arc::ptr_eq(&frames[1], &frames[2]),
            "the shared frame is one"
        );
        assert_eq!(batch, vec![1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 5.0, 6.0]);

        let mut second = WindowData::default();
        second.push_window_of(&batch, 1, 2);
        assert_eq!(second, w2);
        second.append(vec![7.0, 8.0, 9.0, 10.0].into(), 0);
        assert_eq!(second, vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);

        let mut flat = WindowData::from(vec![0.0, 0.0, 0.0, 0.0]);
        flat.push_window_of(&batch, 0, 2);
        assert_eq!(flat, vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
    }
}

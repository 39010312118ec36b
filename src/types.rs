//! The records that flow through a tidewatch dataflow.
//!
//! Logical time is the frame's sequence number ([`Seq`]). A frame is split once into one
//! [`Slice`] per feature partition; each worker windows, batches and scores its own slices
//! and reports, for every window it scored, what it found ([`PartHits`]) to the merge.
//! The frame's metadata ([`FrameMeta`]) goes from the split to the merge on a stream of
//! its own, so that no stage in between has to carry it.

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
    pub data: Vec<f32>,
}

/// Up to `INFERENCE_BATCH_SIZE` windows of one partition in one contiguous buffer
/// `[B][W][F_part]`, scored in one call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Owning partition.
    pub part: u32,
    /// The last frame of each window, in batch order.
    pub seqs: Vec<Seq>,
    /// When each window's last frame was received.
    pub received_us: Vec<u64>,
    /// `B * W * F_part` values.
    pub data: Vec<f32>,
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
}

/// The verdict on one scored frame, merged over all partitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

//! A ring of frames encoded as seed 001's client sends them (or, with `bench --input`, a
//! file's JSONL lines as they are written), cycled by `bench`: each frame is inflated (if
//! gzip) and decoded as it is handed out, the per-frame work `serve` does on its HTTP
//! threads, with no sockets in the way.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{decode_body, FrameSource, KeyPolicy, Pull, Sequencing, SourceError};
use crate::clock;
use crate::model::FeatureIndex;
use crate::types::{Frame, FrameMeta};

/// The ring source inflates at most this much per frame, as `serve` does by default; a
/// 25,000-feature frame is about 0.9 MB.
pub const MAX_INFLATED: usize = 16 << 20;

/// Counters the in-process source keeps for the report.
#[derive(Default)]
pub struct RingCounters {
    /// Bytes of encoded frames handed out, as they were on the wire.
    pub wire_bytes: AtomicU64,
}

/// Cycles a ring of encoded frames, inflating and decoding each as it is handed out:
/// the dataflow pays for decoding exactly as `serve` does for a request.
pub struct RingSource {
    ring: Arc<Vec<Bytes>>,
    index: FeatureIndex,
    policy: KeyPolicy,
    /// Ring positions this worker hands out: `first`, `first + step`, ...
    first: u64,
    step: u64,
    handed_out: u64,
    limit: Option<u64>,
    duration: Option<Duration>,
    /// Set on the first pull, so that worker start-up is not part of the duration.
    deadline: Option<Instant>,
    counters: Arc<RingCounters>,
}

impl RingSource {
    /// A reader of `ring` handing out positions `first, first + step, ...` (`deal` is
    /// `(first, step)`: reader i of n takes `(i, n)`) until `limit` frames of the whole
    /// ring were dealt or `duration` has passed since its first pull. Frame keys must
    /// match `index` as `policy` says.
    pub fn new(
        ring: Arc<Vec<Bytes>>,
        index: FeatureIndex,
        policy: KeyPolicy,
        deal: (u64, u64),
        limit: Option<u64>,
        duration: Option<Duration>,
        counters: Arc<RingCounters>,
    ) -> RingSource {
        RingSource {
            ring,
            index,
            policy,
            first: deal.0,
            step: deal.1.max(1),
            handed_out: 0,
            limit,
            duration,
            deadline: None,
            counters,
        }
    }
}

impl FrameSource for RingSource {
    /// Every worker of process 0 decodes its own share of the ring, as `serve` decodes on
    /// several HTTP threads at once, and the frames keep one global order.
    fn sequencing(&self) -> Sequencing {
        Sequencing::Interleaved
    }

    fn pull(&mut self) -> Pull {
        let k = self.first + self.handed_out * self.step;
        if self.limit.is_some_and(|n| k >= n) {
            return Pull::Done;
        }
        let now = Instant::now();
        let deadline = *self
            .deadline
            .get_or_insert_with(|| now + self.duration.unwrap_or(Duration::MAX / 4));
        if self.duration.is_some() && now >= deadline {
            return Pull::Done;
        }
        self.handed_out += 1;
        // Received now, before decoding, as an HTTP request is received before its body
        // is decoded.
        let received_us = clock::now_us();
        let body = &self.ring[(k % self.ring.len() as u64) as usize];
        self.counters
            .wire_bytes
            .fetch_add(body.len() as u64, Relaxed);
        let mut values = Vec::with_capacity(self.index.len());
        let decoded = decode_body(body, MAX_INFLATED, &self.index, self.policy, &mut values);
        match decoded {
            Ok(d) => Pull::Frame(Frame {
                seq: 0,
                meta: FrameMeta {
                    received_ms: clock::unix_ms(),
                    event_ms: d.event_ms,
                    id: d.id,
                    source: 0,
                    received_us,
                    decoded_us: clock::now_us(),
                    ..FrameMeta::default()
                },
                values,
            }),
            Err(e) => Pull::Bad(SourceError {
                origin: format!("bench frame {k}"),
                problem: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::FrameEncoder;
    use crate::sources::{Generator, GeneratorConfig};

    #[test]
    fn the_source_cycles_the_ring_and_decodes_each_frame() {
        let config = GeneratorConfig {
            n_features: 10,
            ..GeneratorConfig::default()
        };
        let ring = FrameEncoder::new(config.clone()).unwrap().ring(3);
        let sizes: Vec<u64> = ring.iter().map(|(b, _)| b.len() as u64).collect();
        let mut expected = Generator::new(config).unwrap();
        let counters = Arc::new(RingCounters::default());
        let mut source = RingSource {
            ring: Arc::new(ring.into_iter().map(|(b, _)| b).collect()),
            index: FeatureIndex::numbered(10),
            policy: KeyPolicy::default(),
            first: 0,
            step: 1,
            handed_out: 0,
            limit: Some(5),
            duration: None,
            deadline: None,
            counters: Arc::clone(&counters),
        };
        let mut frames = Vec::new();
        while let Pull::Frame(f) = source.pull() {
            frames.push(f.values);
        }
        assert!(matches!(source.pull(), Pull::Done));
        assert_eq!(frames.len(), 5);
        let mut values = Vec::new();
        for frame in &frames[..3] {
            expected.next_into(&mut values);
            assert_eq!(frame, &values);
        }
        assert_eq!(frames[3], frames[0]);
        assert_eq!(frames[4], frames[1]);
        // All three, then the first two again.
        let wire = sizes.iter().sum::<u64>() + sizes[0] + sizes[1];
        assert_eq!(counters.wire_bytes.load(Relaxed), wire);
    }

    /// Two readers deal the ring between them: each hands out every other position, and
    /// together they hand out exactly the limit.
    #[test]
    fn readers_share_the_ring() {
        let ring = FrameEncoder::new(GeneratorConfig {
            n_features: 4,
            ..GeneratorConfig::default()
        })
        .unwrap()
        .ring(4);
        let ring: Arc<Vec<Bytes>> = Arc::new(ring.into_iter().map(|(b, _)| b).collect());
        let counters = Arc::new(RingCounters::default());
        let mut per_reader = Vec::new();
        for first in 0..2 {
            let mut source = RingSource {
                ring: Arc::clone(&ring),
                index: FeatureIndex::numbered(4),
                policy: KeyPolicy::default(),
                first,
                step: 2,
                handed_out: 0,
                limit: Some(7),
                duration: None,
                deadline: None,
                counters: Arc::clone(&counters),
            };
            let mut n = 0;
            while let Pull::Frame(_) = source.pull() {
                n += 1;
            }
            per_reader.push(n);
        }
        assert_eq!(per_reader, vec![4, 3]);
        let sizes: Vec<u64> = ring.iter().map(|b| b.len() as u64).collect();
        let wire = sizes.iter().sum::<u64>() + sizes[0] + sizes[1] + sizes[2];
        assert_eq!(counters.wire_bytes.load(Relaxed), wire);
    }

    #[test]
    fn a_duration_stops_the_source() {
        let ring = FrameEncoder::new(GeneratorConfig {
            n_features: 2,
            ..GeneratorConfig::default()
        })
        .unwrap()
        .ring(1);
        let mut source = RingSource {
            ring: Arc::new(ring.into_iter().map(|(b, _)| b).collect()),
            index: FeatureIndex::numbered(2),
            policy: KeyPolicy::default(),
            first: 0,
            step: 1,
            handed_out: 0,
            limit: None,
            duration: Some(Duration::ZERO),
            deadline: None,
            counters: Arc::default(),
        };
        assert!(matches!(source.pull(), Pull::Done));
    }
}

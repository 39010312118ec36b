//! What the fuzz targets check on every input, shared with `tests/fuzz_corpus.rs`, which
//! replays the corpus and every saved crasher under `cargo test`. A panic, an abort or a
//! sanitizer report is a failure; so is a broken property below.
#![allow(dead_code)]

use tidewatch::kafka::binary;
use tidewatch::model::FeatureIndex;
use tidewatch::sources::decode::decode_frame_general;
use tidewatch::sources::{
    decode_frame, inflate_if_gzip, BodyKind, KeyPolicy, MissingKeys, UnknownKeys,
};

/// Features of the model the inputs are decoded for: `feature_0` .. `feature_3`.
pub const FEATURES: usize = 4;

/// Inflate limit: small, so that a gzip bomb is refused rather than exhausting memory.
const MAX_INFLATED: usize = 1 << 20;

/// A client frame, as HTTP, Kafka and files decode it, under every key policy:
/// - decoding never panics and never overflows the stack (nesting is refused first);
/// - an accepted frame holds one finite value per model feature;
/// - the fast path for plain frames agrees with the general decoder exactly: the same
///   values bit for bit, the same id and time, or the same error.
pub fn frame(data: &[u8]) {
    let index = FeatureIndex::numbered(FEATURES);
    let Ok(json) = inflate_if_gzip(data, MAX_INFLATED) else {
        return;
    };
    // a machine record (`--dataflow machines`) decodes or is refused, never panics
    let record = KeyPolicy {
        body: BodyKind::MachineRecord,
        ..KeyPolicy::default()
    };
    let _ = decode_frame(&json, &index, record, &mut Vec::new());
    for unknown in [UnknownKeys::Reject, UnknownKeys::Ignore] {
        for missing in [MissingKeys::Reject, MissingKeys::Zero] {
            let policy = KeyPolicy {
                unknown,
                missing,
                ..KeyPolicy::default()
            };
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            let a = decode_frame(&json, &index, policy, &mut fast);
            let b = decode_frame_general(&json, &index, policy, &mut general);
            assert_eq!(a, b, "the fast path and the general decoder disagree");
            if a.is_ok() {
                assert_eq!(fast.len(), FEATURES);
                assert!(fast.iter().all(|v| v.is_finite()), "{fast:?}");
                let same = fast
                    .iter()
                    .zip(&general)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "values differ: {fast:?} vs {general:?}");
            }
        }
    }
}

/// A `TWF1` binary frame: decoding never panics, and an accepted frame holds finite
/// values and encodes back to exactly the bytes it came from.
pub fn kafka_binary(data: &[u8]) {
    let mut values = Vec::new();
    let Ok(header) = binary::decode(data, FEATURES, &mut values) else {
        return;
    };
    assert_eq!(values.len(), FEATURES);
    assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
    let mut again = Vec::new();
    binary::encode(&values, header.seq, header.event_ms, header.id, &mut again)
        .expect("a decoded frame encodes");
    assert_eq!(again, data, "decode and encode do not round-trip");
}

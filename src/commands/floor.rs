//! The floor of a frame's cost on this machine, for `bench --floor`: the same client
//! frames (or, with `bench --input`, the same lines of the file) through the same decoder
//! (`decode_body`: libdeflate for gzip, then the JSON fast path)
//! and one linear pass over the values, in a plain loop on `threads` threads, with no
//! dataflow, channels or sinks. A run's frames/s divided by the floor measured in the
//! same run is a ratio that the machine's noise (up to 1.6× between runs here) mostly
//! cancels out of.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::model::FeatureIndex;
use crate::sources::ring::MAX_INFLATED;
use crate::sources::{decode_body, KeyPolicy};

/// Frames per second of the plain loop on `threads` threads for `duration`, each thread
/// taking every `threads`-th frame of `ring` in turn, its keys matched to `index` as
/// `policy` says (as the run being compared with matches them).
pub fn frames_per_second(
    ring: &[Bytes],
    index: &FeatureIndex,
    policy: KeyPolicy,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    anyhow::ensure!(!ring.is_empty(), "the floor needs frames");
    let threads = threads.max(1);
    let started = Instant::now();
    let deadline = started + duration;
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || one_thread(ring, index, policy, t, threads, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a floor thread panicked"))
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(counts.iter().sum::<u64>() as f64 / seconds)
}

fn one_thread(
    ring: &[Bytes],
    index: &FeatureIndex,
    policy: KeyPolicy,
    first: usize,
    step: usize,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let weights = vec![1.0 / index.len().max(1) as f32; index.len()];
    let mut values = Vec::with_capacity(index.len());
    let (mut frames, mut sum) = (0u64, 0f32);
    let mut k = first;
    while Instant::now() < deadline {
        decode_body(
            &ring[k % ring.len()],
            MAX_INFLATED,
            index,
            policy,
            &mut values,
        )?;
        // The linear score: what the cheapest detector adds per value.
        sum += values.iter().zip(&weights).map(|(v, w)| v * w).sum::<f32>();
        frames += 1;
        k += step;
    }
    std::hint::black_box(sum);
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::FrameEncoder;
    use crate::sources::GeneratorConfig;

    #[test]
    fn the_floor_decodes_every_frame_it_counts() {
        let config = GeneratorConfig {
            n_features: 64,
            ..GeneratorConfig::default()
        };
        let ring: Vec<Bytes> = FrameEncoder::new(config)
            .unwrap()
            .ring(4)
            .into_iter()
            .map(|(b, _)| b)
            .collect();
        let index = FeatureIndex::numbered(64);
        let fps = frames_per_second(
            &ring,
            &index,
            KeyPolicy::default(),
            2,
            Duration::from_millis(50),
        )
        .unwrap();
        assert!(fps > 0.0);
        // frames that do not fit the model are an error, not a fast floor
        let wrong = FeatureIndex::numbered(63);
        assert!(frames_per_second(
            &ring,
            &wrong,
            KeyPolicy::default(),
            1,
            Duration::from_millis(10)
        )
        .is_err());
    }
}

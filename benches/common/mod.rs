//! Helpers shared by the criterion benches.

/// Uniform values in [0, 1), deterministic (no dependency on rand's versions), so every
/// run measures the same input.
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

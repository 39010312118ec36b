//! Per-feature calibration of raw scores and the global threshold.
//!
//! Raw OCSVM scores of different features live on different scales (a linear model's score
//! is in the feature's units, and even standardised kernel models differ in how tight the
//! data are). Mapping every feature's scores so that their median goes to 0 and their
//! q-quantile (0.99 by default) to 1 makes the bulk of the distributions agree; the
//! threshold is then one quantile of all features' calibrated held-out scores pooled, which
//! with thousands of features is estimable even for false-alarm rates of 1e-5 that no single
//! feature's few hundred held-out windows could resolve.
//!
//! Which windows do what was measured (10,000 generator features, 3,000 frames, fresh
//! normal data with ±8σ spikes, target 1e-5):
//!
//! - per-feature map and threshold both from the held-out windows: the threshold is chosen
//!   in-sample (a feature whose held-out tail happened to be heavy gets a small scale that
//!   hides exactly those windows), and fresh data see 5 to 7 times the target rate;
//! - per-feature map from the first half of the held-out frames, threshold from the second:
//!   the rate is right, but a q0.99 of 450 autocorrelated windows is so noisy that the
//!   pooled tail, and with it the threshold, is inflated: 96% of the spikes caught;
//! - per-feature map from the feature's training windows (2,100 of them), threshold from
//!   the held-out windows, which neither the fit nor the map saw: the rate on fresh data is
//!   the target (1.0e-5) and 99.9% of the spikes are caught. The training windows are
//!   in-sample for the fit, but a fit of D + 1 parameters to 2,100 windows shifts every
//!   feature's score distribution alike, and the held-out threshold absorbs what it shifts.
//!
//! So the map comes from the training windows and the threshold from the held-out ones.

/// The `q`-quantile of `v` with linear interpolation between order statistics (numpy's
/// default, `method="linear"`), in O(n) by selection. Reorders `v`. `None` when empty.
pub fn quantile(v: &mut [f32], q: f64) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    let h = (v.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let frac = h - lo as f64;
    let (_, &mut a, upper) = v.select_nth_unstable_by(lo, f32::total_cmp);
    if frac == 0.0 || upper.is_empty() {
        return Some(a);
    }
    let b = upper
        .iter()
        .copied()
        .min_by(f32::total_cmp)
        .expect("non-empty");
    Some((a as f64 + frac * (b as f64 - a as f64)) as f32)
}

/// A feature's calibration: `calibrated = (raw - offset) * scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureCalibration {
    /// The median of the feature's raw scores.
    pub offset: f32,
    /// `1 / (q-quantile - median)`, or `None` when the scores have no spread above their
    /// median (a constant feature); the caller substitutes a typical scale.
    pub scale: Option<f32>,
}

/// Calibrates one feature from its raw scores (reordered).
pub fn calibrate_feature(raw: &mut [f32], q: f64) -> FeatureCalibration {
    let median = quantile(raw, 0.5).expect("scores are not empty");
    let upper = quantile(raw, q).expect("scores are not empty");
    let spread = upper as f64 - median as f64;
    let scale = (1.0 / spread) as f32;
    FeatureCalibration {
        offset: median,
        scale: (spread > 0.0 && scale.is_finite() && scale > 0.0).then_some(scale),
    }
}

/// The scale given to features without spread: the median of the others' scales, or 1 when
/// no feature has spread. A feature that never varied has no scale of its
/// own; the typical one at least keeps its score in the units every other feature uses.
pub fn fallback_scale(cal: &[FeatureCalibration]) -> f32 {
    let mut scales: Vec<f32> = cal.iter().filter_map(|c| c.scale).collect();
    quantile(&mut scales, 0.5).unwrap_or(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_numpy() {
        let mut v = vec![5.0f32, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), Some(3.0));
        assert_eq!(quantile(&mut v, 0.0), Some(1.0));
        assert_eq!(quantile(&mut v, 1.0), Some(5.0));
        // numpy.quantile([1, 2, 3, 4, 5], 0.9) == 4.6
        assert!((quantile(&mut v, 0.9).unwrap() - 4.6).abs() < 1e-6);
        let mut two = vec![0.0f32, 10.0];
        assert!((quantile(&mut two, 0.25).unwrap() - 2.5).abs() < 1e-6);
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn calibration_maps_median_to_zero_and_quantile_to_one() {
        let mut raw: Vec<f32> = (0..=100).map(|i| 10.0 + 2.0 * i as f32).collect();
        let c = calibrate_feature(&mut raw, 0.99);
        assert_eq!(c.offset, 110.0);
        let s = c.scale.unwrap();
        assert!(((208.0 - 110.0) * s - 1.0).abs() < 1e-6);
    }

    #[test]
    fn constant_scores_have_no_scale_and_fall_back() {
        let c = calibrate_feature(&mut [3.0; 50], 0.99);
        assert_eq!(c.scale, None);
        let others = [
            c,
            FeatureCalibration {
                offset: 0.0,
                scale: Some(2.0),
            },
            FeatureCalibration {
                offset: 0.0,
                scale: Some(4.0),
            },
        ];
        assert_eq!(fallback_scale(&others), 3.0);
        assert_eq!(fallback_scale(&[c]), 1.0);
    }
}

//! Detection quality of the shipped default model on generator data: the figures a user
//! relies on when they trust an alert, or the silence.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;

use tidewatch::controls::{Change, Controls, Shape};
use tidewatch::detect::{
    guard_floor, Cusum, CusumConfig, Detector, Envelope, EnvelopeConfig, EnvelopeModel, Ewma,
    EwmaConfig, Forecast, ForecastConfig, ForecastModel, Neighbour, NeighbourConfig,
    NeighbourModel, Pca, PcaConfig, PcaModel, Reloading, RffOcSvm, Scores, DEPARTURE_SIGMAS,
};
use tidewatch::model::{Model, Params};
use tidewatch::server::Device;
use tidewatch::sources::{AnomalyKind, Generator, GeneratorConfig, Injection};

/// What one replay of the generator through the shipped default model gave.
struct Run {
    /// The injected anomalies.
    truth: Vec<Injection>,
    /// Every flagged (frame, feature) pair.
    flagged: HashSet<(u64, u64)>,
    /// `replay --json`'s summary (stdout).
    summary: serde_json::Value,
}

/// Replays `frames` generator frames (with `args`: seed, kinds, rate) through the
/// default model, listing every flagged feature.
fn replay_default(frames: u64, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (truth, alerts) = (
        dir.path().join("truth.jsonl"),
        dir.path().join("alerts.jsonl"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "replay",
            "--model",
            "default",
            "--generate",
            &frames.to_string(),
            "--json",
        ])
        .args(args)
        .args(["--max-alert-features", "1000000", "-w", "2"])
        .arg("--truth")
        .arg(&truth)
        .arg("--output")
        .arg(&alerts)
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth = std::fs::read_to_string(&truth)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut flagged = HashSet::new();
    for line in std::fs::read_to_string(&alerts).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let features = v["anomalous_features"].as_array().unwrap();
        assert_eq!(
            features.len() as u64,
            v["num_anomalous_features"].as_u64().unwrap()
        );
        for feat in features {
            flagged.insert((seq, feat["feature_idx"].as_u64().unwrap()));
        }
    }
    let summary = serde_json::from_slice(&out.stdout).expect("the summary on stdout");
    Run {
        truth,
        flagged,
        summary,
    }
}

/// ±8σ spikes are flagged on their own (frame, feature) pair at least 97 % of the time
/// and within the W frames whose windows hold them at least 99 %, and at most 1 in
/// 10,000 normal pairs (whose window holds no injected anomaly) is flagged.
#[test]
fn default_model_flags_spikes_and_stays_quiet_otherwise() {
    let model = Model::load(&Model::resolve("default")).expect("shipped default model loads");
    let (w, f) = (model.window() as u64, model.n_features() as u64);
    let frames = 600u64;
    let Run {
        truth: spikes,
        flagged,
        ..
    } = replay_default(
        frames,
        &[
            "--seed",
            "20261123",
            "--anomaly-rate",
            "0.0004",
            "--kinds",
            "spike_up,spike_down",
            "--spike-sigma",
            "8",
        ],
    );

    // recall over spikes on scored frames (the first W-1 frames close no window)
    let scored: Vec<&Injection> = spikes.iter().filter(|s| s.seq >= w - 1).collect();
    assert!(
        scored.len() > 3_000,
        "enough spikes to measure: {}",
        scored.len()
    );
    let caught = scored
        .iter()
        .filter(|s| flagged.contains(&(s.seq, s.feature as u64)))
        .count();
    let recall = caught as f64 / scored.len() as f64;
    // an alert within the W windows that hold the spike (what a user sees as caught)
    let caught_within = scored
        .iter()
        .filter(|s| (s.seq..s.seq + w).any(|t| flagged.contains(&(t, s.feature as u64))))
        .count();
    let recall_within = caught_within as f64 / scored.len() as f64;

    // false alarms over pairs whose window holds no spike
    let touched: HashSet<(u64, u64)> = spikes
        .iter()
        .flat_map(|s| (s.seq..s.seq + w).map(move |t| (t, s.feature as u64)))
        .collect();
    let normal_pairs = (frames - (w - 1)) * f
        - touched
            .iter()
            .filter(|(t, _)| *t >= w - 1 && *t < frames)
            .count() as u64;
    let false_alarms = flagged.iter().filter(|p| !touched.contains(p)).count();
    let far = false_alarms as f64 / normal_pairs as f64;

    eprintln!(
        "spikes scored {}, caught {caught} (recall {recall:.5}; within W frames {recall_within:.5}); normal pairs {normal_pairs}, false alarms {false_alarms} (rate {far:.2e})",
        scored.len()
    );
    // the frame-level threshold (clean frames alert ≤ 1 %) is higher than the old
    // per-pair one: 97.8 % of spikes flag on their own frame, all within W frames
    assert!(recall >= 0.97, "recall {recall}");
    assert!(
        recall_within >= 0.99,
        "recall within W frames {recall_within}"
    );
    assert!(far <= 1e-4, "false-alarm rate {far}");
}

/// On clean generator frames (no injected anomaly) the default model alerts on at most
/// 1 % of frames, every feature of the 25,000 counted: its threshold was chosen for a
/// frame-level target (`train --target-frame-far`), not a per-(frame, feature) one that
/// 25,000 features multiply (the earlier default alerted on about 25 % of clean frames).
#[test]
fn default_model_alerts_on_few_clean_frames() {
    let run = replay_default(1000, &["--seed", "7", "--anomaly-rate", "0"]);
    assert!(run.truth.is_empty());
    let stats = &run.summary["stats"];
    let (alerted, scored) = (
        stats["anomalous_frames"].as_u64().unwrap(),
        stats["frames_scored"].as_u64().unwrap(),
    );
    let frames: HashSet<u64> = run.flagged.iter().map(|&(t, _)| t).collect();
    assert_eq!(frames.len() as u64, alerted);
    let rate = alerted as f64 / scored as f64;
    eprintln!("clean frames scored {scored}, alerted {alerted} (rate {rate:.4})");
    assert!(rate <= 0.01, "{alerted} of {scored} clean frames alerted");
}

/// Level shifts (5σ, the generator's default) are caught, at their onset (a window that
/// ends within W frames of the shift's first frame) in at least 90 % of cases and at
/// some frame of the shift in at least 95 %. Stuck values are not asserted: a window
/// of W identical values inside the normal range is no departure for this kernel model
/// (measured 0.4 % recall), which the README states.
#[test]
fn default_model_catches_level_shifts_at_onset() {
    let w = Model::load(&Model::resolve("default")).unwrap().window() as u64;
    let frames = 600u64;
    let run = replay_default(
        frames,
        &[
            "--seed",
            "20261124",
            "--anomaly-rate",
            "0.00002",
            "--kinds",
            "level_shift",
        ],
    );
    let shifts: Vec<&Injection> = run.truth.iter().filter(|s| s.seq >= w - 1).collect();
    assert!(shifts.len() > 200, "enough shifts: {}", shifts.len());
    let caught_within = |s: &Injection, frames_after: u64| {
        (s.seq..(s.seq + frames_after).min(frames))
            .any(|t| run.flagged.contains(&(t, s.feature as u64)))
    };
    let n = shifts.len() as f64;
    let onset = shifts.iter().filter(|s| caught_within(s, w)).count() as f64 / n;
    let any = shifts
        .iter()
        .filter(|s| caught_within(s, s.len as u64 + w - 1))
        .count() as f64
        / n;
    eprintln!("level shifts {n}: onset recall {onset:.4}, recall {any:.4}");
    assert!(onset >= 0.9, "onset recall {onset}");
    assert!(any >= 0.95, "recall {any}");
}

/// A noisy AR(1) series (standard deviation near 1) from a fixed linear congruential
/// generator.
fn normal_series(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut v = 0f32;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
            v = 0.5 * v + 3.0 * u;
            v
        })
        .collect()
}

/// The score of the window that ends at the last value of `series`, one feature, after
/// `detector` has seen every window before it (stride 1).
fn last_score(detector: &mut dyn Detector, series: &[f32]) -> f32 {
    *score_stream(detector, series, 1).last().unwrap()
}

/// The departure guard's score is relative to the threshold in force: after an operator
/// raises the threshold at run time (`PUT /admin/threshold`), a value 11σ out still gets
/// the guard's score at the new threshold, so it is still flagged. It kept the start-up
/// threshold's before, and went unflagged.
#[test]
fn a_threshold_change_moves_the_departure_guard_with_it() {
    let model = Arc::new(Model::load(&Model::resolve("default")).expect("the default model"));
    let Params::Rff { mean, inv_std, .. } = &model.params else {
        panic!("the default model is a kernel model");
    };
    let (m0, is0) = (mean[0], inv_std[0]);
    let w = model.window();
    // one window of feature 0: at its mean, then 11σ out in the last frame
    let mut window = vec![m0; w];
    window[w - 1] = m0 + 11.0 / is0;
    let z = (window[w - 1] - m0) * is0;
    assert!(z > DEPARTURE_SIGMAS);
    let knobs = Controls::new(Arc::clone(&model), None, None, Shape::default()).current();
    let score = |d: &mut Reloading| match d.score(&window) {
        Scores::All(s) => s[0],
        Scores::Compacted(_) => unreachable!("the CPU gives every score"),
    };
    let mut detector = Reloading::new(&knobs, Device::Cpu, 0..1).unwrap();
    let start = model.meta.threshold;
    assert!(score(&mut detector) >= guard_floor(start) * (z / DEPARTURE_SIGMAS));
    let raised = 50.0 * start.abs().max(1.0);
    detector.follow(&knobs.after(&Change::Threshold(Some(raised)), None));
    let s = score(&mut detector);
    assert_eq!(
        s,
        guard_floor(raised) * (z / DEPARTURE_SIGMAS),
        "the guard's score at the new threshold {raised}"
    );
    assert!(s >= raised, "an 11σ departure is still flagged");
}

/// Every detector's score grows with the size of a departure and flags it: a value 8σ,
/// 1e3σ and 1e30σ from the training mean (PCA, whose windows of 30 dilute one frame,
/// from 1e3σ) (the kernel's cosines wrap around far out, so
/// without the departure guard a 1e30σ value scored as noise).
#[test]
fn scores_grow_with_the_size_of_a_departure() {
    let train = normal_series(3000, 1);
    let mean = train.iter().sum::<f32>() / train.len() as f32;
    let sigma =
        (train.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / train.len() as f32).sqrt();
    let normal = normal_series(400, 2);
    let default = Model::load(&Model::resolve("default")).expect("shipped default model loads");
    let Params::Rff {
        mean: means,
        inv_std,
        ..
    } = &default.params
    else {
        panic!("the default model is a kernel model");
    };
    let (m0, s0) = (means[0], 1.0 / inv_std[0]);
    let forecast = Arc::new(ForecastModel::fit(&train, 1, ForecastConfig::default()).unwrap());
    let pca = Arc::new(PcaModel::fit(&train, 1, PcaConfig::default()).unwrap());
    let near = Arc::new(NeighbourModel::fit(&train, 1, NeighbourConfig::default()).unwrap());
    let envelope = Arc::new(EnvelopeModel::fit(&train, 1, EnvelopeConfig::default()).unwrap());
    type Make<'a> = Box<dyn Fn() -> (Box<dyn Detector>, f32) + 'a>;
    let detectors: Vec<(&str, Make)> = vec![
        (
            "rff (the default model)",
            Box::new(|| {
                let d = RffOcSvm::new(&default, 0..1).unwrap();
                (Box::new(d) as Box<dyn Detector>, default.meta.threshold)
            }),
        ),
        (
            "forecast",
            Box::new(|| (Box::new(Forecast::new(forecast.clone(), 0..1)) as _, 1.0)),
        ),
        (
            "pca",
            Box::new(|| (Box::new(Pca::new(pca.clone(), 0..1)) as _, 1.0)),
        ),
        (
            "neighbour",
            Box::new(|| (Box::new(Neighbour::new(near.clone(), 0..1)) as _, 1.0)),
        ),
        (
            "envelope",
            Box::new(|| (Box::new(Envelope::new(envelope.clone(), 0..1)) as _, 1.0)),
        ),
        (
            "ewma",
            Box::new(|| (Box::new(Ewma::new(0..1, EwmaConfig::default())) as _, 6.0)),
        ),
        (
            "cusum",
            Box::new(|| (Box::new(Cusum::new(0..1, CusumConfig::default())) as _, 1.0)),
        ),
    ];
    for (name, make) in &detectors {
        let mut peaks = Vec::new();
        for k in [8.0f32, 1e3, 1e30] {
            let (mut d, threshold) = make();
            let rff = name.starts_with("rff");
            // the default model's features have their own mean and scale
            let (m, s) = if rff { (m0, s0) } else { (mean, sigma) };
            let mut series: Vec<f32> = if rff {
                normal.iter().map(|v| m0 + v / sigma * s0).collect()
            } else {
                train.iter().chain(&normal).copied().collect()
            };
            series.push(m + k * s);
            let score = last_score(d.as_mut(), &series);
            // PCA scores windows of 30 as a whole: one 8σ frame among 29 normal ones is
            // within the largest training error, so only the larger departures must flag
            if k > 8.0 || *name != "pca" {
                assert!(
                    score >= threshold,
                    "{name}: a {k}σ departure scores {score}, under its threshold {threshold}"
                );
            }
            peaks.push(score);
        }
        assert!(
            peaks[0] < peaks[1] && peaks[1] < peaks[2],
            "{name}: scores of 8σ, 1e3σ, 1e30σ departures do not grow: {peaks:?}"
        );
    }
}

/// `frames` rows of `n` generator features (plant 0) from `seed`, with anomalies of
/// `kinds` at `rate` per frame and feature: the rows, row-major, and the injections.
fn generated(
    frames: usize,
    n: usize,
    seed: u64,
    rate: f64,
    kinds: &[AnomalyKind],
) -> (Vec<f32>, Vec<Injection>) {
    let mut g = Generator::new(GeneratorConfig {
        n_features: n,
        seed,
        anomaly_rate: rate,
        kinds: kinds.to_vec(),
        ..GeneratorConfig::default()
    })
    .unwrap();
    let (mut rows, mut truth, mut frame) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..frames {
        frame.clear();
        truth.extend_from_slice(g.next_into(&mut frame));
        rows.extend_from_slice(&frame);
    }
    (rows, truth)
}

/// Every window (stride 1) of `rows` (`n` features) scored by `detector`: the scores
/// `[row][feature]` of the rows that end a window (row `W - 1` on).
fn score_stream(detector: &mut dyn Detector, rows: &[f32], n: usize) -> Vec<f32> {
    let w = detector.needs().window;
    let windows: Vec<f32> = rows.windows(w * n).step_by(n).flatten().copied().collect();
    match detector.score(&windows) {
        Scores::All(s) => s,
        Scores::Compacted(_) => unreachable!("CPU detectors keep every score"),
    }
}

/// Features of the generator frames the per-kind tests use.
const KIND_FEATURES: usize = 20;

/// The share of frames of clean generator frames (plant 0, seed 2) on which `detector`
/// flags any feature, scoring the windows that end every `stride` frames.
fn clean_alert_rate(detector: &mut dyn Detector, stride: usize) -> f64 {
    let n = KIND_FEATURES;
    let (clean, _) = generated(5000, n, 2, 0.0, &[]);
    let s = score_stream(detector, &clean, n);
    let frames: Vec<&[f32]> = s.chunks(n).step_by(stride).collect();
    let alerted = frames
        .iter()
        .filter(|f| f.iter().any(|&z| z >= 1.0))
        .count();
    let rate = alerted as f64 / frames.len() as f64;
    eprintln!(
        "clean windows {}: {alerted} alerted (rate {rate:.4})",
        frames.len()
    );
    rate
}

/// The share of `kind` anomalies (plant 0, seed 3) that `detector` flags on their
/// feature in a window ending while they last or, for one shorter than a window, within
/// a window after they start, scoring the windows that end every `stride` frames.
fn kind_recall(detector: &mut dyn Detector, kind: AnomalyKind, stride: usize) -> f64 {
    let n = KIND_FEATURES;
    let w = detector.needs().window;
    let (rows, truth) = generated(5000, n, 3, 0.0005, &[kind]);
    let s = score_stream(detector, &rows, n);
    let total = rows.len() / n;
    // score k is that of the window ending at row k + W - 1
    let flagged = |row: usize, f: usize| {
        let k = row + 1 - w;
        k.is_multiple_of(stride) && s[k * n + f] >= 1.0
    };
    let scored: Vec<&Injection> = truth
        .iter()
        .filter(|i| i.seq as usize >= w && i.seq as usize + w + (i.len as usize) < total)
        .collect();
    assert!(
        scored.len() >= 20,
        "{kind:?}: only {} to measure",
        scored.len()
    );
    let caught = scored
        .iter()
        .filter(|i| {
            let start = i.seq as usize;
            (start..start + (i.len as usize).max(w)).any(|r| flagged(r, i.feature as usize))
        })
        .count();
    let r = caught as f64 / scored.len() as f64;
    eprintln!("{kind:?}: {} injected, recall {r:.3}", scored.len());
    r
}

/// The forecast detector with stuck detection, fitted on clean generator frames, for
/// every kind the generator injects: the share of anomalies flagged on their feature
/// while they last (or, for a one-frame spike, in the window after it), and on clean
/// frames of the same plant the share of frames with any of its 20 features flagged
/// (measured: spikes 1.0, level shifts 0.90, stuck 1.0; 0.08 % of clean frames). Without
/// stuck detection a stuck value inside the normal range is missed (measured: all 44).
#[test]
fn forecast_catches_every_generator_kind_and_stays_quiet_on_clean_frames() {
    let n = KIND_FEATURES;
    let (train, _) = generated(4000, n, 1, 0.0, &[]);
    let fit = |stuck| {
        let config = ForecastConfig {
            stuck,
            ..ForecastConfig::default()
        };
        Arc::new(ForecastModel::fit(&train, n, config).unwrap())
    };
    let model = fit(true);
    let detector = || Forecast::new(Arc::clone(&model), 0..n);
    let clean = clean_alert_rate(&mut detector(), 1);
    assert!(clean <= 0.01, "{clean} of clean frames alerted");
    for (kind, least) in [
        (AnomalyKind::SpikeUp, 0.95),
        (AnomalyKind::SpikeDown, 0.95),
        (AnomalyKind::LevelShift, 0.85),
        (AnomalyKind::Stuck, 0.95),
    ] {
        let r = kind_recall(&mut detector(), kind, 1);
        assert!(r >= least, "{kind:?}: recall {r} under {least}");
    }
    let without = kind_recall(&mut Forecast::new(fit(false), 0..n), AnomalyKind::Stuck, 1);
    assert!(
        without < 0.1,
        "stuck values caught without stuck detection: {without}"
    );
}

/// The telemetry variant's detector as `tidewatch train --data` fits `models/telemetry`
/// (PCA reconstruction of windows of 30, [`PcaConfig::default`]), fitted on clean
/// generator frames and scoring a window every 10 frames as the variant does: spikes
/// are caught (measured 0.955 up, 0.886 down), level shifts rarely (0.16: a 5σ shift of
/// 20 frames inside a window of 30 is mostly reconstructed), and 2.0 % of clean windows
/// of 20 features alert, over the 1 % the forecast detector keeps. Stuck values are
/// not asserted: PCA of the window's shape misses them (measured 0 of 44), which the
/// README states; the forecast detector's `stuck` catches them (test above).
#[test]
fn telemetry_pca_on_every_generator_kind() {
    let n = KIND_FEATURES;
    let (train, _) = generated(4000, n, 1, 0.0, &[]);
    let model = Arc::new(PcaModel::fit(&train, n, PcaConfig::default()).unwrap());
    let detector = || Pca::new(Arc::clone(&model), 0..n);
    let clean = clean_alert_rate(&mut detector(), 10);
    assert!(clean <= 0.03, "{clean} of clean windows alerted");
    for (kind, least) in [
        (AnomalyKind::SpikeUp, 0.85),
        (AnomalyKind::SpikeDown, 0.8),
        (AnomalyKind::LevelShift, 0.1),
    ] {
        let r = kind_recall(&mut detector(), kind, 10);
        assert!(r >= least, "{kind:?}: recall {r} under {least}");
    }
}

/// `evaluate --detector envelope`'s detector on the generator's kinds, fitted on 4,000
/// clean frames of 20 features: level shifts are caught while they last (measured
/// 0.854), spikes less often (0.721: a spike as large as an earlier one on the same
/// feature is inside the range that one widened), and 0.49 % of clean frames alert.
/// Stuck values are not asserted: measured 4 of 43. Their spread and roughness fall to
/// 0, but the bar is 5 % of the value range (about 0.35 σ of this noise), wider than
/// the least spread of 10 training values, so a stuck value is within the range plus
/// the bar; the forecast detector's `stuck` catches them (test above), as the README
/// says.
#[test]
fn envelope_on_every_generator_kind() {
    let n = KIND_FEATURES;
    let (train, _) = generated(4000, n, 1, 0.0, &[]);
    let model = Arc::new(EnvelopeModel::fit(&train, n, EnvelopeConfig::default()).unwrap());
    let detector = || Envelope::new(Arc::clone(&model), 0..n);
    let clean = clean_alert_rate(&mut detector(), 1);
    assert!(clean <= 0.01, "{clean} of clean frames alerted");
    for (kind, least) in [
        (AnomalyKind::SpikeUp, 0.65),
        (AnomalyKind::SpikeDown, 0.65),
        (AnomalyKind::LevelShift, 0.8),
    ] {
        let r = kind_recall(&mut detector(), kind, 1);
        assert!(r >= least, "{kind:?}: recall {r} under {least}");
    }
}

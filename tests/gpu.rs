//! GPU scoring (feature `gpu`): the kernels compile with NVRTC; the GPU scorer gives the
//! CPU scorer's scores and anomalies for the linear and the kernel models (one cosine per
//! component, and cosine-sine pairs), for batch sizes 1..256 and odd feature counts; and
//! the whole dataflow on the GPU gives the CPU's verdicts. The kernel model's departure
//! guard gives the CPU detector's scores for values far outside the training data.
//!
//! Without a usable GPU (or NVRTC, for the compile test) each test says so on stderr,
//! `skipped: no usable CUDA device (<why>)`, and returns.
//!
//! # Tolerance
//!
//! The kernels perform the CPU scorer's operations in its order with IEEE round-to-nearest
//! and no fused multiply-adds (kernels.cu), so their scores are meant to be the CPU's bits;
//! the tests count and print how many are. What they assert is the bound that would hold
//! even had the device used CUDA's own `cosf`/`sinf` (2 ulp, < 2.4e-7 absolute on [-1, 1])
//! instead of trig.rs's polynomial (< 6e-7 absolute): per component at most
//! `|a_d| * (6e-7 + 2.4e-7) < |a_d| * 1e-6` from the trigonometry, plus reordered f32
//! rounding of the D + W + 2 sums, at most `(D + W + 2) * 2^-23 * (Σ|a_d| + |bias|)`, per
//! feature `tol_f = 1e-6 Σ_d |a_d| + (D + W + 2) 2^-23 (Σ_d |a_d| + |bias_f|)` with the
//! folded weights `a` (sqrt(2/D) and calibration in). For the linear model, whose only
//! operations are the W products and sums, `tol_f = (W + 2) 2^-23 (Σ_k |w_k x_k| + |b|)`.
//! Anomaly sets must be identical except for (window, feature) pairs whose CPU score lies
//! within `tol_f` of the threshold.
#![cfg(feature = "gpu")]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{random_frames, random_rff_model, Lcg, VecSource};
use tidewatch::detect::gpu::{self, GpuScorer};
use tidewatch::detect::{Detector, Scores};
use tidewatch::model::{
    Calibration, FeatureNames, Folded, Model, ModelKind, ModelMeta, Params, Provenance, RffMeta,
    Scorer, FOLDED_BLOCK,
};
use tidewatch::runtime::{self, ClusterArgs, Settings, SinkSpec};
use tidewatch::server::Device;
use tidewatch::sources::FrameSource;
use tidewatch::train::rff::{RffMap, RffSampling};
use tidewatch::types::FrameResult;

/// Says on the real stderr (not captured by the test harness) that a test is skipped;
/// with `TIDEWATCH_REQUIRE_GPU=1` (on a machine that has a GPU) a skip is a failure, so
/// that a missing driver or NVRTC cannot pass for parity.
fn skip(test: &str, why: &str) {
    if std::env::var_os("TIDEWATCH_REQUIRE_GPU").is_some_and(|v| v == "1") {
        panic!("{test}: TIDEWATCH_REQUIRE_GPU=1 but {why}");
    }
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

/// Whether a GPU can be used; says why not otherwise.
fn gpu_or_skip(test: &str) -> bool {
    match gpu::probe() {
        Ok(_) => true,
        Err(why) => {
            skip(test, &format!("no usable CUDA device ({why})"));
            false
        }
    }
}

/// The kernels compile to PTX with NVRTC, for the default target and for Ampere and
/// Hopper, and without fused multiply-adds (which would round differently from the CPU),
/// and to machine code for Ampere and Hopper with the same options. Needs only NVRTC,
/// not a GPU.
#[test]
fn kernels_compile_to_ptx_without_fma() {
    let mut compiled = 0;
    for arch in [None, Some("compute_80"), Some("compute_90")] {
        match gpu::compile_kernels(arch) {
            Ok(ptx) => {
                for entry in ["tw_score_linear", "tw_score_rff"] {
                    assert!(
                        ptx.contains(&format!(".entry {entry}")),
                        "{arch:?}: no {entry} in the PTX"
                    );
                }
                assert!(
                    !ptx.contains("fma.rn.f32"),
                    "{arch:?}: the PTX fuses multiply-adds"
                );
                compiled += 1;
            }
            Err(why) if why.contains("cannot be loaded") => {
                skip(
                    "kernels_compile_to_ptx_without_fma",
                    &format!("NVRTC unavailable ({why})"),
                );
                return;
            }
            Err(why) => panic!("{arch:?}: {why}"),
        }
    }
    // Machine code, which probe() loads first (it does not depend on the driver's PTX
    // version): an ELF image for each architecture.
    for sm in ["sm_80", "sm_90"] {
        let cubin = gpu::compile_kernels_cubin(sm).unwrap_or_else(|e| panic!("{sm}: {e}"));
        assert!(cubin.starts_with(b"\x7fELF"), "{sm}: not an ELF image");
        compiled += 1;
    }
    let _ = writeln!(
        std::io::stderr(),
        "kernels_compile_to_ptx_without_fma: {compiled} targets compiled (PTX and CUBIN)"
    );
}

fn meta(kind: ModelKind, f: usize, w: usize, d: usize) -> ModelMeta {
    ModelMeta {
        format: 1,
        kind,
        window: w,
        n_features: f,
        features: FeatureNames::default(),
        nu: 0.1,
        score: "test".into(),
        threshold: 0.5,
        rff: (kind == ModelKind::Rff).then_some(RffMeta {
            components: d,
            gamma: 0.1,
            seed: 1,
        }),
        calibration: None,
        training: serde_json::Value::Null,
        provenance: Provenance::default(),
    }
}

fn values(r: &mut Lcg, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.next() * scale).collect()
}

/// Per-feature calibration, so that the folding is compared too.
fn calibration(r: &mut Lcg, f: usize) -> Calibration {
    Calibration {
        offset: values(r, f, 0.3),
        scale: values(r, f, 0.5)
            .into_iter()
            .map(|s| 1.0 + s.abs())
            .collect(),
    }
}

fn linear_model(f: usize, w: usize, seed: u64) -> Model {
    let mut r = Lcg(seed);
    Model {
        meta: meta(ModelKind::Linear, f, w, 0),
        params: Params::Linear {
            weight: values(&mut r, f * w, 1.0),
            bias: values(&mut r, f, 0.5),
        },
        calibration: Some(calibration(&mut r, f)),
    }
}

/// An RFF model drawn with orthogonal sampling: cosine-sine pairs (D odd: the last
/// frequency has no sine).
fn paired_rff_model(f: usize, w: usize, d: usize, seed: u64) -> Model {
    let mut r = Lcg(seed);
    let map = RffMap::draw(RffSampling::Orthogonal, d, w, 0.1, seed);
    Model {
        meta: meta(ModelKind::Rff, f, w, d),
        params: Params::Rff {
            mean: values(&mut r, f, 0.1),
            inv_std: values(&mut r, f, 0.5)
                .into_iter()
                .map(|x| 1.0 + x.abs())
                .collect(),
            omega: map.omega,
            phase: map.phase,
            weight: values(&mut r, f * d, 1.0),
            bias: values(&mut r, f, 0.5),
        },
        calibration: Some(calibration(&mut r, f)),
    }
}

/// `tol_f` of the module doc for every (window, feature) of `windows`.
fn tolerances(cpu: &Scorer, windows: &[f32]) -> Vec<f64> {
    let (w, width) = (cpu.window(), cpu.width());
    let b = windows.len() / (w * width);
    let eps = f64::from(f32::EPSILON);
    let mut tol = vec![0f64; b * width];
    match cpu.folded() {
        Folded::Linear { weight_t, bias } => {
            for bi in 0..b {
                for j in 0..width {
                    let mut sum = f64::from(bias[j].abs());
                    for k in 0..w {
                        let x = windows[(bi * w + k) * width + j];
                        sum += f64::from((weight_t[k * width + j] * x).abs());
                    }
                    tol[bi * width + j] = (w + 2) as f64 * eps * sum;
                }
            }
        }
        Folded::Rff {
            weight,
            bias,
            phase,
            ..
        } => {
            let d = phase.len();
            for j in 0..width {
                let (blk, lane) = (j / FOLDED_BLOCK, j % FOLDED_BLOCK);
                let a: f64 = (0..d)
                    .map(|di| f64::from(weight[(blk * d + di) * FOLDED_BLOCK + lane].abs()))
                    .sum();
                let t = 1e-6 * a + (d + w + 2) as f64 * eps * (a + f64::from(bias[j].abs()));
                for bi in 0..b {
                    tol[bi * width + j] = t;
                }
            }
        }
    }
    tol
}

/// The CPU's and the GPU's scores and anomalies of `model`'s features `range`, for every
/// batch size of `batches`: full scores within tolerance, compacted anomalies equal.
fn check_parity(name: &str, model: &Model, range: std::ops::Range<usize>, batches: &[usize]) {
    let cpu = Scorer::new(model, range.clone());
    let (w, width) = (cpu.window(), cpu.width());
    let max_b = *batches.iter().max().unwrap();
    let mut r = Lcg(range.start as u64 * 7 + width as u64);
    // mostly normal values, a few far out: scores on both sides of any threshold
    let all: Vec<f32> = (0..max_b * w * width)
        .map(|i| {
            let v = r.next() * 2.0;
            if i % 53 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect();
    // the threshold: about 5% of the CPU's scores at or over it
    let mut cpu_all = vec![0f32; max_b * width];
    cpu.score(&all, &mut cpu_all);
    let mut sorted = cpu_all.clone();
    sorted.sort_by(f32::total_cmp);
    let threshold = sorted[sorted.len() * 95 / 100];
    let mut gpu = GpuScorer::new(model, range.clone(), threshold).expect("GPU scorer");
    assert_eq!((gpu.lo(), gpu.width()), (range.start, width));
    let (mut max_diff, mut identical, mut total, mut borderline) = (0f64, 0usize, 0usize, 0usize);
    for &b in batches {
        let windows = &all[..b * w * width];
        let cpu_scores = &cpu_all[..b * width];
        let mut gpu_scores = vec![f32::NAN; b * width];
        gpu.score(windows, &mut gpu_scores).expect("GPU scores");
        let tol = tolerances(&cpu, windows);
        for (i, (&c, &g)) in cpu_scores.iter().zip(&gpu_scores).enumerate() {
            let diff = (f64::from(c) - f64::from(g)).abs();
            assert!(
                diff <= tol[i],
                "{name} B={b}: window {} feature {}: CPU {c} GPU {g}, |diff| {diff:e} > {:e}",
                i / width,
                i % width,
                tol[i]
            );
            max_diff = max_diff.max(diff);
            identical += usize::from(c.to_bits() == g.to_bits());
        }
        total += b * width;
        let hits = gpu.score_compacted(windows).expect("GPU anomalies");
        assert_eq!(hits.threshold, threshold);
        let want: Vec<(u32, u32)> = cpu_scores
            .iter()
            .enumerate()
            .filter(|(_, &s)| s >= threshold)
            .map(|(i, _)| ((i / width) as u32, (i % width) as u32))
            .collect();
        let got: Vec<(u32, u32)> = hits.hits.iter().map(|h| (h.0, h.1)).collect();
        assert!(
            got.windows(2).all(|p| p[0] < p[1]),
            "{name} B={b}: anomalies not by window and feature"
        );
        let near = |&(wi, fi): &(u32, u32)| {
            let i = wi as usize * width + fi as usize;
            (f64::from(cpu_scores[i]) - f64::from(threshold)).abs() <= tol[i]
        };
        let only_gpu: Vec<_> = got.iter().filter(|p| !want.contains(p)).collect();
        let only_cpu: Vec<_> = want.iter().filter(|p| !got.contains(p)).collect();
        borderline += only_gpu.len() + only_cpu.len();
        assert!(
            only_gpu.iter().chain(&only_cpu).all(|p| near(p)),
            "{name} B={b}: anomaly sets differ beyond the tolerance: GPU only {only_gpu:?}, CPU only {only_cpu:?}"
        );
        // each device anomaly carries the score the full copy gave
        for &(wi, fi, s) in &hits.hits {
            let i = wi as usize * width + fi as usize;
            assert_eq!(s.to_bits(), gpu_scores[i].to_bits(), "{name} B={b}");
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "{name}: {total} scores, {identical} bit-identical to the CPU's, max |diff| {max_diff:e}, {borderline} anomalies differing within tolerance of the threshold"
    );
}

const BATCHES: [usize; 7] = [1, 2, 7, 64, 100, 255, 256];

#[test]
fn linear_parity_with_cpu() {
    if !gpu_or_skip("linear_parity_with_cpu") {
        return;
    }
    for f in [1, 33, 1001, 4099] {
        let model = linear_model(f, 5, f as u64);
        check_parity(&format!("linear F={f}"), &model, 0..f, &BATCHES);
        // a partition that starts inside the model
        check_parity(&format!("linear F={f} tail"), &model, f / 3..f, &[1, 64]);
    }
}

#[test]
fn rff_parity_with_cpu() {
    if !gpu_or_skip("rff_parity_with_cpu") {
        return;
    }
    for f in [1, 33, 1001, 4099] {
        // random phases (one cosine per component), calibrated
        let mut model = random_rff_model(f, 5, f as u64);
        model.calibration = Some(calibration(&mut Lcg(3), f));
        check_parity(&format!("rff F={f}"), &model, 0..f, &BATCHES);
        check_parity(&format!("rff F={f} tail"), &model, f / 3..f, &[1, 64]);
    }
}

#[test]
fn paired_rff_parity_with_cpu() {
    if !gpu_or_skip("paired_rff_parity_with_cpu") {
        return;
    }
    // D = 32 as the shipped model; D = 7: the last frequency without its sine; W = 30 and
    // D = 300: the sines no longer fit in shared memory and are computed twice; W = 100
    // and W = 200: blocks of 64 and of 32 threads, for the windows to fit.
    for (f, w, d) in [
        (1001, 5, 32),
        (4099, 5, 32),
        (33, 5, 7),
        (1001, 30, 300),
        (101, 100, 9),
        (65, 200, 8),
    ] {
        let model = paired_rff_model(f, w, d, f as u64);
        let Params::Rff { omega, phase, .. } = &model.params else {
            unreachable!()
        };
        assert!(
            tidewatch::model::trig::sincos_pairs(omega, phase, w).is_some(),
            "orthogonal sampling draws pairs"
        );
        check_parity(
            &format!("paired rff F={f} W={w} D={d}"),
            &model,
            0..f,
            &BATCHES,
        );
    }
}

/// The kernel model's departure guard on the GPU: values far outside the training data
/// (1e30, -1e6, 40σ), where the cosines wrap, get the CPU detector's guarded scores, so
/// the GPU flags every such window as the CPU does and its scores still grow with the
/// departure; a NaN reaches nowhere on either. Without the guard the GPU's scores of
/// these windows are the kernel's wrapped noise.
#[test]
fn departures_too_large_for_the_kernel_are_flagged_as_on_the_cpu() {
    if !gpu_or_skip("departures_too_large_for_the_kernel_are_flagged_as_on_the_cpu") {
        return;
    }
    let (f, w, b) = (1001, 5, 64);
    for (name, model) in [
        ("rff", random_rff_model(f, w, 21)),
        ("paired rff", paired_rff_model(f, w, 32, 22)),
    ] {
        let mut windows = values(&mut Lcg(23), b * w * f, 1.0);
        // window i, feature j gets a departure in its last frame, of a size by i
        let far = [1e30f32, -1e6, 40.0, f32::NAN, 12.0];
        for bi in 0..b {
            for j in (bi % 7..f).step_by(97) {
                windows[(bi * w + w - 1) * f + j] = far[(bi + j) % far.len()];
            }
        }
        let threshold = 0.5;
        let mut cpu = tidewatch::detect::RffOcSvm::new(&model, 0..f)
            .unwrap()
            .with_threshold(threshold);
        let Scores::All(want) = cpu.score(&windows) else {
            panic!("the CPU detector gives every score")
        };
        let mut gpu = GpuScorer::new(&model, 0..f, threshold)
            .unwrap()
            .with_departure_guard();
        let mut got = vec![f32::NAN; b * f];
        gpu.score(&windows, &mut got).unwrap();
        let tol = tolerances(&Scorer::new(&model, 0..f), &windows);
        let mut guarded = 0;
        for (i, (&c, &g)) in want.iter().zip(&got).enumerate() {
            let x = windows[((i / f) * w + w - 1) * f + i % f];
            if x.abs() >= 1e6 {
                guarded += 1;
                assert!(
                    c >= threshold && g >= threshold,
                    "{name} {i}: {x} gives CPU {c} GPU {g}"
                );
                assert_eq!(c.to_bits(), g.to_bits(), "{name} {i}: the guard's score");
            } else if c.is_nan() {
                assert!(g.is_nan(), "{name} {i}: CPU NaN GPU {g}");
            } else {
                let diff = (f64::from(c) - f64::from(g)).abs();
                assert!(
                    diff <= tol[i].max(f64::from(c.abs()) * 1e-6),
                    "{name} {i}: CPU {c} GPU {g}"
                );
            }
        }
        assert!(guarded > 100, "{name}: {guarded} guarded windows");
        // the anomalies brought back are the guarded ones too
        let hits = gpu.score_compacted(&windows).unwrap();
        let flagged: std::collections::HashSet<usize> = hits
            .hits
            .iter()
            .map(|&(wi, fi, _)| wi as usize * f + fi as usize)
            .collect();
        for (i, &c) in want.iter().enumerate() {
            let x = windows[((i / f) * w + w - 1) * f + i % f];
            if x.abs() >= 1e6 {
                assert!(
                    flagged.contains(&i),
                    "{name} {i}: {x} (CPU {c}) not brought back"
                );
            }
        }
    }
}

/// More anomalies than the device keeps (2^20): the batch is scored again with every score
/// copied back, and still every anomaly comes back, in order.
#[test]
fn a_storm_of_anomalies_is_complete() {
    if !gpu_or_skip("a_storm_of_anomalies_is_complete") {
        return;
    }
    let (f, w, b) = (4099, 5, 256);
    let model = linear_model(f, w, 5);
    let windows = values(&mut Lcg(9), b * w * f, 2.0);
    let mut gpu = GpuScorer::new(&model, 0..f, f32::MIN).unwrap();
    let hits = gpu.score_compacted(&windows).unwrap();
    assert_eq!(hits.hits.len(), b * f, "every score is over f32::MIN");
    let cpu_scorer = Scorer::new(&model, 0..f);
    let mut cpu = vec![0f32; b * f];
    cpu_scorer.score(&windows, &mut cpu);
    let tol = tolerances(&cpu_scorer, &windows);
    for (i, &(wi, fi, s)) in hits.hits.iter().enumerate() {
        assert_eq!((wi as usize, fi as usize), (i / f, i % f));
        let diff = (f64::from(cpu[i]) - f64::from(s)).abs();
        assert!(
            diff <= tol[i],
            "window {wi} feature {fi}: CPU {} GPU {s}",
            cpu[i]
        );
    }
}

/// The dataflow with `DEFAULT_DEVICE=cuda`, on 1 and 3 workers (a stream each), gives the
/// CPU's verdicts.
#[test]
fn the_dataflow_on_the_gpu_gives_the_cpus_verdicts() {
    if !gpu_or_skip("the_dataflow_on_the_gpu_gives_the_cpus_verdicts") {
        return;
    }
    let (f, w, n) = (1001, 5, 80);
    let model = Arc::new(random_rff_model(f, w, 11));
    let frames = random_frames(n, f, 12);
    let run = |device: Device, threads: usize, batch: usize| -> Vec<(u64, Vec<(u32, f32)>)> {
        let got: Arc<Mutex<Vec<FrameResult>>> = Arc::default();
        let sink = Arc::clone(&got);
        let frames = frames.clone();
        runtime::run(
            &ClusterArgs {
                threads,
                ..ClusterArgs::default()
            },
            Arc::clone(&model),
            Settings {
                device,
                batch_size: batch,
                ..Settings::default()
            },
            runtime::on_worker_zero(move || {
                Ok(Box::new(VecSource(frames.clone().into_iter())) as Box<dyn FrameSource>)
            }),
            SinkSpec {
                on_result: Some(Arc::new(move |r: &FrameResult| {
                    sink.lock().unwrap().push(r.clone())
                })),
                ..SinkSpec::default()
            },
        )
        .unwrap();
        let got = got.lock().unwrap();
        got.iter()
            .map(|r| (r.seq, r.hits.iter().map(|h| (h.feature, h.score)).collect()))
            .collect()
    };
    let cpu = run(Device::Cpu, 1, 64);
    assert!(
        cpu.iter().any(|r| !r.1.is_empty()),
        "the model flags something"
    );
    for (threads, batch) in [(1, 64), (3, 7), (1, 1)] {
        let on_gpu = run(Device::Cuda, threads, batch);
        assert_eq!(on_gpu.len(), cpu.len(), "-w {threads} batch {batch}");
        // the same frames flagged, the same features, scores within float rounding
        for (g, c) in on_gpu.iter().zip(&cpu) {
            assert_eq!(g.0, c.0);
            let gf: Vec<u32> = g.1.iter().map(|h| h.0).collect();
            let cf: Vec<u32> = c.1.iter().map(|h| h.0).collect();
            assert_eq!(gf, cf, "frame {}: -w {threads} batch {batch}", g.0);
            for (gs, cs) in g.1.iter().zip(&c.1) {
                assert!(
                    (gs.1 - cs.1).abs() <= 1e-4,
                    "frame {}: {gs:?} vs {cs:?}",
                    g.0
                );
            }
        }
    }
    let sample = gpu::sample().expect("a GPU in use is sampled");
    assert!(sample.memory_total_bytes > 0 && sample.memory_used_bytes > 0);
}

/// Without a GPU, `cuda` is refused with the reason, and `auto` takes the CPU.
#[test]
fn without_a_gpu_cuda_is_refused_and_auto_takes_the_cpu() {
    let Err(why) = gpu::probe() else {
        skip(
            "without_a_gpu_cuda_is_refused_and_auto_takes_the_cpu",
            "a GPU is usable here",
        );
        return;
    };
    let err = gpu::resolve(Device::Cuda).unwrap_err().to_string();
    assert!(err.contains(&why), "{err}");
    let auto = gpu::resolve(Device::Auto).unwrap();
    assert_eq!(auto.used, Device::Cpu);
    assert!(auto.reason.contains(&why));
    // and a run asked for cuda fails at start-up, saying why
    let model = Arc::new(random_rff_model(8, 3, 1));
    let err = runtime::run(
        &ClusterArgs::default(),
        model,
        Settings {
            device: Device::Cuda,
            ..Settings::default()
        },
        runtime::no_input(),
        SinkSpec::default(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("DEFAULT_DEVICE=cuda"),
        "{err:#}"
    );
}

/// A model the GPU cannot score (an RFF window longer than its kernel takes) sends `auto`
/// to the CPU, saying why, and stops `cuda` with the reason; a linear model of the same
/// window stays on the GPU. Needs no GPU: the choice is checked before any is touched.
#[test]
fn a_model_the_gpu_cannot_score_sends_auto_to_the_cpu() {
    let choice = |requested| gpu::DeviceChoice {
        requested,
        used: Device::Cuda,
        gpu: None,
        reason: "a GPU is usable".into(),
    };
    let long = paired_rff_model(3, 400, 4, 1);
    let auto = gpu::fit_to_model(choice(Device::Auto), &long).unwrap();
    assert_eq!(auto.used, Device::Cpu);
    assert!(auto.reason.contains("window 400"), "{}", auto.reason);
    let err = gpu::fit_to_model(choice(Device::Cuda), &long)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DEFAULT_DEVICE=cuda") && err.contains("window 400"),
        "{err}"
    );
    let linear = linear_model(3, 400, 1);
    let kept = gpu::fit_to_model(choice(Device::Cuda), &linear).unwrap();
    assert_eq!(kept.used, Device::Cuda);
}

/// More workers than features leaves a worker without features: its backend needs no
/// GPU and scores empty batches. Needs no GPU.
#[test]
fn a_worker_without_features_needs_no_gpu() {
    let model = linear_model(2, 5, 1);
    let mut detector = tidewatch::detect::ocsvm(Device::Cuda, &model, 2..2, 0.0).unwrap();
    assert_eq!(detector.device(), Device::Cpu);
    assert_eq!(detector.features().len(), 0);
    match detector.score(&[]) {
        Scores::All(scores) => assert!(scores.is_empty()),
        Scores::Compacted(c) => assert!(c.hits.is_empty()),
    }
}

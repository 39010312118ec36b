//! Scoring throughput, GPU against CPU: batches of 1, 64 and 256 windows (W = 5) of
//! 25,000 and 250,000 features, for the linear model and the kernel model (D = 32,
//! cosine-sine pairs: the layout of the shipped default model).
//!
//! `cpu` is the CPU scorer on one core (full scores, `[B][F]`); `gpu` is the pipeline's
//! GPU path: the batch copied in through pinned memory, scored, thresholded and compacted
//! on the device, the anomalies copied back. The GPU rows are measured only when a GPU is
//! usable (otherwise the bench says why and measures the CPU alone).
//!
//! Criterion's throughput is in windows per second (`elem/s`); features per second are
//! that times F (in the benchmark's name).
//!
//! `cargo bench --features gpu --bench gpu` (add `-- 250000` to run only the large rows).

mod common;
use common::uniform;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidewatch::detect::gpu::{self, GpuScorer};
use tidewatch::model::{
    FeatureNames, Model, ModelKind, ModelMeta, Params, Provenance, RffMeta, Scorer,
};
use tidewatch::train::rff::{RffMap, RffSampling};

const W: usize = 5;
const D: usize = 32;

fn model(kind: ModelKind, f: usize) -> Model {
    let params = match kind {
        ModelKind::Linear => Params::Linear {
            weight: uniform(f * W, 1),
            bias: uniform(f, 2),
        },
        ModelKind::Rff => {
            let map = RffMap::draw(RffSampling::Orthogonal, D, W, 0.02, 0);
            Params::Rff {
                mean: uniform(f, 3),
                inv_std: vec![10.0; f],
                omega: map.omega,
                phase: map.phase,
                weight: uniform(f * D, 6),
                bias: uniform(f, 7),
            }
        }
    };
    Model {
        meta: ModelMeta {
            format: 1,
            kind,
            window: W,
            n_features: f,
            features: FeatureNames::default(),
            nu: 0.01,
            score: String::new(),
            threshold: 0.9,
            rff: (kind == ModelKind::Rff).then_some(RffMeta {
                components: D,
                gamma: 0.02,
                seed: 0,
            }),
            calibration: None,
            training: serde_json::Value::Null,
            provenance: Provenance::default(),
        },
        params,
        calibration: None,
    }
}

fn scoring(c: &mut Criterion) {
    let gpu_usable = match gpu::probe() {
        Ok(g) => {
            eprintln!("GPU: {} ({} MiB)", g.name, g.memory_total_bytes >> 20);
            true
        }
        Err(why) => {
            eprintln!("GPU rows skipped: no usable CUDA device ({why})");
            false
        }
    };
    for f in [25_000usize, 250_000] {
        let mut group = c.benchmark_group(format!("score_{f}_features"));
        // a CPU batch of 256 windows of 250,000 RFF features takes seconds: few samples
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for (name, kind) in [("linear", ModelKind::Linear), ("rff", ModelKind::Rff)] {
            let m = model(kind, f);
            let cpu = Scorer::new(&m, 0..f);
            let mut gpu_scorer =
                gpu_usable.then(|| GpuScorer::new(&m, 0..f, m.meta.threshold).expect("GPU scorer"));
            for batch in [1usize, 64, 256] {
                let windows = uniform(batch * W * f, 9);
                let mut out = vec![0f32; batch * f];
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_function(BenchmarkId::new(format!("{name}/cpu"), batch), |b| {
                    b.iter(|| cpu.score(&windows, &mut out))
                });
                if let Some(g) = gpu_scorer.as_mut() {
                    group.bench_function(BenchmarkId::new(format!("{name}/gpu"), batch), |b| {
                        b.iter(|| g.score_compacted(&windows).expect("GPU scoring"))
                    });
                }
            }
        }
        group.finish();
    }
}

criterion_group!(benches, scoring);
criterion_main!(benches);

//! Scoring cost: one frame and a batch of 64 windows of 25,000 features (W = 5), for the
//! linear and the RFF (D = 32) models, on one core. The RFF model comes twice: with
//! independent random phases (`rff`: one cosine per feature, as gaussian sampling draws
//! them) and with cosine-sine pairs (`rff_orthogonal`: the layout of orthogonal sampling
//! and of the shipped default model, scored from one angle per pair).

mod common;
use common::uniform;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidewatch::model::{
    FeatureNames, Model, ModelKind, ModelMeta, Params, Provenance, RffMeta, Scorer,
};
use tidewatch::train::rff::{RffMap, RffSampling};

const F: usize = 25_000;
const W: usize = 5;
const D: usize = 32;

/// The RFF models' frequency layouts.
#[derive(Clone, Copy)]
enum Phases {
    Random,
    Orthogonal,
}

fn model(kind: ModelKind, phases: Phases) -> Model {
    let params = match kind {
        ModelKind::Linear => Params::Linear {
            weight: uniform(F * W, 1),
            bias: uniform(F, 2),
        },
        ModelKind::Rff => {
            let (omega, phase) = match phases {
                Phases::Random => (uniform(D * W, 4), uniform(D, 5)),
                Phases::Orthogonal => {
                    let map = RffMap::draw(RffSampling::Orthogonal, D, W, 0.02, 0);
                    (map.omega, map.phase)
                }
            };
            Params::Rff {
                mean: uniform(F, 3),
                inv_std: vec![10.0; F],
                omega,
                phase,
                weight: uniform(F * D, 6),
                bias: uniform(F, 7),
            }
        }
    };
    Model {
        meta: ModelMeta {
            format: 1,
            kind,
            window: W,
            n_features: F,
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
    let mut group = c.benchmark_group("score_25k_features");
    let models = [
        ("linear", ModelKind::Linear, Phases::Random),
        ("rff", ModelKind::Rff, Phases::Random),
        ("rff_orthogonal", ModelKind::Rff, Phases::Orthogonal),
    ];
    for (name, kind, phases) in models {
        let scorer = Scorer::new(&model(kind, phases), 0..F);
        for batch in [1usize, 64] {
            let windows = uniform(batch * W * F, 9);
            let mut out = vec![0f32; batch * F];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(name, format!("batch_{batch}")),
                &batch,
                |b, _| b.iter(|| scorer.score(&windows, &mut out)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);

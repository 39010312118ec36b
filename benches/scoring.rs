//! Scoring cost: one frame and a batch of 64 windows of 25,000 features (W = 5), for the
//! linear and the RFF (D = 32) models, on one core.

mod common;
use common::uniform;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidewatch::model::{
    FeatureNames, Model, ModelKind, ModelMeta, Params, Provenance, RffMeta, Scorer,
};

const F: usize = 25_000;
const W: usize = 5;
const D: usize = 32;

fn model(kind: ModelKind) -> Model {
    let params = match kind {
        ModelKind::Linear => Params::Linear {
            weight: uniform(F * W, 1),
            bias: uniform(F, 2),
        },
        ModelKind::Rff => Params::Rff {
            mean: uniform(F, 3),
            inv_std: vec![10.0; F],
            omega: uniform(D * W, 4),
            phase: uniform(D, 5),
            weight: uniform(F * D, 6),
            bias: uniform(F, 7),
        },
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
    for kind in [ModelKind::Linear, ModelKind::Rff] {
        let scorer = Scorer::new(&model(kind), 0..F);
        for batch in [1usize, 64] {
            let windows = uniform(batch * W * F, 9);
            let mut out = vec![0f32; batch * F];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{kind:?}").to_lowercase(), format!("batch_{batch}")),
                &batch,
                |b, _| b.iter(|| scorer.score(&windows, &mut out)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);

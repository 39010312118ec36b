//! Replay throughput of the whole dataflow (generator → split → window → batch → score →
//! threshold → merge) with the shipped default model, at -w 1 and -w 2.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidewatch::model::Model;
use tidewatch::runtime::{self, ClusterArgs, Settings, SinkSpec};
use tidewatch::sources::{FrameSource, Generator, GeneratorConfig, GeneratorSource};

const FRAMES: u64 = 100;

fn replay(c: &mut Criterion) {
    let model = Arc::new(Model::load(&Model::resolve("default")).expect("models/default"));
    let mut group = c.benchmark_group("replay_default_model");
    group.sample_size(10);
    group.throughput(Throughput::Elements(FRAMES));
    for threads in [1usize, 2] {
        group.bench_with_input(
            BenchmarkId::new("threads", threads),
            &threads,
            |b, &threads| {
                b.iter(|| {
                    let n = model.n_features();
                    runtime::run(
                        &ClusterArgs {
                            threads,
                            ..ClusterArgs::default()
                        },
                        Arc::clone(&model),
                        Settings::default(),
                        runtime::on_worker_zero(move || {
                            let g = Generator::new(GeneratorConfig {
                                n_features: n,
                                seed: 1,
                                ..GeneratorConfig::default()
                            })?;
                            Ok(Box::new(GeneratorSource::new(g, Some(FRAMES)))
                                as Box<dyn FrameSource>)
                        }),
                        SinkSpec::default(),
                    )
                    .expect("replay runs")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);

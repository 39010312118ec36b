//! The per-frame work of ingest, on one core: gzip inflate of one 25,000-feature frame
//! exactly as the NestJS client sends it (into a new buffer, as `serve` does, and into a
//! reused one), JSON decode of the inflated body into model order (`decode_frame`), and
//! both together.
//!
//! Two inputs, both encoded by the load generator's encoder (`loadgen::client_body`):
//! `client`, values uniform in [0, 1) like the client's `Math.random()` (CONTRACT.md),
//! and `generator`, the synthetic plant's values that `tidewatch bench` and `loadgen`
//! send (other digits, so another compression ratio).

mod common;
use common::uniform;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidewatch::load::{client_body, FrameEncoder};
use tidewatch::model::FeatureIndex;
use tidewatch::sources::decode::{decode_frame_general, inflate_if_gzip_into};
use tidewatch::sources::{decode_frame, inflate_if_gzip, GeneratorConfig, KeyPolicy};

const F: usize = 25_000;
/// What `serve` allows by default.
const MAX_INFLATED: usize = 16 << 20;

/// The two bodies, gzip as sent on the wire.
fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let client = client_body(&uniform(F, 1), &mut String::new());
    let (generator, _) = FrameEncoder::new(GeneratorConfig {
        n_features: F,
        ..GeneratorConfig::default()
    })
    .expect("generator")
    .encode_next();
    vec![
        ("client", client.to_vec()),
        ("generator", generator.to_vec()),
    ]
}

fn decode(c: &mut Criterion) {
    let index = FeatureIndex::numbered(F);
    let policy = KeyPolicy::default();
    let inputs = inputs();
    for (name, gz) in &inputs {
        let json = inflate_if_gzip(gz, MAX_INFLATED).expect("inflates");
        eprintln!(
            "{name}: {F} features, {} bytes gzip, {} bytes JSON",
            gz.len(),
            json.len()
        );
    }

    let mut group = c.benchmark_group("gzip_inflate_25k");
    for (name, gz) in &inputs {
        // Bytes of wire input: the figure to compare with a NIC or a client's rate.
        group.throughput(Throughput::Bytes(gz.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), gz, |b, gz| {
            b.iter(|| inflate_if_gzip(gz, MAX_INFLATED).expect("inflates").len())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("gzip_inflate_into_25k");
    for (name, gz) in &inputs {
        group.throughput(Throughput::Bytes(gz.len() as u64));
        let mut buf = Vec::new();
        group.bench_with_input(BenchmarkId::from_parameter(name), gz, |b, gz| {
            b.iter(|| {
                inflate_if_gzip_into(gz, MAX_INFLATED, &mut buf)
                    .expect("inflates")
                    .len()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("json_decode_25k");
    group.throughput(Throughput::Elements(F as u64));
    for (name, gz) in &inputs {
        let json = inflate_if_gzip(gz, MAX_INFLATED)
            .expect("inflates")
            .to_vec();
        // One buffer reused, as a long-lived decoder would; serve allocates one per
        // frame, which costs little next to parsing 25,000 numbers.
        let mut values = Vec::with_capacity(F);
        group.bench_with_input(BenchmarkId::from_parameter(name), &json, |b, json| {
            b.iter(|| {
                decode_frame(json, &index, policy, &mut values).expect("decodes");
                values[F - 1]
            })
        });
    }

    // The same client frame with extra top-level keys in front (`seq`, `entity`), which
    // the fast path now skips; and the general decoder on the plain frame, the cost of a
    // frame the fast path leaves, measured in the same run.
    let client = inflate_if_gzip(&inputs[0].1, MAX_INFLATED)
        .expect("inflates")
        .to_vec();
    let mut with_keys = br#"{"seq":123456,"entity":"pump-3","#.to_vec();
    with_keys.extend_from_slice(&client[1..]);
    let mut values = Vec::with_capacity(F);
    group.bench_function("client_with_seq_and_entity", |b| {
        b.iter(|| {
            decode_frame(&with_keys, &index, policy, &mut values).expect("decodes");
            values[F - 1]
        })
    });
    group.bench_function("client_general_path", |b| {
        b.iter(|| {
            decode_frame_general(&client, &index, policy, &mut values).expect("decodes");
            values[F - 1]
        })
    });
    group.finish();

    let mut group = c.benchmark_group("inflate_and_decode_25k");
    group.throughput(Throughput::Elements(F as u64));
    for (name, gz) in &inputs {
        let mut values = Vec::with_capacity(F);
        group.bench_with_input(BenchmarkId::from_parameter(name), gz, |b, gz| {
            b.iter(|| {
                let json = inflate_if_gzip(gz, MAX_INFLATED).expect("inflates");
                decode_frame(&json, &index, policy, &mut values).expect("decodes");
                values[F - 1]
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);

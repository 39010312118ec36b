//! Sources through the public API: file formats written by `FrameWriter` and read back by
//! `open`/`read_matrix`, bad records, CSV column mapping, the SMAP data, and the generator.

use std::path::Path;

use tidewatch::commands::generate::{self, GenerateArgs};
use tidewatch::commands::SyntheticArgs;
use tidewatch::model::FeatureIndex;
use tidewatch::sources::file::open;
use tidewatch::sources::{
    read_matrix, AnomalyKind, FrameSource, FrameWriter, Generator, GeneratorConfig,
    GeneratorSource, Injection, KeyPolicy, MissingKeys, Pull, UnknownKeys,
};
use tidewatch::types::Frame;

fn generator(n: usize, seed: u64, rate: f64) -> Generator {
    Generator::new(GeneratorConfig {
        n_features: n,
        seed,
        anomaly_rate: rate,
        ..GeneratorConfig::default()
    })
    .unwrap()
}

fn frames(n: usize, count: usize) -> Vec<Frame> {
    let mut g = generator(n, 11, 0.01);
    (0..count).map(|_| g.next_frame().0).collect()
}

/// Every step of a source until `Done`, as frames or the bad records' errors.
fn drain(source: &mut dyn FrameSource) -> Vec<Result<Frame, String>> {
    let mut out = Vec::new();
    loop {
        match source.pull() {
            Pull::Frame(f) => out.push(Ok(f)),
            Pull::Bad(e) => out.push(Err(e.to_string())),
            Pull::Idle => panic!("file sources are never idle"),
            Pull::Done => return out,
        }
    }
}

fn read_frames(path: &Path, index: &FeatureIndex) -> Vec<Frame> {
    let mut source = open(path, index, KeyPolicy::default()).unwrap();
    drain(source.as_mut())
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn every_format_reads_back_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let index = FeatureIndex::numbered(40);
    let mut written = frames(40, 25);
    for (i, f) in written.iter_mut().enumerate() {
        f.meta.id = Some(format!("frame \"{i}\""));
        f.meta.event_ms = Some(1_795_428_000_000 + i as i64);
    }
    for name in ["f.jsonl", "f.jsonl.gz", "f.csv", "f.csv.gz", "f.npy"] {
        let path = dir.path().join(name);
        let mut w = FrameWriter::create(&path, &index).unwrap();
        for f in &written {
            w.write(f).unwrap();
        }
        assert_eq!(w.rows(), 25);
        w.finish().unwrap();

        let read = read_frames(&path, &index);
        assert_eq!(read.len(), written.len(), "{name}");
        let keeps_meta = name.starts_with("f.jsonl");
        for (r, w) in read.iter().zip(&written) {
            assert_eq!(r.values, w.values, "{name}");
            assert_eq!(r.meta.source, 0);
            assert!(r.meta.received_ms > 0);
            if keeps_meta {
                assert_eq!(r.meta.id, w.meta.id, "{name}");
                assert_eq!(r.meta.event_ms, w.meta.event_ms, "{name}");
            }
        }

        let m = read_matrix(&path).unwrap();
        assert_eq!((m.rows, m.cols), (25, 40), "{name}");
        assert_eq!(m.row(3), &written[3].values[..], "{name}");
        match name {
            "f.npy" => assert_eq!(m.names, None),
            _ => assert_eq!(m.names.unwrap()[39], "feature_39", "{name}"),
        }
    }
}

#[test]
fn jsonl_lines_are_the_seed_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.jsonl");
    let mut w = FrameWriter::create(&path, &FeatureIndex::numbered(3)).unwrap();
    let mut frame = Frame {
        values: vec![0.8236497, 1.5e-7, 0.0],
        ..Frame::default()
    };
    w.write(&frame).unwrap();
    frame.meta.id = Some("a".into());
    w.write(&frame).unwrap();
    w.finish().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"data":{"feature_0":0.8236497,"feature_1":0.00000015,"feature_2":0}}"#
    );
    assert!(
        lines[1].ends_with(r#""feature_2":0},"id":"a"}"#),
        "{}",
        lines[1]
    );
}

#[test]
fn a_bad_jsonl_line_is_reported_and_the_rest_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let line = |v: &str| format!("{{\"data\":{{\"feature_0\":0.5,\"feature_1\":{v}}}}}\n");
    let text = [
        line("0.1"),
        line("0.2"),
        "\n".to_string(),
        line("\"NaN\""),
        line("0.4"),
        "{\"data\": oops\n".to_string(),
        line("0.6"),
    ]
    .concat();
    std::fs::write(&path, text).unwrap();
    let mut source = open(&path, &FeatureIndex::numbered(2), KeyPolicy::default()).unwrap();
    let steps = drain(source.as_mut());
    assert_eq!(steps.len(), 6);
    let values: Vec<f32> = steps
        .iter()
        .filter_map(|s| s.as_ref().ok().map(|f| f.values[1]))
        .collect();
    assert_eq!(values, [0.1, 0.2, 0.4, 0.6]);
    let bad: Vec<&String> = steps.iter().filter_map(|s| s.as_ref().err()).collect();
    assert_eq!(bad.len(), 2);
    // Line numbers count the blank line, so they match what an editor shows.
    assert!(bad[0].contains("mixed.jsonl:4: "), "{}", bad[0]);
    assert!(bad[0].contains("\"feature_1\""), "{}", bad[0]);
    assert!(bad[1].contains("mixed.jsonl:6: invalid JSON"), "{}", bad[1]);
}

/// A line nested 18,750 levels deep (the HTTP denial of service, in a file) is one bad
/// line with its depth, not a stack overflow that ends the replay.
#[test]
fn a_deeply_nested_jsonl_line_is_one_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.jsonl");
    let good = "{\"data\":{\"feature_0\":0.5,\"feature_1\":0.1}}\n";
    let deep = format!("{{\"x\":{}}}\n", "[".repeat(18_750));
    std::fs::write(&path, [good, &deep, good].concat()).unwrap();
    let mut source = open(&path, &FeatureIndex::numbered(2), KeyPolicy::default()).unwrap();
    let steps = drain(source.as_mut());
    assert_eq!(steps.len(), 3);
    assert!(steps[0].is_ok() && steps[2].is_ok());
    let bad = steps[1].as_ref().unwrap_err();
    assert!(
        bad.contains("deep.jsonl:2: JSON nests 18751 levels deep"),
        "{bad}"
    );
}

#[test]
fn csv_columns_are_mapped_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shuffled.csv");
    std::fs::write(
        &path,
        "feature_2,id,feature_0,timestamp,feature_1\n\
         2.5,x1,0.5,2026-11-23T10:00:00Z,1.5\n\
         2.75,,0.75,,1.75\n\
         oops,x3,0,,1\n\
         3,x4,1,1795428000000,2\n",
    )
    .unwrap();
    let mut source = open(&path, &FeatureIndex::numbered(3), KeyPolicy::default()).unwrap();
    let steps = drain(source.as_mut());
    let first = steps[0].as_ref().unwrap();
    assert_eq!(first.values, [0.5, 1.5, 2.5]);
    assert_eq!(first.meta.id.as_deref(), Some("x1"));
    assert_eq!(first.meta.event_ms, Some(1_795_428_000_000));
    let second = steps[1].as_ref().unwrap();
    assert_eq!(second.values, [0.75, 1.75, 2.75]);
    assert_eq!(
        (second.meta.id.as_ref(), second.meta.event_ms),
        (None, None)
    );
    let bad = steps[2].as_ref().unwrap_err();
    assert!(
        bad.contains("shuffled.csv:4: feature_2: \"oops\" is not a number"),
        "{bad}"
    );
    assert_eq!(steps[3].as_ref().unwrap().values, [1.0, 2.0, 3.0]);
    assert_eq!(steps.len(), 4);
}

#[test]
fn csv_header_policy_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.csv");
    std::fs::write(&path, "feature_1,extra\n1,9\n").unwrap();
    let index = FeatureIndex::numbered(2);
    let err = open(&path, &index, KeyPolicy::default()).err().unwrap();
    assert!(err.to_string().contains("\"extra\""), "{err}");
    let lenient = KeyPolicy {
        unknown: UnknownKeys::Ignore,
        missing: MissingKeys::Reject,
        ..KeyPolicy::default()
    };
    let err = open(&path, &index, lenient).err().unwrap();
    assert!(err.to_string().contains("\"feature_0\""), "{err}");
    let lenient = KeyPolicy {
        unknown: UnknownKeys::Ignore,
        missing: MissingKeys::Zero,
        ..KeyPolicy::default()
    };
    let mut source = open(&path, &index, lenient).unwrap();
    assert_eq!(
        drain(source.as_mut())[0].as_ref().unwrap().values,
        [0.0, 1.0]
    );
}

#[test]
fn smap_telemetry_reads_as_a_matrix_and_a_stream() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/SMAP/train/P-1.npy.gz"
    ));
    if !path.exists() {
        println!("skipped: {} is absent", path.display());
        return;
    }
    let m = read_matrix(path).unwrap();
    assert_eq!(m.cols, 25);
    assert!(m.rows > 1000, "{} rows", m.rows);
    assert!(m.values.iter().all(|v| v.is_finite()));
    let frames = read_frames(path, &FeatureIndex::numbered(25));
    assert_eq!(frames.len(), m.rows);
    assert_eq!(frames[m.rows - 1].values, m.row(m.rows - 1));
    // NPY columns are positional: a model of another width is refused up front.
    let err = open(path, &FeatureIndex::numbered(24), KeyPolicy::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("25 columns"), "{err}");
}

#[test]
fn generator_is_reproducible_from_its_seed() {
    let run = |seed| {
        let mut g = generator(500, seed, 0.001);
        let mut out = Vec::new();
        let mut events = Vec::new();
        for _ in 0..30 {
            let (frame, inj) = g.next_frame();
            events.extend_from_slice(inj);
            out.push(frame.values);
        }
        (out, events)
    };
    let (a, ea) = run(3);
    let (b, eb) = run(3);
    assert_eq!(a, b);
    assert_eq!(ea, eb);
    assert!(!ea.is_empty());
    assert_ne!(a, run(4).0);
}

#[test]
fn rate_zero_is_normal_data() {
    let mut g = generator(1000, 5, 0.0);
    let (mu, sigma) = {
        let (m, s) = g.feature_stats();
        (m.to_vec(), s.to_vec())
    };
    let mut values = Vec::new();
    let mut sum = vec![0.0f64; 1000];
    for _ in 0..300 {
        assert!(g.next_into(&mut values).is_empty());
        for (f, v) in values.iter().enumerate() {
            let z = (v - mu[f]) / sigma[f];
            assert!(z.abs() < 6.5, "feature {f}: z = {z}");
            sum[f] += z as f64;
        }
    }
    // Averaged over features, the standardised values centre on 0.
    let mean_z = sum.iter().sum::<f64>() / (300.0 * 1000.0);
    assert!(mean_z.abs() < 0.05, "{mean_z}");
}

#[test]
fn spikes_have_the_documented_magnitude() {
    let mut g = Generator::new(GeneratorConfig {
        n_features: 300,
        seed: 9,
        anomaly_rate: 0.002,
        spike_sigma: 8.0,
        kinds: vec![AnomalyKind::SpikeUp, AnomalyKind::SpikeDown],
        ..GeneratorConfig::default()
    })
    .unwrap();
    let (mu, sigma) = {
        let (m, s) = g.feature_stats();
        (m.to_vec(), s.to_vec())
    };
    let mut values = Vec::new();
    let mut seen = 0;
    for _ in 0..200 {
        for inj in g.next_into(&mut values).to_vec() {
            let f = inj.feature as usize;
            let z = (values[f] - mu[f]) / sigma[f];
            let sign = if inj.kind == AnomalyKind::SpikeUp {
                1.0
            } else {
                -1.0
            };
            assert!((z - sign * 8.0).abs() < 1e-3, "{inj:?}: z = {z}");
            assert_eq!(inj.magnitude_sigma, sign * 8.0);
            assert_eq!(inj.len, 1);
            seen += 1;
        }
    }
    assert!(seen > 50, "{seen} spikes");
}

#[test]
fn generator_source_writes_its_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.jsonl");
    let mut source = GeneratorSource::new(generator(200, 1, 0.001), Some(50))
        .with_truth(&truth)
        .unwrap();
    let frames = drain(&mut source);
    assert_eq!(frames.len(), 50);
    assert!(frames.iter().all(|f| f.is_ok()));

    let mut again = generator(200, 1, 0.001);
    let mut expected = Vec::new();
    for _ in 0..50 {
        expected.extend_from_slice(again.next_frame().1);
    }
    let text = std::fs::read_to_string(&truth).unwrap();
    let got: Vec<Injection> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, expected);
    assert!(!got.is_empty());
    assert!(text.contains("\"kind\":\""), "{text}");
}

#[test]
fn generate_command_writes_frames_and_truth() {
    let dir = tempfile::tempdir().unwrap();
    let args = GenerateArgs {
        features: 64,
        frames: 40,
        synthetic: SyntheticArgs {
            seed: 2,
            anomaly_rate: 0.005,
            ..SyntheticArgs::default()
        },
        out: dir.path().join("gen.jsonl.gz"),
        truth: Some(dir.path().join("truth.jsonl")),
    };
    generate::run(&args).unwrap();
    let m = read_matrix(&args.out).unwrap();
    assert_eq!((m.rows, m.cols), (40, 64));
    let mut g = generator(64, 2, 0.005);
    assert_eq!(m.row(0), &g.next_frame().0.values[..]);
    let truth = std::fs::read_to_string(args.truth.as_ref().unwrap()).unwrap();
    assert!(truth.lines().count() > 0);
}

/// The plant seed fixes each feature's statistics; the noise seed changes only the data.
#[test]
fn plant_and_noise_seeds_are_independent() {
    let make = |plant_seed, seed| {
        Generator::new(GeneratorConfig {
            n_features: 50,
            plant_seed,
            seed,
            ..GeneratorConfig::default()
        })
        .unwrap()
    };
    let (mut a, mut b, c) = (make(3, 1), make(3, 2), make(4, 1));
    assert_eq!(a.feature_stats(), b.feature_stats());
    assert_ne!(a.feature_stats().0, c.feature_stats().0);
    assert_ne!(a.next_frame().0.values, b.next_frame().0.values);
}

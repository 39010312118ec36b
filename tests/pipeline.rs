//! The whole default dataflow through the runtime, on one and several worker threads.

mod common;

use std::sync::Arc;

use common::{random_frames, random_rff_model, VecSource};
use tidewatch::model::Scorer;
use tidewatch::runtime::{self, ClusterArgs, Settings, SinkSpec};
use tidewatch::source::FrameSource;

/// (seq, [(feature, score)]) per anomalous frame, read back from an alert file.
fn alerts(path: &std::path::Path) -> Vec<(u64, Vec<(u64, f32)>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut feats: Vec<(u64, f32)> = v["anomalous_features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["feature_idx"].as_u64().unwrap(),
                        f["score"].as_f64().unwrap() as f32,
                    )
                })
                .collect();
            feats.sort_by_key(|f| f.0);
            assert_eq!(
                v["num_anomalous_features"].as_u64().unwrap() as usize,
                feats.len()
            );
            (v["seq"].as_u64().unwrap(), feats)
        })
        .collect()
}

fn run_with_threads(
    threads: usize,
    batch: usize,
    dir: &std::path::Path,
) -> Vec<(u64, Vec<(u64, f32)>)> {
    let (f, w, n) = (37, 4, 60);
    let model = Arc::new(random_rff_model(f, w, 3));
    let frames = random_frames(n, f, 9);
    let out = dir.join(format!("alerts-{threads}-{batch}.jsonl"));
    let report = runtime::run(
        &ClusterArgs {
            threads,
            processes: 1,
            ..ClusterArgs::default()
        },
        model,
        Settings {
            batch_size: batch,
            ..Settings::default()
        },
        Arc::new(move || {
            Ok(Box::new(VecSource(frames.clone().into_iter())) as Box<dyn FrameSource>)
        }),
        SinkSpec {
            alerts_path: Some(out.clone()),
            ..SinkSpec::default()
        },
    )
    .unwrap();
    assert_eq!(report.stats.frames_in, n as u64);
    assert_eq!(report.stats.frames_scored, (n - w + 1) as u64);
    alerts(&out)
}

/// Every worker count and batch size gives the same anomalies with bit-identical scores,
/// and they equal scoring each window directly with the model.
#[test]
fn results_identical_for_any_worker_count_and_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let one = run_with_threads(1, 64, dir.path());
    assert!(!one.is_empty(), "the random model flags something");
    for (threads, batch) in [(2, 64), (3, 7), (1, 1)] {
        assert_eq!(
            run_with_threads(threads, batch, dir.path()),
            one,
            "-w {threads}, batch {batch}"
        );
    }

    // reference: score every window of the whole frame directly
    let (f, w) = (37, 4);
    let model = random_rff_model(f, w, 3);
    let frames = random_frames(60, f, 9);
    let scorer = Scorer::new(&model, 0..f);
    let mut expected = Vec::new();
    for end in w - 1..frames.len() {
        let window: Vec<f32> = frames[end + 1 - w..=end]
            .iter()
            .flat_map(|fr| fr.values.clone())
            .collect();
        let mut scores = vec![0.0; f];
        scorer.score(&window, &mut scores);
        let hits: Vec<(u64, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, &s)| s >= model.meta.threshold)
            .map(|(i, &s)| (i as u64, s))
            .collect();
        if !hits.is_empty() {
            expected.push((end as u64, hits));
        }
    }
    assert_eq!(one, expected);
}

/// A verdict hook (how the webhook and bench get verdicts) sees every verdict exactly
/// once, in frame order, with several workers too.
#[test]
fn result_hook_sees_every_verdict_once_with_two_workers() {
    use std::sync::Mutex;
    let (f, w, n) = (37, 4, 60);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let frames = random_frames(n, f, 9);
    runtime::run(
        &ClusterArgs {
            threads: 2,
            ..ClusterArgs::default()
        },
        Arc::new(random_rff_model(f, w, 3)),
        Settings::default(),
        Arc::new(move || {
            Ok(Box::new(VecSource(frames.clone().into_iter())) as Box<dyn FrameSource>)
        }),
        SinkSpec {
            on_result: Some(Arc::new(move |r| sink.lock().unwrap().push(r.seq))),
            ..SinkSpec::default()
        },
    )
    .unwrap();
    let seqs = seen.lock().unwrap().clone();
    assert_eq!(seqs, ((w - 1) as u64..n as u64).collect::<Vec<_>>());
}

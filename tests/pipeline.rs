//! The whole default dataflow through the runtime, on one and several worker threads.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{random_frames, random_rff_model, VecSource};
use tidewatch::model::Scorer;
use tidewatch::runtime::{self, ClusterArgs, Settings, SinkSpec, WorkerSlot};
use tidewatch::sources::{FrameSource, Pull, Sequencing};

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
        runtime::on_worker_zero(move || {
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
        runtime::on_worker_zero(move || {
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

/// A source for one of several reading workers: its share of the frames, optionally idle
/// for a while first, numbered by `rule`; it records what the dataflow says has settled.
struct ShareSource {
    frames: std::vec::IntoIter<tidewatch::types::Frame>,
    rule: Sequencing,
    idle_until: Instant,
    settled: Arc<Mutex<Vec<u64>>>,
    ended: Arc<Mutex<Option<Instant>>>,
}

impl FrameSource for ShareSource {
    fn pull(&mut self) -> Pull {
        if Instant::now() < self.idle_until {
            return Pull::Idle;
        }
        match self.frames.next() {
            Some(f) => Pull::Frame(f),
            None => {
                *self.ended.lock().unwrap() = Some(Instant::now());
                Pull::Done
            }
        }
    }

    fn sequencing(&self) -> Sequencing {
        self.rule
    }

    fn settled(&mut self, n: u64) {
        self.settled.lock().unwrap().push(n);
    }
}

/// Verdict hits per anomalous frame, in verdict order, from a run with a source on every
/// worker; also the settled counts each worker's source heard and when each ran out.
#[allow(clippy::type_complexity)]
fn run_shared(
    rule: Sequencing,
    shares: Vec<(Vec<tidewatch::types::Frame>, Duration)>,
) -> (
    Vec<(u64, Vec<u32>, Instant)>,
    Vec<Vec<u64>>,
    Vec<Option<Instant>>,
) {
    let (f, w) = (37, 4);
    let threads = shares.len();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let settled: Vec<Arc<Mutex<Vec<u64>>>> = (0..threads).map(|_| Arc::default()).collect();
    let ended: Vec<Arc<Mutex<Option<Instant>>>> = (0..threads).map(|_| Arc::default()).collect();
    let (settled2, ended2) = (settled.clone(), ended.clone());
    let start = Instant::now();
    runtime::run(
        &ClusterArgs {
            threads,
            ..ClusterArgs::default()
        },
        Arc::new(random_rff_model(f, w, 3)),
        Settings::default(),
        Arc::new(move |slot: WorkerSlot| {
            let (frames, idle) = shares[slot.index].clone();
            Ok(Some(Box::new(ShareSource {
                frames: frames.into_iter(),
                rule,
                idle_until: start + idle,
                settled: Arc::clone(&settled2[slot.index]),
                ended: Arc::clone(&ended2[slot.index]),
            }) as Box<dyn FrameSource>))
        }),
        SinkSpec {
            on_result: Some(Arc::new(move |r| {
                let hits = r.hits.iter().map(|h| h.feature).collect();
                sink.lock().unwrap().push((r.seq, hits, Instant::now()));
            })),
            ..SinkSpec::default()
        },
    )
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let settled = settled.iter().map(|s| s.lock().unwrap().clone()).collect();
    let ended = ended.iter().map(|e| *e.lock().unwrap()).collect();
    (seen, settled, ended)
}

/// Frames dealt round robin to two reading workers (as `bench` decodes on every worker)
/// keep their global order: the verdicts equal one worker reading them all.
#[test]
fn interleaved_sources_on_every_worker_match_one_source() {
    let (f, n) = (37, 60);
    let frames = random_frames(n, f, 9);
    let share = |i: usize| -> Vec<_> { frames.iter().skip(i).step_by(2).cloned().collect() };
    let (shared, settled, _) = run_shared(
        Sequencing::Interleaved,
        vec![(share(0), Duration::ZERO), (share(1), Duration::ZERO)],
    );
    let (dense, _, _) = run_shared(Sequencing::Dense, vec![(frames.clone(), Duration::ZERO)]);
    let strip = |v: &[(u64, Vec<u32>, Instant)]| -> Vec<(u64, Vec<u32>)> {
        v.iter().map(|(s, h, _)| (*s, h.clone())).collect()
    };
    assert_eq!(strip(&shared), strip(&dense));
    assert_eq!(
        shared.len(),
        n - 3,
        "one verdict per frame that ends a window"
    );
    for (i, s) in settled.iter().enumerate() {
        assert!(
            s.windows(2).all(|p| p[0] <= p[1]),
            "settled counts grow: {s:?}"
        );
        assert_eq!(s.last().copied(), Some((n / 2) as u64), "worker {i}");
    }
}

/// Under clock numbering a worker whose source has nothing to give (a Kafka consumer with
/// no partition) does not hold the others back: every frame of the busy worker gets its
/// verdict while the idle one is still idle, and each source hears that all its frames
/// settled.
#[test]
fn an_idle_clock_source_does_not_hold_back_the_frontier() {
    let (f, n) = (37, 40);
    let frames = random_frames(n, f, 9);
    let idle = Duration::from_secs(3);
    let (seen, settled, ended) = run_shared(
        Sequencing::Clock,
        vec![(Vec::new(), idle), (frames.clone(), Duration::ZERO)],
    );
    let (dense, _, _) = run_shared(Sequencing::Dense, vec![(frames, Duration::ZERO)]);
    assert_eq!(seen.len(), n - 3);
    let hits = |v: &[(u64, Vec<u32>, Instant)]| -> Vec<Vec<u32>> {
        v.iter().map(|(_, h, _)| h.clone()).collect()
    };
    assert_eq!(hits(&seen), hits(&dense), "same windows in the same order");
    let idle_end = ended[0].expect("the idle source ran out");
    let last_verdict = seen.last().unwrap().2;
    assert!(
        last_verdict < idle_end,
        "verdicts waited for the idle worker"
    );
    assert!(
        seen.windows(2).all(|p| p[0].0 < p[1].0),
        "clock seqs increase"
    );
    assert_eq!(settled[1].last().copied(), Some(n as u64));
    assert_eq!(settled[0].last().copied(), Some(0));
}

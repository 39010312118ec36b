//! Each dataflow operator on its own, over real timely workers.

mod common;

use std::sync::{Arc, Mutex};

use timely::dataflow::operators::core::UnorderedInput;
use timely::dataflow::operators::{Input, Inspect, Probe, ToStream};
use timely::dataflow::InputHandle;

use tidewatch::detect::{Detector, Needs, Scores};
use tidewatch::ops::{BatchOps, MergeOps, Parts, ScoreOps, WindowConfig, WindowOps};
use tidewatch::stats::Stats;
use tidewatch::types::{Batch, FrameMeta, PartHits, Slice, Window};

fn slice(seq: u64) -> Slice {
    Slice {
        seq,
        part: 0,
        received_us: seq,
        entity: 0,
        values: vec![seq as f32, seq as f32 + 0.5],
    }
}

/// Feeds slices in the given order, each at its own time, releasing each time right
/// after its slice is sent, so the frontier moves (and windows close) while later slices
/// are still to come; returns the windows in emission order.
fn windows_for(order: &[u64], cfg: WindowConfig) -> Vec<Window> {
    let order = order.to_vec();
    timely::execute_directly(move |worker| {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let ((mut input, cap), probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_unordered_input();
            let probe = stream
                .container::<Vec<Slice>>()
                .window(cfg)
                .inspect(move |w| sink.lock().unwrap().push(w.clone()))
                .probe()
                .0;
            (input, probe)
        });
        let caps: Vec<_> = order.iter().map(|&t| cap.delayed(&t)).collect();
        drop(cap);
        for (&seq, cap) in order.iter().zip(caps) {
            input.activate().session(&cap).give(slice(seq));
            drop(cap);
            worker.step();
        }
        while !probe.done() {
            worker.step();
        }
        let v = out.lock().unwrap().clone();
        v
    })
}

/// Two entities' frames interleaved (A on even seqs, B on odd), out of order: each window
/// holds one entity's own frames, and the stride counts that entity's frames.
#[test]
fn entities_are_windowed_apart() {
    let order = [3u64, 0, 1, 2, 5, 4, 7, 6, 9, 8];
    let out = timely::execute_directly(move |worker| {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let ((mut input, cap), probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_unordered_input();
            let probe = stream
                .container::<Vec<Slice>>()
                .window(WindowConfig { size: 3, stride: 2 })
                .inspect(move |w| sink.lock().unwrap().push(w.clone()))
                .probe()
                .0;
            (input, probe)
        });
        let caps: Vec<_> = order.iter().map(|&t| cap.delayed(&t)).collect();
        drop(cap);
        for (&seq, cap) in order.iter().zip(caps) {
            let mut s = slice(seq);
            s.entity = 10 + seq % 2;
            input.activate().session(&cap).give(s);
            drop(cap);
            worker.step();
        }
        while !probe.done() {
            worker.step();
        }
        let v = out.lock().unwrap().clone();
        v
    });
    let got: Vec<(u64, u64, Vec<f32>)> = out
        .into_iter()
        .map(|w| {
            (
                w.entity,
                w.seq,
                w.data.to_flat().iter().step_by(2).copied().collect(),
            )
        })
        .collect();
    // entity 10 (seqs 0, 2, 4, 6, 8): windows end at its 3rd and 5th frames
    assert_eq!(
        got,
        vec![
            (10, 4, vec![0.0, 2.0, 4.0]),
            (11, 5, vec![1.0, 3.0, 5.0]),
            (10, 8, vec![4.0, 6.0, 8.0]),
            (11, 9, vec![5.0, 7.0, 9.0]),
        ]
    );
}

fn expected_window(end: u64, size: u64) -> Vec<f32> {
    (end + 1 - size..=end)
        .flat_map(|s| [s as f32, s as f32 + 0.5])
        .collect()
}

/// The first W-1 frames make no window; every later frame ends one holding the last W
/// frames oldest first, with the last frame's receive time.
#[test]
fn window_slides_by_one_frame() {
    let cfg = WindowConfig { size: 3, stride: 1 };
    let windows = windows_for(&[0, 1, 2, 3, 4, 5], cfg);
    let ends: Vec<u64> = windows.iter().map(|w| w.seq).collect();
    assert_eq!(ends, vec![2, 3, 4, 5]);
    for w in &windows {
        assert_eq!(w.data, expected_window(w.seq, 3));
        assert_eq!(w.received_us, w.seq);
    }
}

/// With stride S only every S-th frame after the first window ends a window.
#[test]
fn window_with_stride() {
    let cfg = WindowConfig { size: 3, stride: 2 };
    let windows = windows_for(&(0..9).collect::<Vec<_>>(), cfg);
    let ends: Vec<u64> = windows.iter().map(|w| w.seq).collect();
    assert_eq!(ends, vec![2, 4, 6, 8]);
    assert_eq!(windows[1].data, expected_window(4, 3));
}

/// Frames that arrive out of order while the frontier still allows land in the right
/// windows: the result equals in-order delivery.
#[test]
fn window_out_of_order_arrival() {
    let cfg = WindowConfig { size: 3, stride: 1 };
    let in_order = windows_for(&[0, 1, 2, 3, 4, 5, 6], cfg);
    // 0 closes while 1..6 are pending; 1 and 2 close before 3 arrives
    let shuffled = windows_for(&[4, 0, 6, 2, 1, 5, 3], cfg);
    assert_eq!(in_order, shuffled);
    assert_eq!(in_order.len(), 5);
}

/// A window size of one scores every frame alone. Seqs with gaps (frames read by several
/// workers) still window the W most recent frames, and the stride counts frames.
#[test]
fn window_edge_cases() {
    let single = windows_for(&[0, 1, 2], WindowConfig { size: 1, stride: 1 });
    assert_eq!(
        single.iter().map(|w| w.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let sparse = windows_for(&[1, 3, 4, 8, 10, 11], WindowConfig { size: 3, stride: 1 });
    assert_eq!(
        sparse.iter().map(|w| w.seq).collect::<Vec<_>>(),
        vec![4, 8, 10, 11]
    );
    let expected: Vec<f32> = [3u64, 4, 8]
        .iter()
        .flat_map(|&s| [s as f32, s as f32 + 0.5])
        .collect();
    assert_eq!(sparse[1].data, expected);
    let strided = windows_for(&[1, 3, 4, 8, 10, 11], WindowConfig { size: 3, stride: 2 });
    assert_eq!(
        strided.iter().map(|w| w.seq).collect::<Vec<_>>(),
        vec![4, 10]
    );
    let too_few = windows_for(&[0, 1], WindowConfig { size: 3, stride: 1 });
    assert!(too_few.is_empty());
}

/// A single window is batched and passed on at once, without waiting for a full batch;
/// windows that are available together share batches of at most the maximum size.
#[test]
fn batch_flushes_when_input_is_idle() {
    timely::execute_directly(|worker| {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let mut input = InputHandle::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .container::<Vec<Window>>()
                .batch(4)
                .inspect(move |b| sink.lock().unwrap().push(b.seqs.clone()))
                .probe()
                .0
        });
        let window = |seq: u64| Window {
            seq,
            part: 0,
            received_us: 0,
            entity: 0,
            data: vec![seq as f32; 6].into(),
        };
        // one lone window: it must come out before time moves on
        input.send(window(0));
        input.flush();
        for _ in 0..5 {
            worker.step();
        }
        assert_eq!(*out.lock().unwrap(), vec![vec![0]]);
        // ten windows at once: batches of 4, 4 and 2, in order
        input.advance_to(1);
        for s in 1..11 {
            input.send(window(s));
        }
        input.close();
        while !probe.done() {
            worker.step();
        }
        let batches = out.lock().unwrap().clone();
        assert_eq!(batches.len(), 4);
        assert_eq!(batches[1], vec![1, 2, 3, 4]);
        assert_eq!(batches[3], vec![9, 10]);
    });
}

/// A frame that some partitions reported and others did not stops the run, naming the
/// frame, instead of losing its verdict in silence.
#[test]
#[should_panic(expected = "frame 3: 1 of 2 partitions reported it")]
fn merge_refuses_a_frame_a_partition_lost() {
    timely::execute_directly(|worker| {
        worker.dataflow::<u64, _, _>(|scope| {
            let metas = Some((3u64, FrameMeta::default()))
                .to_stream(scope)
                .container::<Vec<_>>();
            let data = Some(PartHits {
                seq: 3,
                ..PartHits::default()
            })
            .to_stream(scope)
            .container::<Vec<_>>();
            Parts {
                data,
                metas,
                parts: 2,
            }
            .merge_frames();
        });
    });
}

/// A detector with state per feature gets its windows once and in frame order, or the
/// score operator stops the run.
#[test]
#[should_panic(expected = "a stateful detector got window 3 after")]
fn score_keeps_a_stateful_detector_in_order() {
    struct Counter;
    impl Detector for Counter {
        fn needs(&self) -> Needs {
            Needs {
                window: 1,
                stride: None,
                stateful: true,
            }
        }
        fn features(&self) -> std::ops::Range<usize> {
            0..1
        }
        fn score(&mut self, windows: &[f32]) -> Scores {
            Scores::All(windows.to_vec())
        }
    }
    timely::execute_directly(|worker| {
        worker.dataflow::<u64, _, _>(|scope| {
            let batch = |seq: u64| Batch {
                seqs: vec![seq],
                received_us: vec![0],
                data: vec![1.0].into(),
                ..Batch::default()
            };
            vec![batch(5), batch(3)]
                .to_stream(scope)
                .container::<Vec<_>>()
                .score(Counter, Arc::new(Stats::default()));
        });
    });
}

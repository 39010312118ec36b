//! Golden tests of every registered dataflow variant, run as a user runs them
//! (`tidewatch replay --dataflow <name>` on generator data with injected spikes): the
//! verdicts are identical at `-w 1`, `-w 2` and in two processes (`-n 2`), and the
//! spikes are found. A variant added to `dataflows/mod.rs` is tested here with no edit,
//! unless its models are per entity (`dataflows::PER_ENTITY`, tested in `entities.rs`).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tidewatch::dataflows;
use tidewatch::model::Model;
use tidewatch::sources::Injection;

/// Frames per run: enough spikes (rate x features x frames, about 3,000) to measure
/// recall, few enough for six runs per variant.
const FRAMES: u64 = 300;

/// `replay` of `frames` generator frames (spikes only, with their ground truth) through
/// `variant`, alerts to `output`.
fn replay(variant: &str, frames: u64, truth: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewatch"));
    cmd.args(["replay", "--model", "default", "--dataflow", variant])
        .args(["--generate", &frames.to_string()])
        .args(["--seed", "20261206", "--anomaly-rate", "0.0004"])
        .args(["--kinds", "spike_up,spike_down", "--spike-sigma", "8"])
        .arg("--truth")
        .arg(truth)
        .arg("--output")
        .arg(output)
        .args(extra)
        .env("LOG_LEVEL", "warn");
    cmd
}

/// The variant's alerts at -w 1, -w 2 and -n 2 (two processes on loopback), and the
/// ground truth of the spikes.
fn runs(variant: &str, dir: &Path) -> ([PathBuf; 3], PathBuf) {
    let truth = dir.join("truth.jsonl");
    let out = |name: &str| dir.join(format!("{name}.jsonl"));
    let all = ["--max-alert-features", "1000000"];
    let w1 = replay(
        variant,
        FRAMES,
        &truth,
        &out("w1"),
        &[&all[..], &["-w", "1"]].concat(),
    )
    .output()
    .unwrap();
    common::check(&w1, &format!("{variant} -w 1"));
    let w2 = replay(
        variant,
        FRAMES,
        &dir.join("t2.jsonl"),
        &out("w2"),
        &[&all[..], &["-w", "2"]].concat(),
    )
    .output()
    .unwrap();
    common::check(&w2, &format!("{variant} -w 2"));

    let hosts = dir.join("hosts.txt");
    common::loopback_hostfile(&hosts, 2);
    let hostfile = hosts.to_str().unwrap();
    let p1 = replay(
        variant,
        FRAMES,
        &dir.join("t3.jsonl"),
        &out("unused"),
        &[&all[..], &["-n", "2", "-p", "1", "-h", hostfile]].concat(),
    )
    .spawn()
    .unwrap();
    let p0 = replay(
        variant,
        FRAMES,
        &dir.join("t4.jsonl"),
        &out("n2"),
        &[&all[..], &["-n", "2", "-p", "0", "-h", hostfile]].concat(),
    )
    .output()
    .unwrap();
    let p1 = p1.wait_with_output().unwrap();
    common::check(&p0, &format!("{variant} process 0 of 2"));
    common::check(&p1, &format!("{variant} process 1 of 2"));
    ([out("w1"), out("w2"), out("n2")], truth)
}

/// Frames every variant may spend learning before it scores: the default's first W-1
/// frames close no window, ewma warms up for 30.
const SETTLED: u64 = 30;

/// Recall of the spikes after [`SETTLED`], and the rate of flagged pairs whose window
/// holds no spike.
fn quality(alerts: &Path, truth: &Path, window: u64, features: u64) -> (f64, f64, usize) {
    let spikes: Vec<Injection> = std::fs::read_to_string(truth)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut flagged = HashSet::new();
    for v in common::alert_lines(alerts) {
        let seq = v["seq"].as_u64().unwrap();
        for feat in v["anomalous_features"].as_array().unwrap() {
            flagged.insert((seq, feat["feature_idx"].as_u64().unwrap()));
        }
    }
    let scored: Vec<&Injection> = spikes.iter().filter(|s| s.seq >= SETTLED).collect();
    let caught = scored
        .iter()
        .filter(|s| flagged.contains(&(s.seq, s.feature as u64)))
        .count();
    let touched: HashSet<(u64, u64)> = spikes
        .iter()
        .flat_map(|s| (s.seq..s.seq + window).map(move |t| (t, s.feature as u64)))
        .collect();
    let false_alarms = flagged
        .iter()
        .filter(|p| p.0 >= SETTLED && !touched.contains(p))
        .count();
    let pairs = (FRAMES - SETTLED) * features;
    (
        caught as f64 / scored.len().max(1) as f64,
        false_alarms as f64 / pairs as f64,
        scored.len(),
    )
}

/// Every registered variant: the same verdicts for one thread, two threads and two
/// processes; at least 95 % of the ±8σ spikes flagged; at most 1 in 1,000 normal
/// (frame, feature) pairs flagged.
#[test]
fn every_variant_is_deterministic_and_finds_spikes() {
    let model = Model::load(&Model::resolve("default")).expect("shipped default model loads");
    assert!(dataflows::NAMES.len() >= 2, "{:?}", dataflows::NAMES);
    let unkeyed = dataflows::NAMES
        .iter()
        .filter(|n| !dataflows::PER_ENTITY.contains(n));
    for &variant in unkeyed {
        if dataflows::reads_records(variant) {
            continue; // machine records, not generator frames: tests/machines.rs
        }
        let dir = tempfile::tempdir().unwrap();
        let ([w1, w2, n2], truth) = runs(variant, dir.path());
        let reference = common::alert_lines(&w1);
        assert!(reference.len() > 10, "{variant} flags frames");
        assert_eq!(
            common::alert_lines(&w2),
            reference,
            "{variant}: -w 2 differs from -w 1"
        );
        assert_eq!(
            common::alert_lines(&n2),
            reference,
            "{variant}: two processes differ from one"
        );
        // a variant's window: the default's is the model's, ewma's one frame
        let window = if variant == "default" {
            model.window() as u64
        } else {
            1
        };
        let (recall, far, spikes) = quality(&w1, &truth, window, model.n_features() as u64);
        eprintln!("{variant}: {spikes} spikes, recall {recall:.4}, false-alarm rate {far:.2e}");
        assert!(
            spikes > 2_000,
            "{variant}: enough spikes to measure ({spikes})"
        );
        assert!(recall >= 0.95, "{variant}: recall {recall}");
        assert!(far <= 1e-3, "{variant}: false-alarm rate {far}");
    }
}

/// A variant's parameters: an unknown key, and a value that does not parse, stop the run
/// with a message naming them; a known one changes what the variant does.
#[test]
fn variant_parameters_are_checked_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let (truth, out) = (dir.path().join("t.jsonl"), dir.path().join("a.jsonl"));
    // short runs listing one feature per alert: only the parameters are under test
    let run = |extra: &[&str]| {
        replay("ewma", 60, &truth, &out, extra)
            .args(["--max-alert-features", "1"])
            .output()
            .unwrap()
    };
    let unknown = run(&["--param", "alhpa=0.1"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("\"alhpa\"") && stderr.contains("alpha"),
        "names the key and the known ones: {stderr}"
    );
    let bad = run(&["--param", "alpha=fast"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("alpha=fast"), "{stderr}");
    let malformed = run(&["--param", "alpha"]);
    assert!(!malformed.status.success());
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("KEY=VALUE"));

    // a z threshold no score reaches: no alerts at all
    let quiet = run(&["--param", "z=1e30", "--param", "warmup=5"]);
    common::check(&quiet, "ewma with z=1e30");
    assert!(common::alert_lines(&out).is_empty());
    // a threshold every score after warm-up reaches (those before are 0): every frame
    // after it alerts
    let loud = run(&["--param", "z=1e-30", "--param", "warmup=5"]);
    common::check(&loud, "ewma with z=1e-30");
    let seqs: Vec<u64> = common::alert_lines(&out)
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (5..60).collect::<Vec<u64>>());
}

/// `--window` must fit the detector: the model's detector refuses a length other than
/// the model's; `--stride` spaces the windows; the variant names are checked before
/// anything runs.
#[test]
fn windows_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (truth, out) = (dir.path().join("t.jsonl"), dir.path().join("a.jsonl"));
    let wrong = replay("default", 20, &truth, &out, &["--window", "7"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("--window 7"), "{stderr}");
    // --stride 10: windows end at frames 4, 14 and 24 of 30 (seed 003's scheduling)
    let strided = replay("default", 30, &truth, &out, &["--stride", "10", "--json"])
        .output()
        .unwrap();
    common::check(&strided, "--stride 10");
    let stderr = String::from_utf8_lossy(&strided.stderr);
    let summary: serde_json::Value = serde_json::from_slice(&strided.stdout).unwrap();
    assert_eq!(summary["stats"]["frames_scored"], 3, "{stderr}");
    let none = replay("nonesuch", 20, &truth, &out, &[]).output().unwrap();
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains("nonesuch") && stderr.contains("ewma"),
        "{stderr}"
    );
}

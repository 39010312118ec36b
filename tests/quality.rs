//! Detection quality of the shipped default model on generator data: the figures a user
//! relies on when they trust an alert, or the silence.

use std::collections::HashSet;
use std::process::Command;

use tidewatch::model::Model;
use tidewatch::sources::Injection;

/// ±8σ spikes are flagged on at least 99 % of the (frame, feature) pairs they touch, and
/// at most 1 in 10,000 normal pairs (whose window holds no injected anomaly) is flagged.
#[test]
fn default_model_flags_spikes_and_stays_quiet_otherwise() {
    let model = Model::load(&Model::resolve("default")).expect("shipped default model loads");
    let (w, f) = (model.window() as u64, model.n_features() as u64);
    let frames = 600u64;
    let dir = tempfile::tempdir().unwrap();
    let (truth, alerts) = (
        dir.path().join("truth.jsonl"),
        dir.path().join("alerts.jsonl"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "replay",
            "--model",
            "default",
            "--generate",
            &frames.to_string(),
        ])
        .args(["--seed", "20261123", "--anomaly-rate", "0.0004"])
        .args(["--kinds", "spike_up,spike_down", "--spike-sigma", "8"])
        .args(["--max-alert-features", "1000000", "-w", "2"])
        .arg("--truth")
        .arg(&truth)
        .arg("--output")
        .arg(&alerts)
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let spikes: Vec<Injection> = std::fs::read_to_string(&truth)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut flagged = HashSet::new();
    for line in std::fs::read_to_string(&alerts).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let features = v["anomalous_features"].as_array().unwrap();
        assert_eq!(
            features.len() as u64,
            v["num_anomalous_features"].as_u64().unwrap()
        );
        for feat in features {
            flagged.insert((seq, feat["feature_idx"].as_u64().unwrap()));
        }
    }

    // recall over spikes on scored frames (the first W-1 frames close no window)
    let scored: Vec<&Injection> = spikes.iter().filter(|s| s.seq >= w - 1).collect();
    assert!(
        scored.len() > 3_000,
        "enough spikes to measure: {}",
        scored.len()
    );
    let caught = scored
        .iter()
        .filter(|s| flagged.contains(&(s.seq, s.feature as u64)))
        .count();
    let recall = caught as f64 / scored.len() as f64;

    // false alarms over pairs whose window holds no spike
    let touched: HashSet<(u64, u64)> = spikes
        .iter()
        .flat_map(|s| (s.seq..s.seq + w).map(move |t| (t, s.feature as u64)))
        .collect();
    let normal_pairs = (frames - (w - 1)) * f
        - touched
            .iter()
            .filter(|(t, _)| *t >= w - 1 && *t < frames)
            .count() as u64;
    let false_alarms = flagged.iter().filter(|p| !touched.contains(p)).count();
    let far = false_alarms as f64 / normal_pairs as f64;

    eprintln!(
        "spikes scored {}, caught {caught} (recall {recall:.5}); normal pairs {normal_pairs}, false alarms {false_alarms} (rate {far:.2e})",
        scored.len()
    );
    assert!(recall >= 0.99, "recall {recall}");
    assert!(far <= 1e-4, "false-alarm rate {far}");
}

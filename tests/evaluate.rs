//! `tidewatch evaluate` as a user runs it, on a small synthetic data set written in both
//! layouts (Telemanom's, with NumPy files and `labeled_anomalies.csv`, and the generic
//! one, with CSV files and labels as ranges and as 0/1 rows): the same data give the
//! same figures in both, the injected anomalies are found, the context column is not
//! scored, and the scores file holds every test row.

mod common;

use std::path::Path;
use std::process::Command;

/// Rows of training and test data per entity.
const TRAIN: usize = 1500;
const TEST: usize = 1200;

/// A smooth value with deterministic noise, and a command flag (context) that flips
/// every 200 rows; `anomaly` makes the value erratic over those rows (noise 25 times
/// as large), which no forecaster fitted on the smooth training data predicts.
fn series(n: usize, phase: f64, anomaly: Option<(usize, usize)>) -> Vec<[f64; 2]> {
    let mut state = 12345u64 + (phase * 1000.0) as u64;
    (0..n)
        .map(|t| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.02;
            let mut v = 0.5 * ((t as f64) * 0.02 + phase).sin() + noise;
            if let Some((a, b)) = anomaly {
                if (a..=b).contains(&t) {
                    v += 25.0 * noise;
                }
            }
            [v, ((t / 200) % 2) as f64]
        })
        .collect()
}

/// One entity: name, training rows, test rows, labelled range (inclusive).
type Entity = (&'static str, Vec<[f64; 2]>, Vec<[f64; 2]>, (usize, usize));

/// The two entities.
fn entities() -> Vec<Entity> {
    vec![
        (
            "a-1",
            series(TRAIN, 0.0, None),
            series(TEST, 0.3, Some((600, 699))),
            (600, 699),
        ),
        (
            "b-2",
            series(TRAIN, 1.0, None),
            series(TEST, 1.7, Some((900, 949))),
            (900, 949),
        ),
    ]
}

fn write_npy(path: &Path, rows: &[[f64; 2]]) {
    common::write_npy(path, 2, rows.as_flattened());
}

fn write_csv(path: &Path, header: &str, rows: impl Iterator<Item = String>) {
    let mut text = format!("{header}\n");
    for r in rows {
        text.push_str(&r);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn telemanom(dir: &Path) {
    std::fs::create_dir_all(dir.join("train")).unwrap();
    std::fs::create_dir_all(dir.join("test")).unwrap();
    let mut labels = "chan_id,spacecraft,anomaly_sequences,class,num_values\n".to_string();
    for (name, train, test, (a, b)) in entities() {
        write_npy(&dir.join(format!("train/{name}.npy")), &train);
        write_npy(&dir.join(format!("test/{name}.npy")), &test);
        labels.push_str(&format!("{name},X,\"[[{a}, {b}]]\",[point],{TEST}\n"));
    }
    std::fs::write(dir.join("labeled_anomalies.csv"), labels).unwrap();
}

fn generic(dir: &Path) {
    for sub in ["train", "test", "labels"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let rows = |m: Vec<[f64; 2]>| m.into_iter().map(|r| format!("{},{}", r[0], r[1]));
    for (k, (name, train, test, (a, b))) in entities().into_iter().enumerate() {
        write_csv(
            &dir.join(format!("train/{name}.csv")),
            "value,command",
            rows(train),
        );
        write_csv(
            &dir.join(format!("test/{name}.csv")),
            "value,command",
            rows(test),
        );
        let labels = dir.join(format!("labels/{name}.csv"));
        if k == 0 {
            write_csv(&labels, "start,end", std::iter::once(format!("{a},{b}")));
        } else {
            let flags = (0..TEST).map(|t| u8::from((a..=b).contains(&t)).to_string());
            write_csv(&labels, "label", flags);
        }
    }
}

fn evaluate(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .arg("evaluate")
        .args(args)
        .args(["--json", "--log-level", "warn"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "evaluate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one JSON object on stdout: {text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn both_layouts_give_the_same_figures() {
    let dir = tempfile::tempdir().unwrap();
    let (t, g) = (dir.path().join("telemanom"), dir.path().join("generic"));
    telemanom(&t);
    generic(&g);
    let scores = dir.path().join("scores.csv");
    let a = evaluate(&[
        "--data",
        t.to_str().unwrap(),
        "--scores",
        scores.to_str().unwrap(),
    ]);
    assert_eq!(a["layout"], "telemanom");
    assert_eq!(a["detector"], "forecast");
    assert_eq!(a["entities_evaluated"], 2);
    assert_eq!(a["frames"], 2 * TEST as u64);
    assert_eq!(a["anomalous_frames"], 150);
    // both bursts found, nothing else flagged as an event
    assert_eq!(a["event_recall"], 1.0, "{a}");
    assert_eq!(a["event_precision"], 1.0, "{a}");
    assert_eq!(a["pa_recall"], 1.0, "{a}");
    assert!(a["roc_auc"].as_f64().unwrap() > 0.9, "{a}");
    assert!(a["pr_auc"].as_f64().unwrap() > 0.5, "{a}");
    assert!(a["f1"].as_f64().unwrap() > 0.5, "{a}");
    // the smoothed residual decays for a while after a burst: those frames are the
    // false alarms here
    assert!(a["false_alarm_rate"].as_f64().unwrap() < 0.1, "{a}");
    let text = std::fs::read_to_string(&scores).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("entity,row,score,flag,label"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2 * TEST);
    assert_eq!(rows[650][..2], ["a-1", "650"]);
    assert_eq!(rows[650][4], "1");
    assert_eq!(rows[TEST + 10][4], "0");

    // the generic layout scores every column unless told: the command column is context
    // (with Telemanom's absolute minimum error, which only its layout sets by default)
    let b = evaluate(&[
        "--data",
        g.to_str().unwrap(),
        "--values",
        "0",
        "--param",
        "min_error=0.05",
    ]);
    assert_eq!(b["layout"], "generic");
    for key in [
        "f1",
        "pa_f1",
        "roc_auc",
        "pr_auc",
        "event_precision",
        "event_recall",
        "false_alarm_rate",
    ] {
        let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        // NumPy f64 and CSV text round-trip to the same f32 values
        assert!((x - y).abs() < 1e-9, "{key}: {x} vs {y}");
    }
    // the other detectors run through the same protocol; CUSUM accumulates the burst,
    // PCA cannot reconstruct it,
    // while a z-score of the value alone does not see it within the sine's swing
    let cusum = evaluate(&["--data", t.to_str().unwrap(), "--detector", "cusum"]);
    assert_eq!(cusum["detector"], "cusum");
    assert_eq!(cusum["event_recall"], 1.0, "{cusum}");
    let pca = evaluate(&["--data", t.to_str().unwrap(), "--detector", "pca"]);
    assert_eq!(pca["detector"], "pca");
    assert_eq!(pca["event_recall"], 1.0, "{pca}");
    // nor is the burst near any window seen before it
    let near = evaluate(&["--data", t.to_str().unwrap(), "--detector", "neighbour"]);
    assert_eq!(near["detector"], "neighbour");
    let floor = near["config"]["min_distance"].as_f64().unwrap();
    assert!((floor - 0.05).abs() < 1e-6, "Telemanom's floor: {near}");
    assert_eq!(near["event_recall"], 1.0, "{near}");
    assert_eq!(near["event_fp"], 0, "{near}");
    // the burst's values and their spread leave the ranges of the training data
    let envelope = evaluate(&["--data", t.to_str().unwrap(), "--detector", "envelope"]);
    assert_eq!(envelope["detector"], "envelope");
    let floor = envelope["config"]["min_change"].as_f64().unwrap();
    assert!((floor - 0.05).abs() < 1e-6, "Telemanom's floor: {envelope}");
    assert_eq!(envelope["event_recall"], 1.0, "{envelope}");
    assert_eq!(envelope["event_fp"], 0, "{envelope}");
    let ewma = evaluate(&["--data", t.to_str().unwrap(), "--detector", "ewma"]);
    assert_eq!(ewma["detector"], "ewma");
    assert!(
        ewma["pr_auc"].as_f64().unwrap() < a["pr_auc"].as_f64().unwrap(),
        "{ewma}"
    );
    // scoring the command column too: its flips are departures the value never makes
    let c = evaluate(&["--data", g.to_str().unwrap()]);
    assert!(
        c["false_alarm_rate"].as_f64().unwrap() >= b["false_alarm_rate"].as_f64().unwrap(),
        "{c}"
    );
}

/// The forecaster with the command column as context (`context_lags`) and with stuck
/// detection (`stuck`) runs through the same protocol: its settings are reported, the
/// command column is still not scored (one score per test row), both bursts are still
/// found with no other event, and the training hold-out error is reported.
#[test]
fn forecast_with_context_and_stuck_detection() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("telemanom");
    telemanom(&t);
    let scores = dir.path().join("scores.csv");
    let a = evaluate(&[
        "--data",
        t.to_str().unwrap(),
        "--param",
        "context_lags=3",
        "--param",
        "stuck=true",
        "--scores",
        scores.to_str().unwrap(),
    ]);
    assert_eq!(a["config"]["context_lags"], 3, "{a}");
    assert_eq!(a["config"]["stuck"], true, "{a}");
    assert_eq!(a["frames"], 2 * TEST as u64);
    assert_eq!(a["event_recall"], 1.0, "{a}");
    assert_eq!(a["event_precision"], 1.0, "{a}");
    let text = std::fs::read_to_string(&scores).unwrap();
    assert_eq!(text.lines().count(), 1 + 2 * TEST);
    // the label-free measure the default's context_lags was chosen by: the context is
    // kept only where it forecasts the held-out end of the training data better, so the
    // error with it is never larger than without
    let held_out = |v: &serde_json::Value| v["training_holdout_error"].as_f64().unwrap();
    let none = evaluate(&["--data", t.to_str().unwrap(), "--param", "context_lags=0"]);
    assert!(held_out(&none) > 0.0, "{none}");
    assert!(held_out(&a) <= held_out(&none), "{a} {none}");
}

/// Mistakes in the data set are errors that name the file.
#[test]
fn bad_data_sets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g");
    generic(&g);
    std::fs::write(g.join("labels/b-2.csv"), "label\n0\n1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "evaluate",
            "--data",
            g.to_str().unwrap(),
            "--log-level",
            "error",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("b-2.csv") && err.contains("2 labels for 1200"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "evaluate",
            "--data",
            g.to_str().unwrap(),
            "--param",
            "lag=3",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"lag\""));
}

/// `envelope` on all of SMAP (54 channels) gives the README's figures: 56 of the 68
/// labelled segments found with 24 false events, under 1 % false alarms, and PA-F1 and
/// ROC-AUC above both numpy baselines' (0.785 and 0.700).
#[test]
fn envelope_on_smap_gives_the_readme_figures() {
    let Some(smap) = common::smap() else { return };
    let e = evaluate(&["--data", smap.to_str().unwrap(), "--detector", "envelope"]);
    assert_eq!(e["detector"], "envelope");
    assert_eq!(e["entities_evaluated"], 54);
    let events = [&e["event_tp"], &e["event_fp"], &e["event_fn"]];
    assert_eq!(events, [56, 24, 12], "{e}");
    assert!(e["false_alarm_rate"].as_f64().unwrap() < 0.01, "{e}");
    assert!(e["pa_f1"].as_f64().unwrap() > 0.785, "{e}");
    assert!(e["roc_auc"].as_f64().unwrap() > 0.70, "{e}");
}

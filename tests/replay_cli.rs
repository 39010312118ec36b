//! The `tidewatch replay` binary's flags as a user gives them: `--device` (and
//! `DEFAULT_DEVICE`) chooses where scoring runs, as for `serve`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Features and window of the test model.
const F: usize = 12;
const W: usize = 5;
/// Frames replayed from the generator.
const FRAMES: u64 = 30;

fn tidewatch(dir: &Path) -> Command {
    let mut c = common::tidewatch(dir);
    c.env("LOG_LEVEL", "info");
    c
}

/// `replay --generate` over the model in `dir`, with `extra` flags, reporting as JSON.
fn replay(dir: &Path, extra: &[&str]) -> Command {
    let mut c = tidewatch(dir);
    c.args(["replay", "--generate", &FRAMES.to_string(), "--json"])
        .arg("--model")
        .arg(dir.join("model"))
        .args(extra);
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON log lines of a run and its JSON report (the one object that is no log event).
fn lines(err: &str) -> (Vec<Value>, Option<Value>) {
    let (mut events, mut report) = (Vec::new(), None);
    for v in err
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if v["level"].is_string() {
            events.push(v);
        } else {
            report = Some(v);
        }
    }
    (events, report)
}

/// The `scoring device` log event: (requested, used).
fn device_event(err: &str) -> (String, String) {
    let (events, _) = lines(err);
    let e = events
        .iter()
        .find(|e| e["fields"]["message"] == "scoring device")
        .unwrap_or_else(|| panic!("no `scoring device` line: {err}"));
    let field = |k: &str| e["fields"][k].as_str().unwrap().to_string();
    (field("requested"), field("device"))
}

/// `--device cpu` scores every frame on the CPU (and wins over `DEFAULT_DEVICE`);
/// `DEFAULT_DEVICE` alone is obeyed; `--device cuda` without a usable GPU (any build
/// without the `gpu` feature) stops before scoring with the reason, the same one `serve`
/// gives, and with a GPU scores on it.
#[test]
fn replay_scores_on_the_device_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    common::random_rff_model(F, W, 3)
        .save(&dir.path().join("model"))
        .unwrap();

    let out = replay(dir.path(), &["--device", "cpu"])
        .env("DEFAULT_DEVICE", "cuda")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(device_event(&err), ("Cpu".into(), "Cpu".into()), "{err}");
    // the summary alone on stdout, no report among the logs
    assert!(lines(&err).1.is_none(), "the summary went to stderr: {err}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}): {err}"));
    assert_eq!(report["stats"]["frames_in"], FRAMES);
    assert_eq!(report["stats"]["frames_scored"], FRAMES - (W as u64 - 1));

    let out = replay(dir.path(), &[])
        .env("DEFAULT_DEVICE", "CPU")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(device_event(&err).0, "Cpu", "{err}");

    let out = replay(dir.path(), &["--device", "cuda"]).output().unwrap();
    let err = stderr(&out);
    match tidewatch::detect::gpu::probe() {
        Ok(gpu) => {
            assert!(out.status.success(), "{} is usable: {err}", gpu.name);
            assert_eq!(device_event(&err), ("Cuda".into(), "Cuda".into()), "{err}");
        }
        Err(why) => {
            assert!(!out.status.success(), "cuda without a GPU must fail: {err}");
            let reason = format!("DEFAULT_DEVICE=cuda, but no GPU can be used: {why}");
            let last = err.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("error: ") && last.contains(&reason),
                "the last line says why: {err}"
            );
            assert!(out.stdout.is_empty(), "nothing was replayed: {err}");
            // serve refuses it with the same reason
            let out = tidewatch(dir.path())
                .args([
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-webhook",
                ])
                .args(["--device", "cuda", "--model"])
                .arg(dir.path().join("model"))
                .output()
                .unwrap();
            let serve_err = stderr(&out);
            assert!(!out.status.success(), "{serve_err}");
            assert!(serve_err.contains(&reason), "{serve_err}");
        }
    }
}

/// The (seq, score, flag) rows of a `--scores` file, checking its header.
fn score_rows(path: &Path) -> Vec<(u64, f32, bool)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("seq,id,entity,score,flag"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "{l}");
            (f[0].parse().unwrap(), f[3].parse().unwrap(), f[4] == "1")
        })
        .collect()
}

/// `replay --scores` writes every scored frame's score, alerting or not: one line per
/// verdict, in frame order, the same with one worker or two; a frame is flagged exactly
/// when its score reaches the threshold, and the flagged frames are the alert file's.
#[test]
fn scores_file_has_every_verdict_and_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    common::random_rff_model(F, W, 3)
        .save(&dir.path().join("model"))
        .unwrap();
    let first = dir.path().join("first.csv");
    let out = replay(
        dir.path(),
        &["-w", "1", "--scores", first.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = score_rows(&first);
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (W as u64 - 1..FRAMES).collect::<Vec<_>>());
    assert!(rows.iter().all(|r| r.1.is_finite()), "{rows:?}");

    // a threshold between the scores: some frames alert and some do not
    let mut sorted: Vec<f32> = rows.iter().map(|r| r.1).collect();
    sorted.sort_by(f32::total_cmp);
    let threshold = sorted[sorted.len() / 2].to_string();
    let second = dir.path().join("second.csv");
    let alerts = dir.path().join("alerts.jsonl");
    let out = replay(
        dir.path(),
        &[
            "-w",
            "2",
            "--threshold",
            &threshold,
            "--scores",
            second.to_str().unwrap(),
            "--output",
            alerts.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let again = score_rows(&second);
    let scores = |r: &[(u64, f32, bool)]| r.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>();
    assert_eq!(scores(&again), scores(&rows), "-w 2 scores as -w 1");
    let t: f32 = threshold.parse().unwrap();
    for (seq, score, flag) in &again {
        assert_eq!(*flag, *score >= t, "frame {seq}: {score} against {t}");
    }
    let flagged: Vec<u64> = again.iter().filter(|r| r.2).map(|r| r.0).collect();
    assert!(!flagged.is_empty() && flagged.len() < again.len());
    let alerted: Vec<u64> = common::alert_lines(&alerts)
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(alerted, flagged);
}

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

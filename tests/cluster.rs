//! `tidewatch replay` as a user runs it: one process with one or two worker threads, and
//! two real processes talking over loopback, must find the same anomalies.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{random_frames, random_rff_model};
use tidewatch::model::FeatureIndex;
use tidewatch::sources::FrameWriter;

fn tidewatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tidewatch"))
}

fn check(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a model and a JSONL file of frames; returns their paths.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let (f, w) = (50, 5);
    let model_dir = dir.join("model");
    random_rff_model(f, w, 11).save(&model_dir).unwrap();
    let input = dir.join("frames.jsonl");
    let mut writer = FrameWriter::create(&input, &FeatureIndex::numbered(f)).unwrap();
    for frame in random_frames(200, f, 5) {
        writer.write(&frame).unwrap();
    }
    writer.finish().unwrap();
    (model_dir, input)
}

fn replay(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut cmd = tidewatch();
    cmd.args(["replay", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .env("LOG_LEVEL", "warn");
    cmd
}

/// The anomalies of a replayed file are identical for -w 1, -w 2, and two processes.
#[test]
fn same_anomalies_for_threads_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (model, input) = fixture(dir.path());

    let one = dir.path().join("w1.jsonl");
    check(
        replay(&model, &input, &one, &["-w", "1"]).output().unwrap(),
        "-w 1",
    );
    let two = dir.path().join("w2.jsonl");
    check(
        replay(&model, &input, &two, &["-w", "2"]).output().unwrap(),
        "-w 2",
    );

    let hosts = dir.path().join("hosts.txt");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1:{}\n127.0.0.1:{}\n",
            common::free_port(),
            common::free_port()
        ),
    )
    .unwrap();
    let procs = dir.path().join("n2.jsonl");
    let unused = dir.path().join("unused.jsonl");
    let hostfile = hosts.to_str().unwrap();
    let p1 = replay(
        &model,
        &input,
        &unused,
        &["-n", "2", "-p", "1", "-h", hostfile],
    )
    .spawn()
    .unwrap();
    let p0 = replay(
        &model,
        &input,
        &procs,
        &["-n", "2", "-p", "0", "-h", hostfile],
    )
    .output()
    .unwrap();
    let p1 = p1.wait_with_output().unwrap();
    check(p0, "process 0 of 2");
    check(p1, "process 1 of 2");

    let reference = common::alert_lines(&one);
    assert!(reference.len() > 10, "the fixture model flags frames");
    assert_eq!(
        common::alert_lines(&two),
        reference,
        "-w 2 differs from -w 1"
    );
    assert_eq!(
        common::alert_lines(&procs),
        reference,
        "two processes differ from one"
    );
    assert!(
        !unused.exists(),
        "only the process hosting worker 0 writes alerts"
    );
}

/// A frame with unknown or missing feature names is reported by name and skipped; the
/// frames around it are still scored.
#[test]
fn bad_frame_is_reported_and_the_stream_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (model, input) = fixture(dir.path());
    let mut lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines[100] = lines[100].replace("\"feature_7\"", "\"feature_x7\"");
    lines[150] = lines[150].replace("\"feature_3\":", "\"ignored\":0,\"feature_3_\":");
    let mut v: serde_json::Value = serde_json::from_str(&lines[160]).unwrap();
    v["data"].as_object_mut().unwrap().remove("feature_42");
    lines[160] = v.to_string();
    let bad_input = dir.path().join("bad.jsonl");
    std::fs::write(&bad_input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("alerts.jsonl");
    let run = replay(&model, &bad_input, &out, &["--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    let stdout = run.stdout.clone();
    check(run, "replay with a bad line");
    assert!(stderr.contains("feature_x7"), "unknown key named: {stderr}");
    assert!(stderr.contains("feature_3_"), "unknown key named: {stderr}");
    assert!(stderr.contains("feature_42"), "missing key named: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    // sequence numbers go to accepted frames only, so windows span the rejected lines
    assert_eq!(summary["stats"]["frames_in"], 197);
    assert_eq!(summary["stats"]["frames_rejected"], 3);
    assert_eq!(summary["stats"]["frames_scored"], 193);
}

/// A source that cannot be opened, with two workers, is an error that names the file,
/// not a hang; so is asking for more workers than the model has features.
#[test]
fn setup_errors_end_the_run_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = fixture(dir.path());
    let missing = dir.path().join("missing.jsonl");
    let out = dir.path().join("alerts.jsonl");
    let mut run = replay(&model, &missing, &out, &["-w", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            run.kill().unwrap();
            panic!("replay hung on a missing input");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = {
        use std::io::Read;
        let mut s = String::new();
        run.stderr.take().map(|mut e| e.read_to_string(&mut s));
        s
    };
    assert!(!status.success());
    assert!(stderr.contains("missing.jsonl"), "{stderr}");

    let input = dir.path().join("frames.jsonl");
    let many = replay(&model, &input, &out, &["-w", "64"])
        .output()
        .unwrap();
    assert!(!many.status.success());
    let stderr = String::from_utf8_lossy(&many.stderr);
    assert!(stderr.contains("64 workers for 50 features"), "{stderr}");
}

//! Windows of event time (`--window 30s --stride 10s`), run as a user runs them:
//! `tidewatch replay --dataflow telemetry` with the shipped `models/telemetry` on JSONL
//! and CSV frames that carry timestamps, at -w 1, -w 2 and in two real processes.
//!
//! The input: two pumps (entities without a model of their own, so the default PCA
//! model scores them), one frame a second each from a time on the 10 s grid, a gentle
//! wave on the telemetry value and one spike at second 55 of `pump-1`. The windows of
//! 30 s ending every 10 s that hold the spike are those ending at 60, 70 and 80 s: their
//! verdicts are those of their latest frames, seconds 59, 69 and 79.

mod common;

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};

/// 2027-01-15T08:00:00Z: a multiple of 10 s since the epoch, so windows end at whole
/// tens of seconds of the series.
const BASE_MS: i64 = 1_800_000_000_000;
const SECONDS: usize = 120;
const PUMPS: [&str; 2] = ["pump-1", "pump-2"];
const WINDOWS: [&str; 4] = ["--window", "30s", "--stride", "10s"];

/// Frame `row` of `pump`: its telemetry value (feature 0; the other 24 are 0).
fn value(pump: &str, row: usize) -> f32 {
    if pump == "pump-1" && row == 55 {
        8.0
    } else {
        0.3 * (row as f32 / 5.0).sin()
    }
}

/// One JSON frame of `pump` at second `row` (epoch ms; ISO 8601 for `pump-2`, as the
/// contract allows either), with its id `<pump>:<row>`.
fn frame(pump: &str, row: usize, value: f32) -> Value {
    let data: serde_json::Map<String, Value> = (0..25)
        .map(|i| {
            (
                format!("feature_{i}"),
                json!(if i == 0 { value } else { 0.0 }),
            )
        })
        .collect();
    let ms = BASE_MS + row as i64 * 1000;
    let timestamp = match pump {
        "pump-2" => json!(iso(ms)),
        _ => json!(ms),
    };
    json!({"id": format!("{pump}:{row}"), "channel": pump, "timestamp": timestamp, "data": data})
}

fn iso(ms: i64) -> String {
    let s = ms / 1000 - BASE_MS / 1000;
    format!(
        "2027-01-15T08:{:02}:{:02}.{:03}Z",
        s / 60,
        s % 60,
        ms % 1000
    )
}

/// The series in time order, both pumps interleaved.
fn series() -> Vec<Value> {
    (0..SECONDS)
        .flat_map(|r| PUMPS.map(|p| frame(p, r, value(p, r))))
        .collect()
}

fn write_jsonl(path: &Path, frames: &[Value]) {
    let text: String = frames.iter().map(|f| format!("{f}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn models() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/telemetry")
}

/// `replay --dataflow telemetry --json` of `input` with `extra` flags: its output, its
/// summary and its alerts (without the seq, which numbers input lines).
fn replay(input: &Path, dir: &Path, name: &str, extra: &[&str]) -> (Output, Value, Vec<Value>) {
    let out = dir.join(format!("{name}.alerts.jsonl"));
    let run = common::tidewatch(dir)
        .env("LOG_LEVEL", "warn")
        .args(["replay", "--dataflow", "telemetry", "--json", "--model"])
        .arg(models())
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    common::check(&run, name);
    let summary = serde_json::from_slice(&run.stdout).unwrap_or(Value::Null);
    (run, summary, alerts(&out))
}

fn alerts(out: &Path) -> Vec<Value> {
    let mut lines = common::alert_lines(out);
    for a in &mut lines {
        a.as_object_mut().unwrap().remove("seq");
    }
    lines
}

fn ids(alerts: &[Value]) -> Vec<&str> {
    alerts.iter().map(|a| a["id"].as_str().unwrap()).collect()
}

/// Each pump's frames are windowed by their timestamps: 12 windows of 30 s each (ends
/// 10 s ... 120 s, the last scored when the input ends), each window's verdict is its
/// latest frame's (second 9 of each ten), and the spike alerts in the three windows that
/// hold it, on its own pump.
#[test]
fn windows_of_event_time_score_each_entity_by_its_timestamps() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pumps.jsonl");
    write_jsonl(&input, &series());
    let (_, summary, alerts) = replay(&input, tmp.path(), "pumps", &WINDOWS);
    let stats = &summary["stats"];
    assert_eq!(stats["frames_in"], 2 * SECONDS as u64, "{summary}");
    assert_eq!(stats["frames_scored"], 2 * 12, "{summary}");
    assert_eq!(
        (
            stats["frames_late"].as_u64(),
            stats["frames_untimed"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(ids(&alerts), ["pump-1:59", "pump-1:69", "pump-1:79"]);
    assert!(alerts.iter().all(|a| a["entity"] == "pump-1"));
}

/// A frame older than its entity's watermark (latest timestamp minus `--lateness`) is
/// counted, logged with its entity, timestamp and watermark, and left out: the verdicts
/// are those of the run without it, though its spike would have made another window
/// alert. A frame without a timestamp is counted apart and left out too.
#[test]
fn a_late_frame_is_counted_logged_and_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean.jsonl");
    write_jsonl(&clean, &series());
    let (_, _, reference) = replay(&clean, tmp.path(), "clean", &WINDOWS);

    // pump-2 at second 20 with a spike, arriving after its second 40 (watermark 35 s);
    // and a frame of pump-2 with no timestamp
    let mut frames = series();
    let late = frame("pump-2", 20, 9.0);
    let at = frames.iter().position(|f| f["id"] == "pump-2:40").unwrap() + 1;
    frames.insert(at, late);
    let mut untimed = frame("pump-2", 41, 9.0);
    untimed.as_object_mut().unwrap().remove("timestamp");
    frames.insert(at + 1, untimed);
    let input = tmp.path().join("late.jsonl");
    write_jsonl(&input, &frames);
    let (run, summary, alerts) = replay(&input, tmp.path(), "late", &WINDOWS);
    assert_eq!(summary["stats"]["frames_late"], 1, "{summary}");
    assert_eq!(summary["stats"]["frames_untimed"], 1, "{summary}");
    assert_eq!(alerts, reference);
    let log = String::from_utf8_lossy(&run.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("a late frame"))
        .unwrap_or_else(|| panic!("no late frame logged:\n{log}"));
    let watermark = (BASE_MS + 35_000).to_string();
    let timestamp = (BASE_MS + 20_000).to_string();
    for part in ["pump-2", &timestamp, &watermark] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert!(log.contains("without a timestamp"), "{log}");

    // inside the bound (5 s by default), the frame is windowed: the spike alerts
    let mut frames = series();
    let at = frames.iter().position(|f| f["id"] == "pump-2:23").unwrap() + 1;
    frames.insert(at, frame("pump-2", 20, 9.0));
    frames.retain(|f| f["id"] != "pump-2:20" || f["data"]["feature_0"] == 9.0);
    let input = tmp.path().join("in-time.jsonl");
    write_jsonl(&input, &frames);
    let (_, summary, alerts) = replay(&input, tmp.path(), "in-time", &WINDOWS);
    assert_eq!(summary["stats"]["frames_late"], 0, "{summary}");
    assert!(ids(&alerts).contains(&"pump-2:29"), "{:?}", ids(&alerts));
}

/// Frames out of order within the lateness bound land in the windows of their
/// timestamps: a window's latest frame arriving after frames of the next window keeps
/// the window's verdict, and every verdict is the in-order run's.
#[test]
fn out_of_order_frames_within_the_bound_are_windowed_by_timestamp() {
    let tmp = tempfile::tempdir().unwrap();
    let ordered = tmp.path().join("ordered.jsonl");
    write_jsonl(&ordered, &series());
    let (_, _, reference) = replay(&ordered, tmp.path(), "ordered", &WINDOWS);
    // pump-1's seconds 59 (the spike window's last) and 55 (the spike, exactly 5 s
    // behind: the bound is inclusive) arrive after its second 60, and 33 before 31
    let mut frames = series();
    let mut moved = Vec::new();
    frames.retain(|f| {
        let keep = !matches!(
            f["id"].as_str(),
            Some("pump-1:59" | "pump-1:55" | "pump-1:33")
        );
        if !keep {
            moved.push(f.clone());
        }
        keep
    });
    let by_id = |id: &str| moved.iter().find(|f| f["id"] == id).unwrap().clone();
    let after = |frames: &[Value], id: &str| frames.iter().position(|f| f["id"] == id).unwrap();
    let at = after(&frames, "pump-1:60") + 1;
    frames.insert(at, by_id("pump-1:55"));
    frames.insert(at, by_id("pump-1:59"));
    let at = after(&frames, "pump-1:31");
    frames.insert(at, by_id("pump-1:33"));
    let input = tmp.path().join("shuffled.jsonl");
    write_jsonl(&input, &frames);
    let (_, summary, alerts) = replay(&input, tmp.path(), "shuffled", &WINDOWS);
    assert_eq!(summary["stats"]["frames_late"], 0, "{summary}");
    assert_eq!(alerts, reference);
    assert_eq!(ids(&alerts), ["pump-1:59", "pump-1:69", "pump-1:79"]);
}

/// The same verdicts at -w 1, -w 2 and in two processes (the entity is sharded by its
/// key; its windows and watermark are its own), and from a CSV with a `time` column of
/// the same frames.
#[test]
fn event_time_verdicts_do_not_depend_on_workers_processes_or_format() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pumps.jsonl");
    write_jsonl(&input, &series());
    let (_, _, reference) = replay(
        &input,
        tmp.path(),
        "w1",
        &[&WINDOWS[..], &["-w", "1"]].concat(),
    );
    assert_eq!(ids(&reference), ["pump-1:59", "pump-1:69", "pump-1:79"]);
    let (_, _, w2) = replay(
        &input,
        tmp.path(),
        "w2",
        &[&WINDOWS[..], &["-w", "2"]].concat(),
    );
    assert_eq!(w2, reference, "-w 2 differs");

    let hosts = tmp.path().join("hosts.txt");
    common::loopback_hostfile(&hosts, 2);
    let process = |p: &str, out: &str| {
        let mut c = common::tidewatch(tmp.path());
        c.env("LOG_LEVEL", "warn")
            .args(["replay", "--dataflow", "telemetry", "--model"])
            .arg(models())
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(tmp.path().join(out))
            .args(WINDOWS)
            .args(["-n", "2", "-p", p, "-h", hosts.to_str().unwrap()]);
        c
    };
    let p1 = process("1", "unused.jsonl").spawn().unwrap();
    let p0 = process("0", "n2.jsonl").output().unwrap();
    common::check(&p0, "process 0 of 2");
    common::check(&p1.wait_with_output().unwrap(), "process 1 of 2");
    assert_eq!(
        alerts(&tmp.path().join("n2.jsonl")),
        reference,
        "-n 2 differs"
    );

    // the same frames as CSV, timestamps in a column called `time` (epoch ms)
    let mut csv = String::from("id,channel,time");
    for i in 0..25 {
        csv.push_str(&format!(",feature_{i}"));
    }
    csv.push('\n');
    for r in 0..SECONDS {
        for p in PUMPS {
            let ms = BASE_MS + r as i64 * 1000;
            csv.push_str(&format!("{p}:{r},{p},{ms},{}", value(p, r)));
            csv.push_str(&",0".repeat(24));
            csv.push('\n');
        }
    }
    let csv_path = tmp.path().join("pumps.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    let (_, _, from_csv) = replay(&csv_path, tmp.path(), "csv", &WINDOWS);
    assert_eq!(from_csv, reference, "the CSV differs");
    // a column named otherwise, with --timestamp-column
    std::fs::write(&csv_path, csv.replacen(",time,", ",at,", 1)).unwrap();
    let named = [&WINDOWS[..], &["--timestamp-column", "at"]].concat();
    let (_, _, named) = replay(&csv_path, tmp.path(), "csv-named", &named);
    assert_eq!(named, reference, "--timestamp-column differs");
}

/// What cannot be windowed by event time is refused before the run, saying why: `.npy`
/// frames (no timestamps), a variant that windows by count, a stride of frames.
#[test]
fn event_time_is_refused_where_it_cannot_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |args: &[&str]| {
        let run = common::tidewatch(tmp.path())
            .env("LOG_LEVEL", "warn")
            .arg("replay")
            .args(args)
            .output()
            .unwrap();
        assert!(!run.status.success(), "{args:?} ran");
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    let npy = tmp.path().join("frames.npy");
    std::fs::write(&npy, b"").unwrap();
    let models = models();
    let models = models.to_str().unwrap();
    let err = refused(&[
        "--dataflow",
        "telemetry",
        "--model",
        models,
        "--input",
        npy.to_str().unwrap(),
        "--window",
        "30s",
    ]);
    assert!(err.contains("carry no timestamps"), "{err}");
    let err = refused(&["--generate", "10", "--window", "30s"]);
    assert!(err.contains("windows by frame count"), "{err}");
    let err = refused(&["--generate", "10", "--window", "30s", "--stride", "10"]);
    assert!(err.contains("give the stride as one too"), "{err}");
}

//! `--alerts incident` as a user runs it: the built binary replays hand-written frames
//! (or serves them over HTTP to a receiver that checks alerts like the NestJS client),
//! and one departure becomes one incident, opened, escalated and resolved.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tidewatch::model::FeatureIndex;
use tidewatch::sinks::alert::check_like_client;
use tidewatch::sinks::webhook::CLIENT_BODY_LIMIT;
use tidewatch::sources::FrameWriter;
use tidewatch::types::{Frame, FrameMeta};

/// Features and window of the test model.
const F: usize = 12;
const W: usize = 5;
/// The test model's threshold: a window mean of 0.5.
const THRESHOLD: f32 = 0.5;

/// The window-mean model ([`common::window_mean_model`]) of this file's shape, saved.
fn mean_model(dir: &Path) -> PathBuf {
    let path = dir.join("model");
    common::window_mean_model(F, W, THRESHOLD)
        .save(&path)
        .unwrap();
    path
}

/// `n` frames with event times, of noise in ±`noise` plus `bump(seq, feature)`.
fn frames(
    dir: &Path,
    name: &str,
    n: usize,
    noise: f32,
    bump: impl Fn(usize, usize) -> f32,
) -> PathBuf {
    let path = dir.join(name);
    let mut writer = FrameWriter::create(&path, &FeatureIndex::numbered(F)).unwrap();
    let mut r = common::Lcg(7);
    for seq in 0..n {
        let frame = Frame {
            seq: 0,
            meta: FrameMeta {
                event_ms: Some(1_795_428_000_000 + 1_000 * seq as i64),
                id: Some(format!("frame-{seq}")),
                ..FrameMeta::default()
            },
            values: (0..F).map(|f| r.next() * noise + bump(seq, f)).collect(),
        };
        writer.write(&frame).unwrap();
    }
    writer.finish().unwrap();
    path
}

/// `tidewatch replay` of `input` over `model`, alert lines to `output`.
fn replay(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut c = common::tidewatch(model.parent().unwrap());
    c.args(["replay", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .env("LOG_LEVEL", "warn");
    c
}

/// The lines of `path` as JSON, each checked the way the NestJS client checks an alert.
fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            check_like_client(Some("application/json"), l.as_bytes(), CLIENT_BODY_LIMIT)
                .unwrap_or_else(|e| panic!("the client would refuse ({e:?}): {l}"))
        })
        .collect()
}

/// `(event, incident id, severity)` of each line.
fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["incident"]["id"].as_str().unwrap().to_string(),
                e["incident"]["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A feature shifted by 1.0 for frames 40..60 of 100: windows (of 5) ending at 42..61
/// average over 0.5, twenty anomalous windows in a row. Frame mode raises twenty alerts;
/// incident mode one open (at the third anomalous window, frame 44) and one resolve
/// (after five clean windows, frame 66), carrying the incident's extent and frames.
#[test]
fn level_shift_gives_one_open_and_one_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let model = mean_model(dir.path());
    let shift = |seq: usize, f: usize| {
        if f == 3 && (40..60).contains(&seq) {
            1.0
        } else {
            0.0
        }
    };
    let input = frames(dir.path(), "shift.jsonl", 100, 0.1, shift);

    let frame_alerts = dir.path().join("frames.jsonl");
    common::check(
        &replay(&model, &input, &frame_alerts, &[]).output().unwrap(),
        "frame mode",
    );
    let seqs: Vec<u64> = events(&frame_alerts)
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (42..62).collect::<Vec<u64>>(),
        "one alert per anomalous frame"
    );

    let out = dir.path().join("incidents.jsonl");
    let run = replay(&model, &input, &out, &["--alerts", "incident"])
        .output()
        .unwrap();
    common::check(&run, "incident mode");
    let e = events(&out);
    assert_eq!(
        summary(&e),
        vec![
            ("open".into(), "feature_3#42".into(), "info".into()),
            ("resolve".into(), "feature_3#42".into(), "info".into()),
        ],
        "{e:#?}"
    );
    let (open, resolve) = (&e[0], &e[1]);
    assert_eq!(open["seq"], 44);
    assert_eq!(open["anomaly_detected"], true);
    assert_eq!(open["incident"]["end"], Value::Null);
    assert_eq!(open["incident"]["frames"], serde_json::json!([42, 43, 44]));
    assert_eq!(resolve["seq"], 66);
    assert_eq!(resolve["anomaly_detected"], false);
    assert_eq!(resolve["incident"]["group"], "feature_3");
    assert_eq!(resolve["incident"]["start_seq"], 42);
    assert_eq!(resolve["incident"]["end_seq"], 61);
    assert_eq!(resolve["incident"]["start"], "2026-11-23T10:00:42.000Z");
    assert_eq!(resolve["incident"]["end"], "2026-11-23T10:01:01.000Z");
    assert_eq!(resolve["incident"]["windows"], 20);
    assert_eq!(
        resolve["incident"]["frames"],
        Value::from((42..62).collect::<Vec<u64>>())
    );
    assert_eq!(resolve["num_anomalous_features"], 1);
    assert_eq!(resolve["anomalous_features"][0]["feature_idx"], 3);
    let peak = resolve["incident"]["peak_score"].as_f64().unwrap();
    assert!((0.9..=1.1).contains(&peak), "{peak}");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains(
            "incidents: 1 reached info, 0 warning, 0 critical; 0 open at the end of the input"
        ),
        "{err}"
    );
}

/// A departure still under way when the file ends: its incident resolves at the last
/// frame, marked `reason: end_of_input`, so that no receiver is left with an incident
/// nothing will close; the same with one worker and with two.
#[test]
fn an_incident_open_at_the_end_of_the_input_resolves_there() {
    let dir = tempfile::tempdir().unwrap();
    let model = mean_model(dir.path());
    let input = frames(dir.path(), "tail.jsonl", 60, 0.1, |seq, f| {
        if f == 3 && seq >= 40 {
            1.0
        } else {
            0.0
        }
    });
    let mut runs = Vec::new();
    for workers in ["1", "2"] {
        let out = dir.path().join(format!("w{workers}.jsonl"));
        let run = replay(
            &model,
            &input,
            &out,
            &["--alerts", "incident", "-w", workers],
        )
        .output()
        .unwrap();
        common::check(&run, "incident mode");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains("1 open at the end of the input (resolved there)"),
            "{err}"
        );
        runs.push(std::fs::read_to_string(&out).unwrap());
    }
    assert_eq!(runs[0], runs[1], "the same with two workers");
    let e = events(&dir.path().join("w1.jsonl"));
    assert_eq!(
        summary(&e),
        vec![
            ("open".into(), "feature_3#42".into(), "info".into()),
            ("resolve".into(), "feature_3#42".into(), "info".into()),
        ],
        "{e:#?}"
    );
    let resolve = &e[1];
    assert_eq!(resolve["reason"], "end_of_input");
    assert_eq!(resolve["seq"], 59, "at the last frame");
    assert_eq!(resolve["incident"]["end_seq"], 59);
    assert_eq!(resolve["anomaly_detected"], false);
    assert_eq!(e[0].get("reason"), None, "only on such resolves");
}

/// Six features of one subsystem (per the metadata file) depart together: one incident
/// for the group, listing all six; without the metadata, one incident per feature.
#[test]
fn subsystem_departure_is_one_incident_for_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let model = mean_model(dir.path());
    let metadata = dir.path().join("features.csv");
    let mut csv = String::from("feature,asset,subsystem\n");
    for f in 0..F {
        let subsystem = if f < 6 { "motor" } else { "valve" };
        csv.push_str(&format!("feature_{f},pump1,{subsystem}\n"));
    }
    std::fs::write(&metadata, csv).unwrap();
    let motor = |seq: usize, f: usize| {
        if f < 6 && (30..50).contains(&seq) {
            // departing together, each by its own amount (none near the threshold)
            [1.6, 1.8, 1.9, 3.5, 4.0, 5.0][f]
        } else {
            0.0
        }
    };
    let input = frames(dir.path(), "motor.jsonl", 90, 0.1, motor);

    let grouped = dir.path().join("grouped.jsonl");
    let meta_flag = ["--feature-metadata", metadata.to_str().unwrap()];
    common::check(
        &replay(
            &model,
            &input,
            &grouped,
            &[&["--alerts", "incident"][..], &meta_flag[..]].concat(),
        )
        .output()
        .unwrap(),
        "with metadata",
    );
    let e = events(&grouped);
    assert_eq!(
        summary(&e)
            .iter()
            .map(|(kind, id, _)| (kind.as_str(), id.as_str()))
            .collect::<Vec<_>>(),
        vec![("open", "pump1/motor#30"), ("resolve", "pump1/motor#30")],
        "{e:#?}"
    );
    assert_eq!(e[1]["incident"]["group"], "pump1/motor");
    assert_eq!(e[1]["incident"]["num_features"], 6);
    let top: Vec<u64> = e[1]["incident"]["top_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feature_idx"].as_u64().unwrap())
        .collect();
    assert_eq!(top, vec![5, 4, 3, 2, 1, 0], "highest peak score first");

    let ungrouped = dir.path().join("ungrouped.jsonl");
    common::check(
        &replay(&model, &input, &ungrouped, &["--alerts", "incident"])
            .output()
            .unwrap(),
        "without metadata",
    );
    let opens = summary(&events(&ungrouped))
        .into_iter()
        .filter(|(kind, _, _)| kind == "open")
        .count();
    assert_eq!(opens, 6, "each feature is its own group without metadata");
}

/// A departure that keeps growing (a ramp to a window mean of about 10) escalates its
/// incident from info to warning to critical, with the shipped example config's
/// thresholds (seed 004's 0.7 and 0.9 on the normalised score: raw 2.33 and 9), then
/// resolves at its highest severity.
#[test]
fn severity_escalates_on_a_growing_departure() {
    let dir = tempfile::tempdir().unwrap();
    let model = mean_model(dir.path());
    let ramp = |seq: usize, f: usize| {
        if f == 2 && (20..60).contains(&seq) {
            0.25 * (seq - 19) as f32
        } else {
            0.0
        }
    };
    let input = frames(dir.path(), "ramp.jsonl", 90, 0.05, ramp);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/incidents.example.json");
    let out = dir.path().join("ramp-incidents.jsonl");
    common::check(
        &replay(
            &model,
            &input,
            &out,
            &[
                "--alerts",
                "incident",
                "--incident-config",
                config.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap(),
        "ramp",
    );
    let e = events(&out);
    let kinds: Vec<(String, String)> = summary(&e)
        .into_iter()
        .map(|(kind, _, severity)| (kind, severity))
        .collect();
    let want = [
        ("open", "info"),
        ("escalate", "warning"),
        ("escalate", "critical"),
        ("resolve", "critical"),
    ];
    assert_eq!(
        kinds,
        want.map(|(k, s)| (k.to_string(), s.to_string())),
        "{e:#?}"
    );
    let ids: std::collections::BTreeSet<&str> = e
        .iter()
        .map(|e| e["incident"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one incident throughout");
    let peak = |i: usize| e[i]["incident"]["peak_score"].as_f64().unwrap();
    assert!(
        peak(0) < 2.33 && peak(1) >= 2.33 && peak(2) >= 9.0,
        "{e:#?}"
    );
}

/// The same input gives byte-identical incident events with one worker, two worker
/// threads, and two real processes over loopback.
#[test]
fn incidents_are_the_same_for_threads_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let model = mean_model(dir.path());
    let metadata = dir.path().join("features.json");
    std::fs::write(
        &metadata,
        serde_json::to_string(
            &(0..8)
                .map(|f| {
                    serde_json::json!({
                        "feature": format!("feature_{f}"),
                        "asset": format!("pump{}", f / 4),
                        "subsystem": "motor"
                    })
                })
                .collect::<Vec<_>>(),
        )
        .unwrap(),
    )
    .unwrap();
    // Noise that alone crosses the threshold now and then (short-lived incidents), a
    // departure of pump0, a longer one of pump1 that grows, and lone features.
    let bump = |seq: usize, f: usize| match (seq, f) {
        (40..70, 0..4) => 1.5,
        (90..160, 4..=7) => 0.02 * (seq - 80) as f32 * (f as f32 - 2.0),
        (120..135, 9) | (200..230, 10) => 2.0,
        _ => 0.0,
    };
    let input = frames(dir.path(), "mixed.jsonl", 300, 1.2, bump);
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "--alerts",
            "incident",
            "--feature-metadata",
            metadata.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        replay(&model, &input, out, &args)
    };
    let one = dir.path().join("w1.jsonl");
    common::check(&run(&one, &["-w", "1"]).output().unwrap(), "-w 1");
    let two = dir.path().join("w2.jsonl");
    common::check(&run(&two, &["-w", "2"]).output().unwrap(), "-w 2");

    let hosts = dir.path().join("hosts.txt");
    common::loopback_hostfile(&hosts, 2);
    let hostfile = hosts.to_str().unwrap();
    let procs = dir.path().join("n2.jsonl");
    let unused = dir.path().join("unused.jsonl");
    let p1 = run(&unused, &["-n", "2", "-p", "1", "-h", hostfile])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let p0 = run(&procs, &["-n", "2", "-p", "0", "-h", hostfile])
        .output()
        .unwrap();
    let p1 = p1.wait_with_output().unwrap();
    common::check(&p0, "process 0 of 2");
    common::check(&p1, "process 1 of 2");

    let reference = std::fs::read_to_string(&one).unwrap();
    let e = events(&one);
    let groups: std::collections::BTreeSet<&str> = e
        .iter()
        .map(|e| e["incident"]["group"].as_str().unwrap())
        .collect();
    assert!(
        groups.contains("pump0/motor") && groups.contains("pump1/motor") && groups.len() >= 4,
        "the fixture raises incidents in several groups: {groups:?}"
    );
    assert!(e.iter().any(|e| e["event"] == "escalate"), "{e:#?}");
    assert_eq!(
        std::fs::read_to_string(&two).unwrap(),
        reference,
        "-w 2 differs from -w 1"
    );
    assert_eq!(
        std::fs::read_to_string(&procs).unwrap(),
        reference,
        "two processes differ from one"
    );
}

/// Two processes of one cluster started with different alert modes (incident mode on
/// process 0 only) would build different dataflows; both refuse at start with a message
/// that names the difference, instead of hanging.
#[test]
fn processes_started_with_different_incident_flags_refuse_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = mean_model(dir.path());
    let input = frames(dir.path(), "in.jsonl", 20, 0.1, |_, _| 0.0);
    let hosts = dir.path().join("hosts.txt");
    common::loopback_hostfile(&hosts, 2);
    let hostfile = hosts.to_str().unwrap();
    let cluster = ["-n", "2", "-h", hostfile, "-p"];
    let p1 = replay(
        &model,
        &input,
        &dir.path().join("p1.jsonl"),
        &[&cluster[..], &["1"]].concat(),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let p0 = replay(
        &model,
        &input,
        &dir.path().join("p0.jsonl"),
        &[&cluster[..], &["0", "--alerts", "incident"]].concat(),
    )
    .output()
    .unwrap();
    let p1 = p1.wait_with_output().unwrap();
    for (p, out) in [(0, &p0), (1, &p1)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "process {p} ran anyway: {err}");
        assert!(
            err.contains("started with different settings")
                && err.contains("incident alerts")
                && err.contains("frame alerts"),
            "process {p}: {err}"
        );
    }
}

/// `serve --alerts incident` posts incident events to the webhook, where a receiver
/// checking them like the NestJS client accepts them, and `/metrics` counts them.
#[cfg(unix)]
#[test]
fn serve_posts_incident_events_to_the_webhook() {
    use common::serve::{Client, Receiver};

    let dir = tempfile::tempdir().unwrap();
    let model = mean_model(dir.path());
    let rt = common::serve::runtime();
    let receiver = Receiver::like_client(&rt);
    let mut child = common::tidewatch(dir.path())
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(["--alerts", "incident", "--dead-letter"])
        .arg(dir.path().join("dead.jsonl"))
        .arg("--model")
        .arg(&model)
        .env("NESTJS_URL", receiver.base_url())
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, _stdout) = common::ready_addr(&mut child);
    let client = Client::new();
    for seq in 0..40u32 {
        let v = if (10..25).contains(&seq) { 2.0 } else { 0.0 };
        let data: Vec<String> = (0..F)
            .map(|f| format!("\"feature_{f}\":{}", if f == 7 { v } else { 0.0 }))
            .collect();
        let body = format!("{{\"id\":\"f{seq}\",\"data\":{{{}}}}}", data.join(","));
        assert_eq!(client.enqueue(addr, body.into_bytes(), &[]).status, 202);
    }
    common::serve::wait_until("the open and the resolve reach the receiver", || {
        receiver.alerts().len() >= 2
    });
    let (status, metrics) = client.get_text(addr, "/metrics");
    assert_eq!(status, 200);
    common::sigterm(&child);
    assert!(child.wait().unwrap().success());

    let got = receiver.alerts();
    assert_eq!(
        summary(&got),
        vec![
            ("open".into(), "feature_7#11".into(), "info".into()),
            ("resolve".into(), "feature_7#11".into(), "info".into()),
        ],
        "{got:#?}"
    );
    assert_eq!(common::sample(&metrics, "tidewatch_incidents_open"), 0.0);
    assert_eq!(
        common::sample(&metrics, "tidewatch_incidents_total{severity=\"info\"}"),
        1.0
    );
    assert_eq!(
        common::sample(&metrics, "tidewatch_incidents_total{severity=\"critical\"}"),
        0.0
    );
}

//! The `rules` variant (seed 004, PADIT) as a user runs it: `replay --dataflow rules` of
//! keyed frames against a rule file (golden: which frames alert, with which evidence and
//! severity, the same for -w 1, -w 2 and two processes), a bad rule file refused at
//! start, a rule file edited under a running `serve` changing the verdicts of the frames
//! after it (alerts over real HTTP to a receiver that checks them like the client), the
//! statistics against a plain reference computation, and the shipped `models/rules` on
//! NASA SMAP.
//!
//! The SMAP test skips visibly without the shared data (`../shared`, or
//! `$TIDEWATCH_SHARED`); `TIDEWATCH_REQUIRE_SHARED_DATA=1` (set in `.ci/run`) makes that a
//! failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tidewatch::detect::CusumConfig;
use tidewatch::ops::WindowConfig;
use tidewatch::rules::{Evaluator, RulesConfig, Stat};

use common::serve::{wait_until, Client, Receiver};

/// `replay --dataflow rules` of `input` against the rules model in `model`.
fn replay(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::tidewatch(model);
    cmd.args(["replay", "--dataflow", "rules", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .env("LOG_LEVEL", "warn");
    cmd
}

/// The golden fixture's rules: a spike on feature 0 of any entity, a high mean of A's
/// feature 0 alone, a drop of feature 1's last value.
const GOLDEN_RULES: &str = r#"
features = 2

[[rule]]
name = "spike"
stat = "p95"
feature = 0
above = 5.0

[[rule]]
name = "a-mean-high"
stat = "mean"
feature = 0
entity = "A"
above = 4.0
weight = 0.4

[[rule]]
name = "drop"
stat = "last"
feature = 1
below = -1.0
weight = 0.7
"#;

/// Entities A and B, 12 frames each, interleaved (A's i-th frame is seq 2i, B's 2i+1):
/// feature 0 is 10 at both entities' frames 6 and 7, else 0; B's feature 1 is -3 at its
/// frame 11, else 0.
fn golden_frames() -> String {
    let mut lines = String::new();
    for i in 0..12 {
        for entity in ["A", "B"] {
            let f0 = if i == 6 || i == 7 { 10.0 } else { 0.0 };
            let f1 = if entity == "B" && i == 11 { -3.0 } else { 0.0 };
            let frame = json!({
                "id": format!("{entity}{i}"),
                "entity": entity,
                "data": {"feature_0": f0, "feature_1": f1},
            });
            lines.push_str(&format!("{frame}\n"));
        }
    }
    lines
}

/// A rules model directory holding `rules`.
fn rules_model(dir: &Path, rules: &str) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("rules.toml"), rules).unwrap();
    model
}

/// One evidence item as alerts list it.
fn evidence(
    rule: &str,
    stat: &str,
    feature: u32,
    entity: &str,
    value: f64,
    (condition, threshold): (&str, f64),
    weight: f64,
) -> Value {
    json!({
        "rule": rule, "stat": stat, "feature": feature, "entity": entity, "value": value,
        "condition": condition, "threshold": threshold, "weight": weight,
    })
}

/// Golden: windows of 4 every 2 frames per entity end at each entity's frames 3, 5, 7,
/// 9 and 11. The pulse at 6-7 is in the windows ending at 7 and 9 of both entities (p95
/// 10, mean 5): A's fire `spike` and its own `a-mean-high` (0.5 + 0.4: critical), B's
/// `spike` alone (info); B's drop at its frame 11 fires `drop` (0.7: warning). No other
/// frame alerts. Two workers and two processes give the same alerts.
#[test]
fn replay_alerts_with_evidence_and_severity() {
    let tmp = tempfile::tempdir().unwrap();
    let model = rules_model(tmp.path(), GOLDEN_RULES);
    let input = tmp.path().join("frames.jsonl");
    std::fs::write(&input, golden_frames()).unwrap();
    let out = |name: &str| tmp.path().join(format!("{name}.jsonl"));
    let windows = ["--window", "4", "--stride", "2"];
    common::check(
        &replay(&model, &input, &out("w1"), &windows)
            .output()
            .unwrap(),
        "-w 1",
    );
    let alerts = common::alert_lines(&out("w1"));
    let spike = |e| evidence("spike", "p95", 0, e, 10.0, ("above", 5.0), 0.5);
    let a_mean = evidence("a-mean-high", "mean", 0, "A", 5.0, ("above", 4.0), 0.4);
    let drop = evidence("drop", "last", 1, "B", -3.0, ("below", -1.0), 0.7);
    let expected = [
        (
            14,
            "A7",
            vec![spike("A"), a_mean.clone()],
            0.9,
            "critical",
            json!([{"feature_idx": 0, "score": 0.9}]),
        ),
        (
            15,
            "B7",
            vec![spike("B")],
            0.5,
            "info",
            json!([{"feature_idx": 0, "score": 0.5}]),
        ),
        (
            18,
            "A9",
            vec![spike("A"), a_mean],
            0.9,
            "critical",
            json!([{"feature_idx": 0, "score": 0.9}]),
        ),
        (
            19,
            "B9",
            vec![spike("B")],
            0.5,
            "info",
            json!([{"feature_idx": 0, "score": 0.5}]),
        ),
        (
            23,
            "B11",
            vec![drop],
            0.7,
            "warning",
            json!([{"feature_idx": 1, "score": 0.7}]),
        ),
    ];
    assert_eq!(alerts.len(), expected.len(), "{alerts:#?}");
    for (a, (seq, id, ev, score, severity, features)) in alerts.iter().zip(expected) {
        assert_eq!(a["seq"], seq, "{a}");
        assert_eq!(a["id"], id, "{a}");
        assert_eq!(a["entity"], &id[..1], "{a}");
        assert_eq!(a["evidence"], Value::Array(ev), "{a}");
        assert_eq!(a["rule_score"], score, "{a}");
        assert_eq!(a["severity"], severity, "{a}");
        assert_eq!(a["anomalous_features"], features, "{a}");
        assert_eq!(a["anomaly_detected"], true);
    }

    common::check(
        &replay(
            &model,
            &input,
            &out("w2"),
            &[&windows[..], &["-w", "2"]].concat(),
        )
        .output()
        .unwrap(),
        "-w 2",
    );
    assert_eq!(common::alert_lines(&out("w2")), alerts, "-w 2 differs");
    let hosts = tmp.path().join("hosts.txt");
    common::loopback_hostfile(&hosts, 2);
    let cluster = |p: &str| -> Vec<String> {
        let mut args: Vec<String> = windows.iter().map(|s| s.to_string()).collect();
        args.extend(["-n", "2", "-p", p, "-h", hosts.to_str().unwrap()].map(String::from));
        args
    };
    let (c1, c0) = (cluster("1"), cluster("0"));
    let p1 = replay(
        &model,
        &input,
        &out("unused"),
        &c1.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .spawn()
    .unwrap();
    let p0 = replay(
        &model,
        &input,
        &out("n2"),
        &c0.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .output()
    .unwrap();
    common::check(&p0, "process 0 of 2");
    common::check(&p1.wait_with_output().unwrap(), "process 1 of 2");
    assert_eq!(common::alert_lines(&out("n2")), alerts, "-n 2 differs");
}

/// A rule file with a mistake stops the run before any frame, with a message naming the
/// file, the rule (or its line) and what is wrong.
#[test]
fn a_bad_rule_file_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("frames.jsonl");
    std::fs::write(&input, golden_frames()).unwrap();
    let cases = [
        ("stat = \"p90\"\nabove = 1", "unknown variant `p90`"),
        (
            "stat = \"mean\"\nfeature = 2\nabove = 1",
            "feature 2 is not a frame feature",
        ),
        (
            "stat = \"mean\"\nabove = 1\nthreshold = 3",
            "unknown field `threshold`",
        ),
        ("stat = \"mean\"", "exactly one of `above` and `below`"),
    ];
    for (i, (body, expected)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        let model = rules_model(
            &dir,
            &format!("features = 2\n[[rule]]\nname = \"bad\"\n{body}\n"),
        );
        let out = dir.join("alerts.jsonl");
        let run = replay(&model, &input, &out, &[]).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{body:?} was accepted");
        assert!(stderr.contains(expected), "{body:?}: {stderr}");
        // the file, and the rule by name (or, for what the TOML reader refuses, its line)
        assert!(stderr.contains("rules.toml"), "{stderr}");
        assert!(
            stderr.contains("rule \"bad\"") || stderr.contains("TOML parse error at line"),
            "{stderr}"
        );
        assert!(!out.exists() || std::fs::read_to_string(&out).unwrap().is_empty());
    }
}

/// Writes `text` to `path` and moves its modification time `secs` into the future, so
/// that a change is seen whatever the file system's time resolution.
fn rewrite(path: &Path, text: &str, secs: u64) {
    std::fs::write(path, text).unwrap();
    std::fs::File::options()
        .append(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}

/// `serve --dataflow rules`: the rule file edited while it runs judges the frames posted
/// after it without a restart (logged with the new rule count); a file that no longer
/// parses is logged and the rules in force stay. Alerts reach a receiver that checks
/// them like the client, carrying their evidence.
#[test]
fn rules_edited_under_serve_change_the_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let one = |above: f64| {
        format!("features = 1\n[[rule]]\nname = \"high\"\nstat = \"last\"\nabove = {above}\n")
    };
    let model = rules_model(tmp.path(), &one(5.0));
    let rules = model.join("rules.toml");
    let client = Client::new();
    let receiver = Receiver::like_client(&client.rt);
    let mut child = common::tidewatch(tmp.path())
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dataflow",
            "rules",
        ])
        .args(["--window", "1", "--stride", "1", "--model"])
        .arg(&model)
        .env("NESTJS_URL", receiver.base_url())
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&logs);
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(err).lines() {
            let mut s = sink.lock().unwrap();
            s.push_str(&l.unwrap());
            s.push('\n');
        }
    });
    let (addr, _stdout) = common::ready_addr(&mut child);
    let post = |id: &str, value: f64| {
        let body = json!({"id": id, "entity": "A", "data": {"feature_0": value}});
        let answer = client.enqueue(addr, body.to_string().into_bytes(), &[]);
        assert_eq!(answer.status, 202, "{}", answer.body);
    };
    let alerted = |id: &str| receiver.alerts().iter().any(|a| a["id"] == id);

    // 3 is under the threshold of 5, 10 over it
    post("f1", 3.0);
    post("f2", 10.0);
    wait_until("the alert of f2", || alerted("f2"));
    // two rules, the first now at 2: 3 alerts from now on
    let two = format!(
        "{}[[rule]]\nname = \"low\"\nstat = \"mean\"\nbelow = -5\n",
        one(2.0)
    );
    rewrite(&rules, &two, 5);
    post("f3", 3.0);
    wait_until("the alert of f3", || alerted("f3"));
    wait_until("the reload log", || {
        logs.lock().unwrap().contains("rules reloaded: 2 rules")
    });
    // a broken file: logged, the two rules stay
    rewrite(
        &rules,
        "features = 1\n[[rule]]\nname = \"high\"\nstat = \"p90\"\n",
        10,
    );
    post("f4", 3.0);
    wait_until("the alert of f4", || alerted("f4"));
    wait_until("the refusal log", || {
        let l = logs.lock().unwrap();
        l.contains("unknown variant `p90`") && l.contains("the rules in force stay")
    });
    common::sigterm(&child);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();

    let alerts = receiver.alerts();
    let ids: Vec<&str> = alerts.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["f2", "f3", "f4"], "f1 (3 under 5) raised no alert");
    let thresholds: Vec<&Value> = alerts
        .iter()
        .map(|a| &a["evidence"][0]["threshold"])
        .collect();
    assert_eq!(thresholds, [&json!(5.0), &json!(2.0), &json!(2.0)]);
    for a in &alerts {
        assert_eq!(a["evidence"].as_array().unwrap().len(), 1, "{a}");
        assert_eq!(a["evidence"][0]["rule"], "high");
        assert_eq!(a["evidence"][0]["entity"], "A");
        assert_eq!(a["severity"], "info");
    }
}

/// Plain reference statistics of one feature's window (oldest first): numpy's
/// definitions, written out directly.
fn reference(window: &[f64]) -> [f64; 6] {
    let n = window.len() as f64;
    let mean = window.iter().sum::<f64>() / n;
    let std = (window.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut sorted = window.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |q: f64| {
        let pos = q / 100.0 * (n - 1.0);
        let (below, frac) = (pos.floor() as usize, pos.fract());
        match sorted.get(below + 1) {
            Some(next) => sorted[below] * (1.0 - frac) + next * frac,
            None => sorted[below],
        }
    };
    [
        *window.last().unwrap(),
        mean,
        std,
        pct(50.0),
        pct(95.0),
        pct(99.0),
    ]
}

/// Every statistic equals a plain computation: the window ones numpy's (checked on
/// known values too), the EWMA and Page's CUSUM recomputed over the whole stream, each
/// frame once, for windows that overlap (stride 2 of 5) and that skip frames (stride 7).
#[test]
fn statistics_equal_a_plain_reference() {
    // numpy: np.percentile([1, 2, 3, 4, 10], [50, 95, 99]) = 3, 8.8, 9.76; np.std = √10
    let known = reference(&[1.0, 2.0, 3.0, 4.0, 10.0]);
    assert_eq!(known[3], 3.0);
    assert!((known[4] - 8.8).abs() < 1e-12 && (known[5] - 9.76).abs() < 1e-12);
    assert!((known[2] - 10f64.sqrt()).abs() < 1e-12);

    let (w, width) = (5usize, 2usize);
    let mut rng = common::Lcg(7);
    // 120 frames: noise, then feature 1 steps up by 3 at frame 60
    let frames: Vec<[f32; 2]> = (0..120)
        .map(|i| {
            [
                rng.next() * 2.0,
                rng.next() + if i >= 60 { 3.0 } else { 0.0 },
            ]
        })
        .collect();
    let cusum = CusumConfig {
        warmup: 10,
        ..CusumConfig::default()
    };
    for stride in [2usize, 7] {
        let config = RulesConfig {
            window: WindowConfig { size: w, stride },
            ewma_alpha: 0.3,
            cusum,
        };
        let mut evaluator = Evaluator::new(width, config);
        // the reference's running state: the EWMA, CUSUM's baseline and sums, and how
        // many frames they took in
        let mut ewma = [0f64; 2];
        let (mut base, mut var) = ([0f64; 2], [0f64; 2]);
        let (mut up, mut down) = ([0f64; 2], [0f64; 2]);
        let mut taken = 0usize;
        let mut windows = 0;
        for end in (w - 1..frames.len()).step_by(stride) {
            let window: Vec<f32> = frames[end + 1 - w..=end]
                .iter()
                .flatten()
                .copied()
                .collect();
            let got = evaluator.statistics(&window);
            // the frames the window does not share with the one before: all of the
            // first; then the last `stride` (all 5 when the stride skips frames)
            let new = if windows == 0 { w } else { stride.min(w) };
            for frame in &frames[end + 1 - new..=end] {
                for j in 0..width {
                    let x = frame[j] as f64;
                    if taken == 0 {
                        ewma[j] = x;
                        base[j] = x;
                        continue;
                    }
                    ewma[j] += 0.3 * (x - ewma[j]);
                    let d = x - base[j];
                    let z = d / var[j].max(1e-12).sqrt();
                    if taken >= cusum.warmup as usize {
                        up[j] = (up[j] + z - cusum.k as f64).max(0.0);
                        down[j] = (down[j] - z - cusum.k as f64).max(0.0);
                    }
                    let step = cusum.alpha as f64 * d;
                    base[j] += step;
                    var[j] = (1.0 - cusum.alpha as f64) * (var[j] + d * step);
                }
                taken += 1;
            }
            for j in 0..width {
                let column: Vec<f64> = frames[end + 1 - w..=end]
                    .iter()
                    .map(|f| f[j] as f64)
                    .collect();
                let want = reference(&column);
                for (k, stat) in Stat::ALL[..6].iter().enumerate() {
                    let g = got[j][*stat as usize];
                    assert!(
                        (g - want[k]).abs() < 1e-9,
                        "stride {stride}, window {end}, feature {j}, {stat:?}: {g} vs {}",
                        want[k]
                    );
                }
                // the detectors run in f32
                let tol = |r: f64| 1e-4 * r.abs().max(1.0);
                let (ge, gc) = (got[j][Stat::Ewma as usize], got[j][Stat::Cusum as usize]);
                assert!(
                    (ge - ewma[j]).abs() < tol(ewma[j]),
                    "stride {stride}, window {end}, feature {j}, ewma: {ge} vs {}",
                    ewma[j]
                );
                let wc = up[j].max(down[j]);
                assert!(
                    (gc - wc).abs() < tol(wc),
                    "stride {stride}, window {end}, feature {j}, cusum: {gc} vs {wc}"
                );
            }
            windows += 1;
        }
        assert!(windows > 10);
        // the step of 3 on feature 1 is a level shift the CUSUM sees
        assert!(up[1] > 5.0, "stride {stride}: CUSUM of the step {}", up[1]);
    }
}

/// The shipped `models/rules` (thresholds from SMAP's training data) on the whole SMAP
/// test set: every row of the 54 channels is read and windowed apart; the rules fire on
/// some channels and not all of them, on a minority of windows, each alert carrying the
/// evidence of its own channel's rules; two workers give the same alerts.
#[test]
fn shipped_rules_on_smap() {
    let Some(smap) = common::smap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/rules");
    let test = smap.join("test");
    let out = |name: &str| tmp.path().join(format!("{name}.jsonl"));
    let run = replay(&shipped, &test, &out("all"), &["--json"])
        .output()
        .unwrap();
    common::check(&run, "replay of SMAP test");
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    let mut rows = 0u64;
    let mut windows = 0u64;
    let mut channels = 0;
    for entry in std::fs::read_dir(&test).unwrap() {
        let n = tidewatch::sources::read_matrix(&entry.unwrap().path())
            .unwrap()
            .rows as u64;
        rows += n;
        windows += (n - 30) / 6 + 1;
        channels += 1;
    }
    assert_eq!(channels, 54);
    assert_eq!(summary["stats"]["frames_in"], rows, "{summary}");
    let alerts = common::alert_lines(&out("all"));
    let mut alerting = std::collections::BTreeSet::new();
    for a in &alerts {
        let entity = a["entity"].as_str().unwrap();
        alerting.insert(entity.to_string());
        let evidence = a["evidence"].as_array().unwrap();
        assert!(!evidence.is_empty(), "{a}");
        for e in evidence {
            assert_eq!(e["entity"], entity, "{a}");
            assert!(
                e["rule"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{entity}-")),
                "{a}"
            );
        }
        assert!(["info", "warning", "critical"].contains(&a["severity"].as_str().unwrap()));
    }
    eprintln!(
        "SMAP test: {} alerts of {windows} windows, on {} of 54 channels",
        alerts.len(),
        alerting.len()
    );
    assert!(
        !alerts.is_empty() && (alerts.len() as u64) < windows / 4,
        "{} alerts",
        alerts.len()
    );
    assert!((10..54).contains(&alerting.len()), "{alerting:?}");

    let names = ["A-1", "D-3", "E-1", "P-1", "S-1"];
    let subset = common::smap_subset(&test, &names, &tmp.path().join("subset"));
    let sub = |name: &str, extra: &[&str]| {
        common::check(
            &replay(&shipped, &subset, &out(name), extra)
                .output()
                .unwrap(),
            name,
        );
        common::alert_lines(&out(name))
    };
    let one = sub("w1", &[]);
    assert!(!one.is_empty());
    assert_eq!(sub("w2", &["-w", "2"]), one, "-w 2 differs");
}

/// `--window 300s --stride 60s` windows each entity by its frames' timestamps, as seed 004
/// does (300 s of metrics every 60 s): frames 10 s apart, a spike on A's frames 60–65;
/// the windows end on the minute (the 20th second of the first frame's minute, so after
/// frames 3, 9, ... 63), each holding the last 30 frames, and the alerts name the last
/// frame of each window that saw the spike, with its p95, the same with two workers.
#[test]
fn rules_window_by_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let model = rules_model(
        dir.path(),
        "features = 2\n[[rule]]\nname = \"spike\"\nstat = \"p95\"\nfeature = 0\nabove = 5.0\n",
    );
    let t0: i64 = 1_796_600_000_000; // 20 s past a minute
    let mut lines = String::new();
    for i in 0..120 {
        for entity in ["A", "B"] {
            let f0 = if entity == "A" && (60..66).contains(&i) {
                10.0
            } else {
                0.0
            };
            let frame = json!({"id": format!("{entity}{i}"), "entity": entity,
                "timestamp": t0 + 10_000 * i, "data": {"feature_0": f0, "feature_1": 0.0}});
            lines.push_str(&format!("{frame}\n"));
        }
    }
    let input = dir.path().join("timed.jsonl");
    std::fs::write(&input, lines).unwrap();
    let mut runs = Vec::new();
    for workers in ["1", "2"] {
        let output = dir.path().join(format!("alerts-{workers}.jsonl"));
        let out = replay(
            &model,
            &input,
            &output,
            &["--window", "300s", "--stride", "60s", "-w", workers],
        )
        .output()
        .unwrap();
        common::check(&out, "replay --window 300s --stride 60s");
        let alerts: Vec<(String, f64)> = common::alert_lines(&output)
            .iter()
            .map(|a| {
                assert_eq!(a["entity"], "A", "{a}");
                let e = &a["evidence"][0];
                (
                    a["id"].as_str().unwrap().to_string(),
                    e["value"].as_f64().unwrap(),
                )
            })
            .collect();
        runs.push(alerts);
    }
    let expected: Vec<(String, f64)> = [
        (63, 10.0),
        (69, 10.0),
        (75, 10.0),
        (81, 10.0),
        (87, 10.0),
        (93, 5.5),
    ]
    .iter()
    .map(|&(i, p95)| (format!("A{i}"), p95))
    .collect();
    let close = |got: &[(String, f64)]| {
        got.len() == expected.len()
            && got
                .iter()
                .zip(&expected)
                .all(|(g, w)| g.0 == w.0 && (g.1 - w.1).abs() < 1e-9)
    };
    assert!(close(&runs[0]), "{:?}", runs[0]);
    assert_eq!(runs[1], runs[0], "-w 2");
}

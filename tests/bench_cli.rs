//! The `tidewatch bench` binary: its report's fields are present and agree with each
//! other, in process and over HTTP. Behaviour only: no figure is checked against a speed.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const FEATURES: usize = 500;
const WINDOW: usize = 5;
const FRAMES: u64 = 20;

/// A 500-feature model in `dir/model`.
fn model_in(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("model");
    common::random_rff_model(FEATURES, WINDOW, 7)
        .save(&path)
        .unwrap();
    path
}

/// Runs `tidewatch bench <args>` in `dir` and returns its stdout, failing on a
/// non-zero exit.
fn bench(dir: &Path, args: &[&str]) -> String {
    let mut c = common::tidewatch(dir);
    c.arg("bench").args(args);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn json_report(dir: &Path, extra: &[&str]) -> Value {
    let model = model_in(dir);
    let frames = FRAMES.to_string();
    let features = FEATURES.to_string();
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--frames",
        &frames,
        "--features",
        &features,
        // One pass over the ring: the wire bytes are then exactly frames × mean size.
        "--ring",
        &frames,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = bench(dir, &args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on stdout: {out}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is missing or not a number in {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is missing or not an integer in {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// What both modes report the same way.
fn check_common(r: &Value, mode: &str) {
    assert_eq!(r["mode"], mode, "{r}");
    assert_eq!(u(r, "features"), FEATURES as u64);
    assert_eq!(u(r, "window"), WINDOW as u64);
    assert_eq!(u(r, "workers"), 1);
    assert_eq!(u(r, "ring"), FRAMES);
    assert_eq!(u(r, "frames"), FRAMES);
    // The first window − 1 frames only fill the first window.
    assert_eq!(u(r, "frames_scored"), FRAMES - (WINDOW as u64 - 1));
    assert!(u(r, "anomalous_frames") <= u(r, "frames_scored"));
    assert!(r["model"].as_str().unwrap().ends_with("model"), "{r}");

    let seconds = f(r, "seconds");
    assert!(seconds > 0.0, "{r}");
    let fps = f(r, "frames_per_second");
    assert!(close(fps, FRAMES as f64 / seconds), "{r}");
    assert!(
        close(f(r, "features_per_second"), fps * FEATURES as f64),
        "{r}"
    );

    let wire = u(r, "wire_bytes");
    let mean = f(r, "mean_frame_bytes");
    assert!(
        (wire as f64 - mean * FRAMES as f64).abs() <= 1.0,
        "each ring frame taken once: {r}"
    );
    assert!(
        close(f(r, "wire_mb_per_second"), wire as f64 / seconds / 1e6),
        "{r}"
    );
    // gzip of the client's JSON is smaller than the JSON.
    assert!(mean > 0.0 && mean < f(r, "mean_json_bytes"), "{r}");

    let cpu = f(r, "cpu_seconds");
    assert!(cpu >= 0.0, "{r}");
    assert!(close(f(r, "cpu_cores"), cpu / seconds), "{r}");
    if cfg!(target_os = "linux") {
        let (rss, peak) = (f(r, "rss_mib"), f(r, "peak_rss_mib"));
        assert!(rss > 0.0 && peak >= rss, "{r}");
        assert!(f(r, "minor_faults_per_frame") >= 0.0, "{r}");
    }

    let stages: Vec<&Value> = r["stages"]
        .as_array()
        .expect("stage latencies")
        .iter()
        .collect();
    let stage = |name: &str| {
        *stages
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap_or_else(|| panic!("no stage {name} in {r}"))
    };
    assert_eq!(u(stage("decode"), "count"), FRAMES, "{r}");
    assert_eq!(u(stage("queue"), "count"), FRAMES, "{r}");
    let scored = u(r, "frames_scored");
    for name in [
        "window_batch_wait",
        "threshold_to_sink",
        "receive_to_scored",
    ] {
        assert_eq!(u(stage(name), "count"), scored, "{name}: {r}");
    }
    let s = stage("score");
    assert!((1..=scored).contains(&u(s, "count")), "one per batch: {r}");
    let e2e = stage("receive_to_scored");
    assert!(u(e2e, "p50_us") <= u(e2e, "p99_us") && u(e2e, "p99_us") <= u(e2e, "max_us"));
    assert!(u(e2e, "max_us") >= u(stage("decode"), "p50_us"), "{r}");

    let l = &r["latency_us"];
    assert_eq!(u(l, "count"), u(r, "frames_scored"), "one per verdict: {r}");
    let (p50, p99, max) = (u(l, "p50"), u(l, "p99"), u(l, "max"));
    assert!(0 < p50 && p50 <= u(l, "p90") && u(l, "p90") <= p99, "{r}");
    assert!(p99 <= u(l, "p999") && u(l, "p999") <= max, "{r}");
}

#[test]
fn in_process_report_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let r = json_report(dir.path(), &[]);
    check_common(&r, "in-process");
    assert!(r["offered_rate"].is_null(), "{r}");
    assert!(r["http"].is_null(), "{r}");
}

#[test]
fn http_report_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let r = json_report(dir.path(), &["--http", "--concurrency", "2"]);
    check_common(&r, "http");
    let h = &r["http"];
    assert_eq!(u(h, "concurrency"), 2, "{r}");
    assert_eq!(u(h, "sent"), FRAMES, "{r}");
    assert_eq!(u(h, "sent_bytes"), u(&r, "wire_bytes"), "all accepted: {r}");
    let statuses = h["statuses"].as_object().unwrap();
    assert_eq!(statuses.len(), 1, "all accepted: {r}");
    assert_eq!(statuses["202"], FRAMES, "{r}");
    let a = &h["answer_latency_ms"];
    assert!(f(a, "p50") > 0.0 && f(a, "p50") <= f(a, "max"), "{r}");
}

/// `--http --alerts`: every anomalous frame's alert reaches the loopback receiver, the
/// sender and the receiver agree on the count, and the report times their delivery.
#[test]
fn http_alerts_reach_the_receiver_and_are_timed() {
    let dir = tempfile::tempdir().unwrap();
    // Every feature over the threshold: every scored frame alerts.
    let r = json_report(dir.path(), &["--http", "--alerts", "--threshold=-1e30"]);
    check_common(&r, "http");
    let scored = u(&r, "frames_scored");
    assert_eq!(u(&r, "anomalous_frames"), scored, "{r}");
    let a = &r["http"]["alerts"];
    assert_eq!(u(a, "sent"), scored, "{r}");
    assert_eq!(u(a, "received"), scored, "{r}");
    assert_eq!(u(a, "refused"), 0, "{r}");
    assert_eq!(u(a, "dead_lettered"), 0, "{r}");
    let stages = r["stages"].as_array().unwrap();
    for name in ["alert_delivery", "receive_to_alert_sent"] {
        let s = stages
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap_or_else(|| panic!("no stage {name} in {r}"));
        assert_eq!(u(s, "count"), scored, "{name}: {r}");
    }

    assert_eq!(a["outbox"], false, "{r}");

    // Through the outbox: the same deliveries, and the report says which path it measured.
    let r = json_report(
        dir.path(),
        &["--http", "--alerts", "--outbox", "--threshold=-1e30"],
    );
    let a = &r["http"]["alerts"];
    let scored = u(&r, "frames_scored");
    assert_eq!(u(a, "received"), scored, "{r}");
    assert_eq!(u(a, "dead_lettered"), 0, "{r}");
    assert_eq!(a["outbox"], true, "{r}");

    // Without --alerts nothing is sent, and the report says so by leaving alerts out.
    let r = json_report(dir.path(), &["--http", "--threshold=-1e30"]);
    assert!(r["http"]["alerts"].is_null(), "{r}");
    let stages = r["stages"].as_array().unwrap();
    assert!(
        stages.iter().all(|s| s["stage"] != "alert_delivery"),
        "no alert was delivered: {r}"
    );
    assert_eq!(u(&r, "anomalous_frames"), u(&r, "frames_scored"), "{r}");
}

#[test]
fn open_loop_reports_the_offered_rate() {
    let dir = tempfile::tempdir().unwrap();
    let r = json_report(dir.path(), &["--rate", "400", "-w", "2"]);
    assert_eq!(f(&r, "offered_rate"), 400.0, "{r}");
    assert_eq!(u(&r, "workers"), 2, "{r}");
    assert_eq!(u(&r, "frames"), FRAMES, "{r}");
    assert_eq!(u(&r["latency_us"], "count"), FRAMES - (WINDOW as u64 - 1));
}

#[test]
fn table_by_default_and_a_mismatched_feature_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_in(dir.path());
    let model = model.to_str().unwrap();
    let table = bench(
        dir.path(),
        &["--model", model, "--frames", "10", "--ring", "4"],
    );
    for row in [
        "frames/s",
        "feature values/s",
        "MB/s gzip",
        "RSS",
        "stage (µs)",
        "receive_to_scored",
    ] {
        assert!(table.contains(row), "no {row:?} row in:\n{table}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "bench",
            "--model",
            model,
            "--features",
            "25000",
            "--frames",
            "1",
        ])
        .current_dir(dir.path())
        .env_remove("DEFAULT_MODEL_NAME")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--features 25000") && err.contains("500 features"),
        "{err}"
    );
}

/// With --metrics-interval the run logs JSON metrics lines: counters, resources and the
/// stage percentiles, as `serve` does every METRICS_INTERVAL.
#[test]
fn metrics_lines_are_logged_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_in(dir.path());
    let mut c = common::tidewatch(dir.path());
    c.args([
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--features",
        &FEATURES.to_string(),
        "--frames",
        "30",
        "--rate",
        "100",
        "--metrics-interval",
        "50ms",
        "--log-level",
        "info",
        "--json",
    ]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "tidewatch::metrics")
        .collect();
    assert!(lines.len() >= 2, "a line every 50 ms over 0.3 s: {stderr}");
    let last = &lines[lines.len() - 1]["fields"];
    assert!(u(last, "frames_in") > 0, "{last}");
    assert!(last["rss_mib"].as_f64().is_some_and(|m| m > 0.0), "{last}");
    let latency: Value = serde_json::from_str(last["latency_us"].as_str().unwrap()).unwrap();
    assert!(u(&latency["decode"], "count") > 0, "{latency}");
    assert!(
        u(&latency["decode"], "p50") <= u(&latency["decode"], "max"),
        "{latency}"
    );
}

/// `--soak` samples every interval: each sample counts the frames scored in it alone, and
/// the report says how far RSS and p99 moved; a soak needs --rate and takes no --frames.
#[test]
fn soak_reports_a_sample_per_interval_and_the_drift() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_in(dir.path());
    let features = FEATURES.to_string();
    let out = bench(
        dir.path(),
        &[
            "--model",
            model.to_str().unwrap(),
            "--features",
            &features,
            "--soak",
            "4s",
            "--soak-interval",
            "1s",
            "--rate",
            "40",
            "--json",
        ],
    );
    let r: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let soak = &r["soak"];
    let samples = soak["samples"].as_array().unwrap();
    assert!((3..=4).contains(&samples.len()), "{soak}");
    let scored: u64 = samples.iter().map(|s| u(s, "frames")).sum();
    assert!(scored <= u(&r, "frames_scored"), "{r}");
    // 40 frames/s for 1 s, give or take the start and scheduling
    for s in &samples[1..] {
        assert!((20..=60).contains(&u(s, "frames")), "{soak}");
        assert!(
            f(s, "rss_mib") > 1.0 && u(s, "p99_us") >= u(s, "p50_us"),
            "{s}"
        );
    }
    assert_eq!(u(soak, "warm_up"), 1);
    assert!(
        soak["rss_drift_pct"].is_f64() && soak["p99_spread"].is_f64(),
        "{soak}"
    );

    let mut c = common::tidewatch(dir.path());
    let refused = c.args(["bench", "--soak", "4s"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--rate"));
}

/// `--floor` measures the plain decode-and-score loop in the same run and reports the
/// run's frames/s as a share of it; without it the report has neither figure.
#[test]
fn floor_is_measured_in_the_same_run_and_shares_are_ratios_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = json_report(dir.path(), &["--floor", "200ms", "-w", "2"]);
    let floor = f(&r, "floor_frames_per_second");
    assert!(floor > 0.0, "{r}");
    assert!(
        close(f(&r, "share_of_floor"), f(&r, "frames_per_second") / floor),
        "{r}"
    );
    let plain = json_report(dir.path(), &[]);
    assert!(plain.get("floor_frames_per_second").is_none(), "{plain}");
    assert!(plain.get("share_of_floor").is_none(), "{plain}");
}

/// Writes `n` JSONL records of the test model's features, each line
/// `{"seq": i, "data": {"feature_0": ..., ...}}` as `replay --input` reads them, and
/// returns the lines' lengths (without the newline).
fn write_jsonl(path: &Path, n: usize) -> Vec<u64> {
    let mut text = String::new();
    let mut lengths = Vec::new();
    for i in 0..n {
        let data: Vec<String> = (0..FEATURES)
            .map(|j| {
                format!(
                    "\"feature_{j}\":{}",
                    ((i * 31 + j * 7) % 100) as f32 / 100.0
                )
            })
            .collect();
        let line = format!("{{\"seq\": {i}, \"data\": {{{}}}}}", data.join(","));
        lengths.push(line.len() as u64);
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
    lengths
}

/// Runs `tidewatch bench <args>` in `dir`, expecting it to fail; returns stderr.
fn bench_fails(dir: &Path, args: &[&str]) -> String {
    let out = common::tidewatch(dir)
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "bench {args:?} succeeded: {stderr}");
    stderr
}

/// `--input`: the ring is the file's lines as written (plain JSON, decoded while timed),
/// all of them by default or the first --ring; the report names the file; over HTTP the
/// lines are the bodies; the floor decodes the same lines.
#[test]
fn input_file_is_the_ring_and_the_report_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_in(dir.path());
    let model = model.to_str().unwrap();
    let path = dir.path().join("frames.jsonl");
    let lengths = write_jsonl(&path, 12);
    let input = path.to_str().unwrap();
    let run = |extra: &[&str]| -> Value {
        let mut args = vec!["--model", model, "--input", input, "--json"];
        args.extend_from_slice(extra);
        let out = bench(dir.path(), &args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };

    // 30 frames: the 12 records twice and the first 6 again.
    let r = run(&["--frames", "30", "--floor", "100ms"]);
    assert_eq!(r["mode"], "in-process", "{r}");
    assert_eq!(r["input"], input, "{r}");
    assert_eq!(u(&r, "ring"), 12, "every record by default: {r}");
    assert_eq!(u(&r, "frames"), 30, "{r}");
    assert_eq!(u(&r, "frames_scored"), 30 - (WINDOW as u64 - 1), "{r}");
    let taken: u64 = (0..30).map(|k| lengths[k % 12]).sum();
    assert_eq!(
        u(&r, "wire_bytes"),
        taken,
        "the file's lines, as written: {r}"
    );
    let mean = lengths.iter().sum::<u64>() as f64 / 12.0;
    assert!(close(f(&r, "mean_frame_bytes"), mean), "{r}");
    assert!(close(f(&r, "mean_json_bytes"), mean), "plain JSON: {r}");
    assert!(f(&r, "floor_frames_per_second") > 0.0, "{r}");

    // --ring takes the first records; over HTTP they are the bodies, all accepted.
    let r = run(&["--frames", "10", "--ring", "5", "--http", "-w", "2"]);
    assert_eq!(r["mode"], "http", "{r}");
    assert_eq!(r["input"], input, "{r}");
    assert_eq!(u(&r, "ring"), 5, "{r}");
    assert_eq!(u(&r, "frames"), 10, "{r}");
    assert_eq!(r["http"]["statuses"]["202"], 10, "all accepted: {r}");
    let sent: u64 = 2 * lengths[..5].iter().sum::<u64>();
    assert_eq!(u(&r["http"], "sent_bytes"), sent, "{r}");

    // Without --input the report says so.
    let r = json_report(dir.path(), &[]);
    assert!(r["input"].is_null(), "{r}");
    assert!(r.as_object().unwrap().contains_key("input"), "{r}");
}

/// A file with a record that does not fit the model is refused before timing, naming
/// the file and line; `--missing-features zero` (as in `replay`) accepts a record with
/// features missing; other formats and --kafka are refused with the reason.
#[test]
fn input_file_with_a_bad_record_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_in(dir.path());
    let model = model.to_str().unwrap();
    let bad = dir.path().join("bad.jsonl");
    write_jsonl(&bad, 4);
    let mut text = std::fs::read_to_string(&bad).unwrap();
    // line 3 is not JSON
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, "{\"seq\": 2, \"data\": {\"feature_0\": 0.5,");
    text = lines.join("\n") + "\n";
    std::fs::write(&bad, &text).unwrap();
    let err = bench_fails(
        dir.path(),
        &[
            "--model",
            model,
            "--input",
            bad.to_str().unwrap(),
            "--frames",
            "5",
        ],
    );
    assert!(err.contains("bad.jsonl:3"), "names the line: {err}");
    assert!(err.contains("does not decode"), "{err}");

    // a record with one feature: refused by default (naming its line), scored with zeros
    // for the others under --missing-features zero
    let short = dir.path().join("short.jsonl");
    write_jsonl(&short, 6);
    let mut text = std::fs::read_to_string(&short).unwrap();
    text.push_str("{\"seq\": 6, \"data\": {\"feature_0\": 0.5}}\n");
    std::fs::write(&short, &text).unwrap();
    let short = short.to_str().unwrap();
    let err = bench_fails(
        dir.path(),
        &["--model", model, "--input", short, "--frames", "5"],
    );
    assert!(err.contains("short.jsonl:7"), "{err}");
    let out = bench(
        dir.path(),
        &[
            "--model",
            model,
            "--input",
            short,
            "--frames",
            "14",
            "--missing-features",
            "zero",
            "--json",
        ],
    );
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(u(&r, "ring"), 7, "{r}");
    assert_eq!(u(&r, "frames"), 14, "{r}");

    let csv = dir.path().join("frames.csv");
    std::fs::write(&csv, "feature_0\n0.5\n").unwrap();
    let err = bench_fails(
        dir.path(),
        &["--model", model, "--input", csv.to_str().unwrap()],
    );
    assert!(err.contains("only JSONL") && err.contains("CSV"), "{err}");

    let err = bench_fails(
        dir.path(),
        &["--model", model, "--input", short, "--kafka", "127.0.0.1:9"],
    );
    assert!(err.contains("cannot be used with"), "{err}");

    // The generator's flags would change nothing with --input: refused, not ignored.
    for flag in [
        &["--seed", "3"][..],
        &["--kinds", "spike_up"],
        &["--anomaly-rate", "0.01"],
        &["--features", "8"],
    ] {
        let mut args = vec!["--model", model, "--input", short, "--frames", "5"];
        args.extend_from_slice(flag);
        let err = bench_fails(dir.path(), &args);
        assert!(
            err.contains("cannot be used with") && err.contains(flag[0]),
            "{flag:?}: {err}"
        );
    }
}

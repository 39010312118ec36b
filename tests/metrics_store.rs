//! `replay --metrics-store` against a real VictoriaMetrics (Debian's `victoria-metrics`,
//! installed by `.ci/run`): the telemetry variant's scores and flags arrive as one series
//! per channel, equal to the `--scores` file; a store that is down costs the run nothing
//! but the scores, counted as dropped. Without the binary the test says it skipped,
//! unless `TIDEWATCH_REQUIRE_METRICS_STORE=1` makes that a failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::serve::{wait_until, Client};
use serde_json::Value;

/// Channels of the test input, and its rows.
const CHANNELS: [&str; 3] = ["A-1", "E-2", "P-1"];
const ROWS: usize = 300;
/// SMAP's frames: the value and 24 command flags.
const COLS: usize = 25;

/// The store's binary, or a visible skip (a failure when the store is required).
fn store_binary() -> Option<PathBuf> {
    match common::on_path("victoria-metrics") {
        Some(p) => Some(p),
        None if std::env::var("TIDEWATCH_REQUIRE_METRICS_STORE").as_deref() == Ok("1") => {
            panic!("TIDEWATCH_REQUIRE_METRICS_STORE=1 but victoria-metrics is not on PATH")
        }
        None => {
            eprintln!(
                "SKIPPED: the metrics store test needs victoria-metrics (apt-get install victoria-metrics)"
            );
            None
        }
    }
}

/// A VictoriaMetrics on a free loopback port, storing under `dir`; killed on drop.
struct Store {
    child: Child,
    url: String,
}

impl Store {
    fn start(binary: &Path, dir: &Path, http: &Client) -> Store {
        let port = common::free_port();
        let child = Command::new(binary)
            .arg(format!("-storageDataPath={}", dir.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until("victoria-metrics to answer", || {
            std::net::TcpStream::connect(addr).is_ok() && http.get_text(addr, "/health").0 == 200
        });
        Store { child, url }
    }

    /// Every sample of `series` (a selector) per entity, once the store shows `samples`
    /// of them (it makes what it took searchable within a few seconds).
    fn export(
        &self,
        http: &Client,
        series: &str,
        samples: usize,
    ) -> BTreeMap<String, Vec<(i64, f64)>> {
        let mut out = BTreeMap::new();
        wait_until(
            &format!("{samples} samples of {series} in the store"),
            || {
                out = self.export_now(http, series);
                out.values().map(Vec::len).sum::<usize>() >= samples
            },
        );
        out
    }

    fn export_now(&self, http: &Client, series: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
        let addr = self.url.trim_start_matches("http://").parse().unwrap();
        assert_eq!(http.get_text(addr, "/internal/force_flush").0, 200);
        let (status, text) = http.get_text(addr, &format!("/api/v1/export?match[]={series}"));
        assert_eq!(status, 200, "{text}");
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let entity = v["metric"]["entity"].as_str().unwrap().to_string();
            let samples: &mut Vec<(i64, f64)> = out.entry(entity).or_default();
            for (t, x) in v["timestamps"]
                .as_array()
                .unwrap()
                .iter()
                .zip(v["values"].as_array().unwrap())
            {
                samples.push((t.as_i64().unwrap(), x.as_f64().unwrap()));
            }
        }
        out
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of SMAP-shaped channels of `rows` rows: a slow sine with noise in column
/// 0, and from row `step` on a step in E-2, so that something alerts.
fn channels(dir: &Path, name: &str, rows: usize, step: Option<usize>, seed: u64) -> PathBuf {
    let input = dir.join(name);
    std::fs::create_dir_all(&input).unwrap();
    let mut noise = common::Lcg(seed);
    for (c, name) in CHANNELS.iter().enumerate() {
        let mut values = vec![0.0; rows * COLS];
        for t in 0..rows {
            let stepped = c == 1 && step.is_some_and(|s| t >= s);
            values[t * COLS] = (t as f64 / 9.0 + c as f64).sin() * 0.5
                + 0.05 * f64::from(noise.next())
                + if stepped { 2.0 } else { 0.0 };
        }
        common::write_npy(&input.join(format!("{name}.npy")), COLS, &values);
    }
    input
}

/// The scores file's (score, flag) per entity, in frame order.
fn scores_by_entity(path: &Path) -> BTreeMap<String, Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let score: f32 = f[3].parse().unwrap();
        out.entry(f[2].to_string())
            .or_default()
            .push((f64::from(score), f[4].parse().unwrap()));
    }
    out
}

/// Per-channel models trained on clean channels, as a user trains them.
fn train(dir: &Path) -> PathBuf {
    let data = channels(dir, "train", 400, None, 3);
    let models = dir.join("models");
    let out = common::tidewatch(dir)
        .args([
            "train", "--kind", "linear", "--window", "30", "--values", "1", "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&models)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    models
}

fn replay(dir: &Path, models: &Path, input: &Path, extra: &[&str]) -> Value {
    let out = common::tidewatch(dir)
        .args(["replay", "--dataflow", "telemetry", "--json", "--model"])
        .arg(models)
        .arg("--input")
        .arg(input)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
}

/// The scores in the store are the run's, series by series: as many samples per channel
/// as it had windows scored, in frame order, equal to `--scores`' (as f32), and the flags
/// equal to the alerts.
#[test]
fn telemetry_scores_reach_a_real_victoria_metrics() {
    let Some(binary) = store_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let http = Client::new();
    let store = Store::start(&binary, &dir.path().join("vm"), &http);
    let models = train(dir.path());
    let input = channels(dir.path(), "test", ROWS, Some(200), 11);
    let scores = dir.path().join("scores.csv");
    let report = replay(
        dir.path(),
        &models,
        &input,
        &[
            "--metrics-store",
            &store.url,
            "--scores",
            scores.to_str().unwrap(),
        ],
    );
    let expected = scores_by_entity(&scores);
    let windows: usize = expected.values().map(Vec::len).sum();
    assert_eq!(report["stats"]["frames_scored"], windows as u64);
    assert_eq!(
        report["metrics_store"]["pushed"], windows as u64,
        "{report}"
    );
    assert_eq!(report["metrics_store"]["dropped"], 0, "{report}");
    let flagged = expected.values().flatten().filter(|s| s.1 == 1.0).count();
    assert!(
        flagged > 0 && flagged < windows / 2,
        "the step alerts, the rest mostly not: {expected:?}"
    );

    let stored = store.export(
        &http,
        r#"tidewatch_frame_score{dataflow="telemetry"}"#,
        windows,
    );
    let flags = store.export(
        &http,
        r#"tidewatch_frame_anomalous{dataflow="telemetry"}"#,
        windows,
    );
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        CHANNELS.iter().collect::<Vec<_>>()
    );
    // Frames read from files in the same millisecond share a timestamp, and the store
    // orders samples of one timestamp as it likes: compare each channel's sorted values.
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    for (entity, want) in &expected {
        let got = sorted(stored[entity].iter().map(|s| s.1).collect());
        let want_scores = sorted(want.iter().map(|s| s.0).collect());
        assert_eq!(got.len(), want.len(), "{entity}");
        for (g, w) in got.iter().zip(&want_scores) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{entity}: {got:?} against {want_scores:?}"
            );
        }
        let got_flags = sorted(flags[entity].iter().map(|s| s.1).collect());
        let want_flags = sorted(want.iter().map(|s| s.1).collect());
        assert_eq!(got_flags, want_flags, "{entity}");
        assert!(stored[entity].windows(2).all(|p| p[0].0 <= p[1].0));
    }

    // the store gone: the run scores all the same, and counts the scores it dropped
    drop(store);
    let again = replay(
        dir.path(),
        &models,
        &input,
        &[
            "--metrics-store",
            "http://127.0.0.1:9",
            "--output",
            "alerts.jsonl",
        ],
    );
    assert_eq!(again["stats"]["frames_scored"], windows as u64);
    assert_eq!(again["metrics_store"]["pushed"], 0, "{again}");
    assert_eq!(again["metrics_store"]["dropped"], windows as u64, "{again}");
    let alerts = common::alert_lines(&dir.path().join("alerts.jsonl"));
    assert_eq!(alerts.len(), flagged);
}

/// `serve` pushes the verdicts of frames it took over HTTP: one sample per frame, at the
/// frame's own timestamp, with the entity it named and the score of its verdict; the
/// last ones are pushed at shutdown.
#[test]
fn serve_pushes_each_verdict_at_its_timestamp() {
    let Some(binary) = store_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let http = Client::new();
    let store = Store::start(&binary, &dir.path().join("vm"), &http);
    let (mut config, verdicts) = common::serve::config(common::serve::model(8), "", &dir);
    config.webhook = None;
    config.metrics_store = Some(store.url.clone());
    let server = common::serve::start(config);
    // recent, one second apart: the store keeps a month
    let start_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        / 1000
        - 60)
        * 1000;
    const FRAMES: i64 = 12;
    for i in 0..FRAMES {
        let extra = format!(
            "\"timestamp\":{},\"entity\":\"sat-1\",",
            start_ms + 1000 * i
        );
        let body = common::serve::frame_json(8, i as u64, &extra).into_bytes();
        assert_eq!(http.enqueue(server.addr(), body, &[]).status, 202);
    }
    wait_until("every verdict", || {
        verdicts.lock().unwrap().len() == FRAMES as usize
    });
    let report = server.shutdown().unwrap();
    let pushed = report.metrics_store.expect("a push report");
    assert_eq!((pushed.pushed, pushed.dropped), (FRAMES as u64, 0));

    let stored = store.export(
        &http,
        r#"tidewatch_frame_score{dataflow="default"}"#,
        FRAMES as usize,
    );
    let want: Vec<(i64, f64)> = verdicts
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| (start_ms + 1000 * i as i64, f64::from(v.peak)))
        .collect();
    let got = &stored["sat-1"];
    assert_eq!(got.len(), want.len());
    for ((gt, gv), (wt, wv)) in got.iter().zip(&want) {
        assert_eq!(gt, wt);
        assert!(
            (gv - wv).abs() <= 1e-6 * wv.abs().max(1.0),
            "{got:?} against {want:?}"
        );
    }
}

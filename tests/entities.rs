//! Keyed entity streams and per-entity models, run as a user runs them: `tidewatch train
//! --data DIR` and `tidewatch replay --dataflow telemetry` on NASA SMAP telemetry
//! (`../shared/data/SMAP`), with real processes for `-n 2`. The verdicts are identical
//! for any number of workers and processes, for every input that carries entities, and
//! the shipped `models/telemetry` finds SMAP's labelled anomalies.
//!
//! Without the shared data (`../shared`, or `$TIDEWATCH_SHARED`) the tests skip visibly; `TIDEWATCH_REQUIRE_SHARED_DATA=1`
//! (set in `.ci/run`) makes that a failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tidewatch::sources::read_matrix;

/// A handful of SMAP channels with labelled anomalies, for the runs repeated per layout.
const SUBSET: &[&str] = &["A-1", "D-1", "E-1", "G-1", "P-1", "S-1"];

fn tidewatch(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewatch"));
    cmd.args(args).env("LOG_LEVEL", "warn");
    cmd
}

/// `replay --dataflow telemetry` of `input` with `model`, alerts to `output`.
fn telemetry(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut cmd = tidewatch(&["replay", "--dataflow", "telemetry", "--model"]);
    cmd.arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra);
    cmd
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/telemetry")
}

/// Six channels at -w 1, -w 2 and in two processes: the same alerts, each naming its
/// channel (in `entity` and in its `<entity>:<row>` id) and the telemetry value alone.
#[test]
fn telemetry_verdicts_do_not_depend_on_workers_or_processes() {
    let Some(smap) = common::smap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = common::smap_subset(&smap.join("test"), SUBSET, &tmp.path().join("test"));
    let out = |name: &str| tmp.path().join(format!("{name}.jsonl"));
    let w1 = telemetry(&shipped(), &input, &out("w1"), &["-w", "1"])
        .output()
        .unwrap();
    common::check(&w1, "-w 1");
    let w2 = telemetry(&shipped(), &input, &out("w2"), &["-w", "2"])
        .output()
        .unwrap();
    common::check(&w2, "-w 2");
    let hosts = tmp.path().join("hosts.txt");
    common::loopback_hostfile(&hosts, 2);
    let cluster = |p: &str| ["-n", "2", "-p", p, "-h", hosts.to_str().unwrap()].map(String::from);
    let p1 = telemetry(&shipped(), &input, &out("unused"), &[])
        .args(cluster("1"))
        .spawn()
        .unwrap();
    let p0 = telemetry(&shipped(), &input, &out("n2"), &[])
        .args(cluster("0"))
        .output()
        .unwrap();
    common::check(&p0, "process 0 of 2");
    common::check(&p1.wait_with_output().unwrap(), "process 1 of 2");

    let reference = common::alert_lines(&out("w1"));
    assert!(reference.len() > 5, "{} alerts", reference.len());
    assert_eq!(common::alert_lines(&out("w2")), reference, "-w 2 differs");
    assert_eq!(common::alert_lines(&out("n2")), reference, "-n 2 differs");
    let mut channels = BTreeSet::new();
    for a in &reference {
        let entity = a["entity"].as_str().expect("an alert names its entity");
        assert!(SUBSET.contains(&entity), "{a}");
        assert!(a["id"].as_str().unwrap().starts_with(&format!("{entity}:")));
        let features = a["anomalous_features"].as_array().unwrap();
        assert!(features.iter().all(|f| f["feature_idx"] == 0), "{a}");
        channels.insert(entity.to_string());
    }
    assert!(channels.len() >= 2, "alerts on {channels:?} only");
}

/// The labelled anomaly segments of SMAP's test channels (`chan -> [(start, end)]`, end
/// inclusive), P-2 once.
fn labels(smap: &Path) -> BTreeMap<String, Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(smap.join("labeled_anomalies.csv")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let (chan, rest) = line.split_once(',').unwrap();
        if !rest.starts_with("SMAP") || out.contains_key(chan) {
            continue;
        }
        let seqs = &rest[rest.find("[[").unwrap()..=rest.find("]]").unwrap() + 1];
        let pairs: Vec<Vec<u64>> = serde_json::from_str(seqs).unwrap();
        out.insert(
            chan.to_string(),
            pairs.iter().map(|p| (p[0], p[1])).collect(),
        );
    }
    out
}

/// The whole SMAP test set through the shipped model: every one of its 54 channels is
/// read and windowed apart, and the alerts find labelled segments (one alert inside a
/// segment detects it, as in Telemanom's and TranAD's protocol), most of them inside one.
#[test]
fn telemetry_finds_labelled_smap_anomalies() {
    let Some(smap) = common::smap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("alerts.jsonl");
    let run = telemetry(&shipped(), &smap.join("test"), &out, &["--json"])
        .output()
        .unwrap();
    common::check(&run, "replay of SMAP test");
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let total: u64 = labels(&smap)
        .keys()
        .map(|c| {
            read_matrix(&smap.join(format!("test/{c}.npy.gz")))
                .unwrap()
                .rows as u64
        })
        .sum();
    assert_eq!(summary["stats"]["frames_in"], total, "{summary}");
    let segments = labels(&smap);
    let mut found = BTreeSet::new();
    let (mut inside, mut alerts) = (0usize, 0usize);
    for a in common::alert_lines(&out) {
        let (chan, row) = a["id"].as_str().unwrap().rsplit_once(':').unwrap();
        let row: u64 = row.parse().unwrap();
        alerts += 1;
        // a window of 30 rows ending at `row` overlaps the segment
        let hit = segments[chan]
            .iter()
            .position(|&(s, e)| row >= s && row < e + 30);
        if let Some(i) = hit {
            inside += 1;
            found.insert((chan.to_string(), i));
        }
    }
    let n_segments: usize = segments.values().map(Vec::len).sum();
    let recall = found.len() as f64 / n_segments as f64;
    let precision = inside as f64 / alerts.max(1) as f64;
    eprintln!(
        "SMAP test: {alerts} alerts, {inside} overlapping a labelled segment; {} of \
         {n_segments} segments found",
        found.len()
    );
    assert!(recall >= RECALL_FLOOR, "segment recall {recall}");
    assert!(precision >= PRECISION_FLOOR, "alert precision {precision}");
}

/// Floors just under what `models/telemetry` measures (README, "Telemetry"); a change
/// of the detector or the data that loses them fails here.
const RECALL_FLOOR: f64 = 0.6;
const PRECISION_FLOOR: f64 = 0.5;

/// The first `rows` rows of two channels as one CSV (entity column `chan`) and as JSONL
/// (`"channel"` key), in the order the directory input reads them: the same alerts as
/// the `.npy` directory of the same rows, at -w 1 and -w 2.
#[test]
fn csv_and_jsonl_entities_give_the_verdicts_of_the_npy_directory() {
    let Some(smap) = common::smap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // two channels with alerts in their first rows
    let names = ["D-1", "P-4"];
    let rows = 1500;
    let dir = common::smap_subset(&smap.join("test"), &names, &tmp.path().join("test"));
    let mats: Vec<_> = names
        .iter()
        .map(|n| read_matrix(&smap.join(format!("test/{n}.npy.gz"))).unwrap())
        .collect();
    let features: Vec<String> = (0..25).map(|i| format!("feature_{i}")).collect();
    let (mut csv, mut jsonl) = (Vec::new(), Vec::new());
    writeln!(csv, "chan,{}", features.join(",")).unwrap();
    for r in 0..rows {
        for (name, m) in names.iter().zip(&mats) {
            let row = m.row(r);
            let text: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            writeln!(csv, "{name},{}", text.join(",")).unwrap();
            let data: serde_json::Map<String, serde_json::Value> = features
                .iter()
                .zip(row)
                .map(|(k, &v)| (k.clone(), serde_json::json!(v)))
                .collect();
            let frame = serde_json::json!({"channel": name, "data": data});
            writeln!(jsonl, "{frame}").unwrap();
        }
    }
    let csv_path = tmp.path().join("frames.csv");
    let jsonl_path = tmp.path().join("frames.jsonl");
    std::fs::write(&csv_path, csv).unwrap();
    std::fs::write(&jsonl_path, jsonl).unwrap();
    let alerts = |input: &Path, name: &str, extra: &[&str]| {
        let out = tmp.path().join(format!("{name}.jsonl"));
        let run = telemetry(&shipped(), input, &out, extra).output().unwrap();
        common::check(&run, name);
        let mut lines = common::alert_lines(&out);
        for a in &mut lines {
            a.as_object_mut().unwrap().remove("id");
        }
        lines
    };
    // the directory's rows past `rows` come after every row the files hold
    let reference: Vec<_> = alerts(&dir, "npy", &[])
        .into_iter()
        .filter(|a| a["seq"].as_u64().unwrap() < (rows * names.len()) as u64)
        .collect();
    assert!(!reference.is_empty(), "the rows hold alerts");
    let by_column = ["--entity-column", "chan"];
    assert_eq!(alerts(&csv_path, "csv", &by_column), reference);
    assert_eq!(
        alerts(
            &csv_path,
            "csv-w2",
            &[&by_column[..], &["-w", "2"]].concat()
        ),
        reference
    );
    assert_eq!(alerts(&jsonl_path, "jsonl", &[]), reference);
    assert_eq!(alerts(&jsonl_path, "jsonl-w2", &["-w", "2"]), reference);
    // without the key, the two channels would share one window: other verdicts
    let unkeyed = tmp.path().join("unkeyed.csv");
    let text = std::fs::read_to_string(&csv_path)
        .unwrap()
        .replacen("chan,", "other,", 1);
    std::fs::write(&unkeyed, text).unwrap();
    let shared = alerts(&unkeyed, "unkeyed", &["--unknown-features", "ignore"]);
    assert_ne!(shared, reference);
    assert!(shared.iter().all(|a| a.get("entity").is_none()));
}

/// `train --data DIR` writes one model per entity file and a default; replay scores
/// each entity with its own and an unknown entity with the default.
#[test]
fn train_writes_a_model_per_entity_that_replay_uses() {
    let Some(smap) = common::smap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let names = ["A-1", "P-1", "S-1"];
    let train = common::smap_subset(&smap.join("train"), &names, &tmp.path().join("train"));
    let models = tmp.path().join("models");
    let run = tidewatch(&[
        "train", "--kind", "linear", "--window", "30", "--values", "1",
    ])
    .arg("--data")
    .arg(&train)
    .arg("--out")
    .arg(&models)
    .arg("--quiet")
    .output()
    .unwrap();
    common::check(&run, "train --data DIR");
    for name in names.iter().chain(&["default"]) {
        assert!(models.join(name).join("pca.json").is_file(), "{name}");
    }
    assert!(models.join("default/model.json").is_file());
    // an entity of the input without its own model (E-1) takes the default's
    let input = common::smap_subset(
        &smap.join("test"),
        &["A-1", "E-1"],
        &tmp.path().join("test"),
    );
    let out = tmp.path().join("alerts.jsonl");
    let own = telemetry(&models, &input, &out, &[]).output().unwrap();
    common::check(&own, "replay with the trained models");
    // the same run with A-1's model removed: A-1's verdicts change, E-1's stay
    let before = common::alert_lines(&out);
    std::fs::remove_dir_all(models.join("A-1")).unwrap();
    let out2 = tmp.path().join("alerts2.jsonl");
    common::check(
        &telemetry(&models, &input, &out2, &[]).output().unwrap(),
        "replay without A-1",
    );
    let after = common::alert_lines(&out2);
    let of = |v: &[serde_json::Value], e: &str| -> Vec<serde_json::Value> {
        v.iter().filter(|a| a["entity"] == e).cloned().collect()
    };
    assert_eq!(of(&before, "E-1"), of(&after, "E-1"));
    assert_ne!(of(&before, "A-1"), of(&after, "A-1"));
}

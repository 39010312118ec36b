//! Seed 002's `machines` variant on the AI4I 2020 records: the Rust features and tree
//! walk against xgboost's own probabilities (the fixture `scripts/train-machines.py`
//! writes), the held-out precision and recall the README reports, the type table joined
//! in the dataflow and changed while it runs, and `replay` of the shared CSV.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::InputHandle;

use tidewatch::machines::features::{features, Sensors};
use tidewatch::machines::record::{Ai4iColumns, MachineRecord};
use tidewatch::machines::stage::MachineOps;
use tidewatch::machines::table::{LiveTable, Rows};
use tidewatch::machines::MachinesModel;
use tidewatch::types::{Frame, FrameMeta};

const CSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/AI4I2020/ai4i2020.csv"
);

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/machines")
}

#[derive(serde::Deserialize)]
struct Expected {
    heldout_udi: Vec<u64>,
    heldout_probability: Vec<f32>,
    feature_udi: Vec<u64>,
    features: Vec<Vec<f64>>,
}

fn expected() -> Expected {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/machines_expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Whether the shared CSV is there; if not, says the test skipped (or fails, where
/// `TIDEWATCH_REQUIRE_SHARED_DATA` is set, as `.ci/run` sets it beside the shared data).
fn have_shared_csv() -> bool {
    if Path::new(CSV).exists() {
        return true;
    }
    assert!(
        std::env::var_os("TIDEWATCH_REQUIRE_SHARED_DATA").is_none(),
        "TIDEWATCH_REQUIRE_SHARED_DATA is set but {CSV} is absent"
    );
    println!("skipped: {CSV} is absent");
    false
}

/// The shared records by UDI, with their failure label; `None` (the test says it
/// skipped) when the shared data is absent.
fn records() -> Option<HashMap<u64, (MachineRecord, bool)>> {
    if !have_shared_csv() {
        return None;
    }
    let text = std::fs::read_to_string(CSV).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let failed = header.iter().position(|h| *h == "Machine failure").unwrap();
    let columns = Ai4iColumns::new(&header).unwrap();
    Some(
        lines
            .map(|l| {
                let fields: Vec<&str> = l.split(',').collect();
                let r = columns.record(&fields).unwrap();
                let udi = r.id.as_deref().unwrap().parse().unwrap();
                (udi, (r, fields[failed] == "1"))
            })
            .collect(),
    )
}

/// The eleven features equal those training computed (to float64 rounding), and the
/// probabilities of every held-out record equal xgboost's to 1e-6.
#[test]
fn features_and_probabilities_equal_xgboosts() {
    let Some(records) = records() else { return };
    let model = MachinesModel::load(&model_dir()).unwrap();
    let table = model.table().unwrap();
    let want = expected();
    for (udi, row) in want.feature_udi.iter().zip(&want.features) {
        let r = &records[udi].0;
        let enc = table.current().1[&r.machine_type];
        let got = features(enc, &r.sensors);
        for (i, (g, w)) in got.iter().zip(row).enumerate() {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                "UDI {udi} feature {i}: {g} vs training's {w}"
            );
        }
    }
    let mut worst = 0f32;
    for (udi, &p) in want.heldout_udi.iter().zip(&want.heldout_probability) {
        let r = &records[udi].0;
        let (_, v) = model
            .verdict_with(&table, r.machine_type, &r.sensors, 0.5)
            .unwrap();
        worst = worst.max((v.probability - p).abs());
    }
    assert!(worst <= 1e-6, "largest difference from xgboost: {worst}");
    assert_eq!(want.heldout_udi.len(), 2000);
}

/// Precision and recall on failures of the held-out records, computed from tidewatch's
/// own probabilities, are the figures training reported (models/machines/machines.json,
/// quoted in the README).
#[test]
fn heldout_precision_and_recall_are_the_reported_ones() {
    let Some(records) = records() else { return };
    let model = MachinesModel::load(&model_dir()).unwrap();
    let table = model.table().unwrap();
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for udi in expected().heldout_udi {
        let (r, failed) = &records[&udi];
        let (_, v) = model
            .verdict_with(&table, r.machine_type, &r.sensors, model.meta.threshold)
            .unwrap();
        match (v.failure, *failed) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let reported = &model.meta.report["heldout"];
    assert_eq!(reported["true_positives"], tp);
    assert_eq!(reported["false_positives"], fp);
    assert_eq!(reported["false_negatives"], fn_);
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    assert!((reported["precision"].as_f64().unwrap() - precision).abs() < 1e-4);
    assert!((reported["recall"].as_f64().unwrap() - recall).abs() < 1e-4);
}

/// The type table is a collection the records join: records of a type the table lacks
/// get no verdict, and a table changed while the dataflow runs encodes the records from
/// then on (here: type X at 2, which the model scores unlike L's 0).
#[test]
fn the_type_table_is_joined_and_updates_while_running() {
    let model = Arc::new(MachinesModel::load(&model_dir()).unwrap());
    let rows = |x: Option<f64>| {
        let mut r: Rows = [('L' as u32, 0.0)].into_iter().collect();
        if let Some(e) = x {
            r.insert('X' as u32, e);
        }
        r
    };
    let table = Arc::new(LiveTable::fixed(rows(None)));
    // a record the model scores differently as type 0 (L) and 2 (H)
    let sensors = Sensors {
        air: 302.0,
        process: 310.5,
        speed: 1380.0,
        torque: 60.0,
        wear: 210.0,
    };
    let p = |enc: f64| model.verdict(enc, &sensors, 0.0).probability;
    assert!((p(0.0) - p(2.0)).abs() > 1e-3, "{} vs {}", p(0.0), p(2.0));
    let record = move |t: char, seq: u64| {
        let mut f = MachineRecord {
            id: Some(seq.to_string()),
            machine_id: format!("{t}-{seq}"),
            machine_type: t as u32,
            sensors,
        }
        .into_frame(FrameMeta::default());
        f.seq = seq;
        f
    };
    let (m, t) = (Arc::clone(&model), Arc::clone(&table));
    let got = timely::execute_directly(move |worker| {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let mut input = InputHandle::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .container::<Vec<Frame>>()
                .machine_verdicts(Arc::clone(&m), Arc::clone(&t), 0.0)
                .inspect(move |r| {
                    let score = r.hits.first().map(|h| h.score);
                    sink.lock().unwrap().push((r.seq, score))
                })
                .probe()
                .0
        });
        // each step's records (one seq each) at the first one's time, the table as it
        // is then
        let steps = [
            (None, vec![record('L', 0), record('X', 1)]),
            (Some(rows(Some(2.0))), vec![record('L', 2), record('X', 3)]),
            (Some(rows(Some(0.0))), vec![record('X', 4)]),
        ];
        for (table, frames) in steps {
            if let Some(r) = table {
                t.replace(r);
            }
            let (first, last) = (frames[0].seq, frames[frames.len() - 1].seq);
            input.advance_to(first);
            for f in frames {
                input.send(f);
            }
            input.advance_to(last + 1);
            while probe.less_than(&(last + 1)) {
                worker.step();
            }
        }
        input.close();
        worker.step_while(|| !probe.done());
        let got = out.lock().unwrap().clone();
        got
    });
    let (p0, p2) = (Some(p(0.0)), Some(p(2.0)));
    // L is 0 throughout; X is unknown at first (no verdict), then 2, then 0
    assert_eq!(got, vec![(0, p0), (2, p0), (3, p2), (4, p0)]);
}

fn replay(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["replay", "--dataflow", "machines", "--model", "machines"])
        .args(["--input", CSV, "--output"])
        .arg(out)
        .args(extra)
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap()
}

/// Golden: `replay --dataflow machines` of the shared CSV raises the alert count training
/// expects, each alert carrying its machine id and a probability that equals xgboost's for
/// the held-out records; two workers give the same alerts.
#[test]
fn replay_of_the_shared_records_gives_the_expected_alerts() {
    if !have_shared_csv() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (w1, w2) = (dir.path().join("w1.jsonl"), dir.path().join("w2.jsonl"));
    for (out, w) in [(&w1, "1"), (&w2, "2")] {
        let run = replay(out, &["-w", w]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let alerts = common::alert_lines(&w1);
    let model = MachinesModel::load(&model_dir()).unwrap();
    assert_eq!(
        alerts.len() as u64,
        model.meta.report["all_records"]["alerts"].as_u64().unwrap()
    );
    assert_eq!(common::alert_lines(&w2), alerts, "-w 2 differs from -w 1");
    let want = expected();
    let heldout: HashMap<String, f32> = want
        .heldout_udi
        .iter()
        .map(|u| u.to_string())
        .zip(want.heldout_probability)
        .collect();
    let mut checked = 0;
    for a in &alerts {
        let p = a["probability"].as_f64().unwrap() as f32;
        assert!(p >= 0.5, "{a}");
        let machine = a["machine_id"].as_str().unwrap();
        assert!(machine.len() == 6 && "LMH".contains(&machine[..1]), "{a}");
        if let Some(&expected) = heldout.get(a["id"].as_str().unwrap()) {
            assert!((p - expected).abs() <= 1e-6, "{a} vs {expected}");
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked} held-out alerts");
}

/// A record file that is not AI4I's is refused up front, naming the missing column.
#[test]
fn a_file_without_the_columns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.csv");
    std::fs::write(&input, "UDI,Type\n1,L\n").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "replay",
            "--dataflow",
            "machines",
            "--model",
            "machines",
            "--input",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("Air temperature [K]"), "{err}");
}

/// `POST /predict` on `serve --dataflow machines`, over HTTP on loopback: seed 002's
/// body gets its probability (xgboost's for that record) and verdict at once; a record
/// that does not decode, or of a type the table lacks, gets 400.
#[test]
fn predict_answers_one_record_over_http() {
    use tidewatch::server::{ModelSpec, ServeConfig};
    let mut c = ServeConfig::new(ModelSpec::Dir(model_dir()));
    c.addr = "127.0.0.1:0".parse().unwrap();
    c.webhook = None;
    c.settings.pipeline = tidewatch::dataflows::pipeline("machines", &[]).unwrap();
    let server = common::serve::start(c);
    let client = common::serve::Client::new();
    let post = |body: serde_json::Value| {
        client.send(
            reqwest::Client::new()
                .post(format!("http://{}/predict", server.addr()))
                .json(&body),
        )
    };
    // AI4I record 4: L47183, a normal one; its probability is in the fixture if held out
    let body = serde_json::json!({"machine_id": "L47183", "type": "L", "sensor_data": {
        "airTemperature": 298.2, "processTemperature": 308.6, "rotationalSpeed": 1433,
        "torque": 39.5, "toolWear": 7}});
    let answer = post(body.clone());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let model = MachinesModel::load(&model_dir()).unwrap();
    let record = MachineRecord::from_json(&body).unwrap();
    let want = model.verdict(0.0, &record.sensors, 0.5);
    let b = &answer.body;
    assert_eq!(b["machine_id"], "L47183");
    assert_eq!(b["machine_type"], "L");
    assert_eq!(b["probability"].as_f64().unwrap() as f32, want.probability);
    assert_eq!(b["is_anomaly"], want.failure);
    assert_eq!(
        b["features"]["Power"].as_f64().unwrap(),
        39.5 * 1433.0 / 1000.0
    );
    // a failing record (AI4I 51: power failure, low speed and high torque)
    let failing = serde_json::json!({"machine_id": "L47230", "type": "L",
        "airTemperature": 298.9, "processTemperature": 309.1, "rotationalSpeed": 2861,
        "torque": 4.6, "toolWear": 143});
    let answer = post(failing);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["is_anomaly"], true, "{}", answer.body);
    for bad in [
        serde_json::json!({"machine_id": "x", "type": "L"}),
        serde_json::json!({"machine_id": "x", "type": "Q", "airTemperature": 1,
            "processTemperature": 2, "rotationalSpeed": 3, "torque": 4, "toolWear": 5}),
    ] {
        let answer = post(bad);
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.body["error"], "bad_record");
    }
    server.shutdown().unwrap();
}

/// `serve --dataflow machines` takes machine records at the ingest route, as frames are
/// taken: each accepted (202) and scored, a failing one alerting to the webhook with its
/// machine id and probability (the model's), a record that does not decode refused with
/// 400 `bad_record` while the others are still scored.
#[test]
fn records_posted_to_the_ingest_route_alert_with_their_probability() {
    use common::serve::{wait_until, Client, Receiver};
    let rt = common::serve::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let (c, verdicts) = machines_serve_config(&rx, &dir);
    let server = common::serve::start(c);
    let client = Client::new();
    let normal = serde_json::json!({"machine_id": "L47183", "type": "L", "sensor_data": {
        "airTemperature": 298.2, "processTemperature": 308.6, "rotationalSpeed": 1433,
        "torque": 39.5, "toolWear": 7}});
    let failing = serde_json::json!({"machine_id": "L47230", "type": "L", "id": "r-51",
        "airTemperature": 298.9, "processTemperature": 309.1, "rotationalSpeed": 2861,
        "torque": 4.6, "toolWear": 143});
    let bad = serde_json::json!({"machine_id": "x", "type": "L"});
    let mut accepted = 0;
    for (body, status) in [(&normal, 202), (&bad, 400), (&failing, 202)] {
        let a = client.enqueue(server.addr(), body.to_string().into_bytes(), &[]);
        assert_eq!(a.status, status, "{}", a.body);
        if status == 400 {
            assert_eq!(a.body["error"], "bad_record", "{}", a.body);
        } else {
            accepted += 1;
        }
    }
    wait_until("both verdicts", || {
        verdicts.lock().unwrap().len() == accepted
    });
    wait_until("the alert", || !rx.alerts().is_empty());
    server.shutdown().unwrap();

    let model = MachinesModel::load(&model_dir()).unwrap();
    let want = model.verdict(
        0.0,
        &MachineRecord::from_json(&failing).unwrap().sensors,
        0.5,
    );
    assert!(want.failure);
    let alerts = rx.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["machine_id"], "L47230", "{a}");
    assert_eq!(a["id"], "r-51", "{a}");
    assert_eq!(
        a["probability"].as_f64().unwrap() as f32,
        want.probability,
        "{a}"
    );
    let v = verdicts.lock().unwrap();
    assert_eq!(v[0].meta.machine_id.as_deref(), Some("L47183"));
    assert!(!v[0].is_anomalous() && v[1].is_anomalous());
}

/// `serve --dataflow machines` keeps the threshold it started with (its verdicts are cut
/// as records are scored, not by the run's changes), so the admin routes refuse a change
/// with 409 `not_followed`, naming the variant, instead of answering that it was made;
/// `/health/ready` still shows version 0, and a failing record still alerts at the
/// model's threshold.
#[test]
fn admin_changes_are_refused_where_the_variant_does_not_follow_them() {
    use common::serve::{wait_until, Client, Receiver};
    let rt = common::serve::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let (mut c, verdicts) = machines_serve_config(&rx, &dir);
    c.admin_token = Some("t0ken".into());
    let server = common::serve::start(c);
    let client = Client::new();
    for (method, path, body) in [
        (
            reqwest::Method::PUT,
            "/admin/threshold",
            serde_json::json!({"threshold": 0.99}),
        ),
        (
            reqwest::Method::PUT,
            "/admin/mutes",
            serde_json::json!({"features": [0]}),
        ),
    ] {
        let a = client.send(
            client
                .http
                .request(method, format!("http://{}{path}", server.addr()))
                .bearer_auth("t0ken")
                .json(&body),
        );
        assert_eq!(a.status, 409, "{path}: {}", a.body);
        assert_eq!(a.body["error"], "not_followed", "{}", a.body);
        let detail = a.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("\"machines\""), "{path}: {detail}");
    }
    let ready = client.get(server.addr(), "/health/ready").body;
    assert_eq!(ready["controls"]["version"], 0, "nothing changed: {ready}");
    let failing = serde_json::json!({"machine_id": "L47230", "type": "L",
        "airTemperature": 298.9, "processTemperature": 309.1, "rotationalSpeed": 2861,
        "torque": 4.6, "toolWear": 143});
    let a = client.enqueue(server.addr(), failing.to_string().into_bytes(), &[]);
    assert_eq!(a.status, 202, "{}", a.body);
    wait_until("the verdict", || verdicts.lock().unwrap().len() == 1);
    assert!(verdicts.lock().unwrap()[0].is_anomalous());
    server.shutdown().unwrap();
}

/// `serve --dataflow machines` with the shipped model and its own threshold, alerting to
/// `rx`, its verdicts collected.
fn machines_serve_config(
    rx: &common::serve::Receiver,
    dir: &tempfile::TempDir,
) -> (tidewatch::server::ServeConfig, common::serve::Verdicts) {
    let (mut c, verdicts) = common::serve::config(common::serve::model(1), &rx.base_url(), dir);
    c.model = tidewatch::server::ModelSpec::Dir(model_dir());
    c.settings.threshold = None;
    c.settings.pipeline = tidewatch::dataflows::pipeline("machines", &[]).unwrap();
    c.key_policy.body = tidewatch::dataflows::body_kind("machines");
    (c, verdicts)
}

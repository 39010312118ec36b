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
    common::loopback_hostfile(&hosts, 2);
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

/// `serve --ingest every-process` in two real processes: each takes HTTP frames on its own
/// address (from `--ingest-addrs`) and answers with a seq in its own residue class, while
/// two clients send to both at once; the verdicts are those of one process replaying the
/// same frames in seq order, and only process 0 writes alerts.
#[cfg(unix)]
#[test]
fn http_frames_enter_every_process_and_are_windowed_in_seq_order() {
    use std::collections::BTreeMap;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let (f, w) = (50, 5);
    let model = dir.path().join("model");
    random_rff_model(f, w, 11).save(&model).unwrap();
    let frames: Vec<_> = random_frames(160, f, 5)
        .into_iter()
        .enumerate()
        .map(|(i, mut frame)| {
            frame.meta.id = Some(format!("f{i}"));
            frame
        })
        .collect();
    // The bodies as a client sends them: one JSONL line each.
    let index = FeatureIndex::numbered(f);
    let lines = |frames: &[&tidewatch::types::Frame], path: &Path| {
        let mut writer = FrameWriter::create(path, &index).unwrap();
        for frame in frames {
            writer.write(frame).unwrap();
        }
        writer.finish().unwrap();
    };
    let all = dir.path().join("all.jsonl");
    lines(&frames.iter().collect::<Vec<_>>(), &all);
    let bodies: Vec<String> = std::fs::read_to_string(&all)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();

    let hosts = dir.path().join("hosts.txt");
    let ingest = dir.path().join("ingest.txt");
    for path in [&hosts, &ingest] {
        common::loopback_hostfile(path, 2);
    }
    let alerts = dir.path().join("alerts.jsonl");
    let serve = |p: usize| {
        common::tidewatch(dir.path())
            .args(["serve", "--model"])
            .arg(&model)
            .args(["--ingest", "every-process", "--ingest-addrs"])
            .arg(&ingest)
            .args(["-n", "2", "-p", &p.to_string(), "-h"])
            .arg(&hosts)
            .args(["--no-webhook", "--output"])
            .arg(&alerts)
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut procs = Cluster(vec![serve(0), serve(1)]);
    // the stdout readers stay open until the processes have printed their reports
    let (addrs, _stdouts): (Vec<_>, Vec<_>) = procs.0.iter_mut().map(common::ready_addr).unzip();
    let listed: Vec<std::net::SocketAddr> = std::fs::read_to_string(&ingest)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        addrs, listed,
        "process p listens on line p of --ingest-addrs"
    );

    // Frame i goes to process i % 2; the two clients send at the same time.
    let seqs: BTreeMap<u64, usize> = std::thread::scope(|s| {
        let senders: Vec<_> = (0..2)
            .map(|p| {
                let (bodies, addr) = (&bodies, addrs[p]);
                s.spawn(move || {
                    let client = common::serve::Client::new();
                    (p..bodies.len())
                        .step_by(2)
                        .map(|i| {
                            let answer = client.enqueue(addr, bodies[i].clone().into(), &[]);
                            assert_eq!(answer.status, 202, "frame {i} to process {p}");
                            let seq = answer.body["seq"].as_u64().unwrap();
                            assert_eq!(seq % 2, p as u64, "process {p}'s seqs are its own");
                            (seq, i)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        senders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(seqs.len(), frames.len(), "every frame got a seq of its own");
    for child in &procs.0 {
        common::sigterm(child);
    }
    for (p, child) in std::mem::take(&mut procs.0).into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "process {p} of 2: {}", out.status);
    }

    // One process replays the frames in the order of their seqs.
    let ordered: Vec<_> = seqs.values().map(|&i| &frames[i]).collect();
    let in_order = dir.path().join("ordered.jsonl");
    lines(&ordered, &in_order);
    let reference = dir.path().join("reference.jsonl");
    check(
        replay(&model, &in_order, &reference, &["-w", "1"])
            .output()
            .unwrap(),
        "replay in seq order",
    );
    let verdicts = |path: &Path| -> BTreeMap<String, serde_json::Value> {
        common::alert_lines(path)
            .into_iter()
            .map(|a| {
                (
                    a["id"].as_str().unwrap().to_owned(),
                    a["anomalous_features"].clone(),
                )
            })
            .collect()
    };
    let expected = verdicts(&reference);
    assert!(expected.len() > 10, "the fixture model flags frames");
    assert_eq!(
        verdicts(&alerts),
        expected,
        "two ingest points differ from one replay"
    );
}

/// Processes killed when dropped, so that a failing test leaves none behind.
struct Cluster(Vec<std::process::Child>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tidewatch cluster -n 2 -- <serve args>` as a user's first multi-process run: both
/// processes come up on `APP_PORT` and `APP_PORT + 1`, take frames, and one SIGTERM to the
/// launcher drains the whole cluster, which exits 0 with every frame scored.
#[cfg(unix)]
#[test]
fn the_cluster_command_starts_every_process_and_passes_signals_on() {
    use std::io::BufRead;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let (model, _) = fixture(dir.path());
    // a port whose successor is free too
    let port = loop {
        let p = common::free_port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let alerts = dir.path().join("alerts.jsonl");
    let mut launcher = Cluster(vec![common::tidewatch(dir.path())
        .args(["cluster", "-n", "2", "--", "--model"])
        .arg(&model)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--no-webhook",
        ])
        .arg("--output")
        .arg(&alerts)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()]);
    let mut stdout = std::io::BufReader::new(launcher.0[0].stdout.take().unwrap());
    let mut ready = Vec::new();
    while ready.len() < 2 {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the cluster ended early"
        );
        if let Some(rest) = line.split("ready on http://").nth(1) {
            ready.push(rest.split_whitespace().next().unwrap().to_owned());
        }
    }
    ready.sort();
    assert_eq!(
        ready,
        [
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{}", port + 1)
        ],
        "process p on APP_PORT + p"
    );
    let client = common::serve::Client::new();
    let body = common::serve::frame_json(50, 3, "");
    for i in 0..10 {
        let addr = ready[i % 2].parse().unwrap();
        assert_eq!(
            client.enqueue(addr, body.clone().into_bytes(), &[]).status,
            202
        );
    }
    common::sigterm(&launcher.0[0]);
    let status = launcher.0[0].wait().unwrap();
    assert!(
        status.success(),
        "the cluster drained and exited 0: {status}"
    );
    let rest: String = stdout.lines().map(|l| l.unwrap() + "\n").collect();
    assert!(
        rest.contains("5 frames accepted, 6 scored"),
        "process 0 took 5 frames and has the verdicts of all 10 but the 4 that fill the first window of 5: {rest}"
    );
    let lingering = Command::new("pgrep")
        .args(["-f", &format!("--port {port} --no-webhook")])
        .output()
        .unwrap();
    assert!(
        lingering.stdout.is_empty(),
        "no serve process outlives the launcher"
    );
}

/// `replay -w 2` parses a file's records on both workers: for JSONL and CSV, with a record
/// that does not decode in the middle, the alerts (seqs included: a frame's seq is its
/// record's number) are those of `-w 1`.
#[test]
fn workers_share_a_files_records_and_keep_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let (model, jsonl) = fixture(dir.path());
    let csv = dir.path().join("frames.csv");
    let mut writer = FrameWriter::create(&csv, &FeatureIndex::numbered(50)).unwrap();
    for frame in random_frames(200, 50, 5) {
        writer.write(&frame).unwrap();
    }
    writer.finish().unwrap();
    for (input, bad) in [(&jsonl, "{\"data\": not json}"), (&csv, "1,2,3")] {
        let text = std::fs::read_to_string(input).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(lines.len() / 2, bad);
        std::fs::write(input, lines.join("\n") + "\n").unwrap();
        let outputs: Vec<_> = ["1", "2"]
            .iter()
            .map(|w| {
                let out = dir.path().join(format!("w{w}.jsonl"));
                check(
                    replay(&model, input, &out, &["-w", w]).output().unwrap(),
                    &format!("{} -w {w}", input.display()),
                );
                common::alert_lines(&out)
            })
            .collect();
        assert!(outputs[0].len() > 10, "the fixture model flags frames");
        assert_eq!(outputs[1], outputs[0], "{}: -w 2 differs", input.display());
        let last = outputs[0].last().unwrap()["seq"].as_u64().unwrap();
        assert!(
            last <= 200,
            "seqs are record numbers, the bad one unused: {last}"
        );
    }
}

/// A `serve` cluster of two processes: process 0's `/metrics` labels every sample with
/// `process="0"` (so one Prometheus can scrape every process and keep them apart); and
/// SIGHUP to process 1, which serves no HTTP, reloads the model on both (process 0's
/// `/health/ready` names model version 1).
#[cfg(unix)]
#[test]
fn a_served_cluster_labels_metrics_by_process_and_reloads_on_sighup_to_any() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = fixture(dir.path());
    let hosts = dir.path().join("hosts.txt");
    common::loopback_hostfile(&hosts, 2);
    let serve = |p: &str| {
        let mut c = common::tidewatch(dir.path());
        c.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-webhook",
        ])
        .arg("--model")
        .arg(&model)
        .args(["-n", "2", "-p", p, "-h"])
        .arg(&hosts)
        .env("LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::piped());
        c
    };
    let mut p1 = serve("1").spawn().unwrap();
    let mut p0 = serve("0").spawn().unwrap();
    let (addr, _stdout) = common::ready_addr(&mut p0);
    let client = common::serve::Client::new();
    let (status, text) = client.get_text(addr, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "tidewatch_frames_accepted_total{process=\"0\"} 0",
        "tidewatch_stage_latency_seconds_bucket{process=\"0\",stage=\"score\",le=\"+Inf\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // SIGHUP to process 1, which serves no HTTP, reloads the model on the whole cluster
    let hup = Command::new("kill")
        .args(["-HUP", &p1.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    common::serve::wait_until("SIGHUP to process 1 reloading the model", || {
        client.get(addr, "/health/ready").body["model"]["version"] == 1
    });
    common::sigterm(&p0);
    assert!(p0.wait().unwrap().success());
    assert!(p1.wait().unwrap().success());
}

/// Each frame's anomalous features, by seq, from an alert file (a frame with none has no
/// alert).
fn features_by_seq(path: &Path) -> std::collections::BTreeMap<u64, Vec<u64>> {
    common::alert_lines(path)
        .into_iter()
        .map(|a| {
            let mut features: Vec<u64> = a["anomalous_features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["feature_idx"].as_u64().unwrap())
                .collect();
            features.sort_unstable();
            (a["seq"].as_u64().unwrap(), features)
        })
        .collect()
}

/// Asserts that the frames `seqs` (in any order) have, in seq order, the anomalous
/// features `old` up to one frame and `new` from it on (`None`: no alert).
fn switches_once(
    what: &str,
    seqs: &[u64],
    alerts: &std::collections::BTreeMap<u64, Vec<u64>>,
    old: Option<&Vec<u64>>,
    new: Option<&Vec<u64>>,
) {
    let mut seqs = seqs.to_vec();
    seqs.sort_unstable();
    let is_new: Vec<bool> = seqs
        .iter()
        .map(|seq| {
            let got = alerts.get(seq);
            assert!(
                got == old || got == new,
                "{what}: frame {seq} has anomalous features {got:?}, neither {old:?} nor {new:?}"
            );
            got == new
        })
        .collect();
    let switch = is_new.iter().position(|&n| n).expect("the change took");
    assert!(
        switch > 0,
        "{what}: the old settings scored the first frames"
    );
    assert!(
        is_new[switch..].iter().all(|&n| n),
        "{what}: the verdicts switch at one frame: {is_new:?}"
    );
}

/// Run-time changes in a `serve` cluster of two processes, each taking frames and admin
/// requests of its own, while frames keep coming to both: a model swap asked of process
/// 0, a threshold asked of process 1 and mutes each switch every frame's verdict at one
/// frame (no frame with a feature set partly old and partly new), and `/health/ready` on
/// both processes names the new version once the request is answered. A model that
/// process 1 cannot load is refused (400) and the old one stays in force everywhere; and
/// SIGHUP to process 1 reloads the model on both.
#[cfg(unix)]
#[test]
fn run_time_changes_reach_every_process_at_one_frame() {
    use common::serve::{send_around, Client};
    use serde_json::json;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let f = 8;
    let base = random_rff_model(f, 1, 11);
    let (loud, quiet) = (dir.path().join("loud"), dir.path().join("quiet"));
    common::shifted(&base, -1e6).save(&loud).unwrap();
    common::shifted(&base, 1e6).save(&quiet).unwrap();
    // "next" names a different directory on each process: one that fits on process 0, one
    // with another feature count on process 1
    let cwd = [dir.path().join("p0"), dir.path().join("p1")];
    common::shifted(&base, 1e6)
        .save(&cwd[0].join("next"))
        .unwrap();
    random_rff_model(f + 1, 1, 11)
        .save(&cwd[1].join("next"))
        .unwrap();
    let hosts = dir.path().join("hosts.txt");
    let ingest = dir.path().join("ingest.txt");
    for path in [&hosts, &ingest] {
        common::loopback_hostfile(path, 2);
    }
    let alerts = dir.path().join("alerts.jsonl");
    let serve = |p: usize| {
        common::tidewatch(dir.path())
            .current_dir(&cwd[p])
            .args(["serve", "--model"])
            .arg(&loud)
            .args(["--ingest", "every-process", "--ingest-addrs"])
            .arg(&ingest)
            .args(["-n", "2", "-p", &p.to_string(), "-h"])
            .arg(&hosts)
            .args(["--no-webhook", "--output"])
            .arg(&alerts)
            .env("ADMIN_TOKEN", "t0ken")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut procs = Cluster(vec![serve(0), serve(1)]);
    let (addrs, _stdouts): (Vec<_>, Vec<_>) = procs.0.iter_mut().map(common::ready_addr).unzip();
    let client = Client::new();
    let admin = |p: usize, method: reqwest::Method, path: &str, body: serde_json::Value| {
        let req = client
            .http
            .request(method, format!("http://{}{path}", addrs[p]))
            .bearer_auth("t0ken")
            .json(&body);
        let answer = client.send(req);
        (answer.status, answer.body)
    };
    let versions = || -> Vec<(serde_json::Value, serde_json::Value)> {
        addrs
            .iter()
            .map(|&a| {
                let ready = client.get(a, "/health/ready").body;
                (
                    ready["controls"]["version"].clone(),
                    ready["model"]["version"].clone(),
                )
            })
            .collect()
    };

    let (swapped, (status, body)) = send_around(&addrs, f, 0, (20, 20), || {
        admin(
            0,
            reqwest::Method::POST,
            "/admin/model",
            json!({"path": quiet}),
        )
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(versions(), vec![(json!(1), json!(1)); 2]);

    let (status, body) = admin(
        0,
        reqwest::Method::POST,
        "/admin/model",
        json!({"path": "next"}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("process 1"),
        "{body}"
    );
    assert_eq!(versions(), vec![(json!(1), json!(1)); 2], "nothing changed");

    let (lowered, (status, body)) = send_around(&addrs, f, 1000, (20, 20), || {
        admin(
            1,
            reqwest::Method::PUT,
            "/admin/threshold",
            json!({"threshold": -1e9}),
        )
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(versions(), vec![(json!(2), json!(1)); 2]);

    let (muted, (status, body)) = send_around(&addrs, f, 2000, (20, 20), || {
        admin(
            0,
            reqwest::Method::PUT,
            "/admin/mutes",
            json!({"features": [0, 5]}),
        )
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(versions(), vec![(json!(3), json!(1)); 2]);

    let hup = std::process::Command::new("kill")
        .args(["-HUP", &procs.0[1].id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    common::serve::wait_until("SIGHUP's reload on both processes", || {
        versions() == vec![(json!(4), json!(2)); 2]
    });

    for child in &procs.0 {
        common::sigterm(child);
    }
    for (p, child) in std::mem::take(&mut procs.0).into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "process {p} of 2: {}", out.status);
    }
    let by_seq = features_by_seq(&alerts);
    let all: Vec<u64> = (0..f as u64).collect();
    let unmuted: Vec<u64> = all.iter().copied().filter(|&i| i != 0 && i != 5).collect();
    switches_once("model swap", &swapped, &by_seq, Some(&all), None);
    switches_once("threshold", &lowered, &by_seq, None, Some(&all));
    switches_once("mutes", &muted, &by_seq, Some(&all), Some(&unmuted));
}

//! The `tidewatch serve` binary: where its settings come from, start-up failure, JSON logs
//! and a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn serve(dir: &std::path::Path) -> Command {
    let mut c = common::tidewatch(dir);
    c.arg("serve");
    c
}

/// Flags win over the environment, which wins over `.env`; a model that cannot be
/// loaded stops start-up with a non-zero exit and a message naming it; LOG_LEVEL works.
#[test]
fn settings_come_from_flags_then_environment_then_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "APP_HOST=127.0.0.1\nAPP_PORT=0\nDEFAULT_MODEL_NAME=/nonexistent/from-dotenv\n",
    )
    .unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "a missing model must fail start-up");
        String::from_utf8(out.stderr).unwrap()
    };
    let err = run(&mut serve(dir.path()));
    assert!(err.contains("/nonexistent/from-dotenv/model.json"), "{err}");
    // Logs are JSON, one object per line; the last line is the plain message for humans.
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "{err}");
    for l in &lines[..lines.len() - 1] {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    assert!(
        lines[lines.len() - 1].starts_with("error: start-up failed"),
        "{err}"
    );

    let err = run(serve(dir.path()).env("DEFAULT_MODEL_NAME", "/nonexistent/from-env"));
    assert!(err.contains("/nonexistent/from-env/"), "{err}");
    let err = run(serve(dir.path())
        .env("DEFAULT_MODEL_NAME", "/nonexistent/from-env")
        .args(["--model", "/nonexistent/from-flag"]));
    assert!(err.contains("/nonexistent/from-flag/"), "{err}");
    let err = run(serve(dir.path()).env("LOG_LEVEL", "off"));
    assert_eq!(err.lines().count(), 1, "only the plain message: {err}");
}

/// A served frame writes the seed's log items (per-batch latency, batch size, anomalous
/// features, CPU and memory; the anomaly with its top scores; the failed alert as an
/// error with its cause); SIGTERM then drains and exits 0.
#[cfg(unix)]
#[test]
fn serve_logs_json_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    common::random_rff_model(12, 2, 3).save(&model_dir).unwrap();
    let dead = dir.path().join("dead.jsonl");
    let mut child = serve(dir.path())
        .args(["--host", "127.0.0.1", "--port", "0", "--threshold=-1e30"])
        .arg("--model")
        .arg(&model_dir)
        .arg("--dead-letter")
        .arg(&dead)
        // Nothing listens on port 9: every alert fails to connect.
        .env("NESTJS_URL", "http://127.0.0.1:9")
        .env("MAX_RETRIES", "2")
        .env("INITIAL_DELAY", "0.01")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = Arc::clone(&stderr);
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(err).lines() {
            lines.lock().unwrap().push(l.unwrap());
        }
    });
    let (addr, mut stdout) = common::ready_addr(&mut child);
    let addr = addr.to_string();

    // Two frames: the model's window is 2, so the second is scored.
    for i in 0..2 {
        let body = format!(
            "{{\"id\":\"frame-{i}\",\"data\":{{{}}}}}",
            (0..12)
                .map(|f| format!("\"feature_{f}\":0.{f}{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body.as_bytes()).unwrap();
        let status = post(&addr, &gz.finish().unwrap());
        assert_eq!(status, 202);
    }
    let start = Instant::now();
    while !std::fs::read_to_string(&dead).is_ok_and(|s| s.lines().count() == 1) {
        assert!(start.elapsed() < Duration::from_secs(60), "no dead letter");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("1 scored"), "{rest}");

    let logs: Vec<Value> = stderr
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let event = |message: &str| {
        logs.iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} event in {logs:#?}"))
    };
    let batch = &event("batch scored")["fields"];
    assert_eq!(batch["batch_size"], 1);
    assert_eq!(batch["anomalous_features"], 12);
    assert!(
        batch["latency_ms_max"].as_f64().is_some_and(|l| l >= 0.0),
        "{batch}"
    );
    assert!(
        batch["rss_mib"].as_f64().is_some_and(|m| m > 0.0),
        "{batch}"
    );
    let anomaly = &event("anomaly detected")["fields"];
    assert_eq!(anomaly["id"], "frame-1");
    assert_eq!(anomaly["num_anomalous_features"], 12);
    let top: Value = serde_json::from_str(anomaly["top_scores"].as_str().unwrap()).unwrap();
    assert_eq!(top.as_array().unwrap().len(), 5);
    let failed = event("alert not delivered; written to the dead-letter file");
    assert_eq!(failed["level"], "ERROR");
    assert!(
        failed["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "the cause chain names the connect failure: {failed}"
    );
}

/// A bare HTTP/1.1 POST in the NestJS client's style; returns the status code.
fn post(addr: &str, body: &[u8]) -> u16 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /data-enqueue HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

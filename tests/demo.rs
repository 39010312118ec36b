//! `tidewatch demo`, the README's main command, run as a new user runs it (the shipped
//! default model, serve, the load generator and the alert receiver in one process): every
//! frame sent is accepted, and every anomalous frame gives one alert that the receiver
//! accepts. Alerts an earlier demo left undelivered in the outbox are delivered too, and
//! counted apart, so that a run does not seem to alert more often than it found anomalies.

mod common;

use std::path::{Path, PathBuf};

use tidewatch::sinks::event::AlertEvent;
use tidewatch::sinks::outbox::log::OutboxLog;

/// The figures a demo prints at its end.
#[derive(Debug, Default)]
struct Printed {
    sent: u64,
    accepted: u64,
    anomalous: u64,
    alerts_sent: u64,
    alerts_received: u64,
    refused: u64,
    dead_lettered: u64,
    /// From the line naming an earlier demo's alerts, if printed.
    earlier: Option<u64>,
}

/// The whole numbers of `line` that precede `word` (e.g. the `60` of `60 sent`).
fn before(line: &str, word: &str) -> u64 {
    let at = line
        .find(&format!(" {word}"))
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    line[..at]
        .rsplit([' ', '(', ','])
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no number before {word:?} in {line:?}"))
}

fn parse(stdout: &str) -> Printed {
    let mut p = Printed::default();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("load generator: ") {
            // "sent 30 frames in 2.91 s (...)"
            p.sent = rest
                .strip_prefix("sent ")
                .and_then(|r| r.split(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no frame count in {line:?}"));
        } else if let Some(rest) = line.strip_prefix("serve: ") {
            p.accepted = before(rest, "frames accepted");
            p.anomalous = before(rest, "anomalous");
        } else if let Some(rest) = line.strip_prefix("alerts: ") {
            p.alerts_sent = before(rest, "sent");
            p.alerts_received = before(rest, "received");
            p.refused = before(rest, "refused");
            p.dead_lettered = before(rest, "dead-lettered");
        } else if line.contains("of an earlier demo were found undelivered") {
            p.earlier = Some(before(line.trim_start(), "alerts of an earlier demo"));
        }
    }
    p
}

/// Runs `tidewatch demo` for 3 s at 10 frames/s with its outbox and dead letters in `dir`.
fn demo(dir: &Path) -> (Printed, String) {
    let model: PathBuf = [env!("CARGO_MANIFEST_DIR"), "models", "default"]
        .iter()
        .collect();
    let out = common::tidewatch(dir)
        .arg("demo")
        .arg("--model")
        .arg(&model)
        .args(["--duration", "3s", "--rate", "10"])
        .args(["--outbox-dir", "outbox", "--dead-letter", "dead.jsonl"])
        .output()
        .unwrap();
    common::check(&out, "tidewatch demo");
    let stdout = String::from_utf8(out.stdout).unwrap();
    (parse(&stdout), stdout)
}

#[test]
fn the_demo_delivers_one_alert_per_anomalous_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (p, stdout) = demo(dir.path());
    assert!(p.sent >= 20, "{stdout}");
    assert_eq!(p.accepted, p.sent, "{stdout}");
    assert!(
        p.anomalous > 0,
        "the injected anomalies were found: {stdout}"
    );
    assert_eq!(p.alerts_sent, p.anomalous, "{stdout}");
    assert_eq!(p.alerts_received, p.anomalous, "{stdout}");
    assert_eq!((p.refused, p.dead_lettered), (0, 0), "{stdout}");
    assert_eq!(p.earlier, None, "a fresh outbox held nothing: {stdout}");
}

#[test]
fn alerts_an_earlier_demo_left_are_delivered_and_counted_apart() {
    let dir = tempfile::tempdir().unwrap();
    // An earlier demo stopped before its receiver accepted these three alerts.
    let (mut log, pending) = OutboxLog::open(&dir.path().join("outbox"), 0).unwrap();
    assert!(pending.is_empty());
    for seq in 0..3u64 {
        let body = serde_json::json!({
            "timestamp": "2026-12-07T10:00:00.000Z",
            "anomaly_detected": true,
            "num_anomalous_features": 1,
            "anomalous_features": [{"feature_idx": 7, "score": 2.5}],
            "seq": seq,
        });
        let event = AlertEvent {
            key: format!("frame-{seq}"),
            body: serde_json::to_vec(&body).unwrap().into(),
            seq: Some(seq),
            incident: None,
        };
        // stored now: an alert older than the retry limit would be given up on at once
        log.stage(event, None, tidewatch::clock::unix_ms()).unwrap();
    }
    log.commit().unwrap();
    drop(log);

    let (p, stdout) = demo(dir.path());
    assert_eq!(p.earlier, Some(3), "{stdout}");
    assert!(p.anomalous > 0, "{stdout}");
    assert_eq!(p.alerts_sent, p.anomalous + 3, "{stdout}");
    assert_eq!(p.alerts_received, p.anomalous + 3, "{stdout}");
    assert_eq!((p.refused, p.dead_lettered), (0, 0), "{stdout}");

    // Delivered, so the next demo has nothing of this one's to send.
    let (again, stdout) = demo(dir.path());
    assert_eq!(again.earlier, None, "{stdout}");
    assert_eq!(again.alerts_sent, again.anomalous, "{stdout}");
}

//! The durable alert outbox, with the real `tidewatch serve` binary and an alert receiver
//! on loopback: an outage loses no alert, a `kill -9` loses none either (the restart
//! delivers them, under the same idempotency keys), 429 with `Retry-After` is retried,
//! and a huge frame id still gives a deliverable alert.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::serve::{frame_json, gzip, runtime, wait_until, Client, Mode, Receiver};
use serde_json::Value;

/// A served model: 8 features, window 1, so that every frame gets a verdict (and, with
/// the threshold far below any score, an alert).
fn model_dir(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    common::random_rff_model(8, 1, 3).save(&m).unwrap();
    m
}

/// A running `tidewatch serve`, with the rest of its stdout.
struct Serve {
    child: Child,
    addr: std::net::SocketAddr,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Serve {
    /// SIGTERM; checks that it exits 0, and returns its stop line(s).
    fn stop(mut self) -> String {
        use std::io::Read;
        common::sigterm(&self.child);
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}: {rest}");
        rest
    }
}

/// `tidewatch serve` on loopback with its outbox in `dir/outbox`, alerts to `url`, fast
/// retries; warnings and errors logged to `dir/<log>`.
fn spawn_serve(dir: &Path, url: &str, log: &str) -> Serve {
    let mut child = common::tidewatch(dir)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--threshold=-1e30",
        ])
        .arg("--model")
        .arg(dir.join("model"))
        .args(["--dead-letter", "dead.jsonl", "--outbox-dir", "outbox"])
        .env("NESTJS_URL", url)
        .env("INITIAL_DELAY", "0.05")
        .env("MAX_DELAY", "1")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap();
    let (addr, stdout) = common::ready_addr(&mut child);
    Serve {
        child,
        addr,
        stdout,
    }
}

fn send_frame(client: &Client, addr: std::net::SocketAddr, i: u64, extra: &str) {
    let a = client.enqueue(addr, gzip(frame_json(8, i, extra).as_bytes()), &[]);
    assert_eq!(a.status, 202, "{}", a.body);
}

fn inspect(dir: &Path) -> Value {
    let out = common::tidewatch(dir)
        .args(["outbox", "inspect", "--json", "--outbox-dir", "outbox"])
        .args(["--dead-letter", "dead.jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dead_letters(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("dead.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// The JSON log events of `file` with this message.
fn events(file: &Path, message: &str) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

/// The receiver is down for 60 s while two frames a second arrive: when it comes back,
/// every alert of the outage is delivered (none dead-lettered, none left), and the retry
/// log lines name the frame's seq.
#[test]
fn a_receiver_down_for_60_s_loses_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path());
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = spawn_serve(dir.path(), &url, "serve.log");
    let addr = child.addr;
    let client = Client::new();
    let outage = Instant::now();
    let mut sent = 0u64;
    while outage.elapsed() < Duration::from_secs(60) {
        send_frame(&client, addr, sent, "");
        sent += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        dead_letters(dir.path()),
        0,
        "nothing given up during the outage"
    );
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let receiver = Receiver::on(
        &rt,
        listener,
        Mode::Client {
            limit: tidewatch::sinks::webhook::CLIENT_BODY_LIMIT,
        },
    );
    wait_until("every alert of the outage", || {
        let seqs: BTreeSet<u64> = receiver
            .alerts()
            .iter()
            .map(|a| a["seq"].as_u64().unwrap())
            .collect();
        seqs.len() as u64 == sent
    });
    let stopped = child.stop();
    assert!(
        stopped.contains("dead-lettered 0, left in the outbox 0"),
        "{stopped}"
    );
    assert_eq!(dead_letters(dir.path()), 0);
    assert_eq!(inspect(dir.path())["backlog"]["alerts"], 0);
    let retries = events(
        &dir.path().join("serve.log"),
        "alert delivery failed; retrying",
    );
    assert!(!retries.is_empty());
    assert!(
        retries.iter().all(|e| e["fields"]["seq"].is_u64()),
        "{:?}",
        retries[0]
    );
}

/// The receiver is down, serve is killed with SIGKILL holding undelivered alerts, and a
/// new serve starts on the same outbox with the receiver up: every alert of the first
/// run arrives (with the first run's body), a duplicate carries the same idempotency key,
/// and different alerts carry different keys.
#[test]
fn kill_9_then_restart_delivers_every_alert_under_a_stable_key() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path());
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut first = spawn_serve(dir.path(), &url, "first.log");
    let addr = first.addr;
    let client = Client::new();
    for i in 0..20 {
        send_frame(&client, addr, i, "");
    }
    wait_until("20 alerts in the outbox", || {
        inspect(dir.path())["backlog"]["alerts"] == 20
    });
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let receiver = Receiver::on(
        &rt,
        listener,
        Mode::Client {
            limit: tidewatch::sinks::webhook::CLIENT_BODY_LIMIT,
        },
    );
    let second = spawn_serve(dir.path(), &url, "second.log");
    let addr = second.addr;
    for i in 0..5 {
        send_frame(&client, addr, 100 + i, "");
    }
    // (run, seq) names an alert across the two runs.
    let named = |a: &Value| {
        (
            a["run_id"].as_str().unwrap().to_string(),
            a["seq"].as_u64().unwrap(),
        )
    };
    wait_until("the 20 alerts of the killed run and 5 new ones", || {
        receiver
            .alerts()
            .iter()
            .map(named)
            .collect::<BTreeSet<_>>()
            .len()
            == 25
    });
    second.stop();
    let alerts = receiver.alerts();
    let runs: BTreeSet<String> = alerts.iter().map(|a| named(a).0).collect();
    assert_eq!(runs.len(), 2, "alerts of both runs");
    let killed_run: BTreeSet<u64> = alerts
        .iter()
        .map(named)
        .filter(|(_, seq)| *seq < 20)
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(killed_run, (0..20).collect());
    // Accepted alerts and the keys of their attempts, in order: every accepted alert had
    // a key; the same alert always the same key; two alerts never one key.
    let keys = receiver.keys.lock().unwrap().clone();
    assert!(keys.iter().all(|(k, _)| k.is_some()));
    let accepted_keys: Vec<String> = keys.iter().filter_map(|(k, _)| k.clone()).collect();
    assert_eq!(
        accepted_keys.len(),
        alerts.len(),
        "every attempt was accepted"
    );
    let mut by_alert: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for (a, k) in alerts.iter().zip(&accepted_keys) {
        by_alert.entry(named(a)).or_default().insert(k.clone());
    }
    assert!(by_alert.values().all(|ks| ks.len() == 1), "{by_alert:?}");
    let distinct: BTreeSet<&String> = by_alert.values().flatten().collect();
    assert_eq!(distinct.len(), by_alert.len());
    assert_eq!(dead_letters(dir.path()), 0);
    assert_eq!(inspect(dir.path())["backlog"]["alerts"], 0);
}

/// A receiver that answers 429 with `Retry-After: 1` twice: the alert is retried after
/// the second it asks for (not the 50 ms backoff), and delivered on the third attempt.
#[test]
fn a_429_with_retry_after_is_retried_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path());
    let rt = runtime();
    let receiver = Receiver::start(
        &rt,
        Mode::Throttle {
            refusals: 2,
            retry_after: "1",
        },
    );
    let child = spawn_serve(dir.path(), &receiver.base_url(), "serve.log");
    let addr = child.addr;
    let client = Client::new();
    send_frame(&client, addr, 1, "");
    wait_until("the alert", || receiver.alerts().len() == 1);
    child.stop();
    let keys = receiver.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3);
    assert!(keys
        .windows(2)
        .all(|w| w[0].0 == w[1].0 && w[0].0.is_some()));
    let waited = keys[2].1 - keys[0].1;
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    assert_eq!(dead_letters(dir.path()), 0);
}

/// A frame whose id is 150,000 characters: its alert fits the receiver's 100 KiB limit
/// and is delivered, with the id cut to the cap.
#[test]
fn a_150000_character_frame_id_still_gives_a_delivered_alert() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path());
    let rt = runtime();
    let receiver = Receiver::like_client(&rt);
    let child = spawn_serve(dir.path(), &receiver.base_url(), "serve.log");
    let addr = child.addr;
    let client = Client::new();
    let id = "i".repeat(150_000);
    send_frame(&client, addr, 1, &format!("\"id\":\"{id}\","));
    wait_until("the alert", || receiver.alerts().len() == 1);
    child.stop();
    let alert = &receiver.alerts()[0];
    let got = alert["id"].as_str().unwrap();
    assert_eq!(
        got.chars().count(),
        tidewatch::sinks::alert::MAX_ALERT_ID_CHARS
    );
    assert!(got.starts_with("iiii"));
    assert_eq!(dead_letters(dir.path()), 0);
}

/// A dead letter (a 400 refused it) is re-queued by `tidewatch outbox replay` under its
/// idempotency key and delivered by `replay --send` to a receiver that now takes it.
#[test]
fn replay_sends_dead_letters_again_under_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path());
    let rt = runtime();
    let refusing = Receiver::start(&rt, Mode::Fail400);
    let child = spawn_serve(dir.path(), &refusing.base_url(), "serve.log");
    let addr = child.addr;
    let client = Client::new();
    send_frame(&client, addr, 1, "");
    wait_until("the dead letter", || dead_letters(dir.path()) == 1);
    child.stop();
    let listed = inspect(dir.path());
    assert_eq!(listed["dead_letters"]["count"], 1);
    assert_eq!(listed["backlog"]["alerts"], 0);
    let first_key = refusing.keys.lock().unwrap()[0].0.clone().unwrap();

    let receiver = Receiver::like_client(&rt);
    let out = common::tidewatch(dir.path())
        .args(["outbox", "replay", "--send", "--outbox-dir", "outbox"])
        .args(["--dead-letter", "dead.jsonl"])
        .args(["--nestjs-url", &receiver.base_url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(receiver.alerts().len(), 1);
    assert_eq!(receiver.alerts()[0]["seq"], 0);
    assert_eq!(
        receiver.keys.lock().unwrap()[0].0.as_deref(),
        Some(first_key.as_str())
    );
    let listed = inspect(dir.path());
    assert_eq!(listed["dead_letters"]["count"], 0);
    assert_eq!(listed["backlog"]["alerts"], 0);
}

//! Hostile and unlucky clients over real sockets on loopback, each bounded in count and
//! time: trickling uploads, idle and slow-header connections, more connections than the
//! process has descriptors for, a full upload buffer, and shutdowns that must not hang
//! on a receiver that does not answer.

mod common;
use common::serve::*;
use common::{counter, sample};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A frame of the 4-feature test model, gzipped like the NestJS client sends it.
fn valid_frame(seed: u64) -> Vec<u8> {
    gzip(frame_json(4, seed, "").as_bytes())
}

/// The head of a POST whose body is promised but not (yet) sent.
fn upload_head(length: usize) -> String {
    format!(
        "POST /data-enqueue HTTP/1.1\r\nhost: tidewatch\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

/// Sends a 300 KB upload one byte a second until the server answers or closes, then
/// starts again, until `stop`. Counts the 408s it gets.
async fn trickle(addr: SocketAddr, stop: Arc<AtomicBool>, cut_off: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if s.write_all(upload_head(300_000).as_bytes()).await.is_err() {
            continue;
        }
        let mut answer = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                read = s.read(&mut answer) => {
                    if matches!(read, Ok(n) if n > 0) && answer.starts_with(b"HTTP/1.1 408") {
                        cut_off.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if s.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// 110 connections trickling their bodies at 1 byte/s and reconnecting took every body
/// permit and kept an honest client at 429. Now a trickler is cut off with 408 once under
/// the minimum rate, and holds only the bytes it sent: the honest client, one frame every
/// 0.5 s for 40 s, gets 202 for at least 90 % of them.
#[test]
fn trickling_uploads_do_not_lock_out_an_honest_client() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (mut c, _) = config(model(4), "http://127.0.0.1:9", &dir);
    c.webhook = None;
    let server = start(c);
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let cut_off = Arc::new(AtomicUsize::new(0));
    for _ in 0..110 {
        rt.spawn(trickle(addr, Arc::clone(&stop), Arc::clone(&cut_off)));
    }
    std::thread::sleep(Duration::from_secs(1));
    let client = Client::new();
    let mut answers = Vec::new();
    let end = Instant::now() + Duration::from_secs(40);
    let mut seed = 0;
    while Instant::now() < end {
        seed += 1;
        answers.push(client.enqueue(addr, valid_frame(seed), &[]).status);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let accepted = answers.iter().filter(|s| **s == 202).count();
    assert!(
        accepted * 10 >= answers.len() * 9,
        "{accepted} of {} honest frames accepted: {answers:?}",
        answers.len()
    );
    // every trickler was cut off at least once, and /metrics says why
    assert!(cut_off.load(Ordering::Relaxed) >= 110, "{cut_off:?}");
    let (_, text) = client.get_text(addr, "/metrics");
    let timeouts = counter(
        &text,
        "tidewatch_frames_rejected_total{reason=\"body_timeout\"}",
    );
    assert!(timeouts >= 110, "{timeouts}");
    let report = server.shutdown().unwrap();
    assert_eq!(report.run.stats.frames_scored, accepted as u64);
}

/// A connection that sends nothing, one that trickles its header, and a keep-alive
/// connection idle after its answer are all closed after the header timeout.
#[test]
fn idle_and_slow_header_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _) = config(model(4), "http://127.0.0.1:9", &dir);
    c.webhook = None;
    c.limits.header_timeout = Duration::from_secs(1);
    let server = start(c);
    let addr = server.addr();
    let closed_within = |s: &mut TcpStream, what: &str| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        // EOF (or a reset) ends the read; a timeout would be an error of kind WouldBlock
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}"),
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{what}: open for {took:?}");
    };

    let mut idle = TcpStream::connect(addr).unwrap();
    closed_within(&mut idle, "an idle connection");

    let mut slow = TcpStream::connect(addr).unwrap();
    let opened = Instant::now();
    for b in b"POST /data-enqueue HTTP/1.1\r\nhost: x\r\n" {
        if slow.write_all(&[*b]).is_err() || opened.elapsed() > Duration::from_secs(8) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    closed_within(&mut slow, "a slow header");
    assert!(opened.elapsed() < Duration::from_secs(8));

    let mut kept = TcpStream::connect(addr).unwrap();
    let body = valid_frame(1);
    kept.write_all(upload_head(body.len()).as_bytes()).unwrap();
    kept.write_all(&body).unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 202");
    closed_within(&mut kept, "an idle keep-alive connection");
    server.shutdown().unwrap();
}

/// Under `ulimit -n 1024`, 1,100 idle connections exhausted the descriptors and an honest
/// request timed out. Now the connection limit sits below the descriptor limit, and at the
/// limit the longest-idle connection is closed to make room: 1,100 idle connections held
/// open beside it, the honest client gets 202 for every frame.
#[cfg(unix)]
#[test]
fn idle_connections_past_the_open_files_limit_do_not_starve_an_honest_client() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    common::random_rff_model(4, 1, 3).save(&model_dir).unwrap();
    let mut child = common::tidewatch_with_open_files(dir.path(), 1024)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-webhook",
        ])
        .args(["--header-timeout", "60s", "--metrics-interval", "0s"])
        .arg("--model")
        .arg(&model_dir)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (addr, _stdout) = common::ready_addr(&mut child);
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(addr).unwrap());
    }
    let client = Client::new();
    // the last connections opened need a moment to be accepted
    std::thread::sleep(Duration::from_millis(500));
    let answers: Vec<u16> = (0..20)
        .map(|seed| {
            std::thread::sleep(Duration::from_millis(100));
            client.enqueue(addr, valid_frame(seed), &[]).status
        })
        .collect();
    assert!(answers.iter().all(|s| *s == 202), "{answers:?}");
    let (_, text) = client.get_text(addr, "/metrics");
    assert_eq!(
        counter(&text, "tidewatch_http_connections_max"),
        1024 - 256,
        "the limit leaves 256 descriptors for everything else"
    );
    let evicted = counter(&text, "tidewatch_http_connections_evicted_total");
    assert!(evicted >= 1100 - 768, "{evicted}");
    assert!(sample(&text, "tidewatch_http_connections_open") <= 768.0);
    drop(idle);
    common::sigterm(&child);
    assert!(child.wait().unwrap().success());
}

/// At the connection limit with no connection idle (every one is sending a body), a new
/// connection is answered 503 `too_many_connections` at once, not left waiting; once
/// the others finish, connections are served again.
#[test]
fn at_the_limit_with_none_idle_a_new_connection_gets_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _) = config(model(4), "http://127.0.0.1:9", &dir);
    c.webhook = None;
    c.limits.max_connections = 3;
    c.min_body_rate = 0;
    let server = start(c);
    let addr = server.addr();
    let body = valid_frame(1);
    let mut busy: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(upload_head(body.len()).as_bytes()).unwrap();
            s.write_all(&body[..10]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut extra = TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("too_many_connections"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // the busy uploads finish and are accepted; then there is room again
    for s in &mut busy {
        s.write_all(&body[10..]).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 202");
    }
    drop(busy);
    std::thread::sleep(Duration::from_millis(300));
    let client = Client::new();
    assert_eq!(client.enqueue(addr, valid_frame(2), &[]).status, 202);
    let (_, text) = client.get_text(addr, "/metrics");
    assert_eq!(
        counter(&text, "tidewatch_http_connections_refused_total"),
        1
    );
    server.shutdown().unwrap();
}

/// When other clients' bodies fill the upload buffer, the answer is 429 `uploads_full`,
/// counted under that reason, not "queue full" while the queue is empty.
#[test]
fn a_full_upload_buffer_is_told_apart_from_a_full_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _) = config(model(4), "http://127.0.0.1:9", &dir);
    c.webhook = None;
    c.upload_buffer_bytes = 1000;
    c.min_body_rate = 0;
    let server = start(c);
    let addr = server.addr();
    let mut holder = TcpStream::connect(addr).unwrap();
    holder.write_all(upload_head(950).as_bytes()).unwrap();
    holder.write_all(&[b' '; 900]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let client = Client::new();
    let body = valid_frame(3);
    assert!(
        body.len() > 100,
        "the frame must not fit beside the held bytes"
    );
    let a = client.enqueue(addr, body.clone(), &[]);
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"], "uploads_full", "{}", a.body);
    assert!(a.headers.contains_key("retry-after"));
    drop(holder);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(client.enqueue(addr, body, &[]).status, 202);
    let (_, text) = client.get_text(addr, "/metrics");
    assert_eq!(
        counter(
            &text,
            "tidewatch_frames_rejected_total{reason=\"uploads_full\"}"
        ),
        1
    );
    server.shutdown().unwrap();
}

/// A receiver that accepts connections and never answers.
fn hanging_receiver() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// With the receiver hanging, shutdown used to take the webhook's 30 s. It now ends at
/// the drain timeout, and the alert still under way is in the dead-letter file.
#[test]
fn shutdown_ends_at_the_drain_timeout_and_keeps_the_undelivered_alert() {
    let dir = tempfile::tempdir().unwrap();
    let (_receiver, url) = hanging_receiver();
    let (mut c, verdicts) = config(model(4), &url, &dir);
    c.drain_timeout = Duration::from_secs(2);
    if let Some(w) = c.webhook.as_mut() {
        w.timeout = Duration::from_secs(60);
    }
    let server = start(c);
    let client = Client::new();
    assert_eq!(
        client.enqueue(server.addr(), valid_frame(4), &[]).status,
        202
    );
    wait_until("the verdict", || verdicts.lock().unwrap().len() == 1);
    let started = Instant::now();
    let report = server.shutdown().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(report.webhook.unwrap().dead_lettered, 1);
    let dead = dead_letters(&dir);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["alert"]["seq"], 0);
    assert!(dead[0]["alert"]["run_id"].is_string(), "{}", dead[0]);
}

/// Starts serve against a hanging receiver (drain up to 120 s) with `extra` flags, sends
/// a frame, and sends SIGTERM twice while its alert is under way; checks that the second
/// one stops the process at once. Returns the rest of stdout and the enqueue answer.
#[cfg(unix)]
fn second_signal_during_drain(
    dir: &std::path::Path,
    extra: &[&str],
) -> (String, serde_json::Value) {
    let model_dir = dir.join("model");
    common::random_rff_model(4, 1, 3).save(&model_dir).unwrap();
    let (_receiver, url) = hanging_receiver();
    let mut child = common::tidewatch(dir)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--threshold=-1e30",
        ])
        .args(["--drain-timeout", "120s", "--nestjs-timeout", "100"])
        .arg("--model")
        .arg(&model_dir)
        .arg("--dead-letter")
        .arg(dir.join("dead.jsonl"))
        .args(extra)
        .env("NESTJS_URL", &url)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (addr, mut stdout) = common::ready_addr(&mut child);
    let client = Client::new();
    let a = client.enqueue(addr, valid_frame(5), &[]);
    assert_eq!(a.status, 202);
    assert!(a.body["run_id"].is_string(), "{}", a.body);
    // the alert is under way (the receiver took the connection) before the signals
    std::thread::sleep(Duration::from_millis(500));
    common::sigterm(&child);
    std::thread::sleep(Duration::from_millis(500));
    common::sigterm(&child);
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    (rest, a.body)
}

/// A second SIGTERM during a drain stops the process at once; the undelivered alert
/// stays in the outbox for the next start.
#[cfg(unix)]
#[test]
fn a_second_signal_stops_at_once_and_keeps_pending_alerts_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (rest, _) = second_signal_during_drain(dir.path(), &[]);
    assert!(
        rest.contains("dead-lettered 0, left in the outbox 1"),
        "{rest}"
    );
    let out = common::tidewatch(dir.path())
        .args(["outbox", "inspect", "--json"])
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["backlog"]["alerts"], 1, "{listed}");
    assert_eq!(listed["backlog"]["oldest_seq"], 0, "{listed}");
}

/// With --no-outbox, the second signal writes the alert under way to the dead-letter
/// file.
#[cfg(unix)]
#[test]
fn without_an_outbox_a_second_signal_dead_letters_pending_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (rest, answer) = second_signal_during_drain(dir.path(), &["--no-outbox"]);
    assert!(rest.contains("dead-lettered 1"), "{rest}");
    let text = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["alert"]["run_id"], answer["run_id"]);
}

/// A dead-letter path that cannot be written stops start-up with a message naming it,
/// instead of surfacing when the first alert fails.
#[test]
fn an_unwritable_dead_letter_path_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    common::random_rff_model(4, 1, 3).save(&model_dir).unwrap();
    let out = common::tidewatch(dir.path())
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .arg("--model")
        .arg(&model_dir)
        .args(["--dead-letter", "/nonexistent/dir/dead.jsonl"])
        .env("LOG_LEVEL", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write the dead-letter file /nonexistent/dir/dead.jsonl"),
        "{err}"
    );
}

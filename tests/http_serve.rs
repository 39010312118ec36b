//! `tidewatch serve` over real HTTP on loopback: frames posted like the NestJS client,
//! alerts received by a test receiver that validates like that client, retries, the
//! dead-letter file, the 100 KiB alert limit, back-pressure and probes.

mod common;
use common::sample;
use common::serve::*;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tidewatch::server::{self, ModelSpec};
use tidewatch::sinks::webhook::CLIENT_BODY_LIMIT;
use tidewatch::types::FrameResult;

/// A gzip frame sent exactly like the NestJS client reaches the alert receiver with the
/// contract's fields; plain JSON and `Content-Encoding: gzip` work too, and the client's
/// id and timestamp come back in the alert.
#[test]
fn nestjs_gzip_frame_reaches_the_alert_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = Receiver::like_client(&rt);
    let (c, _) = config(model(40), &receiver.base_url(), &dir);
    let server = start(c);
    let client = Client::new();

    let a = client.enqueue(server.addr(), gzip(frame_json(40, 1, "").as_bytes()), &[]);
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["status"], "ok");
    assert_eq!(a.body["message"], "Data enqueued successfully");
    assert_eq!(a.body["seq"], 0);

    let plain = frame_json(
        40,
        2,
        r#""id":"f-1","timestamp":"2026-11-23T10:00:00.123Z","#,
    );
    let a = client.enqueue(
        server.addr(),
        plain.into_bytes(),
        &[("content-type", "application/json")],
    );
    assert_eq!(
        (a.status, a.body["seq"].as_u64()),
        (202, Some(1)),
        "{}",
        a.body
    );
    let encoded = gzip(frame_json(40, 3, r#""id":7,"#).as_bytes());
    let a = client.enqueue(server.addr(), encoded, &[("content-encoding", "gzip")]);
    assert_eq!(
        (a.status, a.body["seq"].as_u64()),
        (202, Some(2)),
        "{}",
        a.body
    );

    wait_until("three alerts", || receiver.alerts().len() == 3);
    let mut alerts = receiver.alerts();
    alerts.sort_by_key(|a| a["seq"].as_u64());
    for (i, a) in alerts.iter().enumerate() {
        assert_eq!(a["seq"], i as u64);
        assert_eq!(a["anomaly_detected"], true);
        assert_eq!(
            a["num_anomalous_features"], 40,
            "threshold is below every score"
        );
        assert!(a["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{a}");
        assert!(
            a["received_at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{a}"
        );
        let scores: Vec<f64> = a["anomalous_features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "highest first");
    }
    assert!(alerts[0].get("id").is_none());
    assert_eq!(alerts[1]["id"], "f-1");
    assert_eq!(alerts[1]["timestamp"], "2026-11-23T10:00:00.123Z");
    assert_eq!(alerts[2]["id"], "7");
    let report = server.shutdown().unwrap();
    assert_eq!(report.http.accepted, 3);
    assert_eq!(report.webhook.unwrap().delivered, 3);
}

/// Every kind of bad request gets its own 4xx and a JSON body naming the problem, uses
/// up no sequence number, and leaves the server scoring the next valid frame.
#[test]
fn bad_inputs_get_their_codes_and_the_next_valid_frame_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = Receiver::like_client(&rt);
    let (mut c, verdicts) = config(model(4), &receiver.base_url(), &dir);
    c.max_body_bytes = 64 << 10;
    c.max_inflated_bytes = 256 << 10;
    let server = start(c);
    let client = Client::new();
    let valid = r#"{"data":{"feature_0":0.1,"feature_1":0.2,"feature_2":0.3,"feature_3":0.4}}"#;
    let mut bad_gzip = gzip(valid.as_bytes());
    let n = bad_gzip.len();
    bad_gzip.truncate(n / 2);
    /// What is sent, with any extra headers, and the status and error kind expected.
    type Case = (
        &'static str,
        Vec<u8>,
        Vec<(&'static str, &'static str)>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("corrupt gzip", bad_gzip, vec![], 400, "bad_gzip"),
        ("invalid JSON", br#"{"data":{"feature_0":"#.to_vec(), vec![], 400, "bad_json"),
        ("gzip of invalid JSON", gzip(b"not json"), vec![], 400, "bad_json"),
        ("not an object", b"[0.1,0.2]".to_vec(), vec![], 400, "not_an_object"),
        ("empty body", Vec::new(), vec![], 400, "empty"),
        ("no data", br#"{"values":{}}"#.to_vec(), vec![], 400, "no_data"),
        (
            "a string value",
            br#"{"data":{"feature_0":"NaN","feature_1":0.2,"feature_2":0.3,"feature_3":0.4}}"#.to_vec(),
            vec![],
            400,
            "not_a_number",
        ),
        (
            "a value that is no finite f32",
            br#"{"data":{"feature_0":1e39,"feature_1":0.2,"feature_2":0.3,"feature_3":0.4}}"#.to_vec(),
            vec![],
            400,
            "not_finite",
        ),
        (
            "a missing feature",
            br#"{"data":{"feature_0":0.1,"feature_1":0.2,"feature_2":0.3}}"#.to_vec(),
            vec![],
            400,
            "missing_features",
        ),
        (
            "an unknown feature",
            br#"{"data":{"feature_0":0.1,"feature_1":0.2,"feature_2":0.3,"feature_3":0.4,"feature_9":1}}"#
                .to_vec(),
            vec![],
            400,
            "unknown_features",
        ),
        ("a body over the wire limit", vec![b' '; 100 << 10], vec![], 413, "body_too_large"),
        ("a gzip bomb", gzip(&vec![b' '; 8 << 20]), vec![], 413, "too_large"),
        (
            "an encoding we cannot undo",
            valid.as_bytes().to_vec(),
            vec![("content-encoding", "br")],
            415,
            "unsupported_encoding",
        ),
    ];
    for (what, body, headers, status, kind) in &cases {
        let a = client.enqueue(server.addr(), body.clone(), headers);
        assert_eq!(a.status, *status, "{what}: {}", a.body);
        assert_eq!(a.body["error"], *kind, "{what}: {}", a.body);
        assert!(
            a.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {}",
            a.body
        );
    }
    let a = client.get(server.addr(), "/data-enqueue");
    assert_eq!(a.status, 405, "{}", a.body);

    let a = client.enqueue(server.addr(), gzip(valid.as_bytes()), &[]);
    assert_eq!(
        (a.status, a.body["seq"].as_u64()),
        (202, Some(0)),
        "{}",
        a.body
    );
    wait_until("the valid frame's verdict", || {
        verdicts.lock().unwrap().len() == 1
    });
    wait_until("its alert", || receiver.alerts().len() == 1);
    assert_eq!(verdicts.lock().unwrap()[0].seq, 0);
    let report = server.shutdown().unwrap();
    assert_eq!(report.http.rejected, cases.len() as u64);
    assert_eq!(report.http.accepted, 1);
    assert_eq!(report.run.stats.frames_scored, 1);
}

/// The 61-byte denial of service: `{"x":` and 18,750 `[`, gzipped, used to overflow the
/// decoding thread's stack and abort the server with every frame it held. It is refused
/// with 400 `too_deep` (in an unknown top-level key and in a feature value alike), and the
/// frames before and after it are still scored.
#[test]
fn a_61_byte_deeply_nested_body_is_refused_and_scoring_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = Receiver::like_client(&rt);
    let (c, verdicts) = config(model(4), &receiver.base_url(), &dir);
    let server = start(c);
    let client = Client::new();
    let valid = r#"{"data":{"feature_0":0.1,"feature_1":0.2,"feature_2":0.3,"feature_3":0.4}}"#;
    let a = client.enqueue(server.addr(), gzip(valid.as_bytes()), &[]);
    assert_eq!(a.status, 202, "{}", a.body);

    let bomb = gzip(format!(r#"{{"x":{}}}"#, "[".repeat(18_750)).as_bytes());
    assert!(bomb.len() <= 64, "the attack body is {} bytes", bomb.len());
    let in_value = format!(
        r#"{{"data":{{"feature_0":{},"feature_1":0.2,"feature_2":0.3,"feature_3":0.4}}}}"#,
        "[".repeat(18_750)
    );
    let cases = [
        ("unknown key", bomb, "18751"),
        ("feature value", gzip(in_value.as_bytes()), "18752"),
    ];
    for (what, body, depth) in cases {
        let a = client.enqueue(server.addr(), body, &[]);
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert_eq!(a.body["error"], "too_deep", "{what}: {}", a.body);
        let detail = a.body["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("nests {depth} levels")) && detail.contains("at most 128"),
            "{what}: {detail}"
        );
    }

    let a = client.enqueue(server.addr(), gzip(valid.as_bytes()), &[]);
    assert_eq!(a.status, 202, "{}", a.body);
    wait_until("both valid frames' verdicts", || {
        verdicts.lock().unwrap().len() == 2
    });
    let report = server.shutdown().unwrap();
    assert_eq!((report.http.accepted, report.http.rejected), (2, 2));
    assert_eq!(report.run.stats.frames_scored, 2);
}

/// A model that cannot be loaded: probes say so (live 200, ready 503 with the reason),
/// frames get 503 with Retry-After, and start-up reports the failure.
#[test]
fn a_model_that_cannot_load_leaves_the_server_unready() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let (mut c, _) = config(model(4), "http://127.0.0.1:9", &dir);
    c.model = ModelSpec::Dir(missing.clone());
    let server = server::start(c).unwrap();
    let err = server.wait_ready(PATIENCE).unwrap_err();
    assert!(format!("{err:#}").contains("no-such-model"), "{err:#}");
    let client = Client::new();
    assert_eq!(client.get(server.addr(), "/health/live").status, 200);
    let ready = client.get(server.addr(), "/health/ready");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["status"], "failed");
    assert!(ready.body["detail"]
        .as_str()
        .unwrap()
        .contains("no-such-model"));
    let a = client.enqueue(server.addr(), b"{}".to_vec(), &[]);
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.headers["retry-after"], "1");
    assert!(server.shutdown().is_err());
}

/// Readiness reports the model and the device, GPU availability included.
#[test]
fn probes_report_model_and_device() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = config(model(6), "http://127.0.0.1:9", &dir);
    let server = start(c);
    let client = Client::new();
    let live = client.get(server.addr(), "/health/live");
    assert_eq!(
        (live.status, live.body["status"].as_str()),
        (200, Some("alive"))
    );
    let ready = client.get(server.addr(), "/health/ready");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["model"]["n_features"], 6);
    assert_eq!(ready.body["model"]["window"], 1);
    assert_eq!(ready.body["device"]["used"], "cpu");
    assert!(ready.body["device"]["gpu_available"].is_boolean());
    assert_eq!(ready.body["queue"]["capacity"], 100);
    assert_eq!(client.get(server.addr(), "/nope").status, 404);
    server.shutdown().unwrap();
}

/// The receiver is down (connection refused) when the alert is first sent and comes up a
/// second later: retries deliver the alert.
#[test]
fn alert_receiver_down_then_up_gets_the_alert_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    // Reserve a free port, then leave it closed until the receiver starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut c, verdicts) = config(model(8), &format!("http://127.0.0.1:{port}"), &dir);
    if let Some(w) = c.webhook.as_mut() {
        w.max_retries = 30;
    }
    let server = start(c);
    let client = Client::new();
    let a = client.enqueue(server.addr(), gzip(frame_json(8, 5, "").as_bytes()), &[]);
    assert_eq!(a.status, 202);
    wait_until("the verdict", || verdicts.lock().unwrap().len() == 1);
    wait_until("a failed first attempt", || {
        server.webhook_stats().unwrap().attempts >= 2
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let receiver = Receiver::on(
        &rt,
        listener,
        Mode::Client {
            limit: CLIENT_BODY_LIMIT,
        },
    );
    wait_until("the alert", || receiver.alerts().len() == 1);
    let stats = server.shutdown().unwrap().webhook.unwrap();
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
    // attempts are counted as they start: the first had failed before the second
    // began, and the second may be the one the receiver, starting meanwhile, accepts
    assert!(stats.attempts >= 2, "{stats:?}");
    assert!(dead_letters(&dir).is_empty());
}

/// A receiver that answers 500 forever gets exactly MAX_RETRIES attempts; then the alert
/// is in the dead-letter file with the last error. A 4xx is not retried at all.
#[test]
fn failing_receivers_lead_to_dead_letters_after_the_allowed_attempts() {
    for (mode, attempts, error) in [(Mode::Fail500, 3, "500"), (Mode::Fail400, 1, "400")] {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let receiver = Receiver::start(&rt, mode);
        let (c, _) = config(model(8), &receiver.base_url(), &dir);
        let server = start(c);
        let client = Client::new();
        let a = client.enqueue(server.addr(), gzip(frame_json(8, 6, "").as_bytes()), &[]);
        assert_eq!(a.status, 202);
        wait_until("the dead letter", || dead_letters(&dir).len() == 1);
        let stats = server.shutdown().unwrap().webhook.unwrap();
        assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
        assert_eq!(receiver.attempts.load(Ordering::SeqCst), attempts);
        let dead = dead_letters(&dir);
        assert_eq!(dead[0]["attempts"], attempts);
        assert!(
            dead[0]["last_error"].as_str().unwrap().contains(error),
            "{}",
            dead[0]
        );
        assert_eq!(dead[0]["alert"]["seq"], 0);
        assert_eq!(dead[0]["alert"]["anomaly_detected"], true);
    }
}

/// A frame in which all 25,000 features are anomalous: the alert still fits the client's
/// 100 KiB limit, listing the highest scores and the true count.
#[test]
fn an_alert_with_25000_anomalous_features_fits_the_client_limit() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = Receiver::like_client(&rt);
    let (mut c, _) = config(model(25_000), &receiver.base_url(), &dir);
    if let Some(w) = c.webhook.as_mut() {
        // The default cap would fit anyway; lift it so the size limit itself is tested.
        w.max_features = 25_000;
    }
    let server = start(c);
    let client = Client::new();
    let body = gzip(frame_json(25_000, 9, "").as_bytes());
    let a = client.enqueue(server.addr(), body, &[]);
    assert_eq!(a.status, 202, "{}", a.body);
    wait_until("the alert", || receiver.alerts().len() == 1);
    let alert = &receiver.alerts()[0];
    assert_eq!(alert["num_anomalous_features"], 25_000);
    let listed = alert["anomalous_features"].as_array().unwrap();
    assert!(
        !listed.is_empty() && listed.len() < 25_000,
        "{}",
        listed.len()
    );
    let stats = server.shutdown().unwrap().webhook.unwrap();
    assert_eq!(
        (stats.delivered, stats.dead_lettered, stats.attempts),
        (1, 0, 1)
    );
}

/// With the dataflow held up, the queue fills: further frames get 429 with Retry-After
/// (nothing blocks), and every frame that got a 202 is scored once it moves again.
#[test]
fn a_full_queue_answers_429_and_every_accepted_frame_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, verdicts) = config(model(8), "http://127.0.0.1:9", &dir);
    c.webhook = None;
    c.queue_max_size = 3;
    // The verdict hook runs on worker 0: holding it holds the whole dataflow.
    let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let g = Arc::clone(&gate);
    let collect = c.sinks.on_result.take().unwrap();
    c.sinks.on_result = Some(Arc::new(move |r: &FrameResult| {
        collect(r);
        let (lock, cv) = &*g;
        let mut state = lock.lock().unwrap();
        state.0 = true; // entered
        cv.notify_all();
        while !state.1 {
            state = cv.wait(state).unwrap();
        }
    }));
    let server = start(c);
    let client = Client::new();
    let frame = || gzip(frame_json(8, 4, "").as_bytes());
    assert_eq!(client.enqueue(server.addr(), frame(), &[]).status, 202);
    {
        let (lock, cv) = &*gate;
        let mut state = lock.lock().unwrap();
        while !state.0 {
            state = cv.wait(state).unwrap();
        }
    }
    let answers: Vec<Answer> = (0..6)
        .map(|_| client.enqueue(server.addr(), frame(), &[]))
        .collect();
    // Released before any assertion, so that a failure cannot leave the dataflow stuck.
    {
        let (lock, cv) = &*gate;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
    let mut accepted = vec![0u64];
    let mut throttled = 0;
    for a in &answers {
        match a.status {
            202 => accepted.push(a.body["seq"].as_u64().unwrap()),
            429 => {
                throttled += 1;
                assert_eq!(a.headers["retry-after"], "1");
                assert_eq!(a.body["error"], "queue_full");
            }
            s => panic!("unexpected {s}: {}", a.body),
        }
    }
    assert_eq!(accepted, vec![0, 1, 2, 3], "the queue holds 3 frames");
    assert_eq!(throttled, 3);
    wait_until("every accepted frame's verdict", || {
        verdicts.lock().unwrap().len() == 4
    });
    let a = client.enqueue(server.addr(), frame(), &[]);
    assert_eq!(
        (a.status, a.body["seq"].as_u64()),
        (202, Some(4)),
        "room again"
    );
    let report = server.shutdown().unwrap();
    let seqs: Vec<u64> = verdicts.lock().unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert_eq!(report.run.stats.frames_scored, 5);
    assert_eq!(report.http.throttled, 3);
}

/// At one frame a second with a batch size of 64, each frame is scored (and alerted)
/// while it is alone: no batch ever fills.
#[test]
fn a_frame_a_second_is_scored_without_waiting_for_a_full_batch() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = Receiver::like_client(&rt);
    let (mut c, _) = config(model(16), &receiver.base_url(), &dir);
    c.settings.batch_size = 64;
    let server = start(c);
    let client = Client::new();
    for i in 0..3u64 {
        let a = client.enqueue(server.addr(), gzip(frame_json(16, i, "").as_bytes()), &[]);
        assert_eq!(a.body["seq"], i);
        wait_until("this frame's alert", || {
            receiver.alerts().len() == i as usize + 1
        });
        std::thread::sleep(Duration::from_secs(1));
    }
    server.shutdown().unwrap();
}

/// `GET /metrics` counts what happened, by reason, and has a latency summary for every
/// stage a frame went through, from decode to the alert accepted by the receiver.
#[test]
fn metrics_count_frames_refusals_alerts_and_stage_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = Receiver::like_client(&rt);
    let (c, verdicts) = config(model(8), &receiver.base_url(), &dir);
    let server = start(c);
    let client = Client::new();
    for seed in 0..3 {
        let a = client.enqueue(server.addr(), gzip(frame_json(8, seed, "").as_bytes()), &[]);
        assert_eq!(a.status, 202, "{}", a.body);
    }
    for body in [
        b"{\"data\":".to_vec(),
        b"{\"data\":".to_vec(),
        b"[1]".to_vec(),
    ] {
        assert_eq!(client.enqueue(server.addr(), body, &[]).status, 400);
    }
    wait_until("three verdicts", || verdicts.lock().unwrap().len() == 3);
    wait_until("three alerts", || receiver.alerts().len() == 3);
    let (status, text) = client.get_text(server.addr(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "tidewatch_frames_accepted_total"), 3.0);
    assert_eq!(sample(&text, "tidewatch_frames_scored_total"), 3.0);
    assert_eq!(sample(&text, "tidewatch_anomalous_frames_total"), 3.0);
    assert_eq!(
        sample(
            &text,
            "tidewatch_frames_rejected_total{reason=\"bad_json\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "tidewatch_frames_rejected_total{reason=\"not_an_object\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "tidewatch_http_ingest_answers_total{code=\"4xx\"}"),
        3.0
    );
    wait_until("deliveries counted", || {
        let (_, t) = client.get_text(server.addr(), "/metrics");
        sample(&t, "tidewatch_alerts_sent_total") == 3.0
    });
    let (_, text) = client.get_text(server.addr(), "/metrics");
    assert_eq!(sample(&text, "tidewatch_queue_depth"), 0.0);
    for stage in [
        "decode",
        "queue",
        "window_batch_wait",
        "receive_to_scored",
        "threshold_to_sink",
    ] {
        let count = format!("tidewatch_stage_latency_microseconds_count{{stage=\"{stage}\"}}");
        assert_eq!(sample(&text, &count), 3.0, "{stage}");
    }
    for stage in ["alert_delivery", "receive_to_alert_sent"] {
        let count = format!("tidewatch_stage_latency_microseconds_count{{stage=\"{stage}\"}}");
        assert_eq!(sample(&text, &count), 3.0, "{stage}");
    }
    // the same latencies as a mergeable histogram: cumulative buckets ending in the count
    let bucket = |le: &str| {
        let name = format!(
            "tidewatch_stage_latency_seconds_bucket{{stage=\"receive_to_scored\",le=\"{le}\"}}"
        );
        sample(&text, &name)
    };
    let les = ["0.00001", "0.001", "0.01", "0.1", "1", "60", "+Inf"];
    let counts: Vec<f64> = les.iter().map(|le| bucket(le)).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(counts[les.len() - 1], 3.0);
    let total = "tidewatch_stage_latency_seconds_count{stage=\"receive_to_scored\"}";
    assert_eq!(sample(&text, total), 3.0);
    let score = "tidewatch_stage_latency_microseconds_count{stage=\"score\"}";
    assert!(
        (1.0..=3.0).contains(&sample(&text, score)),
        "one call per batch"
    );
    // end to end is at least as long as its first stage
    let p = |stage: &str| {
        sample(
            &text,
            &format!("tidewatch_stage_latency_max_microseconds{{stage=\"{stage}\"}}"),
        )
    };
    assert!(p("receive_to_alert_sent") >= p("decode"), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes") > 0.0);
    let report = server.shutdown().unwrap();
    let stages: Vec<&str> = report
        .run
        .latencies
        .iter()
        .map(|l| l.stage.name())
        .collect();
    assert!(stages.contains(&"receive_to_scored"), "{stages:?}");
}

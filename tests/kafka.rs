//! Kafka in and out against a real broker (tansu, started by `scripts/kafka-broker.sh`,
//! which exports its address as `TIDEWATCH_KAFKA_BROKERS`), with the `tidewatch` binary
//! run as a user runs it. Without the variable each test says it was skipped and passes;
//! CI always sets it. Every test uses topics and groups of its own, so they run in
//! parallel.

mod common;
use common::{counter, loopback_hostfile};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tidewatch::kafka::{binary, client_config, partition_count};
use tidewatch::load::client_json;
use tidewatch::load::kafka::{produce, ProduceSpec};
use tidewatch::model::FeatureIndex;
use tidewatch::sources::kafka::decode_message;
use tidewatch::sources::KeyPolicy;
use tidewatch::types::Frame;

/// Features and window of the test model: small, so that a run takes seconds.
const F: usize = 20;
const W: usize = 5;

fn brokers() -> Option<String> {
    match std::env::var("TIDEWATCH_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            eprintln!("skipped: no broker (run scripts/kafka-broker.sh)");
            None
        }
    }
}

/// A name no other test (or earlier run) uses.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tw-{what}-{}-{nanos}", std::process::id())
}

fn model(dir: &Path) -> PathBuf {
    let path = dir.join("model");
    common::random_rff_model(F, W, 11).save(&path).unwrap();
    path
}

/// Frame `k` as a message: gzip JSON, plain JSON or binary in turn, keyed by its id.
fn message(k: u64, frame: &Frame) -> (String, Vec<u8>, u64) {
    let id = frame.meta.id.clone().unwrap();
    let payload = match k % 3 {
        2 => {
            let mut out = Vec::new();
            binary::encode(&frame.values, k, None, Some(&id), &mut out).unwrap();
            out
        }
        n => {
            let mut json = String::new();
            client_json(&frame.values, &mut json);
            let json = format!("{{\"id\":\"{id}\",{}", &json[1..]);
            if n == 0 {
                use std::io::Write;
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(json.as_bytes()).unwrap();
                gz.finish().unwrap()
            } else {
                json.into_bytes()
            }
        }
    };
    (id, payload, 0)
}

/// Produces `frames` to `topic` (created with `partitions`): frame k to partition
/// k % partitions. `replace` swaps the payload of some frames (poison).
fn produce_frames(
    brokers: &str,
    topic: &str,
    partitions: usize,
    frames: &[Frame],
    rate: Option<f64>,
    replace: &BTreeMap<u64, Vec<u8>>,
) {
    let spec = ProduceSpec {
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        partitions,
        frames: Some(frames.len() as u64),
        duration: None,
        rate,
    };
    let report = produce(&spec, |k| {
        let (key, payload, n) = message(k, &frames[k as usize]);
        (key, replace.get(&k).cloned().unwrap_or(payload), n)
    })
    .unwrap();
    assert_eq!(
        report.statuses.get("delivered"),
        Some(&(frames.len() as u64)),
        "{report:?}"
    );
}

/// Produces `n` messages to a new one-partition `topic`: message k is `message(k)`, a
/// (key, payload) pair; checks every one was delivered.
fn produce_keyed(brokers: &str, topic: &str, n: u64, message: impl Fn(u64) -> (String, Vec<u8>)) {
    let spec = ProduceSpec {
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        partitions: 1,
        frames: Some(n),
        duration: None,
        rate: None,
    };
    let report = produce(&spec, |k| {
        let (key, payload) = message(k);
        (key, payload, 0)
    })
    .unwrap();
    assert_eq!(report.statuses.get("delivered"), Some(&n), "{report:?}");
}

/// One message read back.
#[derive(Clone, Debug)]
struct Msg {
    partition: i32,
    offset: i64,
    key: String,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// Every message of `topic` from the beginning, read until `enough` says so (or the
/// deadline passes, then whatever was read).
fn read_topic(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    enough: impl Fn(&[Msg]) -> bool,
) -> Vec<Msg> {
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        match partition_count(brokers, topic).unwrap() {
            Some(n) => break n,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => return Vec::new(),
        }
    };
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while !enough(&out) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Msg {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => eprintln!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The offsets `group` has committed on `topic`'s partitions (missing: none committed).
fn committed(brokers: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let partitions = partition_count(brokers, topic).unwrap().unwrap();
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    c.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// A running `tidewatch serve` with its output collected.
struct Served {
    child: Child,
    /// Its working directory, where its outbox and dead-letter files go.
    cwd: Arc<tempfile::TempDir>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(model: &Path, brokers: &str, topic: &str, group: &str, extra: &[&str]) -> Served {
        let cwd = Arc::new(tempfile::tempdir().unwrap());
        let mut cmd = common::tidewatch(cwd.path());
        let mut child = cmd
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-webhook",
            ])
            .arg("--model")
            .arg(model)
            .args(["--kafka-brokers", brokers, "--kafka-topic", topic])
            .args(["--kafka-group", group])
            .args(extra)
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = Arc::clone(&text);
            let reader = std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines() {
                    let mut t = sink.lock().unwrap();
                    t.push_str(&l.unwrap());
                    t.push('\n');
                }
            });
            (text, reader)
        };
        let (stdout, r1) = collect(Box::new(child.stdout.take().unwrap()));
        let (stderr, r2) = collect(Box::new(child.stderr.take().unwrap()));
        Served {
            child,
            cwd,
            stdout,
            stderr,
            readers: vec![r1, r2],
        }
    }

    fn signal(&self) {
        common::sigterm(&self.child);
    }

    /// Waits for the process to end; returns (stdout, stderr) after checking it exited 0.
    fn wait(mut self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!(
                    "serve did not stop within 60 s:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let (out, err) = (
            self.stdout.lock().unwrap().clone(),
            self.stderr.lock().unwrap().clone(),
        );
        assert!(status.success(), "serve exited {status}:\n{out}\n{err}");
        (out, err)
    }

    /// SIGTERM, then [`Served::wait`].
    fn stop(self) -> (String, String) {
        self.signal();
        self.wait()
    }
}

/// Frame ids of the verdicts on a results topic, counted.
fn scored(results: &[Msg]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for m in results {
        assert_eq!(m.json()["id"].as_str(), Some(m.key.as_str()), "keyed by id");
        *ids.entry(m.key.clone()).or_default() += 1;
    }
    ids
}

/// JSON log events of a process with the given message.
fn events(stderr: &str, message: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

/// The address `serve` printed in its ready line (`ready on http://ADDR (...`).
fn ready_addr(served: &Served) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = served.stdout.lock().unwrap().clone();
        if let Some(rest) = out.split("ready on http://").nth(1) {
            return rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "serve printed no ready line: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` of the server at `addr`, in Prometheus' text format.
fn scrape(addr: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("serve answers /metrics");
        assert_eq!(resp.status().as_u16(), 200);
        resp.text().await.unwrap()
    })
}

/// 4 partitions, read by two workers of one process and by two processes: every frame is
/// scored exactly once (but the first W-1, which only fill the first window), each
/// worker reads its own partitions, every verdict on the results topic carries the
/// frame's seq, id, count of anomalous features and those features, every anomalous
/// frame's alert arrives on the alert topic with the webhook's body keyed by frame id,
/// process 0's `/metrics` counts exactly the alerts on the topic as sent (with their
/// delivery latencies), and the final commit covers everything.
#[cfg(unix)]
#[test]
fn four_partitions_are_scored_by_two_workers_and_by_two_processes() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let topic = unique("frames");
    let n = 120;
    let frames = common::random_frames(n, F, 5);
    produce_frames(&brokers, &topic, 4, &frames, None, &BTreeMap::new());
    let ids: BTreeSet<String> = frames.iter().map(|f| f.meta.id.clone().unwrap()).collect();

    let hosts = dir.path().join("hosts.txt");
    let hostfile = hosts.to_str().unwrap();
    for layout in ["threads", "processes"] {
        let (group, results, alerts) = (unique("g"), unique("results"), unique("alerts"));
        // The random model's own threshold (0.5) flags about 99.5 % of these windows, so
        // whether one of the 116 passed depended on how the four partitions' frames
        // interleaved (the windows take frames in arrival order); at 1.2, about the
        // median of a window's highest score over many interleavings, about half pass.
        let outputs = [
            "--results-kafka-topic",
            results.as_str(),
            "--alerts-kafka-topic",
            alerts.as_str(),
            "--threshold",
            "1.2",
        ];
        let served: Vec<Served> = if layout == "threads" {
            let args = [&outputs[..], &["-w", "2"]].concat();
            vec![Served::start(&model, &brokers, &topic, &group, &args)]
        } else {
            // Ports picked just before the processes bind them: picked earlier, a port
            // could meanwhile become the local end of some connection (to the broker,
            // say), and the cluster would wait forever for its peer.
            loopback_hostfile(&hosts, 2);
            (0..2)
                .map(|p| {
                    let p = p.to_string();
                    let args = [&outputs[..], &["-n", "2", "-p", &p, "-h", hostfile]].concat();
                    Served::start(&model, &brokers, &topic, &group, &args)
                })
                .collect()
        };
        let expected = n - (W - 1);
        let got = read_topic(&brokers, &results, Duration::from_secs(90), |m| {
            m.len() >= expected
        });
        // Anything more than expected would come within a moment: wait for it.
        std::thread::sleep(Duration::from_millis(500));
        let got = read_topic(&brokers, &results, Duration::from_secs(5), |m| {
            m.len() > got.len()
        });
        // Alerts: exactly the anomalous verdicts. Read while serve still runs, so that
        // its /metrics can be compared with them.
        let anomalous: BTreeSet<String> = got
            .iter()
            .filter(|m| m.json()["anomaly_detected"] == true)
            .map(|m| m.key.clone())
            .collect();
        let alert_msgs = read_topic(&brokers, &alerts, Duration::from_secs(30), |m| {
            m.len() >= anomalous.len()
        });
        // An alert counts once the broker's acknowledgement reached the producer, which
        // may come a moment after a reader sees the message.
        let addr = ready_addr(&served[0]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let metrics = loop {
            let text = scrape(&addr);
            let text = if layout == "processes" {
                without_process_label(&text)
            } else {
                text
            };
            let sent = counter(&text, "tidewatch_alerts_sent_total");
            if sent >= alert_msgs.len() as u64 || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        for s in &served {
            s.signal();
        }
        let logs: Vec<(String, String)> = served.into_iter().map(Served::wait).collect();
        let counts = scored(&got);
        assert_eq!(got.len(), expected, "{layout}: one verdict per frame");
        assert!(counts.keys().all(|k| ids.contains(k)), "{layout}");
        // Each verdict: the frame's seq and id, whether it is anomalous, how many
        // features are, and those features with their scores (all of them: F is under
        // the list's cap).
        let mut seqs = BTreeSet::new();
        for m in &got {
            let v = m.json();
            seqs.insert(v["seq"].as_u64().expect("a verdict has its seq"));
            let listed = v["anomalous_features"].as_array().unwrap();
            let n = v["num_anomalous_features"].as_u64().unwrap();
            assert_eq!(n, listed.len() as u64, "{layout}: {v}");
            assert_eq!(v["anomaly_detected"], n > 0, "{layout}: {v}");
            for f in listed {
                assert!((f["feature_idx"].as_u64().unwrap() as usize) < F, "{v}");
                assert!(f["score"].as_f64().unwrap() >= 0.0, "{v}");
            }
        }
        assert_eq!(seqs.len(), got.len(), "{layout}: one seq per verdict");

        // Each of the two workers read two partitions: p % 2 == worker.
        let mut read: Vec<(u64, u64)> = logs
            .iter()
            .flat_map(|(_, err)| events(err, "reading partition"))
            .map(|e| {
                (
                    e["fields"]["worker"].as_u64().unwrap(),
                    e["fields"]["partition"].as_u64().unwrap(),
                )
            })
            .collect();
        read.sort();
        assert_eq!(read, vec![(0, 0), (0, 2), (1, 1), (1, 3)], "{layout}");
        if layout == "processes" {
            assert!(
                logs[1].1.contains("\"worker\":1"),
                "process 1 hosts worker 1"
            );
        }

        // Alerts: exactly the anomalous verdicts, as the webhook would post them, with
        // the features and seq of the frame's verdict.
        assert!(!anomalous.is_empty(), "the random model flags frames");
        assert!(anomalous.len() < expected, "and passes others");
        let verdict_of: BTreeMap<&str, Value> =
            got.iter().map(|m| (m.key.as_str(), m.json())).collect();
        let mut alerted = BTreeSet::new();
        for m in &alert_msgs {
            let body = tidewatch::sinks::alert::check_like_client(
                Some("application/json"),
                &m.payload,
                tidewatch::sinks::webhook::CLIENT_BODY_LIMIT,
            )
            .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(&m.payload)));
            assert_eq!(body["id"].as_str(), Some(m.key.as_str()));
            assert!(body["latency_ms"].is_number(), "the webhook's body");
            let v = &verdict_of[m.key.as_str()];
            for field in ["seq", "num_anomalous_features", "anomalous_features"] {
                assert_eq!(body[field], v[field], "{layout}: {field} of {}", m.key);
            }
            alerted.insert(m.key.clone());
        }
        assert_eq!(alert_msgs.len(), anomalous.len(), "{layout}");
        assert_eq!(alerted, anomalous, "{layout}");

        // /metrics of process 0 (which merges verdicts and produces alerts) counts the
        // alerts on the topic as sent, none retried or dead-lettered (no webhook), and
        // times the delivery of each.
        let alerts_n = alert_msgs.len() as u64;
        assert_eq!(
            counter(&metrics, "tidewatch_alerts_sent_total"),
            alerts_n,
            "{layout}: {metrics}"
        );
        assert_eq!(counter(&metrics, "tidewatch_alerts_retried_total"), 0);
        assert_eq!(counter(&metrics, "tidewatch_alerts_dead_lettered_total"), 0);
        for stage in ["alert_delivery", "receive_to_alert_sent"] {
            let count = format!("tidewatch_stage_latency_microseconds_count{{stage=\"{stage}\"}}");
            assert_eq!(counter(&metrics, &count), alerts_n, "{layout}: {stage}");
        }
        assert_eq!(
            counter(&metrics, "tidewatch_frames_scored_total"),
            expected as u64
        );
        assert_eq!(
            counter(&metrics, "tidewatch_anomalous_frames_total"),
            anomalous.len() as u64
        );

        // Drained and committed to the end of every partition.
        let c = committed(&brokers, &group, &topic);
        assert_eq!(c, (0..4).map(|p| (p, (n / 4) as i64)).collect(), "{layout}");
        assert!(
            logs[0].0.contains(&format!("{n} frames read")) || layout == "processes",
            "{}",
            logs[0].0
        );
    }
}

/// kill -9 in mid-stream: whatever the group had committed was scored and its verdict
/// was on the results topic; after a restart every frame is scored at least once with
/// no gap (only the first run's first W-1 frames fill a window without a verdict).
#[cfg(unix)]
#[test]
fn a_consumer_killed_mid_stream_resumes_and_skips_nothing() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let (topic, group, results) = (unique("frames"), unique("g"), unique("results"));
    let n = 400;
    let frames = common::random_frames(n, F, 7);
    // The topic exists before serve starts; frames arrive while it runs.
    tidewatch::kafka::ensure_topic(&brokers, &topic, 4).unwrap();
    let producer = {
        let (brokers, topic, frames) = (brokers.clone(), topic.clone(), frames.clone());
        std::thread::spawn(move || {
            produce_frames(&brokers, &topic, 4, &frames, Some(150.0), &BTreeMap::new())
        })
    };
    let args = ["--results-kafka-topic", results.as_str(), "-w", "2"];
    let mut first = Served::start(&model, &brokers, &topic, &group, &args);
    let before = read_topic(&brokers, &results, Duration::from_secs(60), |m| {
        m.len() >= 120
    });
    first.child.kill().unwrap(); // SIGKILL: no drain, no last commit
    first.child.wait().unwrap();
    assert!(before.len() >= 120, "the first run scored frames");

    // At-least-once: every message below the committed offsets has its verdict already.
    let input = read_topic(&brokers, &topic, Duration::from_secs(30), |m| m.len() >= n);
    assert_eq!(input.len(), n, "all frames produced");
    let id_at: BTreeMap<(i32, i64), String> = input
        .iter()
        .map(|m| ((m.partition, m.offset), m.key.clone()))
        .collect();
    let warmup = |id: &String| {
        input
            .iter()
            .any(|m| &m.key == id && m.offset < (W - 1) as i64)
    };
    let done_before = read_topic(&brokers, &results, Duration::from_secs(5), |_| false);
    let scored_before = scored(&done_before);
    let c = committed(&brokers, &group, &topic);
    assert!(
        c.values().sum::<i64>() > 0,
        "offsets were committed mid-stream: {c:?}"
    );
    let mut unscored_committed = Vec::new();
    for (&(p, o), id) in &id_at {
        if c.get(&p).is_some_and(|&end| o < end) && !scored_before.contains_key(id) {
            unscored_committed.push(id.clone());
        }
    }
    assert!(
        unscored_committed.len() < W && unscored_committed.iter().all(warmup),
        "committed but never scored: {unscored_committed:?}"
    );

    let second = Served::start(&model, &brokers, &topic, &group, &args);
    producer.join().unwrap();
    let all_ids: BTreeSet<String> = id_at.values().cloned().collect();
    let covered = |m: &[Msg]| {
        let s = scored(m);
        all_ids.iter().filter(|id| !s.contains_key(*id)).count() < W
    };
    let after = read_topic(&brokers, &results, Duration::from_secs(90), covered);
    let (_, err) = second.stop();
    let s = scored(&after);
    let missing: Vec<&String> = all_ids.iter().filter(|id| !s.contains_key(*id)).collect();
    assert!(
        missing.len() < W && missing.iter().all(|id| warmup(id)),
        "never scored: {missing:?}"
    );
    // The second run started from the committed offsets (less the window), not from
    // the beginning.
    let resumed = events(&err, "reading partition");
    assert_eq!(resumed.len(), 4, "{err}");
    for e in resumed {
        let p = e["fields"]["partition"].as_i64().unwrap() as i32;
        let start = e["fields"]["start"].as_i64().unwrap();
        if let Some(&o) = c.get(&p) {
            assert_eq!(start, (o - (W as i64 - 1)).max(0), "partition {p}: {e}");
        }
    }
}

/// Messages that do not decode (bad JSON; a binary frame of the wrong size) are logged
/// with partition and offset, copied to the dead-letter topic, skipped, and committed
/// past; the frames around them are scored.
#[cfg(unix)]
#[test]
fn poison_messages_are_skipped_reported_and_dead_lettered() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let (topic, group) = (unique("frames"), unique("g"));
    let (results, dead) = (unique("results"), unique("dead"));
    let n = 40;
    let frames = common::random_frames(n, F, 9);
    let mut wrong_size = Vec::new();
    binary::encode(&[1.0; F + 1], 21, None, Some("frame-21"), &mut wrong_size).unwrap();
    let poison = BTreeMap::from([(10u64, b"{not json".to_vec()), (21, wrong_size)]);
    produce_frames(&brokers, &topic, 2, &frames, None, &poison);
    let served = Served::start(
        &model,
        &brokers,
        &topic,
        &group,
        &[
            "--results-kafka-topic",
            &results,
            "--kafka-dead-letter-topic",
            &dead,
        ],
    );
    let expected = n - poison.len() - (W - 1);
    let got = read_topic(&brokers, &results, Duration::from_secs(90), |m| {
        m.len() >= expected
    });
    let (out, err) = served.stop();
    assert_eq!(got.len(), expected);
    let s = scored(&got);
    assert!(!s.contains_key("frame-10") && !s.contains_key("frame-21"));

    // frame 10: partition 0 offset 5; frame 21: partition 1 offset 10
    let skipped = events(&err, "skipped a Kafka message that does not decode");
    let at: BTreeSet<(i64, i64)> = skipped
        .iter()
        .map(|e| {
            (
                e["fields"]["partition"].as_i64().unwrap(),
                e["fields"]["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(at, BTreeSet::from([(0, 5), (1, 10)]), "{err}");
    assert!(skipped
        .iter()
        .all(|e| e["fields"]["dead_letter"] == dead.as_str()));
    assert!(
        err.contains("21 features, the model 20"),
        "the problem is named"
    );

    let letters = read_topic(&brokers, &dead, Duration::from_secs(30), |m| m.len() >= 2);
    assert_eq!(letters.len(), 2);
    let origins: BTreeSet<&str> = letters
        .iter()
        .map(|m| m.headers["tidewatch-origin"].as_str())
        .collect();
    assert_eq!(
        origins,
        BTreeSet::from([format!("{topic}/0/5").as_str(), &format!("{topic}/1/10")])
    );
    let bad_json = letters.iter().find(|m| m.key == "frame-10").unwrap();
    assert_eq!(bad_json.payload, b"{not json");
    assert!(!bad_json.headers["tidewatch-error"].is_empty());

    assert_eq!(
        committed(&brokers, &group, &topic),
        BTreeMap::from([(0, 20), (1, 20)]),
        "committed past the poison"
    );
    assert!(
        out.contains("2 messages skipped (2 dead-lettered)"),
        "{out}"
    );
}

/// `serve --alerts incident` with an alert topic: a 15-frame departure of one feature
/// becomes exactly one open and one resolve on the topic, both keyed by the incident id,
/// each with an idempotency key of its own and a body the NestJS client accepts. They go
/// through the file outbox's Kafka part (`tidewatch-outbox/kafka`), which holds nothing
/// undelivered once serve has stopped.
#[cfg(unix)]
#[test]
fn incident_events_reach_the_alert_topic_through_the_outbox() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mean-model");
    common::window_mean_model(F, W, 0.5).save(&model).unwrap();
    let (topic, group, alerts) = (unique("frames"), unique("g"), unique("alerts"));
    let frames: Vec<Frame> = (0..40u64)
        .map(|k| Frame {
            seq: k,
            meta: tidewatch::types::FrameMeta {
                id: Some(format!("frame-{k}")),
                ..Default::default()
            },
            values: (0..F)
                .map(|f| {
                    if f == 7 && (10..25).contains(&k) {
                        2.0
                    } else {
                        0.0
                    }
                })
                .collect(),
        })
        .collect();
    produce_frames(&brokers, &topic, 1, &frames, None, &BTreeMap::new());
    let served = Served::start(
        &model,
        &brokers,
        &topic,
        &group,
        &["--alerts", "incident", "--alerts-kafka-topic", &alerts],
    );
    let got = read_topic(&brokers, &alerts, Duration::from_secs(90), |m| m.len() >= 2);
    // a third event would come within a moment
    std::thread::sleep(Duration::from_millis(500));
    let got = read_topic(&brokers, &alerts, Duration::from_secs(5), |m| {
        m.len() > got.len()
    });
    let cwd = Arc::clone(&served.cwd);
    let (_, err) = served.stop();
    let bodies: Vec<Value> = got
        .iter()
        .map(|m| {
            tidewatch::sinks::alert::check_like_client(
                Some("application/json"),
                &m.payload,
                tidewatch::sinks::webhook::CLIENT_BODY_LIMIT,
            )
            .unwrap_or_else(|e| panic!("the client would refuse ({e:?}): {:?}", m.json()))
        })
        .collect();
    let kinds: Vec<&str> = bodies
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["open", "resolve"], "{bodies:#?}\n{err}");
    let id = bodies[0]["incident"]["id"].as_str().unwrap();
    assert!(id.starts_with("feature_7#"), "{id}");
    assert!(got.iter().all(|m| m.key == id), "keyed by the incident id");
    let keys: BTreeSet<&str> = got
        .iter()
        .map(|m| m.headers["idempotency-key"].as_str())
        .collect();
    assert_eq!(keys.len(), 2, "one idempotency key per event: {keys:?}");

    let inspect = common::tidewatch(cwd.path())
        .args(["outbox", "inspect", "--json", "--outbox-dir"])
        .arg(cwd.path().join("tidewatch-outbox").join("kafka"))
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{inspect:?}");
    let inspect: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["backlog"]["alerts"], 0, "{inspect}");
    assert!(
        inspect["backlog"]["segments"].as_u64().unwrap() >= 1,
        "{inspect}"
    );
}

/// With `--kafka-key-is-entity`, frames that name no entity take their message key as
/// their entity: each key's frames are windowed apart, and alerts carry the key as
/// `entity`. Two pumps' messages alternate on one partition; pump-a holds 2.0 on
/// feature 7 for its frames 10..15, pump-b stays at 0. In windows of 5 of pump-a's own
/// frames the mean passes 0.5 where a window holds two of them (frames 11 to 17); had the
/// pumps shared one window, pump-b's frames would alert too, and 36 frames would end a
/// window instead of 2 x 16.
#[test]
fn the_message_key_names_the_entity_of_frames_that_name_none() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mean-model");
    common::window_mean_model(F, W, 0.5).save(&model).unwrap();
    let (topic, group) = (unique("frames"), unique("g"));
    let (results, alerts) = (unique("results"), unique("alerts"));
    let n = 40u64;
    produce_keyed(&brokers, &topic, n, |k| {
        let (pump, i) = (["pump-a", "pump-b"][k as usize % 2], k / 2);
        let values: Vec<f32> = (0..F)
            .map(
                |f| match pump == "pump-a" && f == 7 && (10..15).contains(&i) {
                    true => 2.0,
                    false => 0.0,
                },
            )
            .collect();
        let mut json = String::new();
        client_json(&values, &mut json);
        let json = format!("{{\"id\":\"{pump}:{i}\",{}", &json[1..]);
        (pump.to_string(), json.into_bytes())
    });
    let served = Served::start(
        &model,
        &brokers,
        &topic,
        &group,
        &[
            "--kafka-key-is-entity",
            "--results-kafka-topic",
            &results,
            "--alerts-kafka-topic",
            &alerts,
        ],
    );
    let per_entity = 2 * (n as usize / 2 - (W - 1));
    let verdicts = read_topic(&brokers, &results, Duration::from_secs(90), |m| {
        m.len() >= per_entity
    });
    let got = read_topic(&brokers, &alerts, Duration::from_secs(30), |m| m.len() >= 7);
    // anything more would come within a moment
    std::thread::sleep(Duration::from_millis(500));
    let verdicts = read_topic(&brokers, &results, Duration::from_secs(5), |m| {
        m.len() > verdicts.len()
    });
    let got = read_topic(&brokers, &alerts, Duration::from_secs(5), |m| {
        m.len() > got.len()
    });
    let (_, err) = served.stop();
    assert_eq!(verdicts.len(), per_entity, "{err}");
    let mut alerted: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            let body = m.json();
            let id = body["id"].as_str().unwrap().to_string();
            let entity = body["entity"].as_str().unwrap_or_default().to_string();
            (entity, id)
        })
        .collect();
    alerted.sort_by_key(|(_, id)| id[id.find(':').unwrap() + 1..].parse::<u64>().unwrap());
    let expected: Vec<(String, String)> = (11..=17)
        .map(|i| ("pump-a".to_string(), format!("pump-a:{i}")))
        .collect();
    assert_eq!(alerted, expected, "{err}");
}

/// `loadgen --kafka` writes decodable frames round-robin over the partitions, and
/// `bench --kafka` reads a topic through the dataflow and reports frames/s.
#[test]
fn loadgen_and_bench_use_a_topic() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let topic = unique("loadgen");
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["loadgen", "--kafka", &brokers, "--kafka-topic", &topic])
        .args(["--kafka-format", "binary", "--frames", "30", "--json"])
        .args(["--features", &F.to_string(), "--id-prefix", "lg-"])
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sent"], 30);
    assert_eq!(report["statuses"]["delivered"], 30);
    let msgs = read_topic(&brokers, &topic, Duration::from_secs(30), |m| m.len() >= 30);
    assert_eq!(msgs.len(), 30);
    let index = FeatureIndex::numbered(F);
    let mut per_partition = BTreeMap::<i32, usize>::new();
    for m in &msgs {
        let mut values = Vec::new();
        let d = decode_message(
            &m.payload,
            &index,
            KeyPolicy::default(),
            1 << 20,
            &mut values,
        )
        .unwrap();
        assert_eq!(d.id.as_deref(), Some(m.key.as_str()));
        *per_partition.entry(m.partition).or_default() += 1;
    }
    assert_eq!(
        per_partition,
        BTreeMap::from([(0, 8), (1, 8), (2, 7), (3, 7)])
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "bench", "--kafka", &brokers, "--frames", "60", "--ring", "8",
        ])
        .args(["--features", &F.to_string(), "-w", "2", "--json", "--model"])
        .arg(&model)
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "kafka");
    assert_eq!(report["frames"], 60);
    assert_eq!(report["frames_scored"], 60 - (W as u64 - 1));
    assert!(report["frames_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["wire_bytes"].as_u64().unwrap() > 0);
}

/// `/metrics` of a cluster's process 0 as a lone process writes it: every sample there
/// carries `process="0"` as its first label (checked here), dropped so that samples can
/// be looked up by their single-process names.
fn without_process_label(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with('#') {
            line.to_string()
        } else {
            let (name, rest) = line.split_once("{process=\"0\"").unwrap_or_else(|| {
                panic!("a sample of a cluster without its process label: {line}")
            });
            match rest.strip_prefix(',') {
                Some(labels) => format!("{name}{{{labels}"),
                None => format!("{name}{}", rest.strip_prefix('}').unwrap()),
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `serve --dataflow machines` reads seed 002's machine records from a topic and sends
/// each failing one's alert, with its machine id and failure probability, to the alert
/// topic (through the outbox), keyed by the record's id; a record that does not decode
/// is skipped and reported, the others still scored.
#[test]
fn machine_records_from_a_topic_alert_to_the_alert_topic() {
    let Some(brokers) = brokers() else { return };
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/machines");
    let (topic, group, alerts) = (unique("records"), unique("g"), unique("alerts"));
    // AI4I record 4 (normal) and 51 (a power failure), alternating, and one broken
    let normal = r#"{"machine_id":"L47183","type":"L","airTemperature":298.2,"processTemperature":308.6,"rotationalSpeed":1433,"torque":39.5,"toolWear":7"#;
    let failing = r#"{"machine_id":"L47230","type":"L","airTemperature":298.9,"processTemperature":309.1,"rotationalSpeed":2861,"torque":4.6,"toolWear":143"#;
    let n = 10u64;
    produce_keyed(&brokers, &topic, n, |k| {
        let body = match k {
            5 => r#"{"machine_id":"x","type":"L"}"#.to_string(),
            k if k % 2 == 1 => format!(r#"{failing},"id":"r{k}"}}"#),
            k => format!(r#"{normal},"id":"r{k}"}}"#),
        };
        (format!("r{k}"), body.into_bytes())
    });
    let served = Served::start(
        &models,
        &brokers,
        &topic,
        &group,
        &["--dataflow", "machines", "--alerts-kafka-topic", &alerts],
    );
    // records 1, 3, 7 and 9 fail; 5 does not decode
    let got = read_topic(&brokers, &alerts, Duration::from_secs(90), |m| m.len() >= 4);
    std::thread::sleep(Duration::from_millis(500));
    let got = read_topic(&brokers, &alerts, Duration::from_secs(5), |m| {
        m.len() > got.len()
    });
    let (_, err) = served.stop();
    let mut alerted: Vec<(String, String, String)> = got
        .iter()
        .map(|m| {
            let body = m.json();
            assert!(body["probability"].as_f64().unwrap() > 0.5, "{body}");
            let id = body["id"].as_str().unwrap().to_string();
            (
                m.key.clone(),
                id,
                body["machine_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    alerted.sort();
    let expected: Vec<(String, String, String)> = [1, 3, 7, 9]
        .iter()
        .map(|k| (format!("r{k}"), format!("r{k}"), "L47230".to_string()))
        .collect();
    assert_eq!(alerted, expected, "{err}");
    let skipped = events(&err, "skipped a Kafka message that does not decode");
    assert_eq!(skipped.len(), 1, "{err}");
}

//! The dashboard and the metrics operators watch: `GET /` and its assets come from the
//! binary and `GET /events` streams snapshots; a real headless Chromium, driven over
//! WebDriver (chromedriver) during a run with an injected anomaly, shows the counters
//! moving and the anomalous feature, and leaves a screenshot under `target/`; and every
//! query of the shipped Grafana dashboard names a metric a real `serve` exports.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver` (installed by
//! `.ci/run`); without them it says it skipped, unless `TIDEWATCH_REQUIRE_BROWSER=1`
//! makes that a failure.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::serve::{self as s, Client, Receiver, PATIENCE};
use serde_json::{json, Value};

/// Features of the test model, and the one the sender makes anomalous.
const F: usize = 400;
const ANOMALOUS: usize = 137;

/// A frame of `F` values in [0, 1); from frame 40 on, every 5th has feature
/// [`ANOMALOUS`] far out of range (the ewma variant learns for 30 frames first).
fn frame(i: u64) -> Vec<u8> {
    let mut r = common::Lcg(i + 1);
    let mut data = serde_json::Map::new();
    for f in 0..F {
        let v = if f == ANOMALOUS && i >= 40 && i.is_multiple_of(5) {
            40.0
        } else {
            (r.next() as f64 + 1.0) / 2.0
        };
        data.insert(format!("feature_{f}"), json!(v));
    }
    serde_json::to_vec(&json!({ "id": format!("frame-{i}"), "data": data })).unwrap()
}

/// A serve on loopback running the ewma variant (so that the injected value, and only
/// it, alerts), with alerts posted to `rx`.
fn serve(rx: &Receiver, dir: &tempfile::TempDir) -> tidewatch::server::ServerHandle {
    let (mut c, _) = s::config(s::model(F), &rx.base_url(), dir);
    c.settings.pipeline = tidewatch::dataflows::pipeline("ewma", &[]).unwrap();
    c.settings.threshold = None;
    s::start(c)
}

/// Sends frames at about 20 a second until dropped.
struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    fn start(addr: SocketAddr) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let client = Client::new();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let a = client.enqueue(addr, frame(i), &[]);
                assert_eq!(a.status, 202, "{:?}", a.body);
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sender {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads server-sent events from `GET /events` until `n` have arrived.
fn events(addr: SocketAddr, n: usize) -> Vec<Value> {
    let client = Client::new();
    client.rt.block_on(async {
        let mut resp = client
            .http
            .get(format!("http://{addr}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let (mut text, mut out) = (String::new(), Vec::new());
        while out.len() < n {
            let chunk = tokio::time::timeout(PATIENCE, resp.chunk())
                .await
                .expect("a snapshot every second")
                .unwrap()
                .expect("the stream goes on");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                    out.push(serde_json::from_str(data).unwrap());
                }
            }
        }
        out
    })
}

/// The page, its script and style come from the binary; `/events` streams one snapshot
/// a second with the counters of `/metrics`, the model and device, and the anomalous
/// features of the frames sent.
#[test]
fn the_page_and_its_event_stream_are_served() {
    let rt = s::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let h = serve(&rx, &dir);
    let client = Client::new();
    let (status, html) = client.get_text(h.addr(), "/");
    assert_eq!(status, 200);
    assert!(html.contains("<script src=\"/dashboard.js\">"), "{html}");
    assert!(
        !html.contains("http"),
        "nothing fetched from elsewhere: {html}"
    );
    for asset in ["/dashboard.js", "/dashboard.css"] {
        let (status, body) = client.get_text(h.addr(), asset);
        assert_eq!(status, 200, "{asset}");
        // the SVG namespace is a name, not a fetch; no other absolute URL may appear
        let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{asset}"
        );
    }
    for i in 0..50 {
        assert_eq!(client.enqueue(h.addr(), frame(i), &[]).status, 202);
    }
    s::wait_until("the verdicts", || {
        let (_, m) = client.get_text(h.addr(), "/metrics");
        common::counter(&m, "tidewatch_frames_scored_total") == 50
    });
    let snaps = events(h.addr(), 2);
    let last = &snaps[1];
    assert!(snaps[1]["t_ms"].as_i64() > snaps[0]["t_ms"].as_i64());
    assert_eq!(last["status"], "ready");
    assert_eq!(last["counters"]["frames_scored"], 50);
    assert_eq!(last["ready"]["model"]["n_features"], F);
    assert_eq!(last["ready"]["device"]["used"], "cpu");
    assert_eq!(last["queue"]["capacity"], 100);
    let buckets = last["stages"]["receive_to_scored"].as_array().unwrap();
    assert_eq!(
        buckets.len(),
        last["buckets_s"].as_array().unwrap().len() + 1
    );
    assert_eq!(buckets.last().unwrap(), 50, "+Inf counts every verdict");
    let per_cell = last["heat"]["per_cell"].as_u64().unwrap() as usize;
    let hot: Vec<u64> = last["heat"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_u64().unwrap())
        .collect();
    assert!(
        hot.contains(&((ANOMALOUS / per_cell) as u64)),
        "{}",
        last["heat"]
    );
    let recent = last["recent"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|a| a["top"][0]
                == json!([ANOMALOUS, format!("feature_{ANOMALOUS}"), a["top"][0][2]])),
        "{recent:?}"
    );
    h.shutdown().unwrap();
}

/// Every `expr` of every panel of `deploy/grafana/tidewatch.json` names only metrics that
/// a real serve's `/metrics` exports, and the latency panels take quantiles of the summed
/// histogram buckets.
#[test]
fn the_grafana_dashboard_queries_exported_metrics() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/tidewatch.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(panel["title"].is_string() && panel["gridPos"].is_object());
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    assert!(exprs.iter().any(|e| e.contains(
        "histogram_quantile(0.99, sum by (le) (rate(tidewatch_stage_latency_seconds_bucket"
    )));
    assert!(exprs
        .iter()
        .any(|e| e.contains("sum by (le, stage, process)")));

    let rt = s::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let h = serve(&rx, &dir);
    let client = Client::new();
    assert_eq!(client.enqueue(h.addr(), frame(0), &[]).status, 202);
    let (_, text) = client.get_text(h.addr(), "/metrics");
    h.shutdown().unwrap();
    // samples, and families declared with no sample yet (refusals by reason, say)
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(declared) => declared.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .collect();
    for expr in &exprs {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("tidewatch_") || w.starts_with("process_"));
        let mut any = false;
        for name in names {
            any = true;
            assert!(
                exported.contains(name),
                "{expr} names {name}, which /metrics does not export:\n{text}"
            );
        }
        assert!(any, "{expr} names no metric");
    }
}

/// Debian's chromium and its chromedriver, if installed; otherwise a visible skip (or,
/// with `TIDEWATCH_REQUIRE_BROWSER=1`, a failure).
fn browser() -> Option<(PathBuf, PathBuf)> {
    match (common::on_path("chromium"), common::on_path("chromedriver")) {
        (Some(c), Some(d)) => Some((c, d)),
        _ if std::env::var("TIDEWATCH_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("TIDEWATCH_REQUIRE_BROWSER=1 but chromium or chromedriver is not on PATH")
        }
        _ => {
            eprintln!(
                "SKIPPED: the dashboard's browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// A chromedriver on a free loopback port, stopped on drop.
struct Driver {
    child: Child,
    base: String,
    http: Client,
}

impl Driver {
    fn start(path: &std::path::Path) -> Driver {
        let port = common::free_port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: Client::new(),
        };
        s::wait_until("chromedriver", || {
            driver.http.rt.block_on(async {
                let r = driver
                    .http
                    .http
                    .get(format!("{}/status", driver.base))
                    .send()
                    .await;
                match r {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .ok()
                        .map(|v| v["value"]["ready"] == true),
                    Err(_) => None,
                }
                .unwrap_or(false)
            })
        });
        driver
    }

    /// A WebDriver command; returns its `value`.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .http
            .request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let a = self.http.send(req);
        assert_eq!(a.status, 200, "WebDriver {path}: {}", a.body);
        a.body["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where test artifacts go: `$CARGO_TARGET_DIR`, else the crate's `target/`.
fn artifact(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// In headless Chromium, while frames arrive with an anomaly injected on one feature,
/// the page's counters move, the feature appears in the last alerts and its cell is lit
/// on the heat map, and a screenshot is saved.
#[test]
fn a_real_browser_shows_the_counters_move_and_the_injected_anomaly() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let rt = s::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let h = serve(&rx, &dir);
    let sender = Sender::start(h.addr());
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let session = driver.call(
        reqwest::Method::POST,
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1500,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}})),
    );
    let id = session["sessionId"]
        .as_str()
        .expect("a session")
        .to_string();
    let at = |p: &str| format!("/session/{id}{p}");
    driver.call(
        reqwest::Method::POST,
        &at("/url"),
        Some(json!({"url": format!("http://{}/", h.addr())})),
    );
    let read = || {
        driver.call(
            reqwest::Method::POST,
            &at("/execute/sync"),
            Some(json!({"args": [], "script": "return {
                snapshots: Number(document.body.dataset.snapshots || 0),
                scored: Number(document.getElementById('scored').textContent),
                fps: document.getElementById('fps').textContent,
                status: document.getElementById('status').textContent,
                alerts: document.getElementById('alerts').innerText,
                heat: document.getElementById('heat').dataset.cells,
                per_cell: Number(document.getElementById('heat').dataset.perCell),
                model: document.getElementById('model').textContent,
            };"})),
        )
    };
    let (started, mut seen) = (Instant::now(), BTreeSet::new());
    let want = format!("#{ANOMALOUS} feature_{ANOMALOUS}");
    let page = loop {
        let page = read();
        seen.insert(page["scored"].as_u64().unwrap_or(0));
        let moved = seen.iter().filter(|&&n| n > 0).count() >= 2;
        // a few snapshots, so that the screenshot's charts have lines
        if moved
            && page["snapshots"].as_u64() >= Some(6)
            && page["alerts"].as_str().unwrap_or("").contains(&want)
            && page["heat"].as_str().is_some_and(|cells| {
                let cell = ANOMALOUS / page["per_cell"].as_u64().unwrap_or(1).max(1) as usize;
                cells.split(' ').any(|c| c == cell.to_string())
            })
        {
            break page;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the page never showed the anomaly with moving counters: {page:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(page["status"], "ready");
    assert!(
        page["model"].as_str().unwrap().contains("400 features"),
        "{page}"
    );
    let png = driver.call(reqwest::Method::GET, &at("/screenshot"), None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().expect("base64 PNG"))
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifact("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    println!("dashboard screenshot: {}", path.display());
    eprintln!("dashboard screenshot: {}", path.display());
    driver.call(reqwest::Method::DELETE, &at(""), None);
    drop(sender);
    h.shutdown().unwrap();
}

/// A viewer still connected when the server shuts down sees its event stream end, and
/// the shutdown drains normally instead of waiting for the viewer to leave.
#[test]
fn a_viewer_does_not_hold_up_shutdown() {
    let rt = s::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let h = serve(&rx, &dir);
    let addr = h.addr();
    let (first, got_first) = std::sync::mpsc::channel();
    let viewer = std::thread::spawn(move || {
        let client = Client::new();
        client.rt.block_on(async {
            let mut resp = client
                .http
                .get(format!("http://{addr}/events"))
                .send()
                .await
                .unwrap();
            let mut chunks = 0;
            loop {
                match tokio::time::timeout(PATIENCE, resp.chunk()).await {
                    Ok(Ok(Some(_))) => {
                        chunks += 1;
                        let _ = first.send(());
                    }
                    Ok(Ok(None)) => return Ok(chunks),
                    Ok(Err(e)) => return Err(format!("the stream broke: {e}")),
                    Err(_) => return Err("the stream neither ended nor sent".to_string()),
                }
            }
        })
    });
    got_first.recv_timeout(PATIENCE).expect("a first snapshot");
    let report = h.shutdown().unwrap();
    assert_eq!(report.http.accepted, 0);
    let chunks = viewer
        .join()
        .unwrap()
        .expect("the event stream ends cleanly");
    assert!(chunks >= 1);
}

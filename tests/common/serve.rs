//! A `serve` on loopback for the HTTP tests: an alert receiver that answers like the
//! NestJS client, a client that posts like it, the test model and config.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tidewatch::model::Model;
use tidewatch::runtime::SinkSpec;
use tidewatch::server::{self, ModelSpec, ServeConfig, ServerHandle};
use tidewatch::sinks::alert::{check_like_client, Refusal};
use tidewatch::sinks::webhook::{WebhookConfig, CLIENT_BODY_LIMIT};
use tidewatch::types::FrameResult;
use warp::Filter;

/// Generous: only failures wait this long.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `cond` until it holds; panics with `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How the test receiver answers.
#[derive(Clone, Copy)]
pub enum Mode {
    /// Like the NestJS client: 413 past its body limit, 500 without JSON content type
    /// or required fields, else 201.
    Client { limit: usize },
    /// Always 500.
    Fail500,
    /// Always 400.
    Fail400,
    /// 429 with `Retry-After: {retry_after}` to the first `refusals` attempts, then like
    /// the NestJS client with its body limit.
    Throttle {
        refusals: usize,
        retry_after: &'static str,
    },
}

/// Each attempt's `Idempotency-Key` header (if any) and when it came.
pub type Attempts = Arc<Mutex<Vec<(Option<String>, Instant)>>>;

/// An alert receiver on loopback.
pub struct Receiver {
    pub addr: SocketAddr,
    pub alerts: Arc<Mutex<Vec<Value>>>,
    pub attempts: Arc<AtomicUsize>,
    /// Every attempt's `Idempotency-Key` header (if any) and when it came, in order.
    pub keys: Attempts,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    pub fn start(rt: &tokio::runtime::Runtime, mode: Mode) -> Receiver {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        Receiver::on(rt, listener, mode)
    }

    pub fn on(
        rt: &tokio::runtime::Runtime,
        listener: tokio::net::TcpListener,
        mode: Mode,
    ) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let alerts = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let (a, n, k) = (
            Arc::clone(&alerts),
            Arc::clone(&attempts),
            Arc::clone(&keys),
        );
        let route = warp::path!("api" / "v1" / "alert")
            .and(warp::post())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let before = n.fetch_add(1, Ordering::SeqCst);
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                k.lock().unwrap().push((key, Instant::now()));
                let (status, reply, retry_after) = match mode {
                    Mode::Throttle {
                        refusals,
                        retry_after,
                    } if before < refusals => (
                        warp::http::StatusCode::TOO_MANY_REQUESTS,
                        serde_json::json!({"error": "slow down"}),
                        retry_after,
                    ),
                    _ => {
                        let (status, reply) = answer(mode, &headers, &body, &a);
                        (status, reply, "")
                    }
                };
                let reply = warp::reply::with_status(warp::reply::json(&reply), status);
                warp::reply::with_header(reply, "retry-after", retry_after)
            });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async {
                    let _ = stopped.await;
                })
                .run(),
        );
        Receiver {
            addr,
            alerts,
            attempts,
            keys,
            _stop: stop,
        }
    }

    /// A receiver on loopback that answers like the NestJS client, with its body limit.
    pub fn like_client(rt: &tokio::runtime::Runtime) -> Receiver {
        Receiver::start(
            rt,
            Mode::Client {
                limit: CLIENT_BODY_LIMIT,
            },
        )
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn alerts(&self) -> Vec<Value> {
        self.alerts.lock().unwrap().clone()
    }
}

/// The NestJS client's checks, as CONTRACT.md describes them.
pub fn answer(
    mode: Mode,
    headers: &warp::http::HeaderMap,
    body: &[u8],
    alerts: &Mutex<Vec<Value>>,
) -> (warp::http::StatusCode, Value) {
    use warp::http::StatusCode;
    let limit = match mode {
        Mode::Fail500 => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "down"}),
            )
        }
        Mode::Fail400 => return (StatusCode::BAD_REQUEST, serde_json::json!({"error": "no"})),
        Mode::Client { limit } => limit,
        Mode::Throttle { .. } => CLIENT_BODY_LIMIT,
    };
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    let v = match check_like_client(content_type, body, limit) {
        Ok(v) => v,
        Err(Refusal::TooLarge) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": "too large"}),
            )
        }
        Err(Refusal::Invalid) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "invalid"}),
            )
        }
    };
    alerts.lock().unwrap().push(v);
    (StatusCode::CREATED, serde_json::json!({"status": "ok"}))
}

/// Verdicts seen by worker 0's hook.
pub type Verdicts = Arc<Mutex<Vec<FrameResult>>>;

/// A test model of `f` features, window 1 (every accepted frame gets a verdict).
pub fn model(f: usize) -> Arc<Model> {
    Arc::new(super::random_rff_model(f, 1, 11))
}

/// Loopback serve config: every frame anomalous (threshold far below any score), fast
/// retries, alerts to `receiver`, verdicts collected.
pub fn config(
    model: Arc<Model>,
    alert_base: &str,
    dir: &tempfile::TempDir,
) -> (ServeConfig, Verdicts) {
    let verdicts: Verdicts = Arc::default();
    let v = Arc::clone(&verdicts);
    let mut c = ServeConfig::new(ModelSpec::Loaded(model));
    c.addr = "127.0.0.1:0".parse().unwrap();
    c.settings.threshold = Some(-1e30);
    c.webhook = Some(WebhookConfig {
        url: tidewatch::sinks::webhook::join_url(alert_base, "/api/v1/alert"),
        timeout: Duration::from_secs(5),
        max_retries: 3,
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        dead_letter: dir.path().join("dead.jsonl"),
        drain_timeout: Duration::from_secs(20),
        ..WebhookConfig::default()
    });
    c.sinks = SinkSpec {
        on_result: Some(Arc::new(move |r: &FrameResult| {
            v.lock().unwrap().push(r.clone())
        })),
        ..SinkSpec::default()
    };
    (c, verdicts)
}

pub fn start(c: ServeConfig) -> ServerHandle {
    let h = server::start(c).unwrap();
    h.wait_ready(PATIENCE).unwrap();
    h
}

/// A frame as the NestJS client writes it: compact JSON, keys in index order.
pub fn frame_json(n: usize, seed: u64, extra: &str) -> String {
    let mut r = super::Lcg(seed);
    let mut s = String::with_capacity(n * 32);
    s.push('{');
    s.push_str(extra);
    s.push_str("\"data\":{");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "\"feature_{i}\":{}",
            (r.next() as f64 + 1.0) / 2.0
        ));
    }
    s.push_str("}}");
    s
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An HTTP client on the test runtime.
pub struct Client {
    pub rt: tokio::runtime::Runtime,
    pub http: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    pub fn new() -> Client {
        Client {
            rt: runtime(),
            http: reqwest::Client::new(),
        }
    }

    /// POSTs `body` to /data-enqueue the way the NestJS client does (form content type,
    /// no Content-Encoding), with any `headers` added.
    pub fn enqueue(&self, addr: SocketAddr, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
        let mut req = self
            .http
            .post(format!("http://{addr}/data-enqueue"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req)
    }

    /// GETs `path` and returns its status and text body (for non-JSON answers).
    pub fn get_text(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        self.rt.block_on(async {
            let resp = self
                .http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .expect("the server answers");
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    }

    pub fn get(&self, addr: SocketAddr, path: &str) -> Answer {
        self.send(self.http.get(format!("http://{addr}{path}")))
    }

    pub fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        self.rt.block_on(async {
            let resp = req.send().await.expect("the server answers");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {bytes:?}"));
            Answer {
                status,
                headers,
                body,
            }
        })
    }
}

pub fn dead_letters(dir: &tempfile::TempDir) -> Vec<Value> {
    let path: PathBuf = dir.path().join("dead.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sends frames of `f` features (seeds `seed`, `seed + 1`, ...) to `addrs` in turn from
/// another thread, and runs `change` once `before` of them were accepted, while the
/// frames keep coming; the sender stops `after` frames after `change` returned. Returns
/// the seq of every frame sent (each must be accepted), in the order sent, and what
/// `change` returned: frames in flight on both sides of a run-time change.
pub fn send_around<T>(
    addrs: &[SocketAddr],
    f: usize,
    seed: u64,
    (before, after): (usize, usize),
    change: impl FnOnce() -> T,
) -> (Vec<u64>, T) {
    let sent = AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let client = Client::new();
            let mut seqs = Vec::new();
            let mut left = after;
            for i in 0.. {
                if done.load(Ordering::Acquire) {
                    if left == 0 {
                        break;
                    }
                    left -= 1;
                }
                let addr = addrs[i % addrs.len()];
                let a = client.enqueue(addr, frame_json(f, seed + i as u64, "").into_bytes(), &[]);
                assert_eq!(a.status, 202, "frame {i}: {:?}", a.body);
                seqs.push(a.body["seq"].as_u64().expect("the answer's seq"));
                sent.fetch_add(1, Ordering::Release);
            }
            seqs
        });
        wait_until("frames before the change", || {
            sent.load(Ordering::Acquire) >= before
        });
        let changed = change();
        done.store(true, Ordering::Release);
        (sender.join().unwrap(), changed)
    })
}

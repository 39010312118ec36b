//! The admin routes over real HTTP on loopback: they exist only with a token and answer
//! 401 without it; a threshold, mutes and a new model take effect on the next frames at
//! run time, and a model swap loses no frame and no window; a model that does not fit is
//! refused and the old one keeps scoring. And SIGHUP reloads a real `serve`'s model.

mod common;

use std::time::Duration;

use common::serve::{self as s, Client, Receiver, PATIENCE};
use common::shifted;
use serde_json::{json, Value};
use tidewatch::server::{ModelSpec, ServeConfig};

const TOKEN: &str = "s3cret-token";
const F: usize = 8;

fn with_admin(mut c: ServeConfig) -> ServeConfig {
    c.admin_token = Some(TOKEN.into());
    c
}

fn admin(
    client: &Client,
    method: reqwest::Method,
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> s::Answer {
    let mut req = client
        .http
        .request(method, format!("http://{addr}{path}"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    client.send(req)
}

/// Sends one frame and waits for its verdict; returns its anomalous features.
fn verdict_of_next_frame(
    client: &Client,
    addr: std::net::SocketAddr,
    verdicts: &s::Verdicts,
    seed: u64,
) -> Vec<u32> {
    let before = verdicts.lock().unwrap().len();
    let a = client.enqueue(addr, s::frame_json(F, seed, "").into_bytes(), &[]);
    assert_eq!(a.status, 202, "{:?}", a.body);
    s::wait_until("the frame's verdict", || {
        verdicts.lock().unwrap().len() > before
    });
    let v = verdicts.lock().unwrap();
    v[before].hits.iter().map(|h| h.feature).collect()
}

/// Without a configured token the routes do not exist (404); with one, a request without
/// it or with another gets 401, and one with it gets through.
#[test]
fn admin_routes_exist_only_with_a_token_and_need_it() {
    let rt = s::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let (c, _) = s::config(s::model(F), &rx.base_url(), &dir);
    let h = s::start(c.clone());
    let a = admin(
        &client,
        reqwest::Method::PUT,
        h.addr(),
        "/admin/threshold",
        Some(TOKEN),
        json!({"threshold": 1.0}),
    );
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("not_found"))
    );
    h.shutdown().unwrap();

    let h = s::start(with_admin(c));
    for token in [None, Some("wrong"), Some("s3cret-token-but-longer")] {
        let a = admin(
            &client,
            reqwest::Method::PUT,
            h.addr(),
            "/admin/threshold",
            token,
            json!({"threshold": 1.0}),
        );
        assert_eq!(a.status, 401, "token {token:?}: {:?}", a.body);
        assert_eq!(a.body["error"], "unauthorized");
    }
    let ready = client.get(h.addr(), "/health/ready").body;
    assert_eq!(ready["controls"]["version"], 0, "nothing changed: {ready}");
    let a = admin(
        &client,
        reqwest::Method::PUT,
        h.addr(),
        "/admin/threshold",
        Some(TOKEN),
        json!({"threshold": 1.0}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let a = admin(
        &client,
        reqwest::Method::PUT,
        h.addr(),
        "/admin/threshold",
        Some(TOKEN),
        json!({"limit": 1.0}),
    );
    assert_eq!(a.status, 400, "a body it does not take: {:?}", a.body);
    h.shutdown().unwrap();
}

/// A frame that alerted on every feature alerts on none once the threshold is raised, and
/// again on all once it is lowered; muted features stop alerting until unmuted. Each
/// change shows on /health/ready.
#[test]
fn threshold_and_mutes_change_the_next_verdicts() {
    let rt = s::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let (c, verdicts) = s::config(s::model(F), &rx.base_url(), &dir);
    let h = s::start(with_admin(c));
    let addr = h.addr();
    let all: Vec<u32> = (0..F as u32).collect();
    assert_eq!(verdict_of_next_frame(&client, addr, &verdicts, 1), all);

    let put = |path: &str, body: Value| {
        let a = admin(&client, reqwest::Method::PUT, addr, path, Some(TOKEN), body);
        assert_eq!(a.status, 200, "{path}: {:?}", a.body);
    };
    put("/admin/threshold", json!({"threshold": 1000.0}));
    assert_eq!(
        verdict_of_next_frame(&client, addr, &verdicts, 1),
        Vec::<u32>::new()
    );
    let ready = client.get(addr, "/health/ready").body;
    assert_eq!(ready["model"]["threshold"], 1000.0, "{ready}");

    put("/admin/threshold", json!({"threshold": -1000.0}));
    assert_eq!(verdict_of_next_frame(&client, addr, &verdicts, 1), all);

    put("/admin/mutes", json!({"features": [5, 2]}));
    let heard = verdict_of_next_frame(&client, addr, &verdicts, 1);
    assert_eq!(heard, vec![0, 1, 3, 4, 6, 7]);
    let ready = client.get(addr, "/health/ready").body;
    assert_eq!(ready["controls"]["muted"], json!([2, 5]), "{ready}");
    assert_eq!(ready["controls"]["version"], 3, "{ready}");

    let a = admin(
        &client,
        reqwest::Method::PUT,
        addr,
        "/admin/mutes",
        Some(TOKEN),
        json!({"features": [F]}),
    );
    assert_eq!(a.status, 400, "no such feature: {:?}", a.body);
    let a = admin(
        &client,
        reqwest::Method::DELETE,
        addr,
        "/admin/mutes",
        Some(TOKEN),
        json!({}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(verdict_of_next_frame(&client, addr, &verdicts, 1), all);
    h.shutdown().unwrap();
}

/// Frames keep arriving while `POST /admin/model` swaps a model that alerts on everything
/// for one that alerts on nothing: every accepted frame gets exactly one verdict (none
/// lost, none twice), the windows are not refilled (a window of 3 leaves only the first
/// two frames without a verdict), verdicts switch once from the old model to the new, and
/// /health/ready names the new model. A model with other features is refused with 400
/// and the new one keeps scoring.
#[test]
fn a_model_swap_loses_no_frame_and_a_misfit_is_refused() {
    let rt = s::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let base = common::random_rff_model(F, 3, 11);
    let (loud, quiet, misfit) = (
        dir.path().join("loud"),
        dir.path().join("quiet"),
        dir.path().join("misfit"),
    );
    shifted(&base, -1e6).save(&loud).unwrap();
    shifted(&base, 1e6).save(&quiet).unwrap();
    common::random_rff_model(F + 1, 3, 11)
        .save(&misfit)
        .unwrap();
    let client = Client::new();
    let (mut c, verdicts) = s::config(s::model(F), &rx.base_url(), &dir);
    c.model = ModelSpec::Dir(loud.clone());
    c.settings.threshold = None;
    c.webhook = None;
    let h = s::start(with_admin(c));
    let addr = h.addr();

    let (mut accepted, mut swapped_after) = (0usize, None);
    for i in 0..120u64 {
        let a = client.enqueue(addr, s::frame_json(F, i, "").into_bytes(), &[]);
        assert_eq!(a.status, 202, "{:?}", a.body);
        accepted += 1;
        if i == 60 {
            // every frame so far scored by the old model, so the switch is exact
            s::wait_until("the verdicts before the swap", || {
                verdicts.lock().unwrap().len() == accepted - 2
            });
            let a = admin(
                &client,
                reqwest::Method::POST,
                addr,
                "/admin/model",
                Some(TOKEN),
                json!({ "path": quiet }),
            );
            assert_eq!(a.status, 200, "{:?}", a.body);
            assert_eq!(a.body["controls"]["model_version"], 1);
            swapped_after = Some(accepted);
        }
    }
    let a = admin(
        &client,
        reqwest::Method::POST,
        addr,
        "/admin/model",
        Some(TOKEN),
        json!({ "path": misfit }),
    );
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(
        a.body["detail"].as_str().unwrap().contains("9 features"),
        "{:?}",
        a.body
    );
    let a = admin(
        &client,
        reqwest::Method::POST,
        addr,
        "/admin/model",
        Some(TOKEN),
        json!({ "path": dir.path().join("nowhere") }),
    );
    assert_eq!(a.status, 400, "{:?}", a.body);
    for i in 0..5u64 {
        let a = client.enqueue(addr, s::frame_json(F, 1000 + i, "").into_bytes(), &[]);
        assert_eq!(a.status, 202);
        accepted += 1;
    }
    s::wait_until("every verdict", || {
        verdicts.lock().unwrap().len() >= accepted - 2
    });
    let ready = client.get(addr, "/health/ready").body;
    assert_eq!(ready["model"]["version"], 1, "{ready}");
    assert_eq!(
        ready["model"]["path"].as_str(),
        Some(quiet.display().to_string().as_str())
    );
    assert!(ready["model"]["reloaded_at_ms"].is_i64(), "{ready}");
    let report = h.shutdown().unwrap();
    assert_eq!(report.http.accepted as usize, accepted);
    let v = verdicts.lock().unwrap().clone();
    assert_eq!(
        v.len(),
        accepted - 2,
        "one verdict per frame that closes a window"
    );
    let seqs: Vec<u64> = v.iter().map(|r| r.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), v.len(), "no frame scored twice");
    let loud_frames: Vec<bool> = v.iter().map(|r| r.hits.len() == F).collect();
    let quiet_frames = v.iter().filter(|r| r.hits.is_empty()).count();
    assert_eq!(
        loud_frames.iter().filter(|&&l| l).count() + quiet_frames,
        v.len(),
        "each verdict is wholly one model's"
    );
    let switch = loud_frames
        .iter()
        .position(|l| !l)
        .expect("the new model scored");
    assert!(
        loud_frames[switch..].iter().all(|l| !l),
        "verdicts switch once"
    );
    let swapped_after = swapped_after.unwrap();
    assert_eq!(
        switch,
        swapped_after - 2,
        "the old model scored every frame before the swap, the new one every frame after"
    );
}

/// With two workers, frames sent while a model that alerts on every feature is swapped
/// for one that alerts on none each get a verdict wholly of one model, and the verdicts
/// switch at one frame: no frame has some of its features scored by the old model and
/// others by the new, though each worker scores its own features.
#[test]
fn with_two_workers_every_frame_is_scored_wholly_by_one_model() {
    let rt = s::runtime();
    let rx = Receiver::like_client(&rt);
    let dir = tempfile::tempdir().unwrap();
    let base = common::random_rff_model(F, 1, 11);
    let (loud, quiet) = (dir.path().join("loud"), dir.path().join("quiet"));
    shifted(&base, -1e6).save(&loud).unwrap();
    shifted(&base, 1e6).save(&quiet).unwrap();
    let client = Client::new();
    let (mut c, verdicts) = s::config(s::model(F), &rx.base_url(), &dir);
    c.model = ModelSpec::Dir(loud);
    c.settings.threshold = None;
    c.webhook = None;
    c.cluster.threads = 2;
    let h = s::start(with_admin(c));
    let addr = h.addr();
    let (mut seqs, answer) = s::send_around(&[addr], F, 0, (20, 20), || {
        admin(
            &client,
            reqwest::Method::POST,
            addr,
            "/admin/model",
            Some(TOKEN),
            json!({ "path": quiet }),
        )
    });
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["controls"]["model_version"], 1);
    s::wait_until("every verdict", || {
        verdicts.lock().unwrap().len() >= seqs.len()
    });
    h.shutdown().unwrap();
    let mut v = verdicts.lock().unwrap().clone();
    v.sort_by_key(|r| r.seq);
    seqs.sort_unstable();
    assert_eq!(v.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
    let old: Vec<bool> = v
        .iter()
        .map(|r| {
            assert!(
                r.hits.len() == F || r.hits.is_empty(),
                "frame {} has {} of its {F} features anomalous: scored partly by each model",
                r.seq,
                r.hits.len()
            );
            r.hits.len() == F
        })
        .collect();
    let switch = old.iter().position(|o| !o).expect("the new model scored");
    assert!(switch > 0, "the old model scored the first frames");
    assert!(
        old[switch..].iter().all(|o| !o),
        "the verdicts switch models at one frame: {old:?}"
    );
}

/// A real `serve` given a model directory reloads it on SIGHUP: after the directory's
/// model is replaced, /health/ready names model version 1 and the server keeps scoring.
#[cfg(unix)]
#[test]
fn sighup_reloads_the_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let base = common::random_rff_model(F, 1, 11);
    shifted(&base, -1e6).save(&model_dir).unwrap();
    let mut child = common::tidewatch(dir.path())
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-webhook",
        ])
        .arg("--model")
        .arg(&model_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (addr, _stdout) = common::ready_addr(&mut child);
    let client = Client::new();
    shifted(&base, 1e6).save(&model_dir).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let ready = client.get(addr, "/health/ready").body;
        if ready["model"]["version"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reload: {ready}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = client.enqueue(addr, s::frame_json(F, 1, "").into_bytes(), &[]);
    assert_eq!(a.status, 202);
    common::sigterm(&child);
    assert!(child.wait().unwrap().success());
}

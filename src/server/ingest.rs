//! `POST /data-enqueue`: read the body (bounded), inflate and decode it off the async
//! threads, number the frame and queue it for worker 0, all without ever waiting for the
//! dataflow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::Reply;

use super::{error_reply, Phase, ServeConfig, Shared};
use crate::clock;
use crate::model::{FeatureIndex, Model};
use crate::sources::http::{IngestQueue, IngestSource, Refusal};
use crate::sources::{decode_body, DecodeError, KeyPolicy};
use crate::types::{Frame, FrameMeta, Seq};

/// What the client is told to wait before sending again after a 429 or 503, in seconds.
const RETRY_AFTER_S: &str = "1";

/// The ingest side of the queue, shared by all handlers: the limits on bodies and
/// decoding, around the queue itself (a source, in `sources/http.rs`).
pub(super) struct Ingress {
    index: Arc<FeatureIndex>,
    policy: KeyPolicy,
    max_body: usize,
    max_inflated: usize,
    /// Numbers frames and queues them for worker 0; closed when `Ingress` is dropped.
    frames: IngestQueue,
    /// Bodies handed to the decoding threads and not yet answered, at most: bounds the
    /// bodies held for decoding, while keeping the next body ready for each thread.
    decode_permits: Arc<Semaphore>,
    /// The decoding threads' queue.
    decoders: std::sync::mpsc::Sender<DecodeJob>,
    /// Bytes of request bodies held at once (being received or decoded), taken as each
    /// chunk arrives: this bounds the memory of uploads however many clients connect, and,
    /// unlike a count of bodies, a client that trickles holds almost none of it. It is
    /// separate from the queue's slots, so a full upload buffer and a full queue are told
    /// apart.
    upload_bytes: Arc<Semaphore>,
    upload_budget: usize,
    /// The slowest a body may arrive, after [`BODY_GRACE`].
    min_body_rate: u64,
}

/// How long a client may take to send one body, however fast it sends.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Before the minimum body rate applies: covers a connection's slow start and a client
/// that sends its headers before its body is ready.
const BODY_GRACE: Duration = Duration::from_secs(2);

impl Ingress {
    pub(super) fn new(model: &Model, config: &ServeConfig) -> (Arc<Ingress>, IngestSource) {
        let processes = config.cluster.processes.max(1);
        let (frames, source) = if config.ingest_everywhere && processes > 1 {
            IngestQueue::clocked(config.queue_max_size, config.cluster.process, processes)
        } else {
            IngestQueue::new(config.queue_max_size)
        };
        let threads = config.decode_concurrency.max(1);
        let ingress = Arc::new(Ingress {
            index: Arc::new(model.feature_index()),
            policy: config.key_policy,
            max_body: config.max_body_bytes,
            max_inflated: config.max_inflated_bytes,
            frames,
            decode_permits: Arc::new(Semaphore::new(2 * threads)),
            decoders: spawn_decoders(threads),
            upload_bytes: Arc::new(Semaphore::new(config.upload_buffer_bytes.max(1))),
            upload_budget: config.upload_buffer_bytes.max(1),
            min_body_rate: config.min_body_rate,
        });
        (ingress, source)
    }

    /// Closes the queue: later frames are refused (503); the dataflow finishes what was
    /// queued and then sees the end of its input.
    pub(super) fn close(&self) {
        self.frames.close();
    }

    pub(super) fn capacity(&self) -> usize {
        self.frames.capacity()
    }

    pub(super) fn queued(&self) -> usize {
        self.frames.queued()
    }

    fn is_full(&self) -> bool {
        self.frames.is_full()
    }
}

/// Marks a handler gone when dropped, so that the decoding thread does not queue a frame
/// whose client will never hear that it was accepted (and may send it again).
struct Waiting(Arc<AtomicBool>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The handler of `POST /data-enqueue`.
pub(super) async fn enqueue<S, B>(
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: S,
) -> warp::reply::Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let received_ms = clock::unix_ms();
    let received_us = clock::now_us();
    let mut body_read = false;
    let reply = match shared.phase() {
        Phase::Ready(ready) => {
            let ingress = Arc::clone(&ready.ingress);
            let at = (received_ms, received_us);
            accept(&ingress, &headers, body, at, &mut body_read).await
        }
        Phase::Loading => Err(unavailable("not ready: the model is loading")),
        Phase::Failed(why) => Err(unavailable(&format!("not ready: {why}"))),
        Phase::Stopping => Err(unavailable("shutting down")),
    };
    // Answered without reading the whole body: the server will close this connection,
    // so say so, or a keep-alive client may send its next frame on it and lose it.
    let reply = reply.map_err(|mut resp| {
        if !body_read {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    });
    let counters = &shared.http;
    match reply {
        Ok(seq) => {
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            let body = serde_json::json!({
                "status": "ok",
                "message": "Data enqueued successfully",
                "seq": seq,
                "run_id": clock::run_id(),
            });
            warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response()
        }
        Err(resp) => {
            if let Some(r) = resp.extensions().get::<super::RefusalReason>() {
                shared.stats.refused(r.0);
            }
            let counter = match resp.status() {
                StatusCode::TOO_MANY_REQUESTS => &counters.throttled,
                StatusCode::SERVICE_UNAVAILABLE => &counters.unavailable,
                _ => &counters.rejected,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            resp
        }
    }
}

async fn accept<S, B>(
    ingress: &Arc<Ingress>,
    headers: &HeaderMap,
    body: S,
    (received_ms, received_us): (i64, u64),
    body_read: &mut bool,
) -> Result<Seq, warp::reply::Response>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    check_encoding(headers)?;
    // A full queue is refused before the body is read and before it is decoded, the
    // costly parts; `enqueue` checks again, for certain.
    if ingress.is_full() {
        return Err(queue_full(ingress));
    }
    // Held until the frame is queued: the body's bytes are in memory until then.
    let (body, _upload_permit) = read_body(ingress, headers, body).await?;
    *body_read = true;
    if ingress.is_full() {
        return Err(queue_full(ingress));
    }
    let permit = Arc::clone(&ingress.decode_permits)
        .acquire_owned()
        .await
        .expect("the decode semaphore is never closed");
    let gone = Arc::new(AtomicBool::new(false));
    let _waiting = Waiting(Arc::clone(&gone));
    let (reply, answer) = oneshot::channel();
    let job = DecodeJob {
        body,
        at: (received_ms, received_us),
        gone,
        ingress: Arc::clone(ingress),
        reply,
        _permit: permit,
    };
    if ingress.decoders.send(job).is_err() {
        return Err(unavailable("shutting down"));
    }
    let queued = answer.await;
    let queued = match queued {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, kind = e.kind(), "frame refused");
            let status = match e {
                DecodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return Err(error_reply(status, e.kind(), &e.to_string()));
        }
        Err(_) => {
            tracing::error!("decoding a frame panicked");
            return Err(error_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "decoding the frame failed unexpectedly",
            ));
        }
    };
    match queued {
        Some(Ok(seq)) => Ok(seq),
        Some(Err(Refusal::Full)) => Err(queue_full(ingress)),
        Some(Err(Refusal::Closed)) | None => Err(unavailable("shutting down")),
    }
}

/// gzip is recognised by its magic bytes whatever the headers say; an encoding we cannot
/// undo is refused rather than misread as JSON.
#[allow(clippy::result_large_err)]
fn check_encoding(headers: &HeaderMap) -> Result<(), warp::reply::Response> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !(coding.eq_ignore_ascii_case("gzip")
                || coding.eq_ignore_ascii_case("x-gzip")
                || coding.eq_ignore_ascii_case("identity"))
            {
                return Err(error_reply(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_encoding",
                    &format!("Content-Encoding {coding:?} is not supported (use gzip or none)"),
                ));
            }
        }
    }
    Ok(())
}

/// The whole body, refused with 413 as soon as it is known to exceed the size limit (from
/// Content-Length, or while reading a body sent without one), with 429 when the upload
/// buffer has no room for the next chunk, and with 408 when it arrives slower than the
/// minimum rate or takes longer than [`BODY_TIMEOUT`]. Returns the bytes and their share of
/// the upload buffer.
async fn read_body<S, B>(
    ingress: &Ingress,
    headers: &HeaderMap,
    body: S,
) -> Result<(BytesMut, Option<OwnedSemaphorePermit>), warp::reply::Response>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let limit = ingress.max_body;
    let too_large = || {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let started = tokio::time::Instant::now();
    let mut out = BytesMut::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut body = std::pin::pin!(body);
    loop {
        let deadline = started + body_deadline(out.len(), ingress.min_body_rate);
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                return Err(too_slow(
                    out.len(),
                    started.elapsed(),
                    ingress.min_body_rate,
                ))
            }
        };
        let mut chunk = chunk.map_err(|e| {
            error_reply(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("reading the body failed: {e}"),
            )
        })?;
        let n = chunk.remaining();
        if out.len() + n > limit {
            return Err(too_large());
        }
        // Room for this chunk in the upload buffer, or a 429 that names that buffer.
        let room = u32::try_from(n).ok().and_then(|n| {
            Arc::clone(&ingress.upload_bytes)
                .try_acquire_many_owned(n)
                .ok()
        });
        match (room, held.as_mut()) {
            (Some(p), Some(h)) => h.merge(p),
            (Some(p), None) => held = Some(p),
            (None, _) => return Err(uploads_full(ingress)),
        }
        if out.capacity() == 0 {
            out.reserve(declared.map_or(n, |d| d as usize));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let k = part.len();
            chunk.advance(k);
        }
    }
    Ok((out, held))
}

/// How long after the body's start the byte after the first `received` may arrive: a
/// grace period, then at least `rate` bytes a second on average, and never past
/// [`BODY_TIMEOUT`] in all.
fn body_deadline(received: usize, rate: u64) -> Duration {
    let at_rate = if rate == 0 {
        BODY_TIMEOUT
    } else {
        BODY_GRACE + Duration::from_secs_f64(received as f64 / rate as f64)
    };
    at_rate.min(BODY_TIMEOUT)
}

fn too_slow(received: usize, took: Duration, rate: u64) -> warp::reply::Response {
    let detail = if body_deadline(received, rate) >= BODY_TIMEOUT {
        format!(
            "the body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        )
    } else {
        format!(
            "the body arrives too slowly: {received} bytes in {:.1} s, under the minimum of {rate} bytes/s",
            took.as_secs_f64()
        )
    };
    error_reply(StatusCode::REQUEST_TIMEOUT, "body_timeout", &detail)
}

fn queue_full(ingress: &Ingress) -> warp::reply::Response {
    let mut resp = error_reply(
        StatusCode::TOO_MANY_REQUESTS,
        "queue_full",
        &format!(
            "the queue is full ({} of {} frames waiting to be scored); retry later",
            ingress.queued(),
            ingress.capacity()
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
    resp
}

/// The upload buffer is full: other clients' bodies hold it, not this client's.
fn uploads_full(ingress: &Ingress) -> warp::reply::Response {
    let mut resp = error_reply(
        StatusCode::TOO_MANY_REQUESTS,
        "uploads_full",
        &format!(
            "too many request bodies are being received at once ({} bytes buffered at most); retry later",
            ingress.upload_budget
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
    resp
}

fn unavailable(detail: &str) -> warp::reply::Response {
    let mut resp = error_reply(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
    resp
}

/// A body for the decoding threads, and where its answer goes.
struct DecodeJob {
    body: BytesMut,
    at: (i64, u64),
    /// Set when the handler is gone: the frame is then not queued.
    gone: Arc<AtomicBool>,
    ingress: Arc<Ingress>,
    reply: oneshot::Sender<Decoding>,
    /// Released when the job is done, not when its answer is read.
    _permit: OwnedSemaphorePermit,
}

/// A decoding thread's answer: the body did not decode, or the frame was not queued
/// because its handler had gone (`None`), or what the queue said.
type Decoding = Result<Option<Result<Seq, Refusal>>, DecodeError>;

/// Threads that decode bodies from one queue, each taking the next body the moment it is
/// done with the last. Unlike a blocking task per body, no hop through the async runtime
/// lies between two decodes, so under load a decoder never waits for a handler to be
/// polled before it starts the next body. They end when the queue's sender (in the
/// `Ingress`) is dropped.
fn spawn_decoders(threads: usize) -> std::sync::mpsc::Sender<DecodeJob> {
    let (tx, rx) = std::sync::mpsc::channel::<DecodeJob>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("tidewatch-decode-{i}"))
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for a job, never while decoding
                    // (in a `while let` the guard would live through the loop's body).
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = next else { return };
                    let reply =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_job(&job)));
                    match reply {
                        Ok(decoding) => {
                            let _ = job.reply.send(decoding);
                        }
                        // The handler sees its answer dropped and says 500; the thread
                        // goes on with the next body.
                        Err(_) => drop(job),
                    }
                }
            })
            .expect("spawning a decoding thread");
    }
    tx
}

/// Decodes a job's body and queues its frame, unless its handler has gone: a frame whose
/// client never hears that it was accepted (and may send it again) is not queued.
fn decode_job(job: &DecodeJob) -> Decoding {
    let ingress = &job.ingress;
    let (received_ms, received_us) = job.at;
    let mut values = Vec::with_capacity(ingress.index.len());
    let decoded = decode_body(
        &job.body,
        ingress.max_inflated,
        &ingress.index,
        ingress.policy,
        &mut values,
    )?;
    let frame = Frame {
        seq: 0,
        meta: FrameMeta {
            received_ms,
            event_ms: decoded.event_ms,
            id: decoded.id,
            source: 0,
            entity: decoded.entity,
            machine_id: decoded.machine_id,
            received_us,
            decoded_us: clock::now_us(),
            ..FrameMeta::default()
        },
        values,
    };
    if job.gone.load(Ordering::Relaxed) {
        return Ok(None);
    }
    Ok(Some(ingress.frames.enqueue(frame)))
}

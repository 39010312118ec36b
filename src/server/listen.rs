//! The accept loop: each connection served by hyper's HTTP/1 with the limits warp's own
//! server does not set, so that idle, slow and surplus connections cannot lock honest
//! clients out.
//!
//! - **Header timeout.** hyper starts its header-read timer whenever a connection waits
//!   for a request head: on a new connection and after each response. So one timeout
//!   closes both a connection that trickles its headers and an idle keep-alive connection.
//! - **Connection limit**, below the process's file-descriptor limit (raised to its hard
//!   limit at start). At the limit, the connection idle the longest (no request under way)
//!   is closed to make room; with none idle, the new connection gets a 503 at once.
//! - Errors a client causes (resets, timeouts, bad requests) are logged at DEBUG.
//!
//! Written against hyper directly because warp 0.4's `Server` exposes none of these
//! settings, and hyper-util's `GracefulShutdown` gives the same graceful stop warp has.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

/// File descriptors kept for everything that is not an HTTP connection: the model, logs,
/// the dead-letter file, Kafka and cluster sockets, the webhook's connections.
const FD_RESERVE: u64 = 256;

/// The most connections by default, however many descriptors the process may open: each
/// holds buffers and a task.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// How long a connection may take to send a request head, and may stay idle between
/// requests, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Longest wait for a complete request head, on a new connection or between requests.
    pub header_timeout: Duration,
    /// Connections open at once at most; lowered to fit the file-descriptor limit.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Connection counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Open now.
    pub open: AtomicU64,
    /// The limit in force.
    pub max: AtomicU64,
    /// Accepted since start.
    pub accepted: AtomicU64,
    /// Closed to make room for a new one (they had no request under way).
    pub evicted: AtomicU64,
    /// Refused with 503 at the limit, none being idle.
    pub refused: AtomicU64,
}

impl ConnectionCounters {
    /// The counts, for `/metrics`.
    pub fn snapshot(&self) -> crate::metrics::Connections {
        crate::metrics::Connections {
            open: self.open.load(Relaxed),
            max: self.max.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

/// Raises the soft limit on open files to the hard limit and returns the soft limit now in
/// force (`None` where it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        // rlim_t is u64 on Linux but not on every unix
        #[allow(clippy::unnecessary_cast)]
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// `wanted` connections, lowered so that they and [`FD_RESERVE`] fit in `fd_limit`.
pub fn fit_to_fds(wanted: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(fds) => {
            let room = fds.saturating_sub(FD_RESERVE).max(16);
            wanted
                .min(usize::try_from(room).unwrap_or(usize::MAX))
                .max(1)
        }
        None => wanted.max(1),
    }
}

/// One open connection, as the limit sees it.
struct Entry {
    /// Requests under way (set by [`Tracked`] around each request).
    busy: Arc<AtomicU64>,
    /// When its last request finished (or it opened).
    idle_since: Arc<Mutex<Instant>>,
    /// Closes it.
    close: Option<oneshot::Sender<()>>,
}

/// The open connections, so that the limit can close the one idle the longest.
#[derive(Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, Entry>,
}

impl Registry {
    /// Closes the connection idle the longest, if any is idle; true if one was.
    fn evict_idlest(&mut self) -> bool {
        let idlest = self
            .open
            .iter()
            .filter(|(_, e)| e.busy.load(Relaxed) == 0 && e.close.is_some())
            .min_by_key(|(_, e)| *e.idle_since.lock().unwrap_or_else(|p| p.into_inner()))
            .map(|(id, _)| *id);
        match idlest.and_then(|id| self.open.get_mut(&id)) {
            Some(entry) => {
                if let Some(close) = entry.close.take() {
                    let _ = close.send(());
                }
                true
            }
            None => false,
        }
    }
}

/// Serves `filter` on `listener` until `shutdown` resolves, then lets requests under way
/// finish (the caller bounds how long it waits for this future).
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    shutdown: impl Future<Output = ()>,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    counters.max.store(limits.max_connections as u64, Relaxed);
    let registry = Arc::new(Mutex::new(Registry::default()));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = registry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .evict_idlest();
                if evicted {
                    counters.evicted.fetch_add(1, Relaxed);
                }
                // An evicted connection gives its permit back as soon as its task sees
                // the signal: wait that long, no longer.
                let wait = if evicted { 500 } else { 0 };
                match tokio::time::timeout(
                    Duration::from_millis(wait),
                    Arc::clone(&permits).acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        counters.refused.fetch_add(1, Relaxed);
                        tokio::spawn(refuse(stream));
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let busy = Arc::new(AtomicU64::new(0));
        let idle_since = Arc::new(Mutex::new(Instant::now()));
        let (close, closed) = oneshot::channel();
        let id = {
            let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
            let id = reg.next;
            reg.next += 1;
            reg.open.insert(
                id,
                Entry {
                    busy: Arc::clone(&busy),
                    idle_since: Arc::clone(&idle_since),
                    close: Some(close),
                },
            );
            id
        };
        counters.accepted.fetch_add(1, Relaxed);
        counters.open.fetch_add(1, Relaxed);
        let service = Tracked {
            inner: warp::service(filter.clone()),
            busy,
            idle_since,
        };
        let service = hyper_util::service::TowerToHyperService::new(service);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let (registry, counters) = (Arc::clone(&registry), Arc::clone(&counters));
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                done = &mut conn => {
                    if let Err(e) = done {
                        connection_failed(&e);
                    }
                }
                // Evicted: it had no request under way, so dropping it loses nothing.
                _ = closed => {}
            }
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .open
                .remove(&id);
            counters.open.fetch_sub(1, Relaxed);
        });
    }
    // Stop accepting, then wait for the requests under way.
    drop(listener);
    graceful.shutdown().await;
}

/// A 503 for a connection over the limit, written without reading its request.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str =
        r#"{"detail":"too many connections are open; retry later","error":"too_many_connections"}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Out of file descriptors (or another resource): wait a little instead of spinning.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A connection that ended with an error: the client's doing (reset, timeout, garbage)
/// at DEBUG, anything else at WARN.
fn connection_failed(e: &hyper::Error) {
    let client_caused = e.is_incomplete_message()
        || e.is_timeout()
        || e.is_parse()
        || e.is_parse_too_large()
        || e.is_body_write_aborted()
        || e.is_closed()
        || e.is_canceled()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some();
    if client_caused {
        tracing::debug!(error = %e, "connection ended by the client");
    } else {
        tracing::warn!(error = %e, "connection error");
    }
}

/// The warp service, counting requests under way so the limit knows which connections
/// are idle.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    busy: Arc<AtomicU64>,
    idle_since: Arc<Mutex<Instant>>,
}

impl<S, B> tower_service::Service<hyper::Request<B>> for Tracked<S>
where
    S: tower_service::Service<hyper::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let guard = BusyGuard {
            busy: Arc::clone(&self.busy),
            idle_since: Arc::clone(&self.idle_since),
        };
        guard.busy.fetch_add(1, Relaxed);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            drop(guard);
            out
        })
    }
}

/// Marks a request finished however its future ends (completed or dropped).
struct BusyGuard {
    busy: Arc<AtomicU64>,
    idle_since: Arc<Mutex<Instant>>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.busy.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_fits_the_descriptors() {
        assert_eq!(fit_to_fds(10_000, Some(1024)), 768);
        assert_eq!(fit_to_fds(10_000, Some(1_048_576)), 10_000);
        assert_eq!(fit_to_fds(50, Some(1024)), 50);
        assert_eq!(fit_to_fds(10_000, Some(100)), 16);
        assert_eq!(fit_to_fds(10_000, None), 10_000);
    }
}

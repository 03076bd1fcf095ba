//! Admin HTTP server: health, readiness, Prometheus metrics, the query API and the
//! dashboard.
//!
//! Owns: the `sluice-admin` thread, which runs a tokio `current_thread` runtime and axum on
//! it, so nothing async runs on the ingest cores. The server only reads shared state
//! ([`AdminState`]); it never writes to what the cores own.
//!
//! ```text
//! GET /healthz   200 "ok" while the process serves HTTP at all
//! GET /readyz    200 "ready" | 503 "starting" | 503 "stopping" | 503 "storage" (writes fail)
//! GET /metrics   Prometheus text 0.0.4, or OpenMetrics 1.0.0 when Accept prefers it; built
//!                from crate::metrics at scrape time (exposition.rs)
//! GET /api/v1/windows, /api/v1/top   closed rows (query::Index) and open windows (asked
//!                of the shards), api.rs
//! GET /api/v1/stream   closed rows as server-sent events, api.rs
//! GET /api/v1/status   what the appliance does now, status.rs
//! GET /, /ui/NAME      the dashboard, built into the binary, dashboard/
//! ```
//!
//! Routes live in one function, [`router`]; a new endpoint is one more `.route(...)` there.
//! Handlers may use `anyhow`; an error becomes a 500 whose body is the error chain.
//! [`AdminServer::stop`] stops accepting, lets requests in flight finish for up to
//! [`SHUTDOWN_GRACE_MS`], then drops whatever is left and joins the thread.
//!
//! The server is bounded (connections, head and body size, header, idle and request
//! timeouts; see `server.rs` and [`AdminLimits`]), so slow or many clients cannot grow its
//! memory and `/metrics` keeps answering while they are connected.

#![forbid(unsafe_code)]

mod api;
mod auth;
mod dashboard;
pub mod exposition;
mod server;
mod status;

pub use api::QueryApi;
pub use server::AdminLimits;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

use crate::limits;
use crate::metrics::Metrics;

/// How long [`AdminServer::stop`] waits for requests in flight before closing them.
pub const SHUTDOWN_GRACE_MS: u64 = 2_000;

/// Binds the admin listener with a backlog of [`limits::ADMIN_LISTEN_BACKLOG`], so a burst of
/// connections waits in the kernel (not in memory of ours) instead of having its SYNs dropped.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does: a restart may bind while old connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(limits::ADMIN_LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// What the admin server reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// The query API's sources (`None`: its routes answer 503).
    pub query: Option<QueryApi>,
    /// The counters' newest samples, for the rates `/api/v1/status` gives.
    pub rates: Arc<std::sync::Mutex<status::Rates>>,
    /// `[admin] token`: required on every route but `/healthz` when set.
    pub token: Option<Arc<str>>,
    /// The alerts pending and firing now (`None`: no rules).
    pub alerts: Option<Arc<crate::alerts::notify::Board>>,
    /// The newest experiment comparisons (`None`: no experiments).
    pub experiments: Option<Arc<crate::experiments::board::Board>>,
}

impl AdminState {
    /// State serving `metrics`, without the query API.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        AdminState {
            metrics,
            query: None,
            rates: Arc::default(),
            token: None,
            alerts: None,
            experiments: None,
        }
    }
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set to `true` to stop; dropping it stops the server too.
    stop: watch::Sender<bool>,
    local_addr: SocketAddr,
}

impl AdminServer {
    /// Serves the admin API on `listener` from its own thread, within the default limits.
    pub fn start(
        listener: std::net::TcpListener,
        state: AdminState,
    ) -> std::io::Result<AdminServer> {
        AdminServer::start_with_limits(listener, state, AdminLimits::default())
    }

    /// Serves the admin API on `listener` from its own thread, within `limits`.
    pub fn start_with_limits(
        listener: std::net::TcpListener,
        state: AdminState,
        limits: AdminLimits,
    ) -> std::io::Result<AdminServer> {
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        // Registering the socket with the reactor needs the runtime's context.
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = watch::channel(false);
        let metrics = Arc::clone(&state.metrics);
        let rates = (Arc::clone(&state.metrics), Arc::clone(&state.rates));
        let app = server::limited(router(state), &limits);
        let thread = std::thread::Builder::new()
            .name("sluice-admin".into())
            .spawn(move || {
                runtime.spawn(status::sample_rates(rates.0, rates.1));
                runtime.block_on(server::serve(listener, app, limits, metrics, stopped));
                // Dropping the runtime here cancels connections still open after the grace.
            })?;
        tracing::info!(addr = %local_addr, "admin HTTP listening");
        Ok(AdminServer {
            thread: Some(thread),
            stop,
            local_addr,
        })
    }

    /// The address the server listens on (useful when it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        // An error means the thread is gone already; joining tells how it ended.
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("admin thread panicked");
        }
    }
}

/// Every route of the admin API.
pub fn router(state: AdminState) -> Router {
    let token = state.token.clone();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/windows", get(api::windows))
        .route("/api/v1/top", get(api::top))
        .route("/api/v1/stream", get(api::stream))
        .route("/api/v1/status", get(status::status))
        .route("/api/v1/alerts", get(api::alerts))
        .route("/api/v1/experiments", get(api::experiments))
        .route("/", get(dashboard::index))
        .route("/ui/{name}", get(dashboard::asset))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    let m = &state.metrics;
    if m.stopping.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if m.storage_failing() {
        // Writes fail (a full disk): input is held and senders wait; a balancer should
        // send elsewhere meanwhile.
        (StatusCode::SERVICE_UNAVAILABLE, "storage")
    } else if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, HandlerError> {
    use anyhow::Context as _;
    // Every Accept header, as one list; a value that is not text is passed over.
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let exposition = exposition::negotiate(&accept.join(","));
    let body = exposition::encode(&state.metrics, exposition).context("encoding metrics")?;
    let headers = [
        (header::CONTENT_TYPE, exposition.content_type()),
        // The page depends on Accept: a cache must not give one client's format to another.
        (header::VARY, "accept"),
    ];
    Ok((headers, body).into_response())
}

/// A handler failure: a 500 whose body is the error chain.
struct HandlerError(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError(e.into())
    }
}

impl IntoResponse for HandlerError {
    fn into_response(self) -> Response {
        tracing::warn!(error = format!("{:#}", self.0), "admin request failed");
        let body = format!("internal error: {:#}\n", self.0);
        (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ListenerInfo;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    fn start() -> (AdminServer, Arc<Metrics>) {
        start_limited(AdminLimits::default())
    }

    fn start_limited(limits: AdminLimits) -> (AdminServer, Arc<Metrics>) {
        let listeners = vec![ListenerInfo {
            name: "raw-tcp".into(),
            proto: "tcp",
            format: "raw",
            rejects: vec![crate::parse::Reject::TooLong],
        }];
        let metrics = Arc::new(Metrics::new(2, listeners));
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let state = AdminState::new(Arc::clone(&metrics));
        let server = AdminServer::start_with_limits(listener, state, limits).unwrap();
        (server, metrics)
    }

    /// `(status, headers, body)` of a GET, over a fresh connection.
    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        get_with(addr, path, "")
    }

    /// [`get`] with `extra` header lines (each ending in CRLF).
    fn get_with(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    #[test]
    fn health_readiness_and_metrics_over_http() {
        let (server, metrics) = start();
        let addr = server.local_addr();

        let (status, _, body) = get(addr, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (503, "starting"));
        metrics.ready.store(true, Ordering::Relaxed);
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (200, "ready"));
        metrics.stopping.store(true, Ordering::Relaxed);
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (503, "stopping"));

        metrics.cores[1].listeners[0].lines_total.add(3);
        metrics.cores[0].listeners[0].lines_total.add(1);
        metrics.cores[1].queue_depth.set(5);
        let (status, head, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains("vary: accept"), "{head}");
        let lines: Vec<&str> = body.lines().collect();
        for want in [
            "# TYPE sluice_lines_total counter",
            r#"sluice_lines_total{core="1",listener="raw-tcp",proto="tcp",format="raw"} 3"#,
            r#"sluice_lines_total{core="0",listener="raw-tcp",proto="tcp",format="raw"} 1"#,
            r#"sluice_rejected_total{core="0",listener="raw-tcp",reason="too_long"} 0"#,
            r#"sluice_queue_depth{core="1"} 5"#,
            "sluice_checkpoints_total 0",
        ] {
            assert!(lines.contains(&want), "missing `{want}` in\n{body}");
        }
        assert!(!body.contains("# EOF"), "{body}");

        // Two Accept headers are one list; the OpenMetrics one is preferred.
        let accept = "Accept: text/plain;q=0.5\r\nAccept: application/openmetrics-text\r\n";
        let (status, head, body) = get_with(addr, "/metrics", accept);
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(body.ends_with("\n# EOF\n"), "{body}");

        assert_eq!(get(addr, "/nope").0, 404);
        server.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still accepting after stop"
        );
    }

    #[test]
    fn stop_does_not_wait_for_an_idle_connection_forever() {
        let (server, _) = start();
        let idle = TcpStream::connect(server.local_addr()).unwrap();
        let started = std::time::Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_millis(SHUTDOWN_GRACE_MS + 3_000));
        drop(idle);
    }

    fn short_limits() -> AdminLimits {
        AdminLimits {
            connections_max: 4,
            header_read_timeout: Duration::from_millis(300),
            ..AdminLimits::default()
        }
    }

    /// Reads until the peer closes (or `limit` passes); returns what came and whether it closed.
    fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // A reset is a close too.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (String::from_utf8_lossy(&got).into_owned(), true);
                }
                Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            }
        }
    }

    #[test]
    fn a_partial_head_is_closed_after_the_header_timeout() {
        let (server, metrics) = start_limited(short_limits());
        let mut slow = TcpStream::connect(server.local_addr()).unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = std::time::Instant::now();
        let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5));
        assert!(closed, "a stalled head was kept open");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(metrics.admin.connections_timed_out_total.get(), 1);
        server.stop();
    }

    #[test]
    fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
        let (server, _) = start_limited(short_limits());
        let mut conn = TcpStream::connect(server.local_addr()).unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (got, closed) = read_until_closed(&mut conn, Duration::from_secs(5));
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(closed, "an idle kept-alive connection was kept open");
        server.stop();
    }

    #[test]
    fn oversized_heads_and_bodies_are_refused() {
        let (server, _) = start();
        let addr = server.local_addr();
        let mut conn = TcpStream::connect(addr).unwrap();
        let big = "a".repeat(crate::limits::ADMIN_HEAD_BYTES_MAX * 2);
        // The server may close before taking all of it.
        let _ = write!(
            conn,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
        );
        let (got, _) = read_until_closed(&mut conn, Duration::from_secs(5));
        assert!(got.starts_with("HTTP/1.1 431"), "{got}");

        let mut conn = TcpStream::connect(addr).unwrap();
        let length = crate::limits::ADMIN_BODY_BYTES_MAX + 1;
        write!(
            conn,
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
        )
        .unwrap();
        let (got, _) = read_until_closed(&mut conn, Duration::from_secs(5));
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        server.stop();
    }

    #[test]
    fn metrics_answer_while_every_slot_holds_a_stalled_client() {
        let limits = AdminLimits {
            header_read_timeout: Duration::from_secs(30),
            ..short_limits()
        };
        let (server, metrics) = start_limited(limits);
        let addr = server.local_addr();
        let stalled: Vec<TcpStream> = (0..limits.connections_max * 3)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
                s
            })
            .collect();
        let (status, _, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(
            body.contains("sluice_admin_connections_evicted_total"),
            "{body}"
        );
        let open = metrics.admin.connections_open.get();
        assert!(open <= limits.connections_max as i64 + 1, "{open} open");
        assert!(metrics.admin.connections_evicted_total.get() >= limits.connections_max as u64);
        drop(stalled);
        server.stop();
    }

    #[test]
    fn handler_errors_are_500_with_the_message() {
        let response = HandlerError(anyhow::anyhow!("disk on fire").context("reading windows"))
            .into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = runtime
            .block_on(axum::body::to_bytes(response.into_body(), 4096))
            .unwrap();
        assert_eq!(
            &body[..],
            b"internal error: reading windows: disk on fire\n"
        );
    }
}

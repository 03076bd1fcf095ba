//! The query API: `/api/v1/windows` and `/api/v1/top` (DESIGN, "Admin HTTP").
//!
//! Closed rows come from the [`Index`](crate::query::Index); open windows are asked of the
//! owner shards ([`OpenQueries`]). Both are blocking, so each request runs them on tokio's
//! blocking pool, never on the server's one thread. Parameters are checked strictly: an
//! unknown, repeated or bad one is a 400 whose JSON body names it; a limit reached is a 503
//! with `Retry-After` (shards busy) or `"truncated":true` (more rows than an answer holds).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AdminState;
use crate::limits::{
    OPEN_ANSWER_MAX_AGE_MS_DEFAULT, OPEN_ANSWER_MAX_AGE_MS_MAX, OPEN_QUERY_TIMEOUT_MS,
    QUERY_LAST_MAX, QUERY_ROWS_MAX, QUERY_TOP_MAX,
};
use crate::query::{By, Filter, Index, OpenError, OpenQueries, Want, rank};
use crate::units::Millis;

/// What the query routes read.
#[derive(Debug, Clone)]
pub struct QueryApi {
    /// Closed rows.
    pub index: Arc<Index>,
    /// The shards' open windows.
    pub open: OpenQueries,
    /// The configured window sizes, in ms (the first is the default of `top`).
    pub window_sizes_ms: Vec<i64>,
    /// Per shard, its aggregates record and the record's cursors (streams register there).
    pub records: Vec<(std::path::PathBuf, Arc<crate::results::Cursors>)>,
    /// Stream clients now.
    pub stream_clients: Arc<std::sync::atomic::AtomicUsize>,
    /// Per shard, its alerts and experiments records (empty without rules or experiments)
    /// with their cursors, and the stream event of each: streams follow them too.
    pub other_records: Vec<(
        std::path::PathBuf,
        Arc<crate::results::Cursors>,
        crate::query::Event,
    )>,
}

/// A failed query: its status and a JSON body naming the parameter at fault.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    parameter: Option<String>,
}

impl ApiError {
    fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            parameter: Some(parameter.to_string()),
        }
    }

    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            parameter: None,
        }
    }
}

impl From<OpenError> for ApiError {
    fn from(e: OpenError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(p) = self.parameter {
            body["parameter"] = p.into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// The parameters of a request, each taken at most once; what is left is an error.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(pairs: Vec<(String, String)>) -> Result<Params, ApiError> {
        for (i, (name, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::bad(name, format!("{name} is given twice")));
            }
        }
        Ok(Params(pairs))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.swap_remove(i).1)
    }

    /// An error for the first parameter nobody took.
    fn finish(self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.first() {
            Some((name, _)) => Err(ApiError::bad(
                name,
                format!(
                    "unknown parameter {name} (this route takes {})",
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    fn number(&mut self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(text) = self.take(name) else {
            return Ok(default);
        };
        match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(
                name,
                format!("{name} = {text:?}: must be a whole number from 1 to {max}"),
            )),
        }
    }

    fn flag(&mut self, name: &str) -> Result<bool, ApiError> {
        match self.take(name).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(ApiError::bad(
                name,
                format!("{name} = {other:?}: must be true or false"),
            )),
        }
    }

    /// `window`: one of the configured sizes, as ms.
    fn window(&mut self, sizes: &[i64]) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.take("window") else {
            return Ok(None);
        };
        let configured = || {
            sizes
                .iter()
                .map(|s| Millis(*s as u64).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ms = humantime::parse_duration(&text)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok());
        match ms {
            Some(ms) if sizes.contains(&ms) => Ok(Some(ms)),
            Some(_) => Err(ApiError::bad(
                "window",
                format!(
                    "window = {text:?} is not a configured window size ({})",
                    configured()
                ),
            )),
            None => Err(ApiError::bad(
                "window",
                format!(
                    "window = {text:?} is not a duration (configured: {})",
                    configured()
                ),
            )),
        }
    }

    /// `key` or `prefix` (`prefix` alone when `prefix_only`); `required`: one must be given.
    fn filter(&mut self, required: bool) -> Result<Filter, ApiError> {
        match (self.take("key"), self.take("prefix")) {
            (Some(_), Some(_)) => Err(ApiError::bad("key", "give key or prefix, not both")),
            (Some(k), None) if k.is_empty() => Err(ApiError::bad("key", "key is empty")),
            (Some(k), None) => Ok(Filter::Key(k)),
            (None, Some(p)) => Ok(Filter::Prefix(p)),
            (None, None) if required => Err(ApiError::bad(
                "key",
                "give key=K (one key) or prefix=P (keys starting with P)",
            )),
            (None, None) => Ok(Filter::Prefix(String::new())),
        }
    }
}

fn query_api(state: &AdminState) -> Result<QueryApi, ApiError> {
    state
        .query
        .clone()
        .ok_or_else(|| ApiError::unavailable("the query API is not available here"))
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("query failed: {e}"),
            parameter: None,
        })
    })
}

/// A JSON answer from pieces that are JSON already (rows as written).
fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn push_rows(out: &mut String, rows: impl Iterator<Item = String>) {
    out.push('[');
    for (i, r) in rows.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&r);
    }
    out.push(']');
}

/// `GET /api/v1/windows?key=K|prefix=P&window=10s&last=N&open=true`.
pub async fn windows(
    State(state): State<AdminState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let api = query_api(&state)?;
    let mut params = Params::new(pairs)?;
    let filter = params.filter(true)?;
    let window = params.window(&api.window_sizes_ms)?;
    let last = params.number("last", 10, QUERY_LAST_MAX)?;
    let open = params.flag("open")?;
    let max_age = max_age(&mut params)?;
    params.finish(&["key", "prefix", "window", "last", "open", "max_age_ms"])?;
    blocking(move || {
        let label = window.map(|w| Millis(w as u64).to_string());
        let closed = api
            .index
            .windows(&filter, label.as_deref(), last, QUERY_ROWS_MAX);
        let mut truncated = closed.truncated;
        let mut open_rows = Vec::new();
        let mut open_age = None;
        if open {
            let timeout = Duration::from_millis(OPEN_QUERY_TIMEOUT_MS);
            let want = Want::Rows {
                limit: QUERY_ROWS_MAX,
            };
            let answer = api.open.ask(&filter, window, want, timeout, max_age)?;
            open_age = Some(answer.age);
            for reply in answer.replies.iter() {
                truncated |= reply.truncated;
                open_rows.extend(reply.rows.iter().cloned());
            }
            open_rows.sort_by(|a, b| {
                (&a.key, a.size_ms, a.start_ms).cmp(&(&b.key, b.size_ms, b.start_ms))
            });
            if open_rows.len() > QUERY_ROWS_MAX {
                open_rows.truncate(QUERY_ROWS_MAX);
                truncated = true;
            }
        }
        let mut body = String::from("{\"windows\":");
        push_rows(&mut body, closed.rows.into_iter());
        body.push_str(",\"open\":");
        push_rows(&mut body, open_rows.into_iter().map(|r| r.text));
        push_open_age(&mut body, open_age);
        body.push_str(&format!(",\"truncated\":{truncated}}}"));
        Ok(json_response(body))
    })
    .await
}

/// `GET /api/v1/top?window=10s&by=count&n=10&prefix=P&open=true`.
pub async fn top(
    State(state): State<AdminState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let api = query_api(&state)?;
    let mut params = Params::new(pairs)?;
    let window = params
        .window(&api.window_sizes_ms)?
        .or(api.window_sizes_ms.first().copied())
        .ok_or_else(|| ApiError::unavailable("no window sizes are configured"))?;
    let by = match params.take("by") {
        None => By::Count,
        Some(name) => By::parse(&name).ok_or_else(|| {
            let names: Vec<&str> = By::ALL.iter().map(|b| b.name()).collect();
            ApiError::bad(
                "by",
                format!("by = {name:?}: must be one of {}", names.join(", ")),
            )
        })?,
    };
    let n = params.number("n", 10, QUERY_TOP_MAX)?;
    if let Some(key) = params.take("key") {
        // Accepted so a misspelt prefix gets a clear answer rather than "unknown".
        return Err(ApiError::bad(
            "key",
            format!("top ranks many keys: use prefix={key:?}, not key"),
        ));
    }
    let filter = params.filter(false)?;
    let open = params.flag("open")?;
    let max_age = max_age(&mut params)?;
    params.finish(&["window", "by", "n", "prefix", "open", "max_age_ms"])?;
    blocking(move || {
        let label = Millis(window as u64).to_string();
        let mut open_age = None;
        let (start_ms, rows) = if open {
            let timeout = Duration::from_millis(OPEN_QUERY_TIMEOUT_MS);
            let want = Want::Top { by, n };
            let answer = api
                .open
                .ask(&filter, Some(window), want, timeout, max_age)?;
            open_age = Some(answer.age);
            let mut rows: Vec<_> = answer
                .replies
                .iter()
                .flat_map(|r| r.rows.iter().cloned())
                .collect();
            rows.sort_by(rank);
            rows.truncate(n);
            (None, rows.into_iter().map(|r| r.text).collect::<Vec<_>>())
        } else {
            let answer = api.index.top(&label, by, n, &filter);
            let rows = answer
                .ranked
                .iter()
                .filter_map(|r| api.index.read_row(r))
                .collect();
            (answer.start_ms, rows)
        };
        let mut body = format!(
            "{{\"window\":{},\"by\":\"{}\",\"open\":{open},\"start_ms\":{},\"top\":",
            serde_json::Value::from(label),
            by.name(),
            start_ms.map_or("null".to_string(), |s| s.to_string()),
        );
        push_rows(&mut body, rows.into_iter());
        push_open_age(&mut body, open_age);
        body.push('}');
        Ok(json_response(body))
    })
    .await
}

/// `max_age_ms`: how old an open-window answer given again may be.
fn max_age(params: &mut Params) -> Result<Duration, ApiError> {
    let ms = match params.take("max_age_ms") {
        None => OPEN_ANSWER_MAX_AGE_MS_DEFAULT,
        Some(text) => match text.parse::<usize>() {
            Ok(ms) if ms <= OPEN_ANSWER_MAX_AGE_MS_MAX => ms,
            _ => {
                return Err(ApiError::bad(
                    "max_age_ms",
                    format!(
                        "max_age_ms = {text:?}: must be a whole number from 0 to {OPEN_ANSWER_MAX_AGE_MS_MAX}"
                    ),
                ));
            }
        },
    };
    Ok(Duration::from_millis(ms as u64))
}

/// `,"open_age_ms":N`: how old the open windows' values are, when they were asked for.
fn push_open_age(body: &mut String, age: Option<Duration>) {
    if let Some(age) = age {
        body.push_str(&format!(",\"open_age_ms\":{}", age.as_millis()));
    }
}

/// Releases a stream client's place when its follower ends.
struct StreamSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// `GET /api/v1/stream?prefix=P&window=10s` (or `key=K`), resumed by `Last-Event-ID`.
pub async fn stream(
    State(state): State<AdminState>,
    headers: axum::http::HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    use crate::limits::{
        STREAM_CLIENTS_MAX, STREAM_KEEPALIVE_MS, STREAM_QUEUE_FRAMES, STREAM_STALL_MAX_MS,
    };
    use crate::query::{Selection, Sent, Timing, parse_event_id};
    use std::sync::atomic::Ordering;
    let api = query_api(&state)?;
    let mut params = Params::new(pairs)?;
    let filter = params.filter(false)?;
    let window = params.window(&api.window_sizes_ms)?;
    params.finish(&["prefix", "key", "window"])?;
    let shards = api.records.len() + api.other_records.len();
    let positions = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| parse_event_id(v, shards))
            .ok_or_else(|| {
                ApiError::bad(
                    "Last-Event-ID",
                    format!("Last-Event-ID must be {shards} positions, as this stream's ids are"),
                )
            })?,
        None => {
            let mut dirs: Vec<_> = api.records.iter().map(|(d, _)| d.clone()).collect();
            dirs.extend(api.other_records.iter().map(|(d, _, _)| d.clone()));
            blocking(move || {
                Ok(dirs
                    .iter()
                    .map(|d| crate::results::record_end(d).unwrap_or(0))
                    .collect::<Vec<u64>>())
            })
            .await?
        }
    };
    if api.stream_clients.fetch_add(1, Ordering::AcqRel) >= STREAM_CLIENTS_MAX {
        api.stream_clients.fetch_sub(1, Ordering::AcqRel);
        return Err(ApiError::unavailable(format!(
            "{STREAM_CLIENTS_MAX} stream clients already; try again later"
        )));
    }
    let slot = StreamSlot(api.stream_clients.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(STREAM_QUEUE_FRAMES);
    let selection = Selection {
        filter,
        window: window.map(|w| Millis(w as u64).to_string()),
    };
    use crate::query::Event;
    let (mut dirs, mut cursors): (Vec<_>, Vec<_>) = api.records.iter().cloned().unzip();
    let mut events = vec![Event::Window; dirs.len()];
    for (dir, record_cursors, event) in &api.other_records {
        dirs.push(dir.clone());
        cursors.push(record_cursors.clone());
        events.push(*event);
    }
    let timing = Timing {
        keepalive: Duration::from_millis(STREAM_KEEPALIVE_MS),
        stall_max: Duration::from_millis(STREAM_STALL_MAX_MS),
    };
    // The client's first frame: how long to wait before reconnecting.
    let _ = tx.try_send("retry: 1000\n\n".into());
    std::thread::Builder::new()
        .name("sluice-stream".into())
        .spawn(move || {
            let _slot = slot;
            let (dirs, events, cursors) = (&dirs, &events, &cursors);
            crate::query::follow_records(
                dirs,
                events,
                cursors,
                &positions,
                &selection,
                timing,
                |frame| {
                    use tokio::sync::mpsc::error::TrySendError;
                    match frame {
                        None if tx.is_closed() => Sent::Closed,
                        None => Sent::Sent,
                        Some(f) => match tx.try_send(f) {
                            Ok(()) => Sent::Sent,
                            Err(TrySendError::Full(f)) => Sent::Full(f),
                            Err(TrySendError::Closed(_)) => Sent::Closed,
                        },
                    }
                },
            );
        })
        .map_err(|e| ApiError::unavailable(format!("cannot start a stream: {e}")))?;
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| {
            (
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(f)),
                rx,
            )
        })
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(frames),
    )
        .into_response())
}

/// `GET /api/v1/alerts`: every alert pending or firing now, as its latest transition row
/// (`{"alerts":[ROW...],"truncated":false}`; empty without rules), at most
/// [`QUERY_ROWS_MAX`] of them (firing first).
pub async fn alerts(State(state): State<AdminState>) -> Response {
    let (rows, truncated) = state
        .alerts
        .as_ref()
        .map(|b| b.current(QUERY_ROWS_MAX))
        .unwrap_or_default();
    axum::Json(serde_json::json!({ "alerts": rows, "truncated": truncated })).into_response()
}

/// `GET /api/v1/experiments[?experiment=NAME][&key=K|&prefix=P]`: the newest comparison of
/// every experiment and key, per window size and scope (`window`, `cumulative`), as written to
/// `experiments/` (`{"experiments":[ROW...],"truncated":false}`; empty without experiments),
/// at most [`QUERY_ROWS_MAX`] rows.
pub async fn experiments(
    State(state): State<AdminState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut params = Params::new(pairs)?;
    let filter = params.filter(false)?;
    let experiment = params.take("experiment");
    params.finish(&["experiment", "key", "prefix"])?;
    let (rows, truncated) = state
        .experiments
        .as_ref()
        .map(|b| {
            b.current(
                experiment.as_deref(),
                |key| filter.matches(key),
                QUERY_ROWS_MAX,
            )
        })
        .unwrap_or_default();
    Ok(
        axum::Json(serde_json::json!({ "experiments": rows, "truncated": truncated }))
            .into_response(),
    )
}

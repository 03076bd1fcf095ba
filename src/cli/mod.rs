//! The command line's clients of a running instance: `sluice query` ([`query`]) and
//! `sluice top` ([`top`]). Both read the admin API (DESIGN, "Admin HTTP") over plain
//! HTTP/1.1 with a small blocking client; they never touch the data directory.
//!
//! Exit codes follow `main.rs`: a 400 answer is bad usage (2, with the server's message,
//! which names the parameter), anything else that fails is a runtime failure (1). A closed
//! stdout is not a failure: the reader has seen enough.
//!
//! Every answer is bounded ([`CLI_ANSWER_BYTES_MAX`], one stream line
//! [`CLI_STREAM_LINE_BYTES_MAX`]) and every request has a connect timeout; only the stream
//! may stay open without end.

#![forbid(unsafe_code)]

pub mod query;
pub mod top;

use std::io::{self, BufRead, BufReader, Read};
use std::time::Duration;

use crate::limits::{
    CLI_ANSWER_BYTES_MAX, CLI_ANSWER_TIMEOUT_MS, CLI_CONNECT_TIMEOUT_MS, CLI_STREAM_LINE_BYTES_MAX,
    CLI_STREAM_SILENCE_MAX_MS,
};

/// The admin address when neither `--admin` nor `SLUICE_ADMIN` gives one.
pub const ADMIN_DEFAULT: &str = "127.0.0.1:9900";

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused a parameter (a 400): bad usage.
    #[error("{message}")]
    BadRequest {
        /// The server's message.
        message: String,
        /// The parameter it names.
        parameter: Option<String>,
    },
    /// The server answered with another error status (503: busy or not ready).
    #[error("{url}: {status}: {message}")]
    Status {
        /// What was asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// No answer: the connection failed, timed out or broke.
    #[error("cannot reach the admin server at {admin}: {source}")]
    Transport {
        /// The admin address.
        admin: String,
        /// Why.
        #[source]
        source: ureq::Error,
    },
    /// An answer that is not what the API returns.
    #[error("{url}: unexpected answer: {reason}")]
    Answer {
        /// What was asked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing to stdout failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    /// The terminal could not be set up or drawn on.
    #[error("terminal: {0}")]
    Terminal(#[source] io::Error),
}

impl Error {
    /// The process exit code for this failure: 2 for bad usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadRequest { .. } => 2,
            _ => 1,
        }
    }

    /// A short line for a status bar.
    pub fn short(&self) -> String {
        match self {
            Error::Transport { admin, source } => format!("cannot reach {admin}: {source}"),
            other => other.to_string(),
        }
    }
}

/// A write error: a closed stdout ends the command quietly (`Ok(true)`), others fail.
pub(crate) fn closed_stdout(e: io::Error) -> Result<bool, Error> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(true)
    } else {
        Err(Error::Output(e))
    }
}

/// A blocking client of one instance's admin API.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    admin: String,
    base: String,
}

impl Client {
    /// A client of the admin server at `admin` (`HOST:PORT`, or an `http://` URL).
    pub fn new(admin: &str) -> Client {
        let admin = admin.trim().trim_end_matches('/');
        let base = if admin.starts_with("http://") || admin.starts_with("https://") {
            admin.to_string()
        } else {
            format!("http://{admin}")
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_millis(CLI_CONNECT_TIMEOUT_MS)))
            .timeout_global(Some(Duration::from_millis(CLI_ANSWER_TIMEOUT_MS)))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            agent,
            admin: admin.to_string(),
            base,
        }
    }

    /// The admin address as given.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    fn transport(&self, source: ureq::Error) -> Error {
        Error::Transport {
            admin: self.admin.clone(),
            source,
        }
    }

    /// `GET path?params` as JSON; an error status becomes an [`Error`].
    pub fn get_json(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<serde_json::Value, Error> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .get(&url)
            .query_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .call()
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .into_with_config()
            .limit(CLI_ANSWER_BYTES_MAX)
            .read_to_string()
            .map_err(|e| self.transport(e))?;
        if status != 200 {
            return Err(status_error(url, status, &body));
        }
        serde_json::from_str(&body).map_err(|e| Error::Answer {
            url,
            reason: format!("not JSON: {e}"),
        })
    }

    /// `GET path?params` as a server-sent event stream (resumed after `last_event_id`):
    /// its body, line by line.
    pub fn stream(
        &self,
        path: &str,
        params: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<EventStream, Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .get(&url)
            .query_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request
            .config()
            .timeout_global(None)
            .build()
            .call()
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response
                .into_body()
                .into_with_config()
                .limit(CLI_ANSWER_BYTES_MAX)
                .read_to_string()
                .unwrap_or_default();
            return Err(status_error(url, status, &body));
        }
        let reader: Box<dyn io::Read + Send> = Box::new(response.into_body().into_reader());
        Ok(EventStream::new(
            reader,
            Duration::from_millis(CLI_STREAM_SILENCE_MAX_MS),
        ))
    }
}

/// The error an error status stands for; the body is the API's `{"error","parameter"}`.
fn status_error(url: String, status: u16, body: &str) -> Error {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let message = v["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().chars().take(200).collect());
    if status == 400 {
        Error::BadRequest {
            message,
            parameter: v["parameter"].as_str().map(str::to_string),
        }
    } else {
        Error::Status {
            url,
            status,
            message,
        }
    }
}

/// An open event stream. Its lines are read on a thread of their own, so that a connection
/// gone silent (a peer that vanished without a FIN: no keep-alive for longer than the
/// server's interval allows) is noticed and given up, rather than waited on for ever.
pub struct EventStream {
    lines: crossbeam_channel::Receiver<io::Result<Vec<u8>>>,
    parser: Sse,
    silence_max: Duration,
}

/// Lines a stream's reader thread reads ahead of its consumer, at most.
const STREAM_LINES_AHEAD: usize = 64;

impl EventStream {
    /// A stream over `reader` that fails once nothing at all arrives for `silence_max`.
    fn new(reader: Box<dyn io::Read + Send>, silence_max: Duration) -> EventStream {
        let (tx, lines) = crossbeam_channel::bounded(STREAM_LINES_AHEAD);
        // The thread ends with the stream's end, an error, or once the stream is dropped
        // (at its next line; a connection that stays silent keeps it parked in `read`).
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut line = Vec::new();
                let read = (&mut reader)
                    .take(CLI_STREAM_LINE_BYTES_MAX)
                    .read_until(b'\n', &mut line);
                let line = match read {
                    Ok(n)
                        if line.last() != Some(&b'\n') && n as u64 == CLI_STREAM_LINE_BYTES_MAX =>
                    {
                        Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "a stream line is longer than {CLI_STREAM_LINE_BYTES_MAX} bytes"
                            ),
                        ))
                    }
                    Ok(_) => Ok(line),
                    Err(e) => Err(e),
                };
                let last = !matches!(&line, Ok(l) if !l.is_empty());
                if tx.send(line).is_err() || last {
                    return;
                }
            }
        });
        EventStream {
            lines,
            parser: Sse::default(),
            silence_max,
        }
    }

    /// The next frame; `None` when the server ended the stream.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        use crossbeam_channel::RecvTimeoutError;
        loop {
            let line = match self.lines.recv_timeout(self.silence_max) {
                Ok(line) => line?,
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing arrived for {} s, not even a keep-alive",
                            self.silence_max.as_secs()
                        ),
                    ));
                }
            };
            if line.is_empty() {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(frame) = self.parser.line(text.trim_end_matches(['\n', '\r'])) {
                return Ok(Some(frame));
            }
        }
    }
}

/// What a server-sent event stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// An event: its type (`message` unless named), data, and the stream's last event id.
    Event {
        /// `event:` (default `message`).
        event: String,
        /// The `data:` lines, joined by `\n`.
        data: String,
        /// The last `id:` seen so far (it carries over to later events).
        id: Option<String>,
    },
    /// `retry:` — how long to wait before reconnecting, in ms.
    Retry(u64),
}

/// A server-sent events parser (the WHATWG rules that matter here), fed line by line.
#[derive(Debug, Default)]
pub struct Sse {
    id: Option<String>,
    event: String,
    data: String,
    has_data: bool,
}

impl Sse {
    /// Feeds one line (without its end); returns a frame when one is complete.
    pub fn line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(Frame::Event {
                event: if event.is_empty() {
                    "message".to_string()
                } else {
                    event
                },
                data,
                id: self.id.clone(),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            "retry" => return value.parse().ok().map(Frame::Retry),
            _ => {}
        }
        None
    }
}

/// A number for people: whole numbers as they are, others to 3 decimals (trailing zeros
/// dropped), very large or small ones in scientific notation.
pub fn number(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(f)) => float(f),
            _ => n.to_string(),
        },
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn float(x: f64) -> String {
    let a = x.abs();
    if x == x.trunc() && a < 1e15 {
        return format!("{x:.0}");
    }
    if !(1e-3..1e15).contains(&a) {
        return format!("{x:.3e}");
    }
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn duration_ms(ms: f64) -> String {
    if !ms.is_finite() {
        return "-".to_string();
    }
    let sign = if ms < 0.0 { "-" } else { "" };
    let ms = ms.abs();
    let s = (ms / 1000.0) as u64;
    let text = if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if ms < 60_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600)
    };
    format!("{sign}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_carry_data_event_and_the_last_id() {
        let mut p = Sse::default();
        let mut frames = Vec::new();
        for line in [
            "retry: 1000",
            "",
            ": keepalive",
            "",
            "id: 3,0",
            "event: window",
            "data: {\"key\":\"a\"}",
            "",
            "data: x",
            "data:y",
            "",
        ] {
            frames.extend(p.line(line));
        }
        assert_eq!(
            frames,
            vec![
                Frame::Retry(1000),
                Frame::Event {
                    event: "window".into(),
                    data: "{\"key\":\"a\"}".into(),
                    id: Some("3,0".into()),
                },
                Frame::Event {
                    event: "message".into(),
                    data: "x\ny".into(),
                    id: Some("3,0".into()),
                },
            ]
        );
    }

    #[test]
    fn a_stream_gone_silent_is_given_up() {
        use std::io::Write;
        // A server that answers, sends an event, then says nothing more while keeping the
        // connection open (as a peer that vanished without closing it looks).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).unwrap();
            conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nid: 7\nevent: window\ndata: {}\n\n",
            )
            .unwrap();
            let _ = hold_rx.recv();
        });
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let response = agent.get(&format!("http://{addr}/")).call().unwrap();
        let mut stream = EventStream::new(
            Box::new(response.into_body().into_reader()),
            Duration::from_millis(300),
        );
        assert!(matches!(
            stream.next_frame().unwrap(),
            Some(Frame::Event { ref id, .. }) if id.as_deref() == Some("7")
        ));
        let started = std::time::Instant::now();
        let err = stream.next_frame().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(hold_tx);
        server.join().unwrap();
    }

    #[test]
    fn numbers_read_well() {
        use serde_json::json;
        assert_eq!(number(&json!(3)), "3");
        assert_eq!(number(&json!(-3)), "-3");
        assert_eq!(number(&json!(2.0)), "2");
        assert_eq!(number(&json!(21.456789)), "21.457");
        assert_eq!(number(&json!(0.5)), "0.5");
        assert_eq!(number(&json!(1.5e20)), "1.500e20");
        assert_eq!(number(&json!(0.0001)), "1.000e-4");
        assert_eq!(number(&serde_json::Value::Null), "-");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_ms(850.0), "850ms");
        assert_eq!(duration_ms(12_340.0), "12.3s");
        assert_eq!(duration_ms(245_000.0), "4m05s");
        assert_eq!(duration_ms(7_380_000.0), "2h03m");
        assert_eq!(duration_ms(-1500.0), "-1.5s");
    }

    #[test]
    fn bad_requests_exit_2_and_the_rest_1() {
        let e = status_error(
            "u".into(),
            400,
            r#"{"error":"bad window","parameter":"window"}"#,
        );
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), "bad window");
        let e = status_error("u".into(), 503, r#"{"error":"busy"}"#);
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("503: busy"));
    }
}

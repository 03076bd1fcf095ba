//! `sluice top`: a terminal view of a running instance, refreshed every second from
//! `/api/v1/status` and `/api/v1/top` (ratatui on crossterm).
//!
//! ```text
//!  sluice 0.1.0 @ 127.0.0.1:9900 · up 1h02m · ready                     q quits
//! ┌Listeners─────────────────────────────────────────────────────────────────┐
//! │NAME            FORMAT+PROTO     EV/S   BYTES/S  REJECTS   DROPS  CONNS   │
//! ├ ...one row per listener                                                  │
//! ┌State─────────────────────────────────────────────────────────────────────┐
//! │watermark lag, checkpoint age, keys and queues                            │
//! ┌Top keys by count · 10s window from 12:00:00 UTC───────────────────────────┐
//! │KEY  COUNT  SUM  MEAN  MAX  P99                                           │
//!  updated 12:00:01 UTC (or why the admin server cannot be reached; retrying)
//! ```
//!
//! The layout fits 80x24 and grows with the terminal. A separate thread asks the server,
//! so an unreachable or slow admin never freezes the keys: `q`, Esc or Ctrl-C quit at once,
//! and the terminal is restored on every way out (quit, error, panic, SIGTERM/SIGHUP).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use serde_json::Value;

use super::{ADMIN_DEFAULT, Client, Error, duration_ms, number};
use crate::limits::CLI_TOP_KEYS;

/// How often the view asks the server.
pub const REFRESH_MS: u64 = 1_000;

/// `sluice top`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Admin address of the running instance (HOST:PORT or http://HOST:PORT).
    #[arg(long, env = "SLUICE_ADMIN", value_name = "ADDR", default_value = ADMIN_DEFAULT)]
    pub admin: String,
}

/// One round of answers.
#[derive(Debug)]
struct Snapshot {
    status: Result<Value, String>,
    top: Result<Value, String>,
}

/// What the screen shows: the newest answers, and the newest failure.
#[derive(Debug, Default)]
pub struct View {
    admin: String,
    status: Option<Value>,
    top: Option<Value>,
    error: Option<String>,
    updated_unix_ms: Option<i64>,
}

impl View {
    fn new(admin: &str) -> View {
        View {
            admin: admin.to_string(),
            ..View::default()
        }
    }

    fn apply(&mut self, s: Snapshot) {
        let mut error = None;
        match s.status {
            Ok(v) => self.status = Some(v),
            Err(e) => error = Some(e),
        }
        match s.top {
            Ok(v) => self.top = Some(v),
            Err(e) => error = error.or(Some(e)),
        }
        if error.is_none() {
            self.updated_unix_ms = Some(crate::window::now_ms());
        }
        self.error = error;
    }
}

/// Runs `sluice top` until `q`, Esc, Ctrl-C or SIGTERM/SIGHUP.
pub fn run(args: &TopArgs) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(signal, stop.clone()).map_err(Error::Signals)?;
    }
    let client = Client::new(&args.admin);
    let (tx, rx) = mpsc::sync_channel(2);
    std::thread::Builder::new()
        .name("sluice-top-fetch".into())
        .spawn(move || fetch_every_second(&client, &tx))
        .map_err(Error::Terminal)?;
    let mut terminal = ratatui::try_init().map_err(Error::Terminal)?;
    let _restore = Restore;
    let mut view = View::new(&args.admin);
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(s) = rx.try_recv() {
            view.apply(s);
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| draw(f, &view)).map_err(Error::Terminal)?;
            dirty = false;
        }
        if event::poll(Duration::from_millis(100)).map_err(Error::Terminal)? {
            match event::read().map_err(Error::Terminal)? {
                Event::Key(k) if quits(&k) => break,
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    Ok(())
}

/// Restores the terminal when `run` ends, however it ends (ratatui's panic hook covers
/// panics).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn quits(k: &KeyEvent) -> bool {
    k.kind == KeyEventKind::Press
        && match k.code {
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
            KeyCode::Char('c') | KeyCode::Char('d') => k.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// Asks the server every [`REFRESH_MS`] until the view is gone. The top keys are of the
/// newest closed window; before one has closed, of the open ones.
fn fetch_every_second(client: &Client, tx: &mpsc::SyncSender<Snapshot>) {
    let n = ("n", CLI_TOP_KEYS.to_string());
    loop {
        let started = Instant::now();
        let status = client.get_json("/api/v1/status", &[]);
        let mut top = client.get_json("/api/v1/top", std::slice::from_ref(&n));
        if let Ok(v) = &top
            && v["top"].as_array().is_some_and(|t| t.is_empty())
            && let Ok(open) = client.get_json("/api/v1/top", &[n.clone(), ("open", "true".into())])
        {
            top = Ok(open);
        }
        let snapshot = Snapshot {
            status: status.map_err(|e| e.short()),
            top: top.map_err(|e| e.short()),
        };
        if tx.send(snapshot).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(REFRESH_MS).saturating_sub(started.elapsed()));
    }
}

/// Draws the whole view.
pub fn draw(f: &mut Frame, view: &View) {
    let area = f.area();
    let listeners = view.status.as_ref().and_then(|s| s["listeners"].as_array());
    let listener_rows = listeners.map_or(1, |l| l.len().max(1)) as u16;
    // Borders and the header row; at least 2 rows of top keys stay.
    let fixed = 1 + 5 + 5 + 1;
    let listeners_height = (listener_rows + 3).min(area.height.saturating_sub(fixed).max(4));
    let [header, listeners_area, state_area, top_area, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(listeners_height),
        Constraint::Length(5),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(header_line(view, header.width)), header);
    draw_listeners(f, listeners_area, listeners);
    f.render_widget(state(view.status.as_ref()), state_area);
    draw_top(f, top_area, view.top.as_ref());
    let footer_line = match &view.error {
        Some(e) => Line::from(format!("{e}; retrying every second"))
            .style(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)),
        None => match view.updated_unix_ms {
            Some(ms) => Line::from(format!("updated {} UTC", clock(ms))).dim(),
            None => Line::from(format!("asking {}...", view.admin)).dim(),
        },
    };
    f.render_widget(Paragraph::new(footer_line), footer);
}

fn header_line(view: &View, width: u16) -> Line<'static> {
    let mut text = format!(" sluice @ {}", view.admin);
    if let Some(s) = &view.status {
        text = format!(
            " sluice {} @ {}",
            s["version"].as_str().unwrap_or("?"),
            view.admin
        );
        if let Some(up) = s["uptime_seconds"].as_f64() {
            text.push_str(&format!(" · up {}", duration_ms(up * 1000.0)));
        }
        text.push_str(if s["ready"] == true {
            " · ready"
        } else {
            " · not ready"
        });
    }
    let hint = "q quits ";
    let pad = usize::from(width).saturating_sub(text.chars().count() + hint.len());
    Line::from(format!("{text}{}{hint}", " ".repeat(pad))).bold()
}

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

fn header_row(names: &[&'static str], numeric_from: usize) -> Row<'static> {
    Row::new(names.iter().enumerate().map(|(i, n)| {
        if i >= numeric_from {
            right(n.to_string())
        } else {
            Cell::from(*n)
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD))
}

fn draw_listeners(f: &mut Frame, area: Rect, listeners: Option<&Vec<Value>>) {
    let rows: Vec<Row> = listeners
        .into_iter()
        .flatten()
        .map(|l| {
            Row::new(vec![
                Cell::from(l["name"].as_str().unwrap_or("?").to_string()),
                Cell::from(format!(
                    "{}+{}",
                    l["format"].as_str().unwrap_or("?"),
                    l["proto"].as_str().unwrap_or("?")
                )),
                right(si(l["events_per_sec"].as_f64(), "")),
                right(si(l["bytes_per_sec"].as_f64(), "B")),
                right(number(&l["rejects_total"])),
                right(number(&l["udp_drops_total"])),
                right(number(&l["connections_open"])),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(13),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(5),
        ],
    )
    .header(header_row(
        &[
            "NAME",
            "FORMAT+PROTO",
            "EV/S",
            "BYTES/S",
            "REJECTS",
            "DROPS",
            "CONNS",
        ],
        2,
    ))
    .block(Block::bordered().title("Listeners"));
    f.render_widget(table, area);
}

/// Watermark lag over the cores, the checkpoint, keys and queues.
fn state(status: Option<&Value>) -> Paragraph<'static> {
    let block = Block::bordered().title("State");
    let Some(s) = status else {
        return Paragraph::new("").block(block);
    };
    let cores = s["cores"].as_array().cloned().unwrap_or_default();
    let lags: Vec<f64> = cores
        .iter()
        .filter_map(|c| c["watermark_lag_ms"].as_f64())
        .collect();
    let sum = |f: &str| cores.iter().filter_map(|c| c[f].as_f64()).sum::<f64>();
    let lag = match (
        lags.iter().copied().reduce(f64::max),
        lags.iter().copied().reduce(f64::min),
    ) {
        (Some(max), Some(min)) => format!(
            "max {} · min {} over {} cores",
            duration_ms(max),
            duration_ms(min),
            lags.len()
        ),
        _ => "no event yet".to_string(),
    };
    let cp = &s["checkpoint"];
    let age = cp["age_seconds"]
        .as_f64()
        .map_or("none yet".to_string(), |a| duration_ms(a * 1000.0));
    let lines = vec![
        Line::from(format!(
            "watermark lag  {lag} · late events {}",
            number(&sum("late_events_total").into())
        )),
        Line::from(format!(
            "checkpoint     age {age} · epoch {} · took {} · failed {}",
            number(&cp["epoch"]),
            cp["duration_seconds"]
                .as_f64()
                .map_or("-".to_string(), |d| duration_ms(d * 1000.0)),
            number(&cp["failed_total"]),
        )),
        Line::from(format!(
            "keys           {} · open windows {} · queued {} · backpressure {}",
            number(&sum("keys").into()),
            number(&sum("windows_open").into()),
            number(&sum("queue_depth").into()),
            duration_ms(sum("backpressure_seconds_total") * 1000.0),
        )),
    ];
    Paragraph::new(lines).block(block)
}

fn draw_top(f: &mut Frame, area: Rect, top: Option<&Value>) {
    let rows_of = top.and_then(|t| t["top"].as_array());
    let title = match top {
        Some(t) if t["open"] == true => format!(
            "Top keys by {} · open {} windows",
            t["by"].as_str().unwrap_or("count"),
            t["window"].as_str().unwrap_or("?")
        ),
        Some(t) => match t["start_ms"].as_i64() {
            Some(start) => format!(
                "Top keys by {} · {} window from {} UTC",
                t["by"].as_str().unwrap_or("count"),
                t["window"].as_str().unwrap_or("?"),
                clock(start)
            ),
            None => "Top keys · no window has closed yet".to_string(),
        },
        None => "Top keys".to_string(),
    };
    let rows: Vec<Row> = rows_of
        .into_iter()
        .flatten()
        .map(|r| {
            Row::new(vec![
                Cell::from(r["key"].as_str().unwrap_or("?").to_string()),
                right(number(&r["count"])),
                right(number(&r["sum"])),
                right(number(&r["mean"])),
                right(number(&r["max"])),
                right(number(&r["p99"])),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(header_row(
        &["KEY", "COUNT", "SUM", "MEAN", "MAX", "P99"],
        1,
    ))
    .block(Block::bordered().title(title));
    f.render_widget(table, area);
}

/// `950`, `12.3k`, `4.56M` (with `unit` after: `12.3kB`).
fn si(v: Option<f64>, unit: &str) -> String {
    let Some(v) = v else {
        return "-".to_string();
    };
    let (scaled, prefix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    if prefix.is_empty() {
        format!("{scaled:.0}{unit}")
    } else if scaled.abs() >= 100.0 {
        format!("{scaled:.0}{prefix}{unit}")
    } else {
        format!("{scaled:.1}{prefix}{unit}")
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
fn clock(unix_ms: i64) -> String {
    let s = unix_ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn screen(view: &View, width: u16, height: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
        t.draw(|f| draw(f, view)).unwrap();
        let buffer = t.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn status(listeners: usize) -> Value {
        let listeners: Vec<Value> = (0..listeners)
            .map(|i| {
                json!({"name": format!("listener{i}"), "proto": "tcp", "format": "graphite",
                       "events_per_sec": 12345.0, "bytes_per_sec": 2.5e6, "events_total": 9,
                       "bytes_total": 99, "rejects_total": 1, "udp_drops_total": 0,
                       "connections_open": 2})
            })
            .collect();
        json!({"version": "0.1.0", "uptime_seconds": 75.0, "io": "epoll", "ready": true,
               "listeners": listeners,
               "cores": [{"core": 0, "keys": 3, "windows_open": 2, "queue_depth": 0,
                          "watermark_ms": 1, "watermark_lag_ms": 1500, "late_events_total": 4,
                          "backpressure_seconds_total": 0.0, "log_lines": 7}],
               "checkpoint": {"epoch": 42, "age_seconds": 3.0, "duration_seconds": 0.012,
                              "bytes": 100, "committed_total": 42, "failed_total": 0},
               "outputs": []})
    }

    fn top(keys: usize) -> Value {
        let rows: Vec<Value> = (0..keys)
            .map(|i| {
                json!({"key": format!("room.k{i}"), "count": 100 - i, "sum": 1.5,
                            "mean": 0.5, "max": 1.0, "p99": 1.0, "final": true})
            })
            .collect();
        json!({"window": "10s", "by": "count", "open": false, "start_ms": 3_600_000,
               "top": rows})
    }

    #[test]
    fn an_80x24_screen_shows_listeners_state_and_top_keys() {
        let mut view = View::new("127.0.0.1:9900");
        view.apply(Snapshot {
            status: Ok(status(6)),
            top: Ok(top(20)),
        });
        let text = screen(&view, 80, 24);
        for want in [
            "sluice 0.1.0 @ 127.0.0.1:9900 · up 1m15s · ready",
            "q quits",
            "listener0",
            "listener5",
            "graphite+tcp",
            "12.3k",
            "2.5MB",
            "max 1.5s",
            "age 3.0s · epoch 42",
            "10s window from 01:00:00 UTC",
            "room.k0",
            "updated",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
    }

    #[test]
    fn many_listeners_leave_room_for_top_keys() {
        let mut view = View::new("a:1");
        view.apply(Snapshot {
            status: Ok(status(40)),
            top: Ok(top(3)),
        });
        let text = screen(&view, 80, 24);
        assert!(text.contains("room.k0"), "{text}");
        assert!(text.contains("checkpoint"), "{text}");
    }

    #[test]
    fn an_unreachable_admin_is_a_message_not_a_crash() {
        let mut view = View::new("127.0.0.1:1");
        view.apply(Snapshot {
            status: Err("cannot reach 127.0.0.1:1: connection refused".into()),
            top: Err("cannot reach 127.0.0.1:1: connection refused".into()),
        });
        let text = screen(&view, 80, 24);
        assert!(
            text.contains("cannot reach 127.0.0.1:1: connection refused; retrying"),
            "{text}"
        );
        // A tiny terminal draws what fits.
        screen(&view, 20, 5);
    }

    #[test]
    fn keys_that_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
    }
}

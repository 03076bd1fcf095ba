//! `sluice query`: results of a running instance, from `/api/v1/windows`, `/api/v1/top`
//! or (`--follow`) `/api/v1/stream`. A table for people; `--json` prints each row the API
//! returned, unchanged, one JSON object per line.
//!
//! `--follow` resumes a dropped stream with the last event id it printed, so no closed
//! window is printed twice or skipped, and runs until Ctrl-C or a closed stdout (exit 0).

use std::io::{self, Write};
use std::time::Duration;

use serde_json::Value;

use super::{ADMIN_DEFAULT, Client, Error, Frame, closed_stdout, number};

/// The measures `--by` ranks by.
const MEASURES: [&str; 6] = ["count", "sum", "mean", "max", "p99", "distinct"];

/// `sluice query`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Admin address of the running instance (HOST:PORT or http://HOST:PORT).
    #[arg(long, env = "SLUICE_ADMIN", value_name = "ADDR", default_value = ADMIN_DEFAULT)]
    pub admin: String,
    /// One key.
    #[arg(long, value_name = "K", conflicts_with_all = ["prefix", "top"])]
    pub key: Option<String>,
    /// Keys starting with P (default: every key).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// One of the configured window sizes (default: every size; for --top the first).
    #[arg(long, value_name = "DURATION")]
    pub window: Option<String>,
    /// Closed rows per key and window (the server's default is 10).
    #[arg(long, value_name = "N", conflicts_with_all = ["top", "follow"])]
    pub last: Option<usize>,
    /// Also the open windows' running values (rows marked open).
    #[arg(long, conflicts_with = "follow")]
    pub open: bool,
    /// The N keys with the largest --by in the newest closed window (open ones with --open).
    #[arg(long, value_name = "N", conflicts_with = "follow")]
    pub top: Option<usize>,
    /// What --top ranks by.
    #[arg(long, value_name = "MEASURE", requires = "top", default_value = "count",
          value_parser = clap::builder::PossibleValuesParser::new(MEASURES))]
    pub by: String,
    /// One JSON object per line (each row as the API returns it).
    #[arg(long)]
    pub json: bool,
    /// Print closed windows as they close, until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
}

impl QueryArgs {
    /// `key=K`, or `prefix=P` (empty: every key).
    fn filter(&self) -> (&'static str, String) {
        match (&self.key, &self.prefix) {
            (Some(k), _) => ("key", k.clone()),
            (None, p) => ("prefix", p.clone().unwrap_or_default()),
        }
    }
}

/// Runs `sluice query`.
pub fn run(args: &QueryArgs) -> Result<(), Error> {
    let client = Client::new(&args.admin);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = if args.follow {
        follow(&client, args, &mut out)
    } else if let Some(n) = args.top {
        top(&client, args, n, &mut out)
    } else {
        windows(&client, args, &mut out)
    };
    match result {
        Err(Error::Output(e)) => closed_stdout(e).map(|_| ()),
        other => other,
    }
}

fn windows(client: &Client, args: &QueryArgs, out: &mut impl Write) -> Result<(), Error> {
    let mut params = vec![args.filter()];
    if let Some(w) = &args.window {
        params.push(("window", w.clone()));
    }
    if let Some(n) = args.last {
        params.push(("last", n.to_string()));
    }
    if args.open {
        params.push(("open", "true".into()));
    }
    let answer = client.get_json("/api/v1/windows", &params)?;
    let mut rows = rows_of(&answer, "windows", "/api/v1/windows")?;
    rows.extend(rows_of(&answer, "open", "/api/v1/windows")?);
    if answer["truncated"] == true {
        eprintln!(
            "sluice: more rows matched than one answer holds; narrow --prefix, --window or --last"
        );
    }
    if args.json {
        return print_json(&rows, out);
    }
    if rows.is_empty() {
        eprintln!(
            "sluice: no window matches{}",
            if args.open {
                ""
            } else {
                " (--open adds the running ones)"
            }
        );
        return Ok(());
    }
    out.write_all(table(&rows, &Columns::for_rows(&rows, None)).as_bytes())
        .map_err(Error::Output)
}

fn top(client: &Client, args: &QueryArgs, n: usize, out: &mut impl Write) -> Result<(), Error> {
    let mut params = vec![("n", n.to_string()), ("by", args.by.clone())];
    if let Some(p) = &args.prefix {
        params.push(("prefix", p.clone()));
    }
    if let Some(w) = &args.window {
        params.push(("window", w.clone()));
    }
    if args.open {
        params.push(("open", "true".into()));
    }
    let answer = client.get_json("/api/v1/top", &params)?;
    let rows = rows_of(&answer, "top", "/api/v1/top")?;
    if args.json {
        return print_json(&rows, out);
    }
    let window = answer["window"].as_str().unwrap_or("?");
    let when = match (answer["open"].as_bool(), rows.first()) {
        (Some(true), _) => "the open windows".to_string(),
        (_, Some(first)) => format!("the window from {}", first["start"].as_str().unwrap_or("?")),
        (_, None) => "no closed window yet".to_string(),
    };
    writeln!(out, "top {n} by {} of {window} windows: {when}", args.by).map_err(Error::Output)?;
    if rows.is_empty() {
        return Ok(());
    }
    out.write_all(table(&rows, &Columns::for_rows(&rows, Some(&args.by))).as_bytes())
        .map_err(Error::Output)
}

/// Follows `/api/v1/stream` until Ctrl-C or a closed stdout (both exit 0); a dropped
/// connection is resumed after the last event printed.
fn follow(client: &Client, args: &QueryArgs, out: &mut impl Write) -> Result<(), Error> {
    exit_on_interrupt()?;
    exit_when_stdout_closes();
    let mut params = vec![args.filter()];
    if let Some(w) = &args.window {
        params.push(("window", w.clone()));
    }
    let columns = Columns::streaming();
    let mut header = !args.json;
    let mut last_id: Option<String> = None;
    let mut retry = Duration::from_millis(1000);
    let mut connected = false;
    let mut warned = false;
    loop {
        match client.stream("/api/v1/stream", &params, last_id.as_deref()) {
            Ok(mut stream) => {
                connected = true;
                warned = false;
                loop {
                    match stream.next_frame() {
                        Ok(Some(Frame::Retry(ms))) => {
                            retry = Duration::from_millis(ms.clamp(100, 60_000))
                        }
                        Ok(Some(Frame::Event { event, data, id })) => {
                            if event != "window" {
                                continue;
                            }
                            let row: Value =
                                serde_json::from_str(&data).map_err(|e| Error::Answer {
                                    url: "/api/v1/stream".into(),
                                    reason: format!("a row that is not JSON: {e}"),
                                })?;
                            if args.json {
                                writeln!(out, "{data}")
                            } else {
                                if std::mem::take(&mut header) {
                                    out.write_all(columns.header().as_bytes())
                                        .map_err(Error::Output)?;
                                }
                                out.write_all(columns.line(&row).as_bytes())
                            }
                            .and_then(|()| out.flush())
                            .map_err(Error::Output)?;
                            last_id = id;
                        }
                        Ok(None) => {
                            eprintln!("sluice: the stream ended; reconnecting");
                            break;
                        }
                        Err(e) => {
                            eprintln!("sluice: the stream broke ({e}); reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(Error::BadRequest { parameter, .. })
                if parameter.as_deref() == Some("Last-Event-ID") && last_id.is_some() =>
            {
                eprintln!(
                    "sluice: the server no longer knows where the stream was; following from now"
                );
                last_id = None;
            }
            Err(e) if !connected || e.exit_code() == 2 => return Err(e),
            // Said once per outage, not at every try.
            Err(e) if !std::mem::replace(&mut warned, true) => {
                eprintln!("sluice: {}; retrying", e.short())
            }
            Err(_) => {}
        }
        std::thread::sleep(retry);
    }
}

/// Ends the process with exit 0 on SIGINT or SIGTERM: following ends by being stopped,
/// and every printed row is flushed already.
fn exit_on_interrupt() -> Result<(), Error> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(Error::Signals)?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            std::process::exit(0);
        }
    });
    Ok(())
}

/// Ends the process (exit 0) once nobody reads stdout any more (the writer of a pipe
/// whose reader closed sees POLLERR), so an idle `--follow | head -1` ends with `head`.
fn exit_when_stdout_closes() {
    use rustix::event::{PollFd, PollFlags, poll};
    std::thread::spawn(|| {
        let stdout = io::stdout();
        let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
        loop {
            match poll(&mut fds, None) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                    std::process::exit(0)
                }
                _ => return,
            }
        }
    });
}

fn rows_of(answer: &Value, field: &str, url: &str) -> Result<Vec<Value>, Error> {
    match &answer[field] {
        Value::Array(rows) => Ok(rows.clone()),
        _ => Err(Error::Answer {
            url: url.into(),
            reason: format!("no {field:?} array"),
        }),
    }
}

fn print_json(rows: &[Value], out: &mut impl Write) -> Result<(), Error> {
    for row in rows {
        serde_json::to_writer(&mut *out, row).map_err(|e| Error::Output(e.into()))?;
        out.write_all(b"\n").map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)
}

/// A table column: its header, how a row's cell reads, and whether it is a number.
#[derive(Debug, Clone, Copy)]
struct Column {
    header: &'static str,
    field: &'static str,
    numeric: bool,
}

const fn col(header: &'static str, field: &'static str, numeric: bool) -> Column {
    Column {
        header,
        field,
        numeric,
    }
}

/// The columns of one table.
#[derive(Debug)]
struct Columns {
    columns: Vec<Column>,
    /// Widths for a stream, whose rows are not known in advance.
    widths: Vec<usize>,
}

impl Columns {
    /// The columns `rows` need: sets add DISTINCT, open rows add STATE, `--top` puts its
    /// measure first after the key.
    fn for_rows(rows: &[Value], by: Option<&str>) -> Columns {
        let has = |f: &str| rows.iter().any(|r| r.get(f).is_some());
        let mut columns = vec![col("KEY", "key", false), col("WINDOW", "window", false)];
        columns.push(col("START", "start", false));
        for c in [
            col("COUNT", "count", true),
            col("SUM", "sum", true),
            col("MIN", "min", true),
            col("MEAN", "mean", true),
            col("MAX", "max", true),
            col("P99", "p99", true),
        ] {
            columns.push(c);
        }
        if has("distinct") {
            columns.push(col("DISTINCT", "distinct", true));
        }
        if let Some(by) = by
            && let Some(i) = columns.iter().position(|c| c.field == by)
        {
            let c = columns.remove(i);
            columns.insert(1, c);
        }
        if rows.iter().any(|r| r["final"] == false) {
            columns.push(col("STATE", "final", false));
        }
        Columns {
            columns,
            widths: Vec::new(),
        }
    }

    /// Fixed columns and widths for `--follow`.
    fn streaming() -> Columns {
        let mut c = Columns::for_rows(&[], None);
        c.widths = c
            .columns
            .iter()
            .map(|c| match c.field {
                "key" => 24,
                "window" => 6,
                "start" => 20,
                _ => 9,
            })
            .collect();
        c
    }

    fn header(&self) -> String {
        let cells: Vec<String> = self.columns.iter().map(|c| c.header.to_string()).collect();
        line(&self.columns, &cells, &self.widths)
    }

    fn line(&self, row: &Value) -> String {
        line(&self.columns, &cells(&self.columns, row), &self.widths)
    }
}

fn cells(columns: &[Column], row: &Value) -> Vec<String> {
    columns
        .iter()
        .map(|c| match (c.field, row.get(c.field)) {
            ("final", Some(Value::Bool(true))) => "closed".to_string(),
            ("final", _) => "open".to_string(),
            ("window", Some(Value::String(w))) => match row["hop"].as_str() {
                Some(hop) => format!("{w}/{hop}"),
                None => w.clone(),
            },
            (_, Some(Value::String(s))) => s.clone(),
            (_, Some(v)) => number(v),
            (_, None) => "-".to_string(),
        })
        .collect()
}

/// One line: text left-aligned, numbers right-aligned, two spaces between columns; the
/// last column is not padded.
fn line(columns: &[Column], cells: &[String], widths: &[usize]) -> String {
    let mut out = String::new();
    for (i, (c, cell)) in columns.iter().zip(cells).enumerate() {
        let w = widths.get(i).copied().unwrap_or(0);
        if i > 0 {
            out.push_str("  ");
        }
        if c.numeric {
            out.push_str(&format!("{cell:>w$}"));
        } else if i + 1 == columns.len() {
            out.push_str(cell);
        } else {
            out.push_str(&format!("{cell:<w$}"));
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// The rows as a table whose columns are as wide as their widest cell.
fn table(rows: &[Value], columns: &Columns) -> String {
    let body: Vec<Vec<String>> = rows.iter().map(|r| cells(&columns.columns, r)).collect();
    let header: Vec<String> = columns
        .columns
        .iter()
        .map(|c| c.header.to_string())
        .collect();
    let widths: Vec<usize> = (0..columns.columns.len())
        .map(|i| {
            body.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = line(&columns.columns, &header, &widths);
    for r in &body {
        out.push_str(&line(&columns.columns, r, &widths));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(key: &str, count: u64, sum: f64) -> Value {
        json!({"key": key, "window": "10s", "start": "2026-12-03T12:00:00Z",
               "start_ms": 1, "end": "2026-12-03T12:00:10Z", "end_ms": 2,
               "count": count, "sum": sum, "min": 1.0, "max": 3.0, "mean": sum / count as f64,
               "stddev": 0.5, "last": 3.0, "p50": 2.0, "p99": 3.0, "final": true})
    }

    #[test]
    fn a_table_aligns_text_left_and_numbers_right() {
        let rows = vec![row("room.a", 3, 6.0), row("room.bedroom", 12, 30.5)];
        let text = table(&rows, &Columns::for_rows(&rows, None));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "KEY           WINDOW  START                 COUNT   SUM  MIN   MEAN  MAX  P99",
                "room.a        10s     2026-12-03T12:00:00Z      3     6    1      2    3    3",
                "room.bedroom  10s     2026-12-03T12:00:00Z     12  30.5    1  2.542    3    3",
            ]
        );
    }

    #[test]
    fn sets_add_distinct_open_rows_add_state_and_top_puts_its_measure_first() {
        let mut set = json!({"key": "users", "window": "10s", "start": "s", "count": 4,
                             "distinct": 3, "final": false});
        let rows = vec![row("a", 1, 1.0), set.take()];
        let c = Columns::for_rows(&rows, Some("distinct"));
        let headers: Vec<&str> = c.columns.iter().map(|c| c.header).collect();
        assert_eq!(
            headers,
            [
                "KEY", "DISTINCT", "WINDOW", "START", "COUNT", "SUM", "MIN", "MEAN", "MAX", "P99",
                "STATE"
            ]
        );
        let text = table(&rows, &c);
        assert!(text.lines().nth(2).unwrap().ends_with("-  open"), "{text}");
    }

    #[test]
    fn a_stream_line_keeps_fixed_widths() {
        let c = Columns::streaming();
        let header = c.header();
        let line = c.line(&row("room.a", 3, 6.0));
        assert_eq!(
            header.find("COUNT").map(|i| i + 5),
            line.find(" 3 ").map(|i| i + 2)
        );
    }
}

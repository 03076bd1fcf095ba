//! `/metrics` as scrapers read it: `promtool check metrics` (Debian 12's prometheus 2.42)
//! finds nothing to complain about, the page comes as Prometheus text 0.0.4 or OpenMetrics
//! 1.0.0 as the request's `Accept` asks, a listener has reject series only for the
//! reasons its framing and format can produce, and the latency summaries hold sane values
//! after some traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Sluice, have, http_get_with, require, wait_for};

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const OPENMETRICS_001: &str = "application/openmetrics-text; version=0.0.1; charset=utf-8";

/// What Prometheus 2.42 sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Listeners of every kind of framing and several formats.
const LISTENERS: [&str; 5] = [
    "raw+tcp://127.0.0.1:0?name=raw&max_line_bytes=64",
    "statsd+udp://127.0.0.1:0?name=statsd",
    "syslog+tcp://127.0.0.1:0?name=syslog",
    "json+tcp://127.0.0.1:0?name=json&key=service&value=ms",
    "graphite+udp://127.0.0.1:0?name=graphite",
];

fn start(data: &Path, listeners: &[&str]) -> Sluice {
    let mut args = vec!["--cores", "2"];
    for l in listeners {
        args.extend(["--listen", l]);
    }
    Sluice::start(data, &args)
}

/// Sends good and bad lines to every listener of [`LISTENERS`] and waits until sluice has
/// counted them all, so the page has non-zero counters of several kinds.
fn feed(sluice: &Sluice) {
    let long = "x".repeat(100);
    for (name, text) in [
        ("raw", format!("hello\nworld\n{long}\n")),
        ("syslog", "<13>1 - host app - - - ok\n<13>1 -\n".to_string()),
        (
            "json",
            "{\"service\":\"a\",\"ms\":1}\nnot json\n".to_string(),
        ),
    ] {
        let mut conn = TcpStream::connect(sluice.addr(name)).unwrap();
        conn.write_all(text.as_bytes()).unwrap();
    }
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (name, datagram) in [
        ("statsd", &b"a:1|c\na:x|c"[..]),
        ("statsd", b""),
        ("graphite", b"a.b 1\na.b"),
    ] {
        udp.send_to(datagram, sluice.addr(name)).unwrap();
    }
    // (listener, lines accepted, lines rejected)
    let want = [
        ("raw", 2.0, 1.0),
        ("syslog", 2.0, 1.0),
        ("json", 2.0, 1.0),
        ("statsd", 2.0, 2.0),
        ("graphite", 2.0, 1.0),
    ];
    let counted = || {
        want.iter().all(|(name, lines, rejected)| {
            let l = format!("listener=\"{name}\"");
            sluice.metric("sluice_lines_total", &[&l]) == *lines
                && sluice.metric("sluice_rejected_total", &[&l]) == *rejected
        })
    };
    assert!(
        wait_for(Duration::from_secs(30), counted),
        "not all counted:\n{}",
        sluice.http_get("/metrics").1
    );
}

/// `/metrics` with `accept` (none: no `Accept` header): (content type, body).
fn scrape(sluice: &Sluice, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let (status, head, body) = http_get_with(sluice.admin(), "/metrics", &headers);
    assert_eq!(status, 200, "{head}\n{body}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_else(|| panic!("no content-type in {head}"));
    assert!(
        head.lines().any(|l| l == "vary: accept"),
        "no `vary: accept` in {head}"
    );
    (content_type.to_string(), body)
}

/// Runs `promtool check metrics` on `page`: (exit code, stdout and stderr).
fn promtool(page: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

/// Counter families of an OpenMetrics page: the names in `# TYPE NAME counter`.
fn openmetrics_counters(page: &str) -> BTreeSet<&str> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect()
}

#[test]
fn metrics_pass_promtool_check_in_text_and_openmetrics() {
    if !require(have("promtool"), "promtool (Debian package prometheus)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = start(&data, &LISTENERS);
    feed(&sluice);

    // What `curl -s URL | promtool check metrics` sees, and every way to ask for text.
    for accept in [
        None,
        Some("*/*"),
        Some("text/plain"),
        Some("text/plain;version=0.0.4"),
    ] {
        let (content_type, page) = scrape(&sluice, accept);
        assert_eq!(content_type, TEXT, "Accept: {accept:?}");
        let (code, said) = promtool(&page);
        assert_eq!(
            (code, said.as_str()),
            (Some(0), ""),
            "Accept: {accept:?}\n{page}"
        );
    }

    // promtool 2.42 reads any page with its text 0.0.4 parser. An OpenMetrics counter family
    // `x` has its HELP under `x` and its samples as `x_total`, which that parser takes for
    // a second family without HELP: the one thing it may say about a valid OpenMetrics page,
    // once per counter family. Anything else (a parse error, a lint) is a fault of the page.
    for accept in [PROMETHEUS_ACCEPT, "application/openmetrics-text"] {
        let (content_type, page) = scrape(&sluice, Some(accept));
        assert_eq!(content_type, OPENMETRICS, "Accept: {accept}");
        let counters = openmetrics_counters(&page);
        assert!(counters.contains("sluice_lines"), "{page}");
        let (code, said) = promtool(&page);
        let misread: BTreeSet<String> = counters
            .iter()
            .map(|c| format!("{c}_total no help text"))
            .collect();
        let other: Vec<&str> = said.lines().filter(|l| !misread.contains(*l)).collect();
        assert!(
            other.is_empty(),
            "promtool on OpenMetrics (exit {code:?}): {other:#?}\n{page}"
        );
        assert_eq!(said.lines().count(), counters.len(), "{said}");
    }
    assert_eq!(sluice.stop().code(), Some(0));
}

/// Whether a sample named `sample` belongs to the family `name` of `kind` (not a counter
/// of OpenMetrics): a summary's samples are its quantiles, `_sum` and `_count`.
fn sample_of(sample: &str, name: &str, kind: &str) -> bool {
    match kind {
        "summary" => [
            name.to_string(),
            format!("{name}_sum"),
            format!("{name}_count"),
        ]
        .contains(&sample.to_string()),
        _ => sample == name,
    }
}

/// Checks that `page` keeps the text 0.0.4 rules: no OpenMetrics-only lines, each family
/// with HELP and TYPE, counter families named `_total` with samples of that name.
fn check_text_page(page: &str) {
    assert!(!page.contains("# EOF"), "{page}");
    assert!(!page.contains("# UNIT"), "{page}");
    assert!(!page.contains("_created"), "{page}");
    let mut family: Option<(&str, &str)> = None;
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            family = Some((name, ""));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(family.map(|f| f.0), Some(name), "TYPE without HELP: {line}");
            assert!(matches!(kind, "counter" | "gauge" | "summary"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            family = Some((name, kind));
        } else {
            let (name, kind) = family.unwrap_or_else(|| panic!("sample before TYPE: {line}"));
            assert!(!kind.is_empty(), "sample after HELP without TYPE: {line}");
            let sample = line.split(['{', ' ']).next().unwrap();
            assert!(sample_of(sample, name, kind), "{line}");
        }
    }
}

/// Checks that `page` keeps the OpenMetrics 1.0.0 rules that differ from text 0.0.4: one
/// `# EOF` at the end, counter families without `_total` whose samples add it, UNIT lines
/// that name the family's suffix.
fn check_openmetrics_page(page: &str) {
    assert!(page.ends_with("\n# EOF\n"), "{page}");
    assert_eq!(page.matches("# EOF").count(), 1, "{page}");
    let mut family: Option<(&str, &str)> = None;
    let mut units = 0;
    for line in page.lines().filter(|l| *l != "# EOF") {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            family = Some((rest.split(' ').next().unwrap(), ""));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(family.map(|f| f.0), Some(name), "TYPE without HELP: {line}");
            assert!(!name.ends_with("_total"), "{line}");
            family = Some((name, kind));
        } else if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').unwrap();
            assert_eq!(family.map(|f| f.0), Some(name), "{line}");
            assert!(name.ends_with(&format!("_{unit}")), "{line}");
            units += 1;
        } else {
            let (name, kind) = family.unwrap_or_else(|| panic!("sample before TYPE: {line}"));
            let sample = line.split(['{', ' ']).next().unwrap();
            match kind {
                "counter" => assert_eq!(sample, format!("{name}_total"), "{line}"),
                _ => assert!(sample_of(sample, name, kind), "{line}"),
            }
        }
    }
    assert!(units > 0, "no UNIT line: {page}");
}

#[test]
fn metrics_honour_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = start(&data, &LISTENERS[..2]);
    for (accept, want) in [
        (None, TEXT),
        (Some("*/*"), TEXT),
        (Some("text/plain"), TEXT),
        (Some("text/plain;version=0.0.4"), TEXT),
        (Some("text/plain; version=\"0.0.4\"; charset=utf-8"), TEXT),
        (Some("application/json"), TEXT),
        (Some(PROMETHEUS_ACCEPT), OPENMETRICS),
        (Some("application/openmetrics-text"), OPENMETRICS),
        (
            Some("Application/OpenMetrics-Text; Version=1.0.0"),
            OPENMETRICS,
        ),
        (
            Some("application/openmetrics-text;version=0.0.1"),
            OPENMETRICS_001,
        ),
        // Preference goes by q, not by order; q=0 is "not acceptable".
        (Some("application/openmetrics-text;q=0.5,text/plain"), TEXT),
        (
            Some("text/plain;q=0.2, application/openmetrics-text"),
            OPENMETRICS,
        ),
        (Some("application/openmetrics-text;q=0,*/*"), TEXT),
        // A version sluice does not write is passed over.
        (
            Some("application/openmetrics-text;version=2.0.0,text/plain;q=0.1"),
            TEXT,
        ),
        (
            Some("text/plain;version=0.0.3,application/openmetrics-text;q=0.1"),
            OPENMETRICS,
        ),
    ] {
        let (content_type, page) = scrape(&sluice, accept);
        assert_eq!(content_type, want, "Accept: {accept:?}");
        if want == TEXT {
            check_text_page(&page);
        } else {
            check_openmetrics_page(&page);
        }
        // Both carry the same series under the same sample names.
        assert!(
            page.contains("\nsluice_lines_total{core=\"0\",listener=\"raw\""),
            "{page}"
        );
        assert!(page.contains("\nsluice_backpressure_seconds_total{core=\"1\"} "));
    }
    assert_eq!(sluice.stop().code(), Some(0));
}

/// The reasons each listener has `sluice_rejected_total` series for, from a text page; each
/// must be there for every core.
fn reject_series(page: &str, cores: usize) -> BTreeMap<String, BTreeSet<String>> {
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_string())
    };
    let mut per_core: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for line in page
        .lines()
        .filter(|l| l.starts_with("sluice_rejected_total{"))
    {
        let (listener, reason, core) = (
            label(line, "listener").unwrap(),
            label(line, "reason").unwrap(),
            label(line, "core").unwrap(),
        );
        per_core.entry((listener, reason)).or_default().insert(core);
    }
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((listener, reason), in_cores) in per_core {
        assert_eq!(in_cores.len(), cores, "{listener} {reason}: {in_cores:?}");
        out.entry(listener).or_default().insert(reason);
    }
    out
}

#[test]
fn reject_series_only_for_reasons_the_format_can_produce() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let listeners = [
        "raw+tcp://127.0.0.1:0?name=raw-tcp",
        "raw+udp://127.0.0.1:0?name=raw-udp",
        "statsd+udp://127.0.0.1:0?name=statsd-udp",
        "syslog+tcp://127.0.0.1:0?name=syslog-tcp",
        "syslog+udp://127.0.0.1:0?name=syslog-udp",
        "json+tcp://127.0.0.1:0?name=json-tcp&key=service&value=ms",
        "graphite+tcp://127.0.0.1:0?name=graphite-tcp",
        "influx+tcp://127.0.0.1:0?name=influx-tcp",
        "logfmt+tcp://127.0.0.1:0?name=logfmt-tcp",
    ];
    let sluice = start(&data, &listeners);
    let (_, page) = scrape(&sluice, Some("text/plain"));
    let got = reject_series(&page, 2);

    // Framing: every line can be too long; octet counting (syslog over TCP) and datagrams
    // (an empty one) can be bad frames. Late events are counted per core, never here.
    let stream = ["too_long"];
    let octet = ["too_long", "bad_frame"];
    let datagram = ["too_long", "bad_frame"];
    // What each parser returns, as its module doc lists it.
    let raw = ["bad_utf8", "no_key", "key_too_long"];
    let statsd = [
        "no_value",
        "no_key",
        "bad_syntax",
        "unknown_type",
        "bad_number",
        "bad_timestamp",
        "bad_utf8",
        "key_too_long",
    ];
    let syslog = ["bad_syntax", "bad_timestamp", "bad_utf8", "key_too_long"];
    let json = [
        "bad_utf8",
        "bad_syntax",
        "bad_number",
        "no_value",
        "bad_timestamp",
        "no_key",
        "key_too_long",
    ];
    let graphite = [
        "no_key",
        "no_value",
        "bad_number",
        "bad_timestamp",
        "bad_syntax",
        "bad_utf8",
        "key_too_long",
    ];
    let set = |a: &[&str], b: &[&str]| -> BTreeSet<String> {
        a.iter().chain(b).map(|s| s.to_string()).collect()
    };
    let want: BTreeMap<String, BTreeSet<String>> = [
        ("raw-tcp", set(&stream, &raw)),
        ("raw-udp", set(&datagram, &raw)),
        ("statsd-udp", set(&datagram, &statsd)),
        ("syslog-tcp", set(&octet, &syslog)),
        ("syslog-udp", set(&datagram, &syslog)),
        ("json-tcp", set(&stream, &json)),
        ("graphite-tcp", set(&stream, &graphite)),
        // influx: statsd's reasons (unknown_type: a value of no known type).
        ("influx-tcp", set(&stream, &statsd)),
        ("logfmt-tcp", set(&stream, &json)),
    ]
    .into_iter()
    .map(|(l, r)| (l.to_string(), r))
    .collect();
    assert_eq!(got, want, "{page}");
    assert!(!page.contains("reason=\"late\""), "{page}");
    assert_eq!(sluice.stop().code(), Some(0));
}

/// The value of the sample that is exactly `series` (name and labels) on `page`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn latency_summaries_hold_sane_values_after_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = Sluice::start(
        &data,
        &[
            "--cores",
            "2",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=graphite",
            "--window",
            "1s",
            "--allowed-lateness",
            "0s",
        ],
    );
    // Lines of now (no timestamp: their ingest time), on many keys so both shards fold, over
    // a few seconds so windows close; checkpoints commit every 5 s (up to 30 s here: a
    // loaded host).
    let mut conn = TcpStream::connect(sluice.addr("graphite")).unwrap();
    let summaries = [
        "sluice_ingest_to_fold_seconds",
        "sluice_close_to_write_seconds",
        "sluice_checkpoint_duration_seconds",
        "sluice_core_turn_seconds",
    ];
    let all_counted = |page: &str| {
        summaries.iter().all(|s| {
            sample(page, &format!("{s}_count")).unwrap_or(0.0) > 0.0
                && sample(page, &format!("{s}{{quantile=\"0.5\"}}")).is_some_and(|v| !v.is_nan())
        })
    };
    let mut page = String::new();
    for round in 0..600 {
        let lines: String = (0..50).map(|k| format!("lat.k{k} {round}\n")).collect();
        conn.write_all(lines.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        if round % 10 == 9 {
            page = scrape(&sluice, None).1;
            if all_counted(&page) {
                break;
            }
        }
    }
    assert!(all_counted(&page), "not every latency recorded:\n{page}");
    for s in summaries {
        let q: Vec<f64> = ["0.5", "0.9", "0.99", "0.999"]
            .iter()
            .map(|q| sample(&page, &format!("{s}{{quantile=\"{q}\"}}")).unwrap())
            .collect();
        assert!(
            q.windows(2).all(|w| w[0] <= w[1]),
            "{s} quantiles not ascending: {q:?}"
        );
        assert!(
            q[0] > 0.0 && q[3] < 10.0,
            "{s} quantiles out of range: {q:?}"
        );
        let sum = sample(&page, &format!("{s}_sum")).unwrap();
        let count = sample(&page, &format!("{s}_count")).unwrap();
        assert!(
            sum > 0.0 && sum / count < 10.0,
            "{s}: sum {sum}, count {count}"
        );
    }
    for core in 0..2 {
        let series = format!("sluice_core_stall_max_seconds{{core=\"{core}\"}}");
        let stall = sample(&page, &series).unwrap_or_else(|| panic!("no {series} in\n{page}"));
        assert!(stall > 0.0 && stall < 10.0, "{series} {stall}");
    }
    if require(have("promtool"), "promtool (Debian package prometheus)") {
        let (code, said) = promtool(&page);
        assert_eq!((code, said.as_str()), (Some(0), ""), "{page}");
    }
    let (_, om) = scrape(&sluice, Some("application/openmetrics-text"));
    check_openmetrics_page(&om);
    assert!(
        om.contains("# TYPE sluice_ingest_to_fold_seconds summary"),
        "{om}"
    );
    drop(conn);
    assert_eq!(sluice.stop().code(), Some(0));
}

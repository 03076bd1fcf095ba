//! Every format the way its own clients send it (util-linux `logger`, the PyPI `statsd` client,
//! `nc` with Influx line protocol, JSON lines and logfmt, the loghub samples), counted exactly;
//! and hostile input on every format's listeners, counted, dead-lettered and survived.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Sluice, have, noise, now_secs, read_aggregates, require, wait_for};

/// Windows of 1 s that close 5 s after their end: tests send events with the ingest time or
/// a minute in the past, in bursts well under 5 s apart.
const WINDOWS: [&str; 4] = ["--window", "1s", "--allowed-lateness", "5s"];

fn start(data: &Path, listens: &[&str]) -> Sluice {
    let mut args: Vec<&str> = vec!["--cores", "2"];
    args.extend(WINDOWS);
    for l in listens {
        args.extend(["--listen", l]);
    }
    Sluice::start(data, &args)
}

/// (count, sum) per key, over every window.
fn totals(data: &Path) -> BTreeMap<String, (u64, f64)> {
    let mut out = BTreeMap::new();
    for ((key, _, _), row) in read_aggregates(data) {
        let t = out.entry(key).or_insert((0, 0.0));
        t.0 += row.count;
        t.1 += row.sum;
    }
    out
}

/// Waits until every expected key has its count, then checks counts and sums exactly.
fn expect_totals(sluice: &Sluice, data: &Path, want: &[(&str, u64, f64)]) {
    let done = wait_for(Duration::from_secs(30), || {
        let got = totals(data);
        want.iter()
            .all(|(k, n, _)| got.get(*k).is_some_and(|t| t.0 >= *n))
    });
    let got = totals(data);
    assert!(
        done,
        "not all counted; want {want:?}\ngot {got:?}\n{}",
        sluice.stderr()
    );
    for (key, count, sum) in want {
        assert_eq!(got[*key], (*count, *sum), "{key}");
    }
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

/// Runs `cmd args` with `input` on stdin; panics on failure, with the command's stderr.
fn pipe(cmd: &str, args: &[&str], input: &[u8]) {
    let mut child = Command::new(cmd)
        .args(args)
        .env("TZ", "UTC")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    // A command that fails (say, cannot connect) closes its stdin early: report its stderr
    // rather than the broken pipe.
    let written = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && written.is_ok(),
        "{cmd} {args:?}: {} {written:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn numbered_lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("message {i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn logger_over_tcp_and_udp_is_counted_under_app_and_severity() {
    if !require(have("logger"), "logger (bsdutils)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = start(
        &data,
        &[
            "syslog+tcp://127.0.0.1:0?name=st",
            "syslog+udp://127.0.0.1:0?name=su",
        ],
    );
    let tcp = port(sluice.addr("st"));
    let udp = port(sluice.addr("su"));
    let host = ["-n", "127.0.0.1", "-P"];
    let run = |extra: &[&str], p: &str, tag: &str, pri: &str, n: usize| {
        let mut args = vec![];
        args.extend(extra);
        args.extend(host);
        args.extend([p, "-t", tag, "-p", pri]);
        pipe("logger", &args, &numbered_lines(n));
    };
    run(
        &["--rfc5424", "--octet-count", "-T"],
        &tcp,
        "app5424",
        "user.info",
        300,
    );
    run(&["--rfc3164", "-T"], &tcp, "app3164", "local0.warning", 200);
    run(&["--rfc5424", "-d"], &udp, "udp5424", "daemon.err", 50);
    run(&["--rfc3164", "-d"], &udp, "udp3164", "mail.notice", 40);
    expect_totals(
        &sluice,
        &data,
        &[
            ("app5424.info", 300, 300.0),
            ("app3164.warning", 200, 200.0),
            ("udp5424.err", 50, 50.0),
            ("udp3164.notice", 40, 40.0),
        ],
    );
    assert_eq!(sluice.metric("sluice_rejected_total", &[]), 0.0);
    assert!(sluice.stop().success());
}

const STATSD_CLIENT: &str = r#"
import sys, statsd
c = statsd.StatsClient("127.0.0.1", int(sys.argv[1]))
for i in range(100):
    c.incr("py.requests")
for i in range(50):
    c.timing("py.latency", 20)
c.gauge("py.temp", 21)
c.gauge("py.temp", 2, delta=True)
for i in range(20):
    with c.pipeline() as p:
        p.incr("py.pipe", 2)
        p.timing("py.pipe_latency", 5)
        p.incr("py.sampled", 1, rate=0.5)
"#;

#[test]
fn pypi_statsd_client_counters_timers_gauges_and_pipelines_are_counted() {
    let has_client = Command::new("python3")
        .args(["-c", "import statsd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(has_client, "python3 with the PyPI statsd package") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = start(&data, &["statsd+udp://127.0.0.1:0?name=sd"]);
    let p = port(sluice.addr("sd"));
    pipe("python3", &["-", &p], STATSD_CLIENT.as_bytes());
    // A sampled counter at rate 0.5 may be sent or not (the client samples); the pipeline
    // sends the others in one datagram of several lines.
    let done = wait_for(Duration::from_secs(30), || {
        let t = totals(&data);
        t.get("py.pipe_latency").is_some_and(|r| r.0 >= 20)
            && t.get("py.requests").is_some_and(|r| r.0 >= 100)
    });
    assert!(done, "{:?}\n{}", totals(&data), sluice.stderr());
    expect_totals(
        &sluice,
        &data,
        &[
            ("py.requests", 100, 100.0),
            ("py.latency", 50, 1000.0),
            ("py.temp", 2, 44.0), // 21, then +2: the gauge is 23
            ("py.pipe", 20, 40.0),
            ("py.pipe_latency", 20, 100.0),
        ],
    );
    if let Some((n, sum)) = totals(&data).get("py.sampled") {
        assert_eq!(*sum, 2.0 * *n as f64, "sampled counters count 1/rate each");
    }
    assert_eq!(sluice.metric("sluice_rejected_total", &[]), 0.0);
    assert!(sluice.stop().success());
}

#[test]
fn influx_json_and_logfmt_through_nc_are_counted_exactly() {
    if !require(have("nc"), "nc (netcat-openbsd)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = start(
        &data,
        &[
            "influx+tcp://127.0.0.1:0?name=in",
            "influx+udp://127.0.0.1:0?name=iu",
            "json+tcp://127.0.0.1:0?name=js&key=service,http.status&value=latency_ms&time=ts",
            "logfmt+tcp://127.0.0.1:0?name=lf&key=service,status&value=latency_ms&time=ts",
        ],
    );
    let t = now_secs() - 60;
    let mut influx = String::new();
    let mut json = String::new();
    let mut logfmt = String::new();
    for i in 0..200 {
        let host = ["a", "b"][i % 2];
        influx += &format!(
            "cpu,host={host},dc=eu\\ west usage={},idle={}i,up=t,note=\"x \\\" y\" {}\n",
            (i % 8) as f64 / 4.0,
            i % 10,
            (t * 1000 + i as i64) * 1_000_000
        );
        let (service, status) = (["cart", "search"][i % 2], [200, 503][i % 2]);
        let ts = if i % 2 == 0 {
            format!("{}", t * 1000 + i as i64)
        } else {
            format!("\"{}\"", sluice::window::rfc3339(t * 1000))
        };
        json += &format!(
            r#"{{"ts":{ts},"level":"info","service":"{service}","http":{{"method":"GET","status":{status}}},"latency_ms":{},"msg":"served"}}"#,
            (i % 4) as f64 / 2.0
        );
        json.push('\n');
        logfmt += &format!(
            "ts={} level=info service=lf-{service} status=\"{status}\" latency_ms={} msg=\"served \\\"ok\\\"\" cached\n",
            t,
            i % 3
        );
    }
    let nc = |addr: SocketAddr, input: &str| {
        pipe("nc", &["-q0", "127.0.0.1", &port(addr)], input.as_bytes());
    };
    nc(sluice.addr("in"), &influx);
    nc(sluice.addr("js"), &json);
    nc(sluice.addr("lf"), &logfmt);
    pipe(
        "nc",
        // -w0 may quit before reading stdin on a busy machine; -q0 quits at its end.
        &["-u", "-q0", "-w1", "127.0.0.1", &port(sluice.addr("iu"))],
        format!(
            "mem,host=c used=3,free=4u {}\nmem,host=c used=5",
            t * 1_000_000_000
        )
        .as_bytes(),
    );
    let sum = |f: &dyn Fn(usize) -> f64, parity: usize| -> f64 {
        (0..200).filter(|i| i % 2 == parity).map(f).sum()
    };
    let usage = |i: usize| (i % 8) as f64 / 4.0;
    let idle = |i: usize| (i % 10) as f64;
    let latency = |i: usize| (i % 4) as f64 / 2.0;
    let dur = |i: usize| (i % 3) as f64;
    expect_totals(
        &sluice,
        &data,
        &[
            ("cpu,dc=eu\\ west,host=a usage", 100, sum(&usage, 0)),
            ("cpu,dc=eu\\ west,host=b usage", 100, sum(&usage, 1)),
            ("cpu,dc=eu\\ west,host=a idle", 100, sum(&idle, 0)),
            ("cpu,dc=eu\\ west,host=b up", 100, 100.0),
            ("mem,host=c used", 2, 8.0),
            ("mem,host=c free", 1, 4.0),
            ("cart.200", 100, sum(&latency, 0)),
            ("search.503", 100, sum(&latency, 1)),
            ("lf-cart.200", 100, sum(&dur, 0)),
            ("lf-search.503", 100, sum(&dur, 1)),
        ],
    );
    let got = totals(&data);
    assert!(
        !got.keys().any(|k| k.contains("note")),
        "string fields give no event"
    );
    assert_eq!(got.len(), 12, "{:?}", got.keys());
    assert_eq!(sluice.metric("sluice_rejected_total", &[]), 0.0);
    assert!(sluice.stop().success());
}

#[test]
fn loghub_samples_through_raw_and_syslog_listeners_are_counted_without_a_reject() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/loghub");
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect(),
        Err(_) => {
            eprintln!("skipping: {} not found", dir.display());
            return;
        }
    };
    files.sort();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = start(
        &data,
        &[
            "raw+tcp://127.0.0.1:0?name=lr",
            "syslog+tcp://127.0.0.1:0?name=ls",
        ],
    );
    let mut lines = 0.0;
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        // CRLF lines, no final LF: framing strips the CR and delivers the last line at close.
        lines += bytes
            .split(|b| *b == b'\n')
            .filter(|l| l.trim_ascii() != b"")
            .count() as f64;
        for listener in ["lr", "ls"] {
            let mut c = TcpStream::connect(sluice.addr(listener)).unwrap();
            c.write_all(&bytes).unwrap();
        }
    }
    assert_eq!(lines, 2000.0 * files.len() as f64);
    for listener in ["lr", "ls"] {
        let filter = format!("listener=\"{listener}\"");
        let counted = wait_for(Duration::from_secs(30), || {
            sluice.metric("sluice_events_total", &[&filter]) >= lines
        });
        assert!(
            counted,
            "{listener}: {} of {lines} events, rejected {}",
            sluice.metric("sluice_events_total", &[&filter]),
            sluice.metric("sluice_rejected_total", &[&filter])
        );
        assert_eq!(sluice.metric("sluice_events_total", &[&filter]), lines);
        assert_eq!(
            sluice.metric("sluice_rejected_total", &[&filter]),
            0.0,
            "{listener}"
        );
    }
    assert!(sluice.stop().success());
}

/// One format's lines for the hostile test.
struct Hostile {
    format: &'static str,
    options: &'static str,
    /// A valid line keyed by the given tag; its key and value.
    valid: fn(&str) -> (String, String, f64),
    bad_utf8: &'static [u8],
    nan: Option<&'static str>,
}

const HOSTILE: &[Hostile] = &[
    Hostile {
        format: "graphite",
        options: "",
        valid: |tag| {
            (
                format!("after.{tag}.graphite 2"),
                format!("after.{tag}.graphite"),
                2.0,
            )
        },
        bad_utf8: b"bad.\xff\xfe.utf8 1",
        nan: Some("nan.value NaN"),
    },
    Hostile {
        format: "statsd",
        options: "",
        valid: |tag| {
            (
                format!("after.{tag}.statsd:3|c"),
                format!("after.{tag}.statsd"),
                3.0,
            )
        },
        bad_utf8: b"\xff\xfe:1|c",
        nan: Some("nan.value:NaN|g"),
    },
    Hostile {
        format: "influx",
        options: "",
        valid: |tag| {
            (
                format!("after,tag={tag} influx=4"),
                format!("after,tag={tag} influx"),
                4.0,
            )
        },
        bad_utf8: b"m\xff v=1",
        nan: Some("m v=NaN"),
    },
    Hostile {
        format: "json",
        options: "&key=k&value=v",
        valid: |tag| {
            let key = format!("after.{tag}.json");
            (format!(r#"{{"k":"{key}","v":5}}"#), key, 5.0)
        },
        bad_utf8: b"{\"k\":\"\xff\",\"v\":1}",
        nan: Some(r#"{"k":"nan","v":"NaN"}"#),
    },
    Hostile {
        format: "logfmt",
        options: "&key=k&value=v",
        valid: |tag| {
            (
                format!("k=after.{tag}.logfmt v=6"),
                format!("after.{tag}.logfmt"),
                6.0,
            )
        },
        bad_utf8: b"k=\xff v=1",
        nan: Some("k=nan v=NaN"),
    },
    Hostile {
        format: "syslog",
        options: "",
        valid: |tag| {
            (
                format!("<13>1 - host after{tag} - - - msg"),
                format!("after{tag}.notice"),
                1.0,
            )
        },
        bad_utf8: b"\xff\xfe not utf-8",
        nan: None,
    },
    Hostile {
        format: "raw",
        options: "&key=first_token",
        valid: |tag| {
            (
                format!("after.{tag}.raw GET /"),
                format!("after.{tag}.raw"),
                1.0,
            )
        },
        bad_utf8: b"\xff\xfe GET /",
        nan: None,
    },
];

#[test]
fn hostile_input_on_every_format_is_counted_dead_lettered_and_survived() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let specs: Vec<String> = HOSTILE
        .iter()
        .flat_map(|h| {
            ["tcp", "udp"].map(|proto| {
                format!(
                    "{}+{proto}://127.0.0.1:0?name=h{proto}-{}{}",
                    h.format, h.format, h.options
                )
            })
        })
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let sluice = start(&data, &specs);
    let mut want: Vec<(String, u64, f64)> = Vec::new();
    for h in HOSTILE {
        let name = format!("htcp-{}", h.format);
        let mut c = TcpStream::connect(sluice.addr(&name)).unwrap();
        // Start with a valid line, so syslog's framing detection picks newline framing.
        for (i, step) in ["first", "garbage", "long", "bad"].iter().enumerate() {
            match i {
                1 => c.write_all(&noise(1 << 20, 0x9e37_79b9_7f4a_7c15)).unwrap(),
                2 => c.write_all(&vec![b'x'; 4 << 20]).unwrap(),
                3 => {
                    c.write_all(h.bad_utf8).unwrap();
                    if let Some(nan) = h.nan {
                        c.write_all(format!("\n{nan}").as_bytes()).unwrap();
                    }
                }
                _ => {}
            }
            let (line, key, value) = (h.valid)(step);
            c.write_all(format!("\n{line}\n").as_bytes()).unwrap();
            want.push((key, 1, value));
        }
        drop(c);
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.connect(sluice.addr(&format!("hudp-{}", h.format)))
            .unwrap();
        u.send(b"").unwrap();
        u.send(&noise(1000, 7)).unwrap();
        u.send(h.bad_utf8).unwrap();
        if let Some(nan) = h.nan {
            u.send(nan.as_bytes()).unwrap();
        }
        let (line, key, value) = (h.valid)("udp");
        u.send(line.as_bytes()).unwrap();
        want.push((key, 1, value));
    }
    // Syslog over TCP: a good octet-counted frame, then one cut short by the peer.
    let mut c = TcpStream::connect(sluice.addr("htcp-syslog")).unwrap();
    let (line, key, value) = (HOSTILE[5].valid)("octet");
    c.write_all(format!("{} {line}", line.len()).as_bytes())
        .unwrap();
    c.write_all(b"100 <13>1 - host cut - - - only part of it")
        .unwrap();
    drop(c);
    want.push((key, 1, value));

    let want_ref: Vec<(&str, u64, f64)> =
        want.iter().map(|(k, n, v)| (k.as_str(), *n, *v)).collect();
    expect_totals(&sluice, &data, &want_ref);

    let rejected = |listener: &str, reason: &str| {
        sluice.metric(
            "sluice_rejected_total",
            &[
                &format!("listener=\"{listener}\""),
                &format!("reason=\"{reason}\""),
            ],
        )
    };
    let deadletters: String = std::fs::read_dir(data.join("deadletter"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let mut expected_rejects: Vec<(String, &str)> = Vec::new();
    for h in HOSTILE {
        let (tcp, udp) = (format!("htcp-{}", h.format), format!("hudp-{}", h.format));
        expected_rejects.push((tcp.clone(), "too_long"));
        expected_rejects.push((tcp.clone(), "bad_utf8"));
        expected_rejects.push((udp.clone(), "bad_utf8"));
        expected_rejects.push((udp.clone(), "bad_frame"));
        if h.nan.is_some() {
            expected_rejects.push((tcp.clone(), "bad_number"));
            expected_rejects.push((udp.clone(), "bad_number"));
        }
    }
    expected_rejects.push(("htcp-syslog".into(), "bad_frame"));
    for (listener, reason) in &expected_rejects {
        let counted = wait_for(Duration::from_secs(10), || {
            rejected(listener, reason) >= 1.0
        });
        assert!(counted, "{listener}: no {reason} counted");
        let record = format!("\"listener\":\"{listener}\",\"reason\":\"{reason}\"");
        let logged = wait_for(Duration::from_secs(10), || {
            std::fs::read_dir(data.join("deadletter"))
                .unwrap()
                .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                .any(|text| text.contains(&record))
        });
        assert!(
            logged,
            "{listener}: no {reason} dead letter\n{}",
            &deadletters[..deadletters.len().min(2000)]
        );
    }
    assert_eq!(sluice.http_get("/healthz").0, 200);
    assert!(sluice.stop().success());
}

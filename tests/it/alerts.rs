//! Alerts end to end: a rule over live Graphite input fires and resolves, delivered to a small
//! webhook receiver (a `TcpListener` here) and to Debian's real `prometheus-alertmanager`;
//! and across kill -9 (while pending, while firing, while the receiver is down) the receiver
//! sees one firing and one resolve, and `alerts/` holds what a run over the same log without
//! crashes writes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{
    Sluice, follow_stream, have, http_get, require, signal, wait_for, wait_timeout,
};

/// A webhook receiver: keeps every JSON body posted to it; answers 503 while `down`.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    down: Arc<AtomicBool>,
    refused: Arc<AtomicU32>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU32::new(0));
        let (b, d, r) = (bodies.clone(), down.clone(), refused.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (b, d, r) = (b.clone(), d.clone(), r.clone());
                std::thread::spawn(move || serve_one(conn, &b, &d, &r));
            }
        });
        Receiver {
            addr,
            bodies,
            down,
            refused,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// (status, fingerprint, startsAt) of every alert received, in order.
    fn alerts(&self) -> Vec<(String, String, String)> {
        self.bodies()
            .iter()
            .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
            .map(|a| {
                let s = |f: &str| a[f].as_str().unwrap_or_default().to_string();
                (s("status"), s("fingerprint"), s("startsAt"))
            })
            .collect()
    }
}

/// Reads one HTTP/1.1 request per connection (keep-alive requests in turn) and answers it.
fn serve_one(
    conn: TcpStream,
    bodies: &Mutex<Vec<serde_json::Value>>,
    down: &AtomicBool,
    refused: &AtomicU32,
) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = if down.load(Ordering::SeqCst) {
            refused.fetch_add(1, Ordering::SeqCst);
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
        } else {
            if let Ok(v) = serde_json::from_slice(&body) {
                bodies.lock().unwrap().push(v);
            }
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        };
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Debian's Alertmanager on a free port with its own storage dir; stopped by PID on drop.
struct Alertmanager {
    child: Child,
    url: String,
}

impl Alertmanager {
    fn start(dir: &Path) -> Alertmanager {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n",
        )
        .unwrap();
        let storage = dir.join("am-data");
        std::fs::create_dir_all(&storage).unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-alertmanager");
        let am = Alertmanager {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_for(Duration::from_secs(30), || http_get(addr, "/-/ready").0
                == 200),
            "alertmanager did not become ready"
        );
        am
    }

    fn alerts(&self) -> serde_json::Value {
        let addr: SocketAddr = self.url.trim_start_matches("http://").parse().unwrap();
        let (status, body) = http_get(addr, "/api/v2/alerts");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            signal(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
    }
}

/// Sends `key` `rate` times a second (event time = now) until told otherwise; `rate` may
/// change while it runs.
struct Sender {
    rate: Arc<AtomicU32>,
    target: Arc<Mutex<Option<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    fn start(key: &'static str, rate: u32, target: SocketAddr) -> Sender {
        let rate = Arc::new(AtomicU32::new(rate));
        let target = Arc::new(Mutex::new(Some(target)));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, t, s) = (rate.clone(), target.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conn: Option<TcpStream> = None;
            let mut sent_in_second = (0i64, 0u32);
            while !s.load(Ordering::Relaxed) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let secs = now.as_secs() as i64;
                if sent_in_second.0 != secs {
                    sent_in_second = (secs, 0);
                }
                if sent_in_second.1 < r.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        let addr = *t.lock().unwrap();
                        conn = addr.and_then(|a| TcpStream::connect(a).ok());
                    }
                    let line = format!("{key} 1 {secs}\n");
                    match conn.as_mut().map(|c| c.write_all(line.as_bytes())) {
                        Some(Ok(())) => sent_in_second.1 += 1,
                        _ => conn = None,
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sender {
            rate,
            target,
            stop,
            thread: Some(thread),
        }
    }

    fn set_rate(&self, rate: u32) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    fn retarget(&self, addr: Option<SocketAddr>) {
        *self.target.lock().unwrap() = addr;
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A configuration with two cores, one 1 s window, the rule, and the notifiers (Alertmanager
/// is told again of firing alerts every 2 s).
fn write_config(dir: &Path, webhook: &str, alertmanager: Option<&str>) -> PathBuf {
    let am = alertmanager.map_or(String::new(), |u| {
        format!("alertmanager = [\"{u}\"]\nresend_interval = \"2s\"\n")
    });
    let text = format!(
        r#"{ONE_SECOND_WINDOWS}
[checkpoint]
interval_ms = 200

[[alert]]
name = "api_errors_high"
key = "api.errors"
value = "count"
above = 5
for = 3
clear = 2
severity = "critical"
labels = {{ team = "api" }}
annotations = {{ summary = "{{{{key}}}}: {{{{value}}}} errors in {{{{window}}}}" }}

[notify]
webhook = ["{webhook}"]
{am}"#
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn alert_rows(data_dir: &Path) -> Vec<serde_json::Value> {
    crate::harness::record_rows(data_dir, "alerts")
}

#[test]
fn an_alert_reaches_a_webhook_and_a_real_alertmanager_once_firing_and_once_resolved() {
    if !require(have("prometheus-alertmanager"), "prometheus-alertmanager") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let am = Alertmanager::start(tmp.path());
    let receiver = Receiver::start();
    let config = write_config(tmp.path(), &receiver.url(), Some(&am.url));
    let data_dir = tmp.path().join("data");
    let sluice = Sluice::start(&data_dir, &["--config", config.to_str().unwrap()]);
    let stream = follow_stream(sluice.admin(), "/api/v1/stream?key=api.errors");
    let sender = Sender::start("api.errors", 10, sluice.addr("g"));

    assert!(
        wait_for(Duration::from_secs(30), || !receiver.alerts().is_empty()),
        "no firing notification:\n{}",
        sluice.stderr()
    );
    let body = receiver.bodies()[0].clone();
    let missing = sluice::alerts::notify::missing_v4_fields(&body);
    assert!(missing.is_empty(), "{missing:?} missing in {body}");
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    let alert = &body["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "api_errors_high");
    assert_eq!(alert["labels"]["key"], "api.errors");
    assert_eq!(alert["labels"]["team"], "api");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("api.errors: ")
    );
    assert!(
        alert["generatorURL"]
            .as_str()
            .unwrap()
            .starts_with("http://")
    );

    // Alertmanager lists it with sluice's labels.
    assert!(
        wait_for(Duration::from_secs(20), || {
            am.alerts().as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "api_errors_high"
                        && x["labels"]["key"] == "api.errors"
                        && x["labels"]["team"] == "api"
                })
            })
        }),
        "alertmanager does not list the alert: {}",
        am.alerts()
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            let text = stream.lock().unwrap().clone();
            text.contains("event: alert\ndata: {\"alert\":\"api_errors_high\"")
                && text.contains("\"state\":\"firing\"")
        }),
        "no `event: alert` on the stream: {}",
        stream.lock().unwrap()
    );
    // Alertmanager's own fingerprint of the label set is the one sluice sent.
    let listed = am.alerts();
    let theirs = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["labels"]["alertname"] == "api_errors_high")
        .unwrap()["fingerprint"]
        .clone();
    assert_eq!(theirs, alert["fingerprint"], "{listed}");
    // While it fires, sluice tells Alertmanager again (every `resend_interval`, 2 s here),
    // each time with `endsAt` further ahead, so the alert never lapses there.
    let ends_at = |alerts: &serde_json::Value| {
        alerts.as_array().and_then(|a| {
            a.iter()
                .find(|x| x["labels"]["alertname"] == "api_errors_high")
                .and_then(|x| x["endsAt"].as_str().map(str::to_string))
        })
    };
    let first_ends = ends_at(&listed).expect("endsAt");
    assert!(
        wait_for(Duration::from_secs(10), || {
            ends_at(&am.alerts()).is_some_and(|e| e != first_ends)
        }),
        "no re-send moved endsAt on from {first_ends}: {}",
        am.alerts()
    );
    let (status, body) = sluice.http_get("/api/v1/alerts");
    assert_eq!(status, 200);
    assert!(body.contains("\"state\":\"firing\""), "{body}");
    assert_eq!(
        sluice.metric("sluice_alerts_firing", &["alert=\"api_errors_high\""]),
        1.0
    );

    // Below `clear` for three windows: one resolve, same fingerprint and startsAt.
    sender.set_rate(1);
    assert!(
        wait_for(Duration::from_secs(30), || receiver.alerts().len() >= 2),
        "no resolved notification:\n{}",
        sluice.stderr()
    );
    // Nothing more follows.
    std::thread::sleep(Duration::from_secs(2));
    let alerts = receiver.alerts();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0].0, "firing");
    assert_eq!(alerts[1].0, "resolved");
    assert_eq!(alerts[0].1, alerts[1].1, "fingerprint");
    assert_eq!(alerts[0].2, alerts[1].2, "startsAt");
    assert!(
        wait_for(Duration::from_secs(20), || {
            !am.alerts().as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["labels"]["alertname"] == "api_errors_high")
            })
        }),
        "alertmanager still lists a resolved alert: {}",
        am.alerts()
    );
    assert!(sluice.metric("sluice_notifications_total", &["result=\"success\""]) >= 4.0);
    drop(sender);
    assert!(sluice.stop().success());
}

#[test]
fn kill_9_while_pending_firing_and_with_the_receiver_down_neither_refires_nor_forgets() {
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    // Two cores: after a restart the sender's connection may land on the other core, and
    // the oracle replays both partitions at once (each core holds the frontier until its
    // own replay gives it a watermark, so neither closes windows the other's log fills).
    let config = write_config(tmp.path(), &receiver.url(), None);
    let config = config.to_str().unwrap().to_string();
    let data_dir = tmp.path().join("data");
    let args = ["--config", config.as_str()];
    let mut sluice = Sluice::start(&data_dir, &args);
    let sender = Sender::start("api.errors", 10, sluice.addr("g"));
    let restart = |sluice: Sluice| -> Sluice {
        let mut sluice = sluice;
        signal(sluice.child.id(), "KILL");
        let _ = sluice.child.wait();
        sender.retarget(None);
        let s = Sluice::start(&data_dir, &args);
        sender.retarget(Some(s.addr("g")));
        s
    };
    // Pending: a pending row is written (one or two windows over the threshold).
    assert!(
        wait_for(Duration::from_secs(30), || alert_rows(&data_dir)
            .iter()
            .any(|r| r["state"] == "pending")),
        "never pending"
    );
    sluice = restart(sluice);
    assert!(
        wait_for(Duration::from_secs(30), || !receiver.alerts().is_empty()),
        "no firing notification after a crash while pending:\n{}",
        sluice.stderr()
    );
    // Firing: crash, and crash again with the receiver down and the resolve queued.
    sluice = restart(sluice);
    // The restarted board knows the alert fires: from the checkpoint's states, or (when the
    // crash came before a checkpoint held it) from the row replay writes again.
    assert!(
        wait_for(Duration::from_secs(10), || sluice
            .http_get("/api/v1/alerts")
            .1
            .contains("\"state\":\"firing\"")),
        "the board lost the firing alert: {}",
        sluice.http_get("/api/v1/alerts").1
    );
    receiver.down.store(true, Ordering::SeqCst);
    sender.set_rate(0);
    assert!(
        wait_for(Duration::from_secs(30), || alert_rows(&data_dir)
            .iter()
            .any(|r| r["state"] == "resolved")),
        "never resolved:\n{}",
        sluice.stderr()
    );
    assert!(wait_for(Duration::from_secs(10), || receiver
        .refused
        .load(Ordering::SeqCst)
        > 0));
    sluice = restart(sluice);
    receiver.down.store(false, Ordering::SeqCst);
    assert!(
        wait_for(Duration::from_secs(30), || receiver
            .alerts()
            .iter()
            .any(|a| a.0 == "resolved")),
        "the queued resolve never arrived:\n{}",
        sluice.stderr()
    );
    std::thread::sleep(Duration::from_secs(2));
    drop(sender);
    let alerts = receiver.alerts();
    // Re-sends of one firing keep its fingerprint and startsAt; one alert, one resolve.
    let firing: std::collections::BTreeSet<_> = alerts
        .iter()
        .filter(|a| a.0 == "firing")
        .map(|a| (a.1.clone(), a.2.clone()))
        .collect();
    assert_eq!(firing.len(), 1, "{alerts:?}");
    assert_eq!(
        alerts.iter().filter(|a| a.0 == "resolved").count(),
        1,
        "{alerts:?}"
    );
    assert_eq!(alerts.last().unwrap().0, "resolved", "in order: {alerts:?}");
    let crashed = alert_rows(&data_dir);
    assert!(sluice.stop().success());

    // The oracle: the same log, read by a fresh instance with no checkpoint.
    let fresh = crate::harness::copy_log(&data_dir, &tmp.path().join("fresh"));
    let resolved_at = crashed
        .iter()
        .filter(|r| r["state"] == "resolved")
        .map(|r| r["at_ms"].as_i64().unwrap())
        .max()
        .unwrap();
    let quiet = tmp.path().join("quiet.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&receiver.url(), "http://127.0.0.1:9/");
    std::fs::write(&quiet, text).unwrap();
    let oracle = Sluice::start(&fresh, &["--config", quiet.to_str().unwrap()]);
    let upto = |rows: &[serde_json::Value]| -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in rows
            .iter()
            .filter(|r| r["at_ms"].as_i64().unwrap() <= resolved_at)
        {
            *out.entry(r.to_string()).or_default() += 1;
        }
        out
    };
    assert!(
        wait_for(Duration::from_secs(30), || upto(&alert_rows(&fresh))
            == upto(&crashed)),
        "alerts/ after crashes:\n{:#?}\nwithout:\n{:#?}",
        upto(&crashed),
        upto(&alert_rows(&fresh))
    );
    assert!(oracle.stop().success());
}

#[test]
fn a_bad_rule_exits_2_naming_the_rule_and_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("value = \"p42\"\nabove = 1", 5, "unknown aggregate"),
        ("above = 1\nbelow = 2", 6, "not both"),
        ("above = 1\nfor = 0", 6, "for = 0"),
        (
            "above = 1\nannotations = { s = \"{{nope}}\" }",
            6,
            "unknown template field",
        ),
    ];
    for (body, line, message) in cases {
        let text = format!(
            "[window]\nsizes = [\"10s\"]\n\n[[alert]]\nname = \"bad_one\"\nkey = \"k\"\n{body}\n"
        );
        // The rule's keys start at line 5 (`name`); `body`'s first key is on line 7.
        let line = line + 2;
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let data = tmp.path().join("data");
        let out = crate::harness::run(&[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{stderr}");
        assert!(stderr.contains("bad_one"), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(stderr.contains(&format!("line {line}")), "{text}\n{stderr}");
    }
    // A rule's window is checked against the sizes in force: `--window` replaces the file's.
    let path = tmp.path().join("fast.toml");
    std::fs::write(
        &path,
        "[window]\nsizes = [\"10s\"]\n\n[[alert]]\nname = \"fast\"\nkey = \"k\"\nwindow = \"1s\"\nabove = 1\n",
    )
    .unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        crate::harness::run(&args)
    };
    let out = check(&["--window", "1s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 7") && stderr.contains("fast"),
        "{stderr}"
    );
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Two cores, Graphite over TCP, 1 s windows closing at once: the alert tests' base.
const ONE_SECOND_WINDOWS: &str = r#"cores = 2

[[listener]]
name = "g"
proto = "tcp"
addr = "127.0.0.1:0"
format = "graphite"

[window]
sizes = ["1s"]
allowed_lateness = "0s"
quantiles = []
"#;

#[test]
fn a_receiver_down_for_a_minute_then_up_gets_every_transition_in_order_and_memory_stays_flat() {
    let down_secs: u64 = std::env::var("SLUICE_ALERTS_DOWN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    receiver.down.store(true, Ordering::SeqCst);
    let config = tmp.path().join("flap.toml");
    std::fs::write(
        &config,
        format!(
            r#"{ONE_SECOND_WINDOWS}
[[alert]]
name = "flapping"
prefix = "flap."
above = 5

[notify]
webhook = ["{}"]
"#,
            receiver.url()
        ),
    )
    .unwrap();
    let data_dir = tmp.path().join("data");
    let sluice = Sluice::start(&data_dir, &["--config", config.to_str().unwrap()]);
    let pid = sluice.child.id();
    // 100 keys, over the threshold in even seconds and under it in odd ones: 100 transitions
    // a second, far more than a notifier holds.
    let stop = Arc::new(AtomicBool::new(false));
    let target = sluice.addr("g");
    let s = stop.clone();
    let sender = std::thread::spawn(move || {
        let mut conn = TcpStream::connect(target).unwrap();
        let mut last = 0;
        while !s.load(Ordering::Relaxed) {
            let secs = crate::harness::now_secs();
            if secs != last {
                last = secs;
                let n = if secs % 2 == 0 { 10 } else { 1 };
                let mut batch = String::new();
                for k in 0..100 {
                    for _ in 0..n {
                        batch.push_str(&format!("flap.{k} 1 {secs}\n"));
                    }
                }
                conn.write_all(batch.as_bytes()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // Warm up, then watch memory while the receiver stays down.
    assert!(wait_for(Duration::from_secs(20), || receiver
        .refused
        .load(Ordering::SeqCst)
        > 0));
    std::thread::sleep(Duration::from_secs(5));
    let base = rss_kib(pid);
    let mut peak = base;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(down_secs) {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(rss_kib(pid));
    }
    let queued = sluice.metric("sluice_notifications_queued", &[]);
    assert!(queued <= 1024.0, "{queued} queued");
    assert!(
        peak < base + 16 * 1024,
        "memory grew from {base} KiB to {peak} KiB while the receiver was down"
    );
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    receiver.down.store(false, Ordering::SeqCst);
    // Every key resolves once its input stops; then every transition is delivered.
    let expected = || -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for r in alert_rows(&data_dir) {
            let state = r["state"].as_str().unwrap().to_string();
            if state == "firing" || state == "resolved" {
                let fp = r["fingerprint"].as_str().unwrap().to_string();
                out.entry(fp)
                    .or_default()
                    .push((state, r["starts_at"].as_str().unwrap().to_string()));
            }
        }
        out
    };
    let got = || -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (status, fp, starts) in receiver.alerts() {
            out.entry(fp).or_default().push((status, starts));
        }
        out
    };
    assert!(
        wait_for(Duration::from_secs(120), || {
            let e = expected();
            !e.is_empty() && e.values().all(|v| v.last().unwrap().0 == "resolved") && got() == e
        }),
        "not every transition arrived in order: {} alerts expected, {} got; {} transitions \
         expected, {} got",
        expected().len(),
        got().len(),
        expected().values().map(Vec::len).sum::<usize>(),
        got().values().map(Vec::len).sum::<usize>()
    );
    let transitions: usize = expected().values().map(Vec::len).sum();
    eprintln!(
        "receiver down {down_secs} s: {transitions} transitions delivered in order after; \
         memory {base} KiB → peak {peak} KiB"
    );
    assert!(transitions > 1024 * 2, "{transitions}");
    assert!(sluice.stop().success());
}

#[test]
fn alertmanager_firing_alerts_end_four_resend_intervals_ahead_and_resolved_ones_at_their_time() {
    // Pure: the body sluice posts (its unit is here, beside the real Alertmanager test).
    let row: sluice::alerts::Row = serde_json::from_value(serde_json::json!({
        "alert": "a", "key": "k", "state": "firing", "at": "2026-01-01T00:00:10Z",
        "at_ms": 1767225610000i64, "window": "10s", "start_ms": 1767225600000i64,
        "value": 3.0, "threshold": 1.0, "starts_at": "2026-01-01T00:00:10Z",
        "starts_at_ms": 1767225610000i64, "fingerprint": "00", "labels": {"alertname": "a"},
        "annotations": {}
    }))
    .unwrap();
    let mut resolved = row.clone();
    resolved.state = "resolved".into();
    resolved.at = "2026-01-01T00:00:40Z".into();
    let now = 1767225700000i64;
    let body = sluice::alerts::notify::alertmanager_body(&[row, resolved], "http://x", now, 60_000);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v[0]["startsAt"], "2026-01-01T00:00:10Z");
    assert_eq!(v[0]["endsAt"], "2026-01-01T00:05:40Z");
    assert_eq!(v[1]["endsAt"], "2026-01-01T00:00:40Z");
    assert_eq!(v[0]["labels"]["alertname"], "a");
}

#[test]
fn a_deadman_fires_for_a_silent_sensor_in_event_time_and_when_all_input_is_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("deadman.toml");
    std::fs::write(
        &config,
        format!(
            r#"{ONE_SECOND_WINDOWS}
[[alert]]
name = "sensor_silent"
prefix = "sensors."
absent = "3s"
"#
        ),
    )
    .unwrap();
    let data_dir = tmp.path().join("data");
    let sluice = Sluice::start(&data_dir, &["--config", config.to_str().unwrap()]);
    let a = Sender::start("sensors.a", 5, sluice.addr("g"));
    let b = Sender::start("sensors.b", 5, sluice.addr("g"));
    let firing = |key: &str| {
        alert_rows(&data_dir)
            .into_iter()
            .find(|r| r["key"] == key && r["state"] == "firing")
    };
    assert!(wait_for(Duration::from_secs(20), || alert_rows(&data_dir)
        .is_empty()
        && sluice.metric("sluice_windows_closed_total", &[]) >= 6.0));
    // sensors.b goes silent while sensors.a goes on: event time says it is absent.
    drop(b);
    let stopped = crate::harness::now_secs();
    assert!(
        wait_for(Duration::from_secs(20), || firing("sensors.b").is_some()),
        "sensors.b never reported silent:\n{}",
        sluice.stderr()
    );
    let row = firing("sensors.b").unwrap();
    let silent_s = row["value"].as_f64().unwrap();
    assert!((3.0..6.0).contains(&silent_s), "{row}");
    assert!(
        row["at_ms"].as_i64().unwrap() / 1000 >= stopped + 2,
        "{row}"
    );
    assert!(firing("sensors.a").is_none());
    assert!(
        wait_for(Duration::from_secs(10), || sluice
            .http_get("/api/v1/alerts")
            .1
            .contains("\"key\":\"sensors.b\"")),
        "{}",
        sluice.http_get("/api/v1/alerts").1
    );
    // Then every input stops: the watermark follows the clock and sensors.a fires too.
    drop(a);
    assert!(
        wait_for(Duration::from_secs(20), || firing("sensors.a").is_some()),
        "sensors.a never reported silent with all input idle:\n{}",
        sluice.stderr()
    );
    assert_eq!(
        sluice.metric("sluice_alerts_firing", &["alert=\"sensor_silent\""]),
        2.0
    );
    assert!(sluice.stop().success());
}

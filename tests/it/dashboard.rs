//! The dashboard at `/`: its files are served with their types, the content security policy
//! and ETags; and in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol) against a sluice fed by loadgen, every panel fills, the charts hold data, the
//! console shows no error (a CSP violation is one) and scripts cannot reach another address.
//! A screenshot is saved in the test's temp dir, or at `SLUICE_DASHBOARD_SCREENSHOT`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Sluice, have, http_get_with, require};

fn start_sluice(dir: &Path) -> Sluice {
    // An alert that fires at once for every loadgen key, so the alerts panel has rows.
    let config = dir.join("alerts.toml");
    std::fs::write(
        &config,
        "[window]\nsizes = [\"1s\", \"10s\"]\nallowed_lateness = \"1s\"\n\n\
         [[alert]]\nname = \"busy\"\nprefix = \"key\"\nwindow = \"1s\"\nvalue = \"count\"\nabove = 0\n",
    )
    .unwrap();
    Sluice::start(
        &dir.join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--cores",
            "2",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=graphite",
            "--listen",
            "statsd+udp://127.0.0.1:0?name=statsd",
        ],
    )
}

#[test]
fn the_page_and_its_files_carry_their_types_the_policy_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start_sluice(dir.path());
    let admin = sluice.admin();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/chart.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let (status, head, body) = http_get_with(admin, path, &[]);
        assert_eq!(status, 200, "{path}: {head}");
        assert!(!body.is_empty(), "{path}: empty");
        for want in [
            format!("content-type: {content_type}"),
            "cache-control: no-cache".to_string(),
            "x-content-type-options: nosniff".to_string(),
            "content-security-policy: default-src 'self'; connect-src 'self'; img-src 'self' \
             data:; style-src 'self'; script-src 'self'"
                .to_string(),
        ] {
            assert!(head.contains(&want), "{path}: no `{want}` in\n{head}");
        }
        let etag = head
            .lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .unwrap_or_else(|| panic!("{path}: no etag in\n{head}"))
            .to_string();
        let (status, head, body) = http_get_with(admin, path, &[("If-None-Match", &etag)]);
        assert_eq!((status, body.as_str()), (304, ""), "{path}: {head}");
        let (status, _, _) = http_get_with(admin, path, &[("If-None-Match", "\"other\"")]);
        assert_eq!(status, 200, "{path}: a different tag must get the file");
    }
    // Whatever a client asks under /ui/, the answer is a file or a 404.
    for path in [
        "/ui/nope.js",
        "/ui/..%2fmod.rs",
        "/ui/%00",
        "/ui/app.js%20",
        "/ui/",
    ] {
        let (status, head, _) = http_get_with(admin, path, &[]);
        assert_eq!(status, 404, "{path}: {head}");
    }
    let (status, body) = sluice.http_get("/api/v1/status");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["windows"], json!(["1s", "10s"]), "{body}");
}

/// Headless Chromium, spoken to over `--remote-debugging-pipe` (fds 3 and 4, given it
/// through two FIFOs by the shell that execs it: no `unsafe` fd juggling here).
struct Browser {
    child: Child,
    to: File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// Events seen so far, in order.
    events: Vec<Value>,
}

impl Browser {
    fn start(dir: &Path) -> Browser {
        let to_path = dir.join("cdp-in");
        let from_path = dir.join("cdp-out");
        for p in [&to_path, &from_path] {
            let ok = Command::new("mkfifo").arg(p).status().unwrap();
            assert!(ok.success(), "mkfifo {p:?}");
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<"$CDP_IN" 4>"$CDP_OUT""#)
            .arg("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-pipe",
                "--window-size=1366,900",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg("about:blank")
            .env("CDP_IN", &to_path)
            .env("CDP_OUT", &from_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("chromium.log")).unwrap())
            .spawn()
            .expect("spawn chromium");
        // Each open waits for the other end, which the shell opens in this order.
        let to = std::fs::OpenOptions::new()
            .write(true)
            .open(&to_path)
            .unwrap();
        let from = File::open(&from_path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut from = BufReader::new(from);
            let mut message = Vec::new();
            loop {
                message.clear();
                match from.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop_if(|b| *b == 0);
                let Ok(v) = serde_json::from_slice::<Value>(&message) else {
                    continue;
                };
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Browser {
            child,
            to,
            from: rx,
            next_id: 1,
            session: None,
            events: Vec::new(),
        }
    }

    /// Calls `method` (on the attached page, once there is one) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{method}: no answer from chromium ({e})"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Evaluates `expression` in the page; its value (awaited, if a promise).
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// What the page reported as an error: exceptions, `console.error`, and the browser's
    /// own error entries (failed loads, CSP violations).
    fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| {
                let p = &e["params"];
                match e["method"].as_str() {
                    Some("Runtime.exceptionThrown") => true,
                    Some("Runtime.consoleAPICalled") => {
                        matches!(p["type"].as_str(), Some("error" | "assert"))
                    }
                    Some("Log.entryAdded") => p["entry"]["level"] == "error",
                    _ => false,
                }
            })
            .map(|e| e.to_string())
            .collect()
    }
}

impl Browser {
    /// Asks the browser to quit and waits a little for it.
    fn close(&mut self) {
        let mut bytes = serde_json::to_vec(&json!({"id": 0, "method": "Browser.close"})).unwrap();
        bytes.push(0);
        let _ = self.to.write_all(&bytes);
        let _ = crate::harness::wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes standard base64 (the screenshot's encoding).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Starts loadgen at `rate` events/s for at most a minute.
fn loadgen(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args([
            "--duration",
            "60s",
            "--line-bytes",
            "1",
            "--pool-lines",
            "20000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn loadgen")
}

/// Kills a child of ours when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_dashboard_fills_its_panels_in_headless_chromium_without_console_errors() {
    if !require(have("chromium"), "chromium (apt package chromium)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sluice = start_sluice(dir.path());
    let graphite = sluice.addr("graphite").to_string();
    let statsd = sluice.addr("statsd").to_string();
    let _feeds = [
        Killed(loadgen(&[
            "--addr", &graphite, "--rate", "3000", "--keys", "40", "--zipf", "1.2",
        ])),
        Killed(loadgen(&[
            "--addr", &statsd, "--proto", "udp", "--format", "statsd", "--no-gso", "--rate", "800",
            "--keys", "40", "--seed", "2",
        ])),
    ];

    let mut browser = Browser::start(dir.path());
    let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
    let attached = browser.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    browser.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    for method in ["Runtime.enable", "Log.enable", "Page.enable"] {
        browser.call(method, json!({}));
    }
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1366, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    );
    let url = format!("http://{}/", sluice.admin());
    browser.call("Page.navigate", json!({"url": url}));

    // Ready: throughput has points, top has keys, the key chart has windows. Then a few
    // more windows, so the key chart draws lines rather than dots.
    let settle: usize = std::env::var("SLUICE_DASHBOARD_SETTLE_WINDOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let points = browser.eval(
            "document.body && document.body.dataset.ready === 'true' \
             ? Number(document.getElementById('chart-key-count').dataset.points) : -1",
        );
        if points.as_i64().unwrap_or(-1) >= settle as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never held data (key chart points: {points}); errors: {:?}\n{}",
            browser.errors(),
            browser.eval("document.body.outerHTML"),
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let dom = browser.eval(
        "JSON.stringify({panels: Object.fromEntries([...document.querySelectorAll('section.panel')]\
           .map(p => [p.id, p.dataset.state])), \
         points: Object.fromEntries([...document.querySelectorAll('canvas')]\
           .map(c => [c.id, Number(c.dataset.points)])), \
         listeners: document.querySelectorAll('#listeners-table tbody tr').length, \
         top: document.querySelectorAll('#top-table tbody tr').length, \
         latency: document.querySelectorAll('#latency-table tbody tr').length, \
         alerts: document.querySelectorAll('#alerts-table tbody tr').length, \
         windows: [...document.querySelectorAll('#window-select option')].map(o => o.value), \
         banner: document.getElementById('banner').hidden, \
         key: document.getElementById('key-input').value})",
    );
    let dom: Value = serde_json::from_str(dom.as_str().unwrap()).unwrap();
    for panel in [
        "panel-throughput",
        "panel-listeners",
        "panel-top",
        "panel-key",
        "panel-health",
        "panel-alerts",
    ] {
        assert_eq!(dom["panels"][panel], "ok", "{panel}: {dom}");
    }
    assert!(dom["alerts"].as_u64().unwrap() > 0, "{dom}");
    // The four latencies of /api/v1/status, a row each.
    assert_eq!(dom["panels"]["panel-latency"], "ok", "{dom}");
    assert_eq!(dom["latency"], 4, "{dom}");
    for chart in [
        "chart-throughput",
        "chart-lag",
        "chart-key-count",
        "chart-key-value",
    ] {
        assert!(dom["points"][chart].as_i64() > Some(0), "{chart}: {dom}");
    }
    assert_eq!(dom["listeners"], 2, "{dom}");
    assert!(dom["top"].as_i64() > Some(0), "{dom}");
    assert_eq!(dom["windows"], json!(["1s", "10s"]), "{dom}");
    assert_eq!(dom["banner"], true, "the error banner is hidden: {dom}");
    assert!(
        dom["key"].as_str().unwrap().starts_with("key"),
        "the key chart did not take the top key: {dom}"
    );

    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let path = std::env::var_os("SLUICE_DASHBOARD_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("dashboard.png"));
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());

    let errors = browser.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");

    // Scripts may reach only the admin address: a fetch elsewhere breaks connect-src.
    let violated = browser.eval(
        "new Promise(done => { \
           document.addEventListener('securitypolicyviolation', e => done(e.effectiveDirective)); \
           fetch('http://127.0.0.2:9/').catch(() => {}); \
           setTimeout(() => done('no violation'), 5000); })",
    );
    assert_eq!(violated, "connect-src");

    // sluice gone: the page says so and keeps trying, with no exception thrown.
    sluice.stop();
    let shown = crate::harness::wait_for(Duration::from_secs(15), || {
        browser.eval("!document.getElementById('banner').hidden") == true
    });
    assert!(shown, "no message that sluice is unreachable");
    let thrown: Vec<&Value> = browser
        .events
        .iter()
        .filter(|e| e["method"] == "Runtime.exceptionThrown")
        .collect();
    assert!(
        thrown.is_empty(),
        "exceptions once sluice stopped: {thrown:#?}"
    );
    browser.close();
}

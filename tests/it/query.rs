//! The query API through the real binary: closed rows exactly as the aggregates files hold
//! them, open windows' running values asked of the shards, top-N merged across shards, and
//! parameters checked by name.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{Sluice, aggregate_lines, now_secs, wait_for};

/// GET `path` from the admin server as JSON (status, body).
fn get_json(sluice: &Sluice, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = sluice.http_get(path);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
    (status, v)
}

/// The rows of the aggregates files whose key `select` takes, as JSON with `"final":true`,
/// by key and start.
fn file_rows(sluice: &Sluice, select: impl Fn(&str) -> bool) -> Vec<serde_json::Value> {
    let mut rows: Vec<serde_json::Value> = aggregate_lines(&sluice.data_dir)
        .into_iter()
        .map(|(_, l)| serde_json::from_str::<serde_json::Value>(&l).unwrap())
        .filter(|v| select(v["key"].as_str().unwrap()))
        .map(|mut v| {
            v["final"] = true.into();
            v
        })
        .collect();
    rows.sort_by_key(|v| {
        (
            v["key"].as_str().unwrap().to_string(),
            v["start_ms"].as_i64().unwrap(),
        )
    });
    rows
}

fn keys_of(rows: &serde_json::Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn windows_and_top_answer_from_closed_rows_and_the_shards_open_windows() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = crate::harness::start_10s_graphite(&dir.path().join("d"), "5s", "g");
    let (t0, lines) = crate::harness::rooms_workload();
    let mut s = TcpStream::connect(sluice.addr("g")).unwrap();
    s.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    drop(s);
    assert!(
        wait_for(Duration::from_secs(30), || aggregate_lines(
            &sluice.data_dir
        )
        .len()
            == 4),
        "4 closed rows: {:?}",
        aggregate_lines(&sluice.data_dir)
    );

    // Closed rows: exactly the files' rows, for a key and for a prefix.
    let want_a = file_rows(&sluice, |k| k == "room.a");
    assert_eq!(want_a.len(), 2);
    let path = "/api/v1/windows?key=room.a&window=10s&last=10";
    assert!(
        wait_for(Duration::from_secs(10), || {
            get_json(&sluice, path).1["windows"]
                .as_array()
                .is_some_and(|w| w.len() == 2)
        }),
        "the index has room.a's rows"
    );
    let (status, a) = get_json(&sluice, path);
    assert_eq!(status, 200);
    assert_eq!(a["windows"], serde_json::Value::Array(want_a.clone()));
    assert_eq!(a["open"], serde_json::json!([]));
    assert_eq!(a["truncated"], false);
    let (_, last1) = get_json(&sluice, "/api/v1/windows?key=room.a&last=1");
    assert_eq!(last1["windows"], serde_json::json!([want_a[1]]));
    let (_, room) = get_json(&sluice, "/api/v1/windows?prefix=room.&window=10s");
    assert_eq!(
        room["windows"],
        serde_json::Value::Array(file_rows(&sluice, |k| k.starts_with("room.")))
    );

    // Open windows: the running values, asked of the owner shards.
    let (status, open) = get_json(&sluice, "/api/v1/windows?key=room.a&open=true");
    assert_eq!(status, 200, "{open}");
    let open_rows = open["open"].as_array().unwrap();
    assert_eq!(open_rows.len(), 1, "{open}");
    assert_eq!(open_rows[0]["count"], 4);
    assert_eq!(open_rows[0]["sum"], 20.0 + 21.0 + 22.0 + 23.0);
    assert_eq!(open_rows[0]["start_ms"], (t0 + 30) * 1000);
    assert_eq!(open_rows[0]["final"], false);
    assert_eq!(open["windows"].as_array().unwrap().len(), 2);

    // Top of the newest closed window, by several measures, merged across shards.
    let (status, top) = get_json(&sluice, "/api/v1/top?window=10s&by=count&n=2");
    assert_eq!(status, 200, "{top}");
    assert_eq!(keys_of(&top["top"]), ["room.b", "room.a"]);
    assert_eq!(top["start_ms"], (t0 + 10) * 1000);
    assert_eq!(top["top"][0], file_rows(&sluice, |k| k == "room.b")[0]);
    let (_, by_max) = get_json(&sluice, "/api/v1/top?by=max");
    assert_eq!(keys_of(&by_max["top"]), ["hall", "room.b", "room.a"]);
    let (_, prefixed) = get_json(&sluice, "/api/v1/top?by=sum&prefix=room.");
    assert_eq!(keys_of(&prefixed["top"]), ["room.b", "room.a"]);
    let (_, open_top) = get_json(&sluice, "/api/v1/top?open=true&by=count");
    assert_eq!(keys_of(&open_top["top"]), ["room.a", "tick"], "{open_top}");
    assert_eq!(open_top["top"][0]["final"], false);
    // Asked again within a second: the same answer, with its age; max_age_ms=0 asks afresh.
    let (_, again) = get_json(&sluice, "/api/v1/top?open=true&by=count");
    assert_eq!(again["top"], open_top["top"]);
    assert!(again["open_age_ms"].as_u64().is_some(), "{again}");
    let (_, fresh) = get_json(&sluice, "/api/v1/top?open=true&by=count&max_age_ms=0");
    assert_eq!(fresh["top"], open_top["top"]);
    assert_eq!(fresh["open_age_ms"], 0, "{fresh}");

    // Status: the listener's totals, the cores, the checkpoint.
    let (status, st) = get_json(&sluice, "/api/v1/status");
    assert_eq!(status, 200, "{st}");
    let g = st["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "g")
        .unwrap()
        .clone();
    assert_eq!(g["events_total"], lines.len(), "{st}");
    assert!(g["events_per_sec"].as_f64().is_some(), "{st}");
    assert_eq!(st["cores"].as_array().unwrap().len(), 2, "{st}");
    assert!(
        st["version"].is_string() && st["uptime_seconds"].as_f64().unwrap() > 0.0,
        "{st}"
    );
    assert!(st["checkpoint"]["epoch"].is_i64(), "{st}");

    // Bad parameters: a 400 naming each.
    for (path, parameter) in [
        ("/api/v1/windows?key=room.a&window=7s", "window"),
        ("/api/v1/windows?key=room.a&window=soon", "window"),
        ("/api/v1/windows?key=room.a&last=0", "last"),
        ("/api/v1/windows?key=room.a&last=100000", "last"),
        ("/api/v1/windows?key=room.a&open=maybe", "open"),
        ("/api/v1/windows?key=room.a&colour=red", "colour"),
        ("/api/v1/windows?key=room.a&key=hall", "key"),
        ("/api/v1/windows", "key"),
        ("/api/v1/windows?key=a&prefix=b", "key"),
        ("/api/v1/top?by=median", "by"),
        ("/api/v1/top?n=-3", "n"),
        ("/api/v1/top?key=room.a", "key"),
        ("/api/v1/top?open=true&max_age_ms=-1", "max_age_ms"),
        (
            "/api/v1/windows?key=room.a&open=true&max_age_ms=600000",
            "max_age_ms",
        ),
    ] {
        let (status, body) = get_json(&sluice, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
    assert!(sluice.stop().success());
}

/// A `curl -N` client of the stream: its events (id, data) as they come.
struct StreamClient {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<(String, serde_json::Value)>,
}

impl StreamClient {
    fn connect(sluice: &Sluice, query: &str, last_event_id: Option<&str>) -> StreamClient {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sN", "--max-time", "60"]);
        if let Some(id) = last_event_id {
            cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child = cmd
            .arg(format!("http://{}/api/v1/stream?{query}", sluice.admin()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut id = String::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(i) = line.strip_prefix("id: ") {
                    id = i.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    let row = serde_json::from_str(d).unwrap();
                    if tx.send((id.clone(), row)).is_err() {
                        return;
                    }
                }
            }
        });
        StreamClient { child, events }
    }

    fn next(&self) -> (String, serde_json::Value) {
        self.events
            .recv_timeout(Duration::from_secs(30))
            .expect("an event within 30 s")
    }
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_stream_sends_every_closed_row_once_and_resumes_from_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = crate::harness::start_10s_graphite(&dir.path().join("d"), "0s", "g");
    let t0 = (now_secs() - 600) / 10 * 10;
    let send = |lines: Vec<String>| {
        let mut s = TcpStream::connect(sluice.addr("g")).unwrap();
        s.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    };
    // Ten keys in one window, closed by a later event; `other` is not selected.
    let mut lines: Vec<String> = (0..10).map(|i| format!("s.k{i} {i} {}", t0 + 1)).collect();
    lines.push(format!("other 1 {}", t0 + 2));
    lines.push(format!("s.tick 1 {}", t0 + 15));
    send(lines);
    assert!(
        wait_for(Duration::from_secs(30), || aggregate_lines(
            &sluice.data_dir
        )
        .len()
            == 11),
        "11 closed rows"
    );
    // From the start of every record (a stream without Last-Event-ID starts at the end).
    let first = StreamClient::connect(&sluice, "prefix=s.&window=10s", Some("0,0"));
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first.next());
    }
    drop(first);
    let resume_id = seen.last().unwrap().0.clone();
    let second = StreamClient::connect(&sluice, "prefix=s.&window=10s", Some(&resume_id));
    for _ in 0..6 {
        seen.push(second.next());
    }
    let mut keys: Vec<String> = seen
        .iter()
        .map(|(_, r)| r["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    let want: Vec<String> = (0..10).map(|i| format!("s.k{i}")).collect();
    assert_eq!(keys, want, "every closed row once, none repeated");
    // Each is the row of the file, with "final":true.
    let files = file_rows(&sluice, |k| k.starts_with("s.k"));
    for (_, row) in &seen {
        assert!(files.contains(row), "{row}");
    }
    // The next window's rows come live, on the same stream.
    send(vec![format!("s.tick 2 {}", t0 + 25)]);
    let (_, tick) = second.next();
    assert_eq!(
        (tick["key"].clone(), tick["start_ms"].clone()),
        ("s.tick".into(), ((t0 + 10) * 1000).into())
    );
    // A bad Last-Event-ID is a 400 naming it.
    let (status, _, body) = crate::harness::http_get_with(
        sluice.admin(),
        "/api/v1/stream",
        &[("Last-Event-ID", "12,nope")],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Last-Event-ID"), "{body}");
    drop(second);
    assert!(sluice.stop().success());
}

#[test]
fn the_admin_token_guards_every_route_but_healthz() {
    use crate::harness::{bin, http_get, http_get_with, signal, wait_timeout};
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token-0123456789";
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, format!("[admin]\ntoken = \"{token}\"\n")).unwrap();
    let data = dir.path().join("d");
    let mut child = std::process::Command::new(bin())
        .args(["serve", "--config", config.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .args([
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "raw+tcp://127.0.0.1:0?name=raw",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut admin = None;
    assert!(
        wait_for(Duration::from_secs(30), || {
            admin = std::fs::read(data.join("endpoints.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|v| v["pid"] == child.id())
                .and_then(|v| v["admin"].as_str()?.parse().ok());
            admin.is_some_and(|a| http_get(a, "/healthz").0 == 200)
        }),
        "sluice serves /healthz"
    );
    let admin = admin.unwrap();
    let bearer = format!("Bearer {token}");
    assert!(wait_for(Duration::from_secs(30), || {
        http_get_with(admin, "/readyz", &[("Authorization", &bearer)]).0 == 200
    }));
    for path in ["/readyz", "/metrics", "/api/v1/status", "/api/v1/top", "/"] {
        let (status, head, _) = http_get_with(admin, path, &[]);
        assert_eq!(status, 401, "{path} without the token");
        assert!(head.contains("www-authenticate: bearer"), "{path}: {head}");
        let wrong = format!("Bearer {}x", &token[..token.len() - 1]);
        assert_eq!(
            http_get_with(admin, path, &[("Authorization", &wrong)]).0,
            401,
            "{path}"
        );
    }
    let (status, _, body) = http_get_with(admin, "/api/v1/status", &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");
    // The dashboard's way in: /?token= sets a cookie, which the page's requests carry.
    let (status, head, _) = http_get_with(admin, &format!("/?token={token}"), &[]);
    assert_eq!(status, 303, "{head}");
    assert!(
        head.contains("set-cookie: sluice_token=") && head.contains("httponly"),
        "{head}"
    );
    let cookie = format!("sluice_token={token}");
    assert_eq!(
        http_get_with(admin, "/api/v1/status", &[("Cookie", &cookie)]).0,
        200
    );
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("sluice stops");
    assert!(status.success());
}

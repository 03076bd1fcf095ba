use super::*;
use std::sync::Arc;

fn row(key: &str, window: &str, start_ms: i64, count: u64, extra: &str) -> String {
    format!(
        "{{\"key\":\"{key}\",\"window\":\"{window}\",\"start_ms\":{start_ms},\"count\":{count}{extra}}}"
    )
}

fn index_of(rows: &[String], budget: usize) -> Index {
    let index = Index::new(Vec::new(), budget);
    let mut pos = 0;
    for r in rows {
        assert!(index.insert_line(0, pos, r.as_bytes()), "{r}");
        pos += r.len() as u64 + 1;
    }
    index
}

fn counts(answer: &WindowsAnswer) -> Vec<(String, String, i64)> {
    answer
        .rows
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            assert_eq!(v["final"], true, "{r}");
            (
                v["key"].as_str().unwrap().to_string(),
                v["window"].as_str().unwrap().to_string(),
                v["start_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn windows_gives_the_last_rows_of_a_key_or_a_prefix_by_key_window_and_start() {
    let mut rows = Vec::new();
    for start in [0, 10_000, 20_000] {
        for key in ["room.a", "room.b", "roomy", "hall"] {
            rows.push(row(key, "10s", start, 1, ""));
        }
    }
    rows.push(row("room.a", "1m", 0, 3, ""));
    let index = index_of(&rows, usize::MAX);
    let key = |k: &str| (k.to_string(), "10s".to_string());
    let a = index.windows(&Filter::Key("room.a".into()), Some("10s"), 2, 100);
    assert_eq!(
        counts(&a),
        vec![
            (key("room.a").0, key("room.a").1, 10_000),
            (key("room.a").0, key("room.a").1, 20_000)
        ]
    );
    // Every window size, shorter first.
    let all = index.windows(&Filter::Key("room.a".into()), None, 1, 100);
    assert_eq!(
        counts(&all),
        vec![
            ("room.a".into(), "10s".into(), 20_000),
            ("room.a".into(), "1m".into(), 0)
        ]
    );
    let prefix = index.windows(&Filter::Prefix("room.".into()), Some("10s"), 1, 100);
    assert_eq!(
        counts(&prefix),
        vec![
            ("room.a".into(), "10s".into(), 20_000),
            ("room.b".into(), "10s".into(), 20_000)
        ]
    );
    assert!(!prefix.truncated);
    let capped = index.windows(&Filter::Prefix(String::new()), None, 10, 5);
    assert_eq!((capped.rows.len(), capped.truncated), (5, true));
    assert!(
        index
            .windows(&Filter::Key("room".into()), None, 10, 5)
            .rows
            .is_empty()
    );
}

#[test]
fn history_stays_within_its_budget_and_forgets_the_oldest_first() {
    let rows: Vec<String> = (0..100)
        .map(|i| row(&format!("k{}", i % 10), "10s", i / 10 * 10_000, 1, ""))
        .collect();
    let one = rows[0].len() + ",\"final\":true".len();
    let index = index_of(&rows, 25 * one);
    let stats = index.stats();
    assert!(stats.held_bytes <= 25 * one as u64, "{stats:?}");
    assert_eq!(stats.rows, 100);
    assert_eq!(stats.evicted + stats.held, 100);
    // What is held is the newest rows: k3's are those among them.
    let held = (100 - stats.held)..100;
    let want: Vec<i64> = held
        .filter(|i| i % 10 == 3)
        .map(|i| i as i64 / 10 * 10_000)
        .collect();
    assert!(want.len() >= 2, "{stats:?}");
    let k3 = index.windows(&Filter::Key("k3".into()), None, 100, 100);
    let starts: Vec<i64> = counts(&k3).into_iter().map(|r| r.2).collect();
    assert_eq!(starts, want);
}

#[test]
fn top_ranks_the_newest_closed_window_by_any_measure_with_ties_by_key() {
    let mut rows = vec![
        row("old", "10s", 0, 999, ",\"max\":5.0"),
        row("a", "10s", 10_000, 3, ",\"max\":1.0,\"p99\":0.9"),
        row("b", "10s", 10_000, 7, ",\"max\":2.0"),
        row("c", "10s", 10_000, 7, ",\"max\":9.0,\"p99\":8.5"),
        row("d", "10s", 10_000, 1, ",\"distinct\":12"),
        row("a", "1m", 0, 50, ""),
    ];
    // A shard late with the window before: not mixed into the newest.
    rows.push(row("late", "10s", 0, 1_000, ""));
    let index = index_of(&rows, usize::MAX);
    let keys =
        |t: TopAnswer| -> Vec<String> { t.ranked.iter().map(|r| r.key.to_string()).collect() };
    let all = Filter::Prefix(String::new());
    let top = index.top("10s", By::Count, 3, &all);
    assert_eq!(top.start_ms, Some(10_000));
    assert_eq!(keys(top), ["b", "c", "a"]);
    assert_eq!(keys(index.top("10s", By::Max, 2, &all)), ["c", "b"]);
    // Only rows with the measure are ranked.
    assert_eq!(keys(index.top("10s", By::P99, 10, &all)), ["c", "a"]);
    assert_eq!(keys(index.top("10s", By::Distinct, 10, &all)), ["d"]);
    assert_eq!(
        keys(index.top("10s", By::Count, 10, &Filter::Prefix("a".into()))),
        ["a"]
    );
    assert_eq!(keys(index.top("1m", By::Count, 10, &all)), ["a"]);
    let none = index.top("5m", By::Count, 10, &all);
    assert_eq!((none.start_ms, none.ranked.len()), (None, 0));
    assert!(index.top("10s", By::Count, 0, &all).ranked.is_empty());
}

#[test]
fn a_line_that_is_not_a_row_is_counted_and_skipped() {
    let index = Index::new(Vec::new(), usize::MAX);
    assert!(!index.insert_line(0, 0, b"{\"key\":1}"));
    assert!(!index.insert_line(0, 10, b"not json"));
    assert!(!index.insert_line(0, 20, b"\xff\xfe"));
    assert_eq!(index.stats().unreadable, 3);
    assert_eq!(index.stats().rows, 0);
}

#[test]
fn the_feeder_follows_every_shard_and_rows_are_read_back_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..2)
        .map(|s| dir.path().join(format!("s{s:03}")))
        .collect();
    let mut files = Vec::new();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
        files.push(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join(format!("{:020}.jsonl", 0)))
                .unwrap(),
        );
    }
    use std::io::Write;
    writeln!(files[0], "{}", row("x", "10s", 0, 2, "")).unwrap();
    writeln!(files[1], "{}", row("y", "10s", 0, 5, "")).unwrap();
    let index = Arc::new(Index::new(dirs, 1 << 20));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = spawn_feeder(index.clone(), stop.clone()).unwrap();
    let wait = |n: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while index.stats().rows < n {
            assert!(std::time::Instant::now() < deadline, "{:?}", index.stats());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait(2);
    writeln!(files[1], "{}", row("x", "10s", 10_000, 1, "")).unwrap();
    wait(3);
    let all = Filter::Prefix(String::new());
    let top = index.top("10s", By::Count, 10, &all);
    assert_eq!(top.start_ms, Some(10_000));
    let back = index.read_row(&top.ranked[0]).unwrap();
    assert_eq!(
        back,
        format!(
            "{},\"final\":true}}",
            row("x", "10s", 10_000, 1, "").trim_end_matches('}')
        )
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
}

#[test]
fn event_ids_round_trip_and_a_stream_stops_for_a_gone_or_stuck_client() {
    assert_eq!(event_id(&[12, 0, 4711]), "12,0,4711");
    assert_eq!(parse_event_id(" 12,0,4711 ", 3), Some(vec![12, 0, 4711]));
    assert_eq!(parse_event_id("12,0", 3), None);
    assert_eq!(parse_event_id("12,x,1", 3), None);
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join(format!("{:020}.jsonl", 0));
    let rows = [row("a.x", "10s", 0, 1, ""), row("b.y", "10s", 0, 1, "")];
    std::fs::write(&seg, rows.join("\n") + "\n").unwrap();
    let dirs = vec![dir.path().to_path_buf()];
    let cursors = vec![Arc::new(crate::results::Cursors::default())];
    let selection = Selection {
        filter: Filter::Prefix("a.".into()),
        window: Some("10s".into()),
    };
    let timing = Timing {
        keepalive: std::time::Duration::from_millis(20),
        stall_max: std::time::Duration::from_millis(100),
    };
    // A client that goes after the first frame: the follower ends.
    let mut frames = Vec::new();
    follow(&dirs, &cursors, &[0], &selection, timing, |f| match f {
        Some(f) if frames.is_empty() => {
            frames.push(f);
            Sent::Sent
        }
        _ => Sent::Closed,
    });
    assert_eq!(frames.len(), 1);
    let id_line = format!("id: {}\n", rows[0].len() + 1);
    assert!(frames[0].starts_with(&id_line), "{:?}", frames[0]);
    assert!(
        frames[0].contains("event: window\ndata: {\"key\":\"a.x\""),
        "{:?}",
        frames[0]
    );
    // A client that never takes a frame: dropped after stall_max.
    let started = std::time::Instant::now();
    follow(&dirs, &cursors, &[0], &selection, timing, |f| match f {
        Some(f) => Sent::Full(f),
        None => Sent::Sent,
    });
    assert!(started.elapsed() >= timing.stall_max);
    // An idle stream gets keep-alive comments.
    let mut keepalives = 0;
    follow(
        &dirs,
        &cursors,
        &[rows.join("\n").len() as u64 + 1],
        &selection,
        timing,
        |f| match f {
            Some(f) if f.starts_with(':') && keepalives < 2 => {
                keepalives += 1;
                Sent::Sent
            }
            Some(_) => Sent::Closed,
            None if keepalives < 2 => Sent::Sent,
            None => Sent::Closed,
        },
    );
    assert_eq!(keepalives, 2);
}

#[test]
fn an_answer_is_given_again_within_its_max_age_and_asked_afresh_after() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    let (open, receivers) = OpenQueries::new(2, 4, Arc::new(|_| {}));
    // Two "shards" that count the questions they are asked and reply with that count.
    let asked = Arc::new(AtomicUsize::new(0));
    for rx in receivers {
        let asked = asked.clone();
        std::thread::spawn(move || {
            for request in rx {
                let n = asked.fetch_add(1, Ordering::SeqCst) + 1;
                let reply = OpenReply {
                    rows: Vec::new(),
                    truncated: n.is_multiple_of(2),
                };
                let _ = request.reply.send(reply);
            }
        });
    }
    let filter = Filter::Prefix("room.".into());
    let want = Want::Top {
        by: By::Count,
        n: 3,
    };
    let timeout = Duration::from_secs(5);
    let long = Duration::from_secs(60);
    let first = open
        .ask(&filter, Some(10_000), want, timeout, long)
        .unwrap();
    assert_eq!(first.age, Duration::ZERO);
    assert_eq!(asked.load(Ordering::SeqCst), 2, "each shard asked once");
    let again = open
        .ask(&filter, Some(10_000), want, timeout, long)
        .unwrap();
    assert!(
        Arc::ptr_eq(&first.replies, &again.replies),
        "the same answer"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "the cores are not asked again"
    );
    // Another question, another size, or max_age 0: asked afresh.
    let other = Want::Top { by: By::Max, n: 3 };
    open.ask(&filter, Some(10_000), other, timeout, long)
        .unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 4);
    open.ask(&filter, None, want, timeout, long).unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 6);
    let fresh = open
        .ask(&filter, Some(10_000), want, timeout, Duration::ZERO)
        .unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 8);
    assert!(!Arc::ptr_eq(&first.replies, &fresh.replies));
    // The fresh answer replaced the old one; once older than max_age it is asked again.
    std::thread::sleep(Duration::from_millis(20));
    let aged = open
        .ask(
            &filter,
            Some(10_000),
            want,
            timeout,
            Duration::from_millis(10),
        )
        .unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 10);
    assert_eq!(aged.age, Duration::ZERO);
    // The answers kept are bounded.
    for n in 0..(2 * crate::limits::OPEN_ANSWERS_CACHED_MAX) {
        let want = Want::Top {
            by: By::Count,
            n: n + 10,
        };
        open.ask(&filter, None, want, timeout, long).unwrap();
    }
    assert!(open.answers_kept() <= crate::limits::OPEN_ANSWERS_CACHED_MAX);
}

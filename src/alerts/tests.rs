use super::*;
use crate::parse::Kind;
use crate::window::{AggregatesWriter, Params, Shard};

fn rule(toml_text: &str) -> RuleConfig {
    toml::from_str(toml_text).unwrap()
}

fn specs() -> Vec<WindowSpec> {
    vec![WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)]
}

/// A one-source shard with the engine of `rules` hooked in, in `dir`.
fn shard(dir: &std::path::Path, rules: &[RuleConfig]) -> (Shard, Arc<Metrics>) {
    let rules: Vec<Rule> = rules
        .iter()
        .map(|c| Rule::compile(c, &specs(), &[0.5, 0.99]).unwrap())
        .collect();
    let mut metrics = Metrics::new(1, Vec::new());
    metrics.alerts = crate::metrics::AlertMetrics::new(
        rules.iter().map(|r| r.name.clone()).collect(),
        Vec::new(),
    );
    let metrics = Arc::new(metrics);
    let params = Params {
        windows: specs(),
        quantiles: vec![0.5, 0.99],
        max_keys: 1000,
    };
    let output = AggregatesWriter::open(&dir.join("aggregates"), 0).unwrap();
    let mut shard = Shard::new(&params, 1, i64::MIN, output);
    let record = RecordWriter::open(
        &dir.join("alerts"),
        0,
        crate::results::Options::default(),
        Arc::default(),
        Arc::default(),
    )
    .unwrap();
    shard.add_close_hook(Box::new(Engine::new(rules.into(), record, metrics.clone())));
    (shard, metrics)
}

fn engine(shard: &mut Shard) -> &mut Engine {
    shard.hook::<Engine>().unwrap()
}

fn rows(dir: &std::path::Path) -> Vec<Row> {
    crate::results::read_record(&dir.join("alerts"))
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Feeds `count` events per 10 s window for `key`, window after window, closing each.
fn feed(shard: &mut Shard, key: &str, counts: &[u32], from_window: i64) {
    for (i, n) in counts.iter().enumerate() {
        let start = (from_window + i as i64) * 10_000;
        for j in 0..*n {
            shard.fold(
                key.as_bytes(),
                1.0,
                start + i64::from(j % 10),
                Kind::Counter,
            );
        }
        shard.advance(0, start + 10_000, false).unwrap();
    }
}

#[test]
fn a_rule_fires_once_after_for_windows_and_resolves_once_with_the_same_fingerprint_and_starts_at() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, metrics) = shard(
        dir.path(),
        &[rule(
            r#"name = "errors"
               key = "api.errors"
               above = 5
               for = 2
               clear = 3
               severity = "critical"
               labels = { team = "api" }
               annotations = { summary = "{{key}}: {{value}} in {{window}} (over {{threshold}})" }"#,
        )],
    );
    feed(&mut s, "api.errors", &[1, 9, 9, 9, 4, 2, 2, 1], 0);
    let got = rows(dir.path());
    let states: Vec<&str> = got.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, vec!["pending", "firing", "resolved"]);
    let (firing, resolved) = (&got[1], &got[2]);
    assert_eq!(firing.at_ms, 30_000);
    assert_eq!(firing.starts_at_ms, 30_000);
    assert_eq!(resolved.starts_at, firing.starts_at);
    assert_eq!(resolved.fingerprint, firing.fingerprint);
    assert_eq!(resolved.at_ms, 70_000);
    assert_eq!(firing.labels["alertname"], "errors");
    assert_eq!(firing.labels["severity"], "critical");
    assert_eq!(firing.labels["team"], "api");
    assert_eq!(firing.labels["key"], "api.errors");
    assert_eq!(
        firing.annotations["summary"],
        "api.errors: 9 in 10s (over 5)"
    );
    assert_eq!(metrics.alerts.firing[0].get(), 0);
    assert_eq!(engine(&mut s).states(), 0);
}

#[test]
fn a_prefix_rule_keeps_one_state_per_breaching_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, metrics) = shard(
        dir.path(),
        &[rule(
            r#"name = "hot"
                  prefix = "room."
                  above = 2"#,
        )],
    );
    for k in 0..100 {
        s.fold(format!("room.{k}").as_bytes(), 1.0, 1, Kind::Counter);
    }
    for _ in 0..5 {
        s.fold(b"room.7", 1.0, 2, Kind::Counter);
    }
    s.fold(b"hall.1", 1.0, 2, Kind::Counter);
    s.advance(0, 10_000, false).unwrap();
    assert_eq!(engine(&mut s).states(), 1);
    assert_eq!(metrics.alerts.firing[0].get(), 1);
    let got = rows(dir.path());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "room.7");
    assert_eq!(got[0].value, Some(6.0));
}

#[test]
fn a_deadman_fires_in_event_time_when_its_key_goes_silent_and_resolves_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = shard(
        dir.path(),
        &[rule(
            r#"name = "silent"
                  prefix = "sensors."
                  absent = "30s""#,
        )],
    );
    // Two sensors; sensors.b stops after the first window while sensors.a goes on.
    s.fold(b"sensors.b", 1.0, 5_000, Kind::Sample);
    for w in 0..8 {
        s.fold(b"sensors.a", 1.0, w * 10_000 + 1, Kind::Sample);
        s.advance(0, w * 10_000 + 10_000, false).unwrap();
    }
    let got = rows(dir.path());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].key.as_str(), got[0].state.as_str()),
        ("sensors.b", "firing")
    );
    assert_eq!(got[0].at_ms, 40_000);
    assert_eq!(got[0].value, Some(35.0));
    s.fold(b"sensors.b", 1.0, 85_000, Kind::Sample);
    s.advance(0, 90_000, false).unwrap();
    let got = rows(dir.path());
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].state, "resolved");
    assert_eq!(got[1].starts_at_ms, 40_000);
}

#[test]
fn a_deadman_fires_when_all_input_is_idle_as_the_frontier_follows_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = shard(
        dir.path(),
        &[rule(
            r#"name = "silent"
                  key = "sensors.x"
                  absent = "20s""#,
        )],
    );
    s.fold(b"sensors.x", 1.0, 1_000, Kind::Sample);
    s.advance(0, 10_000, false).unwrap();
    assert!(rows(dir.path()).is_empty());
    // No events at all: an idle source's watermark rises with wall-clock time.
    s.advance(0, 35_000, true).unwrap();
    let got = rows(dir.path());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].at_ms, 30_000);
}

#[test]
fn a_frontier_that_jumps_decides_as_one_that_steps() {
    let run = |step: bool| {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = shard(
            dir.path(),
            &[
                rule(
                    r#"name = "silent"
                        prefix = "s."
                        absent = "20s""#,
                ),
                rule(
                    r#"name = "hot"
                        prefix = "s."
                        above = 1
                        for = 2"#,
                ),
            ],
        );
        let events = [
            ("s.a", 1_000),
            ("s.a", 1_500),
            ("s.b", 2_000),
            ("s.a", 15_000),
            ("s.a", 16_000),
            ("s.b", 45_000),
            ("s.a", 75_000),
            ("s.a", 75_001),
        ];
        for (k, t) in events {
            s.fold(k.as_bytes(), 1.0, t, Kind::Sample);
            if step {
                s.advance(0, t - 1, false).unwrap();
            }
        }
        s.advance(0, 200_000, false).unwrap();
        crate::results::read_record(&dir.path().join("alerts")).0
    };
    let stepped = run(true);
    assert!(stepped.lines().count() >= 4, "{stepped}");
    assert_eq!(stepped, run(false));
}

#[test]
fn state_survives_a_snapshot_and_restore_without_firing_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = rule(
        r#"name = "errors"
                         key = "k"
                         above = 5
                         for = 2"#,
    );
    let (mut s, _) = shard(dir.path(), std::slice::from_ref(&config));
    feed(&mut s, "k", &[9, 9, 9], 0);
    let snapshot = engine(&mut s).snapshot();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].state.phase, Phase::Firing);
    let dir2 = tempfile::tempdir().unwrap();
    let (mut s2, metrics) = shard(dir2.path(), &[config]);
    for r in snapshot {
        engine(&mut s2).restore(r);
    }
    assert_eq!(metrics.alerts.firing[0].get(), 1);
    s2.advance(0, 30_000, false).unwrap();
    feed(&mut s2, "k", &[9, 9, 1], 3);
    let got = rows(dir2.path());
    assert!(got.iter().all(|r| r.state != "firing"), "{got:?}");
}

#[test]
fn the_board_starts_from_the_restored_states_with_the_rows_they_were_written_with() {
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, above: u32| {
        rule(&format!(
            "name = \"{name}\"\nprefix = \"k\"\nabove = {above}\nfor = 2\nannotations = {{ s = \"{{{{key}}}} {{{{value}}}}\" }}"
        ))
    };
    let rules = [config("high", 5), config("higher", 8)];
    let (mut s, _) = shard(dir.path(), &rules);
    // k1 fires under "high" and is pending under "higher"; k2 breaches nothing.
    feed(&mut s, "k2", &[1], 0);
    feed(&mut s, "k1", &[6, 6, 9], 1);
    let written = rows(dir.path());
    let firing = written
        .iter()
        .find(|r| r.state == "firing" && r.alert == "high")
        .unwrap();
    let snapshot = engine(&mut s).snapshot();
    let dir2 = tempfile::tempdir().unwrap();
    let (mut s2, _) = shard(dir2.path(), &rules);
    for r in snapshot {
        engine(&mut s2).restore(r);
    }
    let (current, from) = engine(&mut s2).current();
    assert_eq!(
        from, 0,
        "the new record is empty: the board reads it from its start"
    );
    let board = notify::Board::with(current.clone());
    let (on_board, cut) = board.current(10);
    assert!(!cut);
    assert_eq!(on_board, current);
    let states: Vec<(&str, &str, &str)> = current
        .iter()
        .map(|r| (r.alert.as_str(), r.key.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [("high", "k1", "firing"), ("higher", "k1", "pending")]
    );
    // The same alert as its firing row: what a notifier and Alertmanager know it by.
    let (row, firing) = (&current[0], firing);
    assert_eq!(
        (&row.fingerprint, &row.starts_at, &row.labels),
        (&firing.fingerprint, &firing.starts_at, &firing.labels)
    );
    assert_eq!(row.value, Some(9.0));
    assert_eq!(row.annotations["s"], "k1 9");
}

#[test]
fn bad_rules_are_refused_naming_the_key() {
    let cases = [
        (
            "name = \"a\"\nkey = \"k\"\nabove = 1\nvalue = \"p42\"",
            "value",
            "unknown aggregate",
        ),
        (
            "name = \"a\"\nkey = \"k\"\nabove = 1\nbelow = 2",
            "below",
            "not both",
        ),
        (
            "name = \"a\"\nkey = \"k\"\nabove = 1\nfor = 0",
            "for",
            "for = 0",
        ),
        (
            "name = \"a\"\nkey = \"k\"\nabove = 1\nannotations = { s = \"{{nope}}\" }",
            "annotations",
            "unknown template field",
        ),
        (
            "name = \"a\"\nkey = \"k\"\nabove = 5\nclear = 6",
            "clear",
            "at or below",
        ),
        (
            "name = \"a\"\nkey = \"k\"\nabsent = \"1m\"\nabove = 3",
            "above",
            "does not go with",
        ),
        ("name = \"a\"\nabove = 3", "name", "`key` or a `prefix`"),
        (
            "name = \"a\"\nkey = \"k\"\nabove = 3\nwindow = \"5s\"",
            "window",
            "not a configured",
        ),
        (
            "name = \"a\"\nkey = \"k\"\nabove = 3\nlabels = { \"team-x\" = \"a\" }",
            "labels",
            "not a valid name",
        ),
        (
            "name = \"a\"\nkey = \"k\"\nabove = 3\nannotations = { \"1st\" = \"a\" }",
            "annotations",
            "not a valid name",
        ),
    ];
    for (text, key, message) in cases {
        let e = Rule::compile(&rule(text), &specs(), &[0.5, 0.99]).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e:?}");
        assert!(e.message.contains(message), "{text}: {e:?}");
    }
    let ok = Rule::compile(
        &rule("name = \"a\"\nkey = \"k\"\nabove = 1\nvalue = \"p99\""),
        &specs(),
        &[0.5, 0.99],
    );
    assert!(ok.is_ok());
}

#[test]
fn fingerprints_are_alertmanagers() {
    // Alertmanager (prometheus/common model.LabelSet.Fingerprint) of {alertname="a"}: FNV-1a
    // over "alertname" 0xff "a" 0xff.
    let mut labels = BTreeMap::new();
    assert_eq!(fingerprint(&labels), "cbf29ce484222325");
    labels.insert("alertname".to_string(), "a".to_string());
    let again = fingerprint(&labels);
    assert_eq!(again.len(), 16);
    assert_eq!(again, fingerprint(&labels.clone()));
    labels.insert("key".to_string(), "b".to_string());
    assert_ne!(fingerprint(&labels), again);
}

#[test]
fn the_webhook_body_has_alertmanagers_version_4_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = shard(
        dir.path(),
        &[rule(
            r#"name = "errors"
                  key = "api.errors"
                  above = 0"#,
        )],
    );
    feed(&mut s, "api.errors", &[3, 0], 0);
    let row = &rows(dir.path())[0];
    let body: serde_json::Value = serde_json::from_slice(&notify::webhook_body(
        row,
        "sluice",
        "http://127.0.0.1:9900",
    ))
    .unwrap();
    assert!(notify::missing_v4_fields(&body).is_empty(), "{body}");
    assert_eq!(body["version"], "4");
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(1));
    // The check itself finds what is missing.
    let mut short = body.clone();
    short.as_object_mut().unwrap().remove("groupKey");
    short["alerts"][0]
        .as_object_mut()
        .unwrap()
        .remove("fingerprint");
    assert_eq!(
        notify::missing_v4_fields(&short),
        ["groupKey", "alerts[0].fingerprint"]
    );
    let alert = &body["alerts"][0];
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(alert["status"], "firing");
}

//! The command line: usage errors exit 2 and name what is wrong; runtime failures exit 1.

use std::io::Write;

use crate::harness::{Sluice, run};

/// `sluice serve --data-dir DATA --admin 127.0.0.1:0 --listen SPEC`, run to its exit.
fn serve_once(data: &str, spec: &str) -> std::process::Output {
    run(&[
        "serve",
        "--data-dir",
        data,
        "--admin",
        "127.0.0.1:0",
        "--listen",
        spec,
    ])
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_works_on_every_subcommand() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["log", "verify", "--help"],
        &["log", "dump", "--help"],
        &["log", "tail", "--help"],
        &["check", "--help"],
        &["checkpoint", "inspect", "--help"],
        &["query", "--help"],
        &["top", "--help"],
        &["replay", "--help"],
    ] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn a_bad_listen_spec_exits_2_and_quotes_it() {
    let o = run(&["serve", "--listen", "graphite+sctp://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("graphite+sctp://127.0.0.1:1") && stderr(&o).contains("protocol"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_bad_flag_exits_2() {
    let o = run(&["serve", "--window", "10parsecs"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("10parsecs"));
    let o = run(&["serve", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["serve", "--io", "uring"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("io_uring"), "{}", stderr(&o));
}

#[test]
fn a_corrupt_listeners_json_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("listeners.json"), b"{\"ids\": {\"g\": 0, ").unwrap();
    // Before this was refused, sluice rewrote the file and served: bound the wait.
    let mut child = std::process::Command::new(crate::harness::bin())
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=g",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = crate::harness::wait_timeout(&mut child, std::time::Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
    }
    let mut e = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut e).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{e}");
    assert!(e.contains("listeners.json"), "{e}");
    // The file is left as it was, for the operator to restore.
    let kept = std::fs::read(data.join("listeners.json")).unwrap();
    assert_eq!(kept, b"{\"ids\": {\"g\": 0, ");
}

#[test]
fn errors_say_each_thing_once_and_a_data_dir_that_is_a_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let o = run(&[
        "serve",
        "--data-dir",
        file.to_str().unwrap(),
        "--admin",
        "127.0.0.1:0",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("not a directory"), "{e}");
    assert!(!e.contains("File exists"), "{e}");
    for line in e.lines().filter(|l| l.starts_with("sluice:")) {
        let parts: Vec<&str> = line.split(": ").collect();
        assert!(parts.windows(2).all(|w| w[0] != w[1]), "said twice: {line}");
    }
    // An I/O error's OS message appears once.
    let o = run(&[
        "log",
        "dump",
        "--data-dir",
        file.to_str().unwrap(),
        "--partition",
        "0",
    ]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    for line in e.lines().filter(|l| l.starts_with("sluice:")) {
        let parts: Vec<&str> = line.split(": ").collect();
        assert!(parts.windows(2).all(|w| w[0] != w[1]), "said twice: {line}");
    }
}

#[test]
fn the_log_tools_say_when_there_is_no_log_or_no_such_partition() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().to_str().unwrap();
    for cmd in ["verify", "dump", "tail"] {
        let o = run(&["log", cmd, "--data-dir", empty]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {e}");
        assert!(e.contains("no log under"), "{cmd}: {e}");
    }
    std::fs::create_dir_all(dir.path().join("log/p000")).unwrap();
    std::fs::create_dir_all(dir.path().join("log/p001")).unwrap();
    for cmd in ["verify", "dump", "tail"] {
        let o = run(&["log", cmd, "--data-dir", empty, "--partition", "7"]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {e}");
        assert!(
            e.contains("no partition 7") && e.contains("0, 1"),
            "{cmd}: {e}"
        );
    }
}

#[test]
fn a_bad_window_hop_exits_2_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    for hop in ["\"0s\"", "\"3s\""] {
        std::fs::write(&path, format!("[window]\nsizes = [\"10s\"]\nhop = {hop}\n")).unwrap();
        let o = run(&[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains("hop") && e.contains("line 3"), "{e}");
    }
}

#[test]
fn a_config_error_names_the_key_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(
        f,
        "cores = 1\n\n[window]\nsizes = [\"10s\"]\nallowed_latenes = \"1s\""
    )
    .unwrap();
    let o = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("allowed_latenes") && e.contains("line 5") && e.contains("sluice.toml"),
        "{e}"
    );

    std::fs::write(
        &path,
        "[[listener]]\nproto = \"tcp\"\naddr = \"127.0.0.1:1\"\nformat = \"csv\"\n",
    )
    .unwrap();
    let o = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("csv") && stderr(&o).contains("line 4"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_port_in_use_exits_1_naming_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("raw+tcp://{}?name=busy", taken.local_addr().unwrap());
    let data = dir.path().join("d");
    let o = serve_once(data.to_str().unwrap(), &spec);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("busy"), "{}", stderr(&o));
}

#[test]
fn a_second_instance_on_a_data_dir_in_use_exits_1_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let first = Sluice::start(&data, &["--listen", "raw+tcp://127.0.0.1:0?name=a"]);
    let d = data.to_str().unwrap();
    let args = [
        "serve",
        "--data-dir",
        d,
        "--admin",
        "127.0.0.1:0",
        "--listen",
        "raw+tcp://127.0.0.1:0?name=b",
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let pid = first.child.id().to_string();
    assert!(
        stderr(&o).contains("in use") && stderr(&o).contains(&pid),
        "{}",
        stderr(&o)
    );
    assert!(first.stop().success());
    // The lock went with the first process: a second one starts.
    let second = Sluice::start(&data, &["--listen", "raw+tcp://127.0.0.1:0?name=b"]);
    assert!(second.stop().success());
}

#[test]
fn log_and_checkpoint_tools_on_an_empty_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // The log tools say there is no log (see the_log_tools_say_when_there_is_no_log…).
    let o = run(&["log", "verify", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = run(&["log", "dump", "--data-dir", d]);
    assert!(o.status.code() == Some(1) && o.stdout.is_empty());
    let o = run(&["checkpoint", "inspect", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_second_process_on_a_port_sluice_listens_on_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Sluice::start(
        &dir.path().join("a"),
        &[
            "--listen",
            "raw+tcp://127.0.0.1:0?name=raw",
            "--listen",
            "statsd+udp://127.0.0.1:0?name=statsd",
        ],
    );
    for (name, proto) in [("raw", "raw+tcp"), ("statsd", "statsd+udp")] {
        let spec = format!("{proto}://{}?name=second", first.addr(name));
        let data = dir.path().join(format!("b-{name}"));
        let o = serve_once(data.to_str().unwrap(), &spec);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(
            e.contains("address in use by another process") && e.contains("second"),
            "{e}"
        );
    }
    assert!(first.stop().success());

    // Anything of the same user that holds the port with SO_REUSEPORT is refused too.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let addr = other.local_addr().unwrap().as_socket().unwrap();
    let spec = format!("statsd+udp://{addr}?name=shared");
    let data = dir.path().join("c");
    let o = serve_once(data.to_str().unwrap(), &spec);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("address in use by another process"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_says_what_serve_would_run_and_refuses_as_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let d = data.to_str().unwrap();
    let o = run(&["check", "--data-dir", d, "--cores", "2"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("embedded defaults")
            && out.contains("2 cores")
            && out.contains("graphite-tcp"),
        "{out}"
    );
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[window]\nsizes = [\"10s\"]\n\n[checkpoint]\nkeep = 0\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    for cmd in ["check", "serve"] {
        let o = run(&[
            cmd,
            "--config",
            f,
            "--data-dir",
            d,
            "--admin",
            "127.0.0.1:0",
        ]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {e}");
        assert!(
            e.contains("line 5") && e.contains("checkpoint.keep"),
            "{cmd}: {e}"
        );
    }
    // A flag that breaks a relation with the file: named, without a line of the file.
    std::fs::write(&file, "[window]\nhop = \"5s\"\n").unwrap();
    let o = run(&["check", "--config", f, "--window", "7s"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("window.hop"), "{}", stderr(&o));
    assert!(!data.exists(), "check wrote the data dir");
}

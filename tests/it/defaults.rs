//! The README's quick start: `sluice serve` on its embedded defaults, fed by `nc`.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{
    aggregate_lines, bin, have, http_get, now_secs, require, signal, wait_for, wait_timeout,
};

#[test]
fn the_readme_quick_start_works_on_the_default_ports() {
    if !require(have("nc"), "nc (netcat-openbsd)") {
        return;
    }
    for port in [2003, 7070, 5140, 9900] {
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok();
        if !require(free, &format!("a free default port {port}")) {
            return;
        }
    }
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .arg("serve")
        .current_dir(cwd.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin = "127.0.0.1:9900".parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || http_get(admin, "/readyz").0
            == 200),
        "not ready"
    );

    let line = format!("room.temp 21.5 {}", now_secs());
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("echo '{line}' | nc -q0 127.0.0.1 2003"))
        .status()
        .unwrap();
    assert!(status.success());

    let aggregates = cwd.path().join("sluice-data/aggregates");
    let found = wait_for(Duration::from_secs(45), || {
        aggregate_lines(&cwd.path().join("sluice-data"))
            .iter()
            .any(|(_, l)| {
                l.contains("\"key\":\"room.temp\"")
                    && l.contains("\"window\":\"10s\"")
                    && l.contains("\"sum\":21.5")
            })
    });
    signal(child.id(), "TERM");
    let exit = wait_timeout(&mut child, Duration::from_secs(30));
    assert!(
        found,
        "room.temp did not appear in {}",
        aggregates.display()
    );
    assert!(
        exit.is_some_and(|s| s.success()),
        "clean exit on SIGTERM: {exit:?}"
    );
}

//! Operations: tracing setup, signals, systemd notification, the descriptor limit.
//!
//! Owns the process-wide hooks an operator sees: the `tracing` subscriber (stderr, filtered by
//! `RUST_LOG`), the signal flags, the `sd_notify` messages of a `Type=notify` unit, and the
//! soft `RLIMIT_NOFILE`, raised to the hard limit at start.
//!
//! Invariants:
//! - Signal handlers only set atomic flags ([`Signals`]); whoever owns the loop polls them.
//!   SIGTERM and SIGINT set `stop`; a second one while `stop` is already set exits at once
//!   with status 1, so an operator can always get out of a stuck drain. SIGHUP sets `hangup`.
//! - Every notify function is a no-op without `NOTIFY_SOCKET` and never fails the process:
//!   a notification that cannot be sent is logged at debug level and dropped. The watchdog
//!   then fires if the process really is stuck, which is the point.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Installs the tracing subscriber (`RUST_LOG`, default `info`), writing to stderr.
///
/// Colours only on a terminal; no timestamps under journald (`JOURNAL_STREAM` set), which
/// stamps every line itself. Safe to call more than once: later calls leave the first
/// subscriber in place.
pub fn init_tracing() {
    init_tracing_to("info", std::io::stderr);
}

/// [`init_tracing`] with another default level (when `RUST_LOG` is not set) and another
/// writer of stderr's lines (one that keeps a progress bar below them, say).
pub fn init_tracing_to<W>(default_filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = installed {
        tracing::debug!(error = %e, "tracing subscriber already installed");
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the kernel's default soft limit, 1024,
/// is far below what a listener with thousands of senders needs; the hard limit is what the
/// administrator allows), logs both, and returns the soft limit in force (`None`: unlimited).
/// A failure to raise it is logged and the old limit kept.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut soft = before.current;
    if let Some(hard) = before.maximum
        && before.current.is_some_and(|s| s < hard)
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = Some(hard),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        }
    }
    let show = |l: Option<u64>| l.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    tracing::info!(
        soft = %show(soft),
        hard = %show(before.maximum),
        was = %show(before.current),
        "open files limit (RLIMIT_NOFILE)"
    );
    soft
}

/// Flags set by signals.
#[derive(Debug, Clone)]
pub struct Signals {
    /// SIGTERM or SIGINT received: stop.
    pub stop: Arc<AtomicBool>,
    /// SIGHUP received: reopen logs.
    pub hangup: Arc<AtomicBool>,
}

/// Registers SIGTERM, SIGINT and SIGHUP handlers that set the flags.
///
/// A second SIGTERM or SIGINT after `stop` is set terminates the process with status 1.
pub fn install_signals() -> std::io::Result<Signals> {
    let signals = Signals {
        stop: Arc::new(AtomicBool::new(false)),
        hangup: Arc::new(AtomicBool::new(false)),
    };
    for signal in [SIGTERM, SIGINT] {
        // Registered first, so it sees `stop` as it was before this delivery's flag is set.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&signals.stop))?;
        signal_hook::flag::register(signal, Arc::clone(&signals.stop))?;
    }
    signal_hook::flag::register(SIGHUP, Arc::clone(&signals.hangup))?;
    Ok(signals)
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) that startup is done.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd that shutdown has begun.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Updates the status line systemd shows.
pub fn notify_status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Pets the watchdog.
pub fn notify_watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd asked for, if any (half of `WATCHDOG_USEC`).
///
/// `None` when `WATCHDOG_USEC` is unset, unparsable or zero, or when `WATCHDOG_PID` names
/// another process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, ?states, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    //! The environment and signal dispositions are process-wide (and setting the environment
    //! is `unsafe` in this edition), so these checks run in a child copy of this test binary,
    //! given its environment by `Command::env`. The child is an ignored test that does nothing
    //! unless `SLUICE_OPS_TEST_CHILD` is set.

    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::process::Command;
    use std::sync::atomic::Ordering;

    const CHILD: &str = "SLUICE_OPS_TEST_CHILD";
    const CHILD_TEST: &str = "ops::tests::child_sends_notifications";

    /// Runs the child in `mode` with `envs`; returns its stderr.
    fn run_child(mode: &str, envs: &[(&str, &std::ffi::OsStr)]) -> String {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", CHILD_TEST, "--ignored", "--test-threads=1"])
            .env(CHILD, mode)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child `{mode}` failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    #[ignore = "run as a child process by the tests below, with its own environment"]
    fn child_sends_notifications() {
        let Ok(mode) = std::env::var(CHILD) else {
            return;
        };
        match mode.as_str() {
            "notify" => {
                notify_ready("x");
                notify_status("serving 3 listeners");
                notify_watchdog();
                notify_stopping();
                assert_eq!(watchdog_interval(), Some(Duration::from_secs(15)));
            }
            "other_pid" => {
                notify_ready("nobody listens");
                assert_eq!(watchdog_interval(), None);
            }
            "signals" => {
                let signals = install_signals().unwrap();
                assert!(!signals.stop.load(Ordering::SeqCst));
                signal_hook::low_level::raise(SIGHUP).unwrap();
                assert!(signals.hangup.load(Ordering::SeqCst));
                assert!(!signals.stop.load(Ordering::SeqCst));
                signal_hook::low_level::raise(SIGTERM).unwrap();
                assert!(signals.stop.load(Ordering::SeqCst));
                eprintln!("flags ok");
                // The second stop signal ends the process with status 1.
                signal_hook::low_level::raise(SIGINT).unwrap();
                panic!("still running after a second stop signal");
            }
            "tracing" => {
                init_tracing();
                init_tracing();
                tracing::debug!("tracing initialised");
            }
            "unset" => {
                notify_ready("x");
                notify_watchdog();
                assert_eq!(watchdog_interval(), None);
            }
            other => panic!("unknown child mode {other}"),
        }
    }

    #[test]
    fn notify_messages_reach_notify_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();

        run_child(
            "notify",
            &[
                ("NOTIFY_SOCKET", path.as_os_str()),
                ("WATCHDOG_USEC", "30000000".as_ref()),
            ],
        );
        let ready = receive(&socket);
        let lines: Vec<&str> = ready.lines().collect();
        assert!(lines.contains(&"READY=1"), "{ready:?}");
        assert!(lines.contains(&"STATUS=x"), "{ready:?}");
        assert_eq!(receive(&socket), "STATUS=serving 3 listeners\n");
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
        let stopping = receive(&socket);
        assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");

        // Another process's watchdog, and a socket nobody listens on: no interval, no failure.
        let gone = tmp.path().join("gone.sock");
        run_child(
            "other_pid",
            &[
                ("NOTIFY_SOCKET", gone.as_os_str()),
                ("WATCHDOG_USEC", "30000000".as_ref()),
                ("WATCHDOG_PID", "1".as_ref()),
            ],
        );
        // No NOTIFY_SOCKET at all: every call is a no-op.
        run_child("unset", &[]);
        socket.set_nonblocking(true).unwrap();
        assert!(socket.recv(&mut [0u8; 64]).is_err(), "unexpected datagram");
    }

    #[test]
    fn signals_set_flags_and_a_second_stop_signal_exits() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--ignored", "--nocapture"])
            .env(CHILD, "signals")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("flags ok"), "{stderr}");
        assert_eq!(out.status.code(), Some(1), "{stderr}");
    }

    #[test]
    fn init_tracing_twice_is_harmless() {
        // In a child, so the subscriber does not print over the other tests' output.
        let stderr = run_child("tracing", &[("RUST_LOG", "sluice=debug".as_ref())]);
        assert!(stderr.contains("tracing initialised"), "{stderr}");
        assert!(!stderr.contains('\x1b'), "colours on a pipe: {stderr}");
    }

    const EXAMPLE_CONFIG: &str = include_str!("../../systemd/sluice.toml");

    #[test]
    fn example_config_spells_out_the_defaults() {
        use crate::config::Config;
        let example = Config::from_toml(EXAMPLE_CONFIG).unwrap().finish().unwrap();
        let defaults = Config::from_toml("").unwrap().finish().unwrap();
        assert_eq!(example, defaults);
    }

    #[test]
    fn example_config_mentions_every_key() {
        use crate::config::{Config, default_listeners};
        fn keys(value: &toml::Value, out: &mut Vec<String>) {
            match value {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        out.push(k.clone());
                        keys(v, out);
                    }
                }
                toml::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
                _ => {}
            }
        }
        let config = Config {
            cores: Some(1),
            listeners: default_listeners(),
            ..Config::default()
        };
        let mut found = Vec::new();
        keys(&toml::Value::try_from(&config).unwrap(), &mut found);
        found.extend(["key", "value", "time"].map(String::from));
        for key in found {
            let mentioned = EXAMPLE_CONFIG.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                [format!("{key} "), format!("[{key}]"), format!("[[{key}]]")]
                    .iter()
                    .any(|p| l.starts_with(p.as_str()))
            });
            assert!(mentioned, "systemd/sluice.toml does not document `{key}`");
        }
    }
}

//! Operations: tracing setup, signals, systemd notification. (Being written.)

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Installs the tracing subscriber (`RUST_LOG`, default `info`), writing to stderr.
pub fn init_tracing() {
    todo!("ops")
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
pub fn install_signals() -> std::io::Result<Signals> {
    todo!("ops")
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) that startup is done.
pub fn notify_ready(_status: &str) {
    todo!("ops")
}

/// Tells systemd that shutdown has begun.
pub fn notify_stopping() {
    todo!("ops")
}

/// Updates the status line systemd shows.
pub fn notify_status(_status: &str) {
    todo!("ops")
}

/// Pets the watchdog.
pub fn notify_watchdog() {
    todo!("ops")
}

/// The watchdog interval systemd asked for, if any (half of `WATCHDOG_USEC`).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    todo!("ops")
}

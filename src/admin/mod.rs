//! Admin HTTP server. (Being written.)

#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::metrics::Metrics;

/// What the admin server reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    _thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Serves the admin API on `listener` from its own thread.
    pub fn start(
        _listener: std::net::TcpListener,
        _state: AdminState,
    ) -> std::io::Result<AdminServer> {
        todo!("admin")
    }

    /// Stops serving and joins the thread.
    pub fn stop(self) {
        todo!("admin")
    }
}

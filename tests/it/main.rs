//! Integration tests: the real `sluice` binary on loopback, in a temp data dir.

mod alerts;
mod cli;
mod cli_client;
mod config_props;
mod connections;
mod corruption;
mod crash;
mod dashboard;
mod defaults;
mod e2e;
mod experiments;
mod formats;
mod harness;
mod hostile;
mod limits;
mod log;
mod metrics;
mod query;
mod replay;
mod results;
mod statsd;
mod storage;
mod udp;

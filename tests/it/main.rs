//! Integration tests: the real `sluice` binary on loopback, in a temp data dir.

mod cli;
mod connections;
mod crash;
mod defaults;
mod e2e;
mod formats;
mod harness;
mod hostile;
mod log;
mod storage;
mod udp;

//! Running the daemon as a service: what it tells the operator and the host, and how it stops.
//!
//! Owns: Prometheus counters ([`metrics`], below the queue: the stages count into them) and their
//! exposition ([`exposition`]: the listener and the textfile, which read the queue's gauges), the
//! settings SIGHUP may change ([`reload`]), log output for a terminal or the journal
//! ([`logging`]), what systemd is told ([`notify`]) and the shutdown signal ([`shutdown`]).

pub mod exposition;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod reload;
pub mod shutdown;

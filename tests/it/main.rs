//! Black-box tests of the `pdrelay` binary against a fake Events API on loopback.

mod delivery;
mod fake_api;
mod forwarder;
mod http;
mod migration;
mod nagios;
mod ops;
mod regressions;
mod reliability;
mod socket_admin;
mod support;

//! Black-box tests of the `pdrelay` binary against a fake Events API on loopback.

mod clients;
mod delivery;
mod edges;
mod fake_api;
mod fake_rest;
mod forwarder;
mod hostile;
mod http;
mod migration;
mod nagios;
mod ops;
mod permissions;
mod policy;
mod regressions;
mod reliability;
mod socket_admin;
mod support;
mod twoway;

//! The other direction (opt-in): PagerDuty's side of each alert read from its REST API
//! ([`rest`]: the client; [`reconcile`]: which alerts to ask about and what the answers change),
//! and acknowledgements passed back to Nagios's command file and Icinga 2's API ([`ackback`]).

pub mod ackback;
pub mod reconcile;
pub mod rest;

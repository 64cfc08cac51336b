//! pdrelay: a durable PagerDuty Events API forwarder for monitored hosts.
//!
//! Data moves one way:
//!
//! ```text
//! producers ─► intake (spool files, Unix socket, `pdrelay send`)
//!           ─► event (parse, validate, normalize: PD-CEF v2, change, v1)
//!           ─► queue (sled, group commit, fsync before acknowledging)
//!           ─► delivery (ordered per routing + dedup key, retry with backoff, 429 pauses)
//!           ─► PagerDuty Events API (v2 enqueue, v2 change, v1 create_event)
//! ```
//!
//! Modules: [`config`] (TOML into a checked `Config`), [`event`] (the domain), [`intake`],
//! [`queue`], [`delivery`], [`pagerduty`] (wire types and HTTP client), [`daemon`] (wiring and
//! shutdown), [`send`] (the `pdrelay send` client side), [`admin`] (`pdrelay queue`, retention),
//! [`http`] (the opt-in local Events API endpoint), [`reconcile`] and [`ackback`] (the opt-in
//! other direction: PagerDuty's side of each alert from its REST API, acknowledgements passed
//! back to Nagios and Icinga), [`cli`] (arguments), [`text`] (escaping
//! producer text for logs and terminals), [`routing`] (`[[routes]]`: where
//! each event goes), [`silence`] (silences and maintenance windows), [`heartbeat`] (dead man's
//! switch and expected senders).

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod event;
pub mod intake;
pub mod ops;
pub mod producers;
pub mod queue;
pub mod rules;
pub mod sync;
pub mod text;

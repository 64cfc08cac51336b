//! pdrelay: a durable PagerDuty Events API forwarder for monitored hosts.
//!
//! Data moves one way, and each folder of `src/` is one stage of it:
//!
//! ```text
//! producers/  Nagios, Icinga, Zabbix, Sensu, pdagent, `pdrelay send`: their formats -> Event
//!    │
//! intake/     the channels: spool directories, the Unix socket, the local Events API (HTTP)
//!    │
//! event/      the domain: routing key, dedup key, event action, severity; v2, change, v1
//!    │
//! queue/      sled, group commit, fsync before acknowledging; the paging policy (rules/)
//!    │           applied as events are accepted, the open-alerts ledger
//! delivery/   dispatcher (order per routing + dedup key, concurrency, rate limits, outages),
//!    │           retry classification, the HTTP client
//!    ▼
//! PagerDuty Events API (v2 enqueue, v2 change, v1 create_event)
//!
//! beside the flow:
//! rules/      routes, silences and maintenance windows, heartbeats (what the operator set)
//! sync/       the other direction (opt-in): PagerDuty's side from its REST API, acks back
//! admin/      `pdrelay queue` / `alerts` / `status`: the admin socket, retention, tables
//! ops/        metrics and their exposition, SIGHUP reload, logging, systemd notify, shutdown
//! config/     the TOML file into a checked `Config`, with every section's type
//! daemon.rs   wiring the stages together and stopping them; cli.rs, main.rs: the commands
//! clock.rs, text.rs   time in ms and RFC 3339; escaping producer text for logs and terminals
//! ```
//!
//! Imports point down this map: a stage uses the stages below it and the primitives (`event`,
//! `clock`, `text`), never the other way. `rules` needs only `event`; `config` needs only those
//! and `rules` (whose section types it reads), so every stage can take its settings from
//! `config`. The counters in `ops::metrics` sit below the queue, which counts into them, while
//! `ops::exposition` reads the queue. No two files import each other, directly or in a loop
//! (`python3 ../shared/tools/import_circles.py`).

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

//! The operator's rules, read from the configuration: where each event goes ([`routing`]:
//! `[[routes]]`), when it must not page ([`silence`]: silences and `[[maintenance]]` windows), and
//! what must be heard from ([`heartbeat`]: the dead man's switch and `[[expected_senders]]`).
//! The queue applies them as events are accepted (see `queue::policy`).

pub mod heartbeat;
pub mod routing;
pub mod silence;

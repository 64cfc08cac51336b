//! Delivery: takes pending events from the queue in order, sends them, and records what happened.
//!
//! Owns: ordering (per routing key and dedup key), concurrency, retry timing and routing-key
//! pauses ([`dispatcher`]), and the pure classification of answers ([`retry`]); heartbeats out
//! and expected senders in ([`heartbeat`]); the HTTP transport to the Events API ([`client`]).
//! Does not own: storage (`queue`).

pub mod client;
pub mod dispatcher;
pub mod heartbeat;
pub mod retry;

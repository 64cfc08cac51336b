//! The key layout of the queue's one sled tree, and event ids. Every key the store reads or
//! writes is built here (the paging policy's index keys from [`prefixed_key`]; their meaning is
//! documented in `policy`).
//!
//! Key layout in the one tree (prefix byte, then big-endian numbers so that order is numeric):
//!
//! | key | value |
//! | --- | --- |
//! | `e` seq(u64) | [`Record`], JSON, versioned |
//! | `i` id | seq(u64): the id index, for producer-chosen ids only (generated ids name their seq) |
//! | `k` routing key | pause-until, ms since the epoch (u64): 429 / v1 403 pauses |
//! | `a` routing key, 0, dedup key | `alerts::AlertState`, JSON: dedup-key tracking |
//! | `m` name | last success, last error |
//! | `v` routing key, 0, dedup key | `view::PagerDutyView`, JSON: PagerDuty's side (reconciliation) |
//! | `s` id | a stored silence, JSON |
//! | `r` routing key, 0, dedup key | `policy::Follow`, JSON: where a routed trigger went, for its acknowledge and resolve |
//! | `h` sent routing key, 0, dedup key | seq(u64) of a resolve held by flap damping |
//! | `q` routing key, 0, dedup key, 0, seq(u64) | who holds a silenced trigger and until when, JSON |
//! | `p` seq(u64) | legacy pending index, removed at open (versions before it was dropped) |

use super::error::StoreError;
use super::record::Record;

/// The big-endian u64 stored at `k`, if any (a value of another length reads as none).
pub(super) fn read_u64(tree: &sled::Tree, k: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(tree.get(k)?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
}

/// A sequence-numbered key: `prefix`, then `seq` big-endian (`e` records, legacy `p` entries).
pub(super) fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Bits 48..60 of a generated id (after its 48-bit millisecond timestamp and the version nibble):
/// marks ids this store made from a sequence number.
const GENERATED_ID_TAG: u16 = 0xd1a;

/// A fresh public id for event `seq`, accepted at `now_ms`: a UUID version 8 (RFC 9562 section
/// 5.8) whose first 48 bits are the acceptance time in ms (so ids sort by time, as version 7
/// ones do), then [`GENERATED_ID_TAG`], then the sequence number (62 bits; the variant takes 2).
/// Because the id names its record, generated ids need no id-index entry: one sled insert fewer
/// per event. Producer-chosen ids still go through the index.
pub(super) fn generated_id(seq: u64, now_ms: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    bytes[6..8].copy_from_slice(&GENERATED_ID_TAG.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    uuid::Uuid::new_v8(bytes).hyphenated().to_string()
}

/// The sequence number a [`generated_id`] names, if `id` has that shape. The caller must check
/// the record's id: a producer may choose an id of the same shape.
pub(super) fn generated_seq(id: &str) -> Option<u64> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    let bytes = uuid.as_bytes();
    if uuid.get_version_num() != 8 || u16::from_be_bytes([bytes[6], bytes[7]]) & 0x0fff != GENERATED_ID_TAG {
        return None;
    }
    Some(u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")) & (u64::MAX >> 2))
}

/// The sequence number of the record with public id `id`: from the id index (producer-chosen
/// ids), else from the id itself (generated ids), checked against the record.
pub(super) fn seq_of_id(tree: &sled::Tree, id: &str) -> Result<Option<u64>, StoreError> {
    if let Some(seq) = tree.get(id_key(id))? {
        let seq: [u8; 8] =
            seq.as_ref().try_into().map_err(|_| StoreError::Corrupt(format!("id index entry for {id}")))?;
        return Ok(Some(u64::from_be_bytes(seq)));
    }
    let Some(seq) = generated_seq(id) else { return Ok(None) };
    match tree.get(key(b'e', seq))? {
        Some(bytes) if Record::decode(&bytes).is_ok_and(|r| r.id == id) => Ok(Some(seq)),
        _ => Ok(None),
    }
}

/// The id-index key of a producer-chosen id.
pub(super) fn id_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(b'i');
    k.extend_from_slice(id.as_bytes());
    k
}

/// The key of a routing key's pause.
pub(super) fn pause_key(routing_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + routing_key.len());
    k.push(b'k');
    k.extend_from_slice(routing_key.as_bytes());
    k
}

/// The key of the stored silence `id`.
pub(super) fn silence_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(b's');
    k.extend_from_slice(id.as_bytes());
    k
}

/// The key of the store's own entry `name` (`commit`, `next_seq`, `last_success`, `last_error`).
pub(super) fn meta_key(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'm');
    k.extend_from_slice(name);
    k
}

/// The sequence number in a key made by [`key`].
pub(super) fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[1..9].try_into().expect("sequence keys are 9 bytes"))
}

/// The dedup-key tracking key of one alert.
pub(super) fn alert_key(routing_key: &str, dedup_key: &str) -> Vec<u8> {
    prefixed_key(b'a', routing_key, dedup_key)
}

/// `prefix`, the routing key, a 0 byte, the dedup key: the `a` and `v` keys.
pub(super) fn prefixed_key(prefix: u8, routing_key: &str, dedup_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + routing_key.len() + dedup_key.len());
    k.push(prefix);
    k.extend_from_slice(routing_key.as_bytes());
    k.push(0);
    k.extend_from_slice(dedup_key.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::request::NewEvent;
    use crate::queue::store::tests::event;
    use crate::queue::store::Store;

    #[tokio::test]
    async fn generated_ids_name_their_record_without_an_index_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let a = store.insert(vec![NewEvent { id: None, intake: "socket", event: event("a") }]).await.unwrap();
        let b = store.insert(vec![NewEvent { id: None, intake: "socket", event: event("b") }]).await.unwrap();
        assert_eq!(generated_seq(&a[0].id), Some(a[0].seq));
        assert!(store.inner.tree.get(id_key(&a[0].id)).unwrap().is_none(), "a generated id wrote an index entry");
        assert_eq!(store.get_by_id(&b[0].id).unwrap().unwrap().event.dedup_key(), Some("b"));
        // An id of the generated shape that names no record of that id is unknown...
        let forged = generated_id(a[0].seq, 1);
        assert!(store.get_by_id(&forged).unwrap().is_none());
        // ...and a producer may choose it: it is indexed, and both lookups stay right.
        let c =
            store.insert(vec![NewEvent { id: Some(forged.clone()), intake: "send", event: event("c") }]).await.unwrap();
        assert_eq!(store.get_by_id(&forged).unwrap().unwrap().seq, c[0].seq);
        assert_eq!(store.get_by_id(&a[0].id).unwrap().unwrap().seq, a[0].seq);
        // A producer handing back a generated id with the same event stores it once.
        let again = store
            .insert(vec![NewEvent { id: Some(a[0].id.clone()), intake: "send", event: event("a") }])
            .await
            .unwrap();
        assert_eq!(again[0].seq, a[0].seq);
        assert_eq!(store.pending_count(), 3);
    }
}

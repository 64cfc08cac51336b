//! What a spool file is: which directory entries are read, and how a file's bytes become events
//! (`*.json` one event, `*.ndjson` one event per line, `pd_*.txt` a pagerduty_nagios.pl file),
//! with the bounded line reader that large `.ndjson` files are streamed through.
//!
//! Pure: no directory handling (the claim layer, `intake::spool_dir`) and no storing (the intake
//! loop, `intake::spool`).

use std::io::BufRead;
use std::time::Duration;

use tracing::info;

use crate::config::nagios::NagiosSettings;
use crate::event::{Event, IntakeDefaults};
use crate::producers::nagios::{map, parse_pl_spool_file, Mapped};
use crate::queue::request::NewEvent;
use crate::text::Escaped;

/// Whether a directory entry named `name` is a spool file to read: `*.json`, `*.ndjson`, or a
/// pagerduty_nagios.pl file `pd_*.txt`; never a name starting with `.` or ending in `.tmp`.
pub fn is_spool_file(name: &str) -> bool {
    !name.starts_with('.')
        && !name.ends_with(".tmp")
        && (name.ends_with(".json") || name.ends_with(".ndjson") || is_pl_file(name))
}

/// pagerduty_nagios.pl writes `pd_*.txt` in place rather than renaming, so such a file is read
/// only once it has not changed for this long.
pub const PL_FILE_QUIET: Duration = Duration::from_secs(2);

pub(super) fn is_pl_file(name: &str) -> bool {
    name.starts_with("pd_") && name.ends_with(".txt")
}

/// Parses a spool file's bytes into events; the error is the one-line reason for `rejected/`.
/// An empty list means the file needs nothing sent (an ignored Nagios notification type).
pub fn parse_spool_file(
    name: &str,
    bytes: &[u8],
    defaults: &IntakeDefaults,
    nagios: &NagiosSettings,
) -> Result<Vec<NewEvent>, String> {
    if is_pl_file(name) {
        let notification = parse_pl_spool_file(bytes)?;
        return match map(&notification, nagios, defaults).map_err(|e| e.to_string())? {
            Mapped::Event(event) => Ok(vec![NewEvent { id: None, intake: "spool", event }]),
            Mapped::Ignored(message) => {
                info!(file = %Escaped(name), %message, "pagerduty_nagios.pl file needs nothing sent; removing it");
                Ok(Vec::new())
            }
        };
    }
    if name.ends_with(".ndjson") {
        let mut events = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if is_blank(line) {
                continue;
            }
            let event = Event::from_json(line, defaults).map_err(|e| format!("line {}: {e}", i + 1))?;
            events.push(NewEvent { id: None, intake: "spool", event });
        }
        if events.is_empty() {
            return Err("file has no events (empty)".to_owned());
        }
        Ok(events)
    } else {
        if is_blank(bytes) {
            return Err("file is empty".to_owned());
        }
        let event = Event::from_json(bytes, defaults).map_err(|e| e.to_string())?;
        let stem = name.trim_end_matches(".json");
        let id = uuid::Uuid::parse_str(stem).ok().map(|u| u.hyphenated().to_string());
        Ok(vec![NewEvent { id, intake: "spool", event }])
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Calls `each(line number, line)` for every non-blank line of `reader`, lines bounded by
/// `max_line` bytes. `each` returns whether to go on. Errors name the line.
pub(super) fn for_each_line(
    reader: &mut impl BufRead,
    max_line: usize,
    mut each: impl FnMut(usize, &[u8]) -> Result<bool, String>,
) -> Result<(), String> {
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        number += 1;
        let mut too_long = false;
        loop {
            let buf = reader.fill_buf().map_err(|e| format!("cannot be read: {e}"))?;
            if buf.is_empty() {
                break;
            }
            let (part, end) = match buf.iter().position(|b| *b == b'\n') {
                Some(at) => (&buf[..at], Some(at + 1)),
                None => (buf, None),
            };
            if line.len() + part.len() > max_line {
                too_long = true;
            } else {
                line.extend_from_slice(part);
            }
            let used = end.unwrap_or(buf.len());
            reader.consume(used);
            if end.is_some() {
                break;
            }
            if too_long {
                continue;
            }
        }
        if too_long {
            return Err(format!("line {number}: longer than ingest.max_line_bytes ({max_line} bytes)"));
        }
        let at_end = line.is_empty() && reader.fill_buf().map(|b| b.is_empty()).unwrap_or(true);
        if !is_blank(&line) && !each(number, &line)? {
            return Ok(());
        }
        if at_end {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_read() {
        for (name, read) in [
            ("a.json", true),
            ("b.ndjson", true),
            (".a.json", false),
            ("a.json.tmp", false),
            ("a.tmp", false),
            ("notes.txt", false),
            ("a.json.reason", false),
            ("pd_1234_567.txt", true),
            ("pd_1234.txt.tmp", false),
            ("other.txt", false),
        ] {
            assert_eq!(is_spool_file(name), read, "{name}");
        }
    }

    #[test]
    fn files_are_all_or_nothing() {
        let d = IntakeDefaults::default();
        let n = NagiosSettings::default();
        let key = "r".repeat(32);
        let good = format!(r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":"s"}}}}"#);
        let two = format!("{good}\n\n{good}\n");
        assert_eq!(parse_spool_file("x.ndjson", two.as_bytes(), &d, &n).unwrap().len(), 2);
        let bad = format!("{good}\n{{\"event_action\":1}}\n");
        assert!(parse_spool_file("x.ndjson", bad.as_bytes(), &d, &n).unwrap_err().starts_with("line 2: "));
        assert_eq!(parse_spool_file("x.json", b"", &d, &n).unwrap_err(), "file is empty");
        assert!(parse_spool_file("x.ndjson", b"\n\n", &d, &n).is_err());
        assert!(parse_spool_file("x.json", &[0xff, 0xfe], &d, &n).is_err());
        let id = "0191e7a2-7c5e-7a41-9a0e-5f2d2b0c1d2e";
        let evs = parse_spool_file(&format!("{id}.json"), good.as_bytes(), &d, &n).unwrap();
        assert_eq!(evs[0].id.as_deref(), Some(id));
        assert_eq!(parse_spool_file("alert.json", good.as_bytes(), &d, &n).unwrap()[0].id, None);
    }

    #[test]
    fn lines_are_bounded_and_numbered() {
        let text = b"one\n\n  \nthree\nfour";
        let mut seen = Vec::new();
        for_each_line(&mut &text[..], 10, |n, line| {
            seen.push((n, String::from_utf8(line.to_vec()).unwrap()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, vec![(1, "one".into()), (4, "three".into()), (5, "four".into())]);
        let long = format!("ok\n{}\n", "y".repeat(50));
        let err = for_each_line(&mut long.as_bytes(), 10, |_, _| Ok(true)).unwrap_err();
        assert_eq!(err, "line 2: longer than ingest.max_line_bytes (10 bytes)");
        let mut calls = 0;
        for_each_line(&mut &b"a\nb\nc\n"[..], 10, |_, _| {
            calls += 1;
            Ok(calls < 2)
        })
        .unwrap();
        assert_eq!(calls, 2, "stops when asked");
    }
}

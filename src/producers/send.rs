//! The client side of `pdrelay send`: builds one event from pd-send's flags, validates it with
//! the same rules as the daemon, and hands it over: to the daemon's socket when it answers, else
//! as a durable drop-file in the first spool directory (written as a dotfile, fsynced, renamed
//! into place, directory fsynced), which the daemon picks up when it runs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cli::{ActionArg, SendArgs};
use crate::config::Config;
use crate::event::ApiVersion;
use crate::event::{Event, EventError};
use crate::intake::socket::Reply;

/// How long `send` waits for the daemon's reply before falling back to a drop-file.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `send` did not store the event.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Bad flags or an invalid event: nothing stored (exit 2).
    #[error("{0}")]
    Invalid(#[from] EventError),
    /// Neither the daemon nor the spool directory took it (exit 1).
    #[error("could not store the event: {0}")]
    Store(String),
}

/// Where the event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// The daemon stored it.
    Daemon,
    /// Written as a drop-file at this path.
    Spool(std::path::PathBuf),
}

/// The accepted event.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Event id.
    pub id: String,
    /// Dedup key that will be sent (`None` for change events).
    pub dedup_key: Option<String>,
    /// Where it went.
    pub handed: Handed,
}

/// Splits `KEY=VALUE` at the first `=`, as pd-send did: an empty key (`=v`) or value (`k=`) is
/// kept.
fn split_pair<'a>(value: &'a str, flag: &str) -> Result<(&'a str, &'a str), EventError> {
    value.split_once('=').ok_or_else(|| EventError::new(flag, format!("must be KEY=VALUE (got {value:?})")))
}

/// Events API v2 `links[]` and `images[]` (`--link`, `--image`), the same in alert and change
/// events; nothing is added for an empty list.
fn put_links_and_images(obj: &mut Map<String, Value>, links: Vec<Value>, images: &[String]) {
    if !links.is_empty() {
        obj.insert("links".into(), Value::Array(links));
    }
    if !images.is_empty() {
        obj.insert("images".into(), Value::Array(images.iter().map(|src| json!({"src": src})).collect()));
    }
}

/// Builds the event JSON from the flags, in the shape `--api` and `--change` select.
pub fn event_json(args: &SendArgs) -> Result<Value, EventError> {
    let mut fields = Map::new();
    for f in &args.fields {
        let (k, v) = split_pair(f, "--field")?;
        fields.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let links: Vec<Value> = args
        .links
        .iter()
        .map(|l| match l.split_once('=') {
            // An '=' inside a URL's query is not a separator; only split when the left side has no '?'.
            Some((href, text)) if !href.contains('?') => json!({"href": href, "text": text}),
            _ => json!({"href": l}),
        })
        .collect();
    let mut obj = Map::new();
    let put = |obj: &mut Map<String, Value>, k: &str, v: &Option<String>| {
        if let Some(v) = v {
            obj.insert(k.to_owned(), Value::String(v.clone()));
        }
    };
    if args.change {
        if args.api == ApiVersion::V1 {
            return Err(EventError::new("--change", "is a v2 event; it cannot be used with --api v1"));
        }
        put(&mut obj, "routing_key", &args.routing_key);
        let mut payload = Map::new();
        put(&mut payload, "summary", &args.summary);
        put(&mut payload, "source", &args.source);
        put(&mut payload, "timestamp", &args.timestamp);
        if !fields.is_empty() {
            payload.insert("custom_details".into(), Value::Object(fields));
        }
        obj.insert("payload".into(), Value::Object(payload));
        put_links_and_images(&mut obj, links, &args.images);
        return Ok(Value::Object(obj));
    }
    let action = match args.event_action {
        Some(ActionArg::Trigger) => "trigger",
        Some(ActionArg::Acknowledge) => "acknowledge",
        Some(ActionArg::Resolve) => "resolve",
        None => {
            return Err(EventError::new(
                "--event-type",
                "is required (trigger, acknowledge or resolve), unless --change",
            ))
        }
    };
    match args.api {
        ApiVersion::V1 => {
            for (flag, set) in [
                ("--severity", args.severity.is_some()),
                ("--source", args.source.is_some()),
                ("--component", args.component.is_some()),
                ("--group", args.group.is_some()),
                ("--class", args.class.is_some()),
                ("--timestamp", args.timestamp.is_some()),
            ] {
                if set {
                    return Err(EventError::new(flag, "is a v2 field; drop it or use --api v2"));
                }
            }
            obj.insert("event_type".into(), json!(action));
            put(&mut obj, "service_key", &args.routing_key);
            put(&mut obj, "incident_key", &args.dedup_key);
            put(&mut obj, "description", &args.summary);
            put(&mut obj, "client", &args.client);
            put(&mut obj, "client_url", &args.client_url);
            if !fields.is_empty() {
                obj.insert("details".into(), Value::Object(fields));
            }
            let mut contexts: Vec<Value> = links
                .into_iter()
                .map(|mut l| {
                    l["type"] = json!("link");
                    l
                })
                .collect();
            contexts.extend(args.images.iter().map(|src| json!({"type": "image", "src": src})));
            if !contexts.is_empty() {
                obj.insert("contexts".into(), Value::Array(contexts));
            }
        }
        ApiVersion::V2 => {
            obj.insert("event_action".into(), json!(action));
            put(&mut obj, "routing_key", &args.routing_key);
            put(&mut obj, "dedup_key", &args.dedup_key);
            put(&mut obj, "client", &args.client);
            put(&mut obj, "client_url", &args.client_url);
            let has_payload = args.summary.is_some() || action == "trigger";
            if has_payload {
                let mut payload = Map::new();
                put(&mut payload, "summary", &args.summary);
                put(&mut payload, "source", &args.source);
                put(&mut payload, "severity", &args.severity);
                put(&mut payload, "timestamp", &args.timestamp);
                put(&mut payload, "component", &args.component);
                put(&mut payload, "group", &args.group);
                put(&mut payload, "class", &args.class);
                if !fields.is_empty() {
                    payload.insert("custom_details".into(), Value::Object(fields));
                }
                obj.insert("payload".into(), Value::Object(payload));
            }
            put_links_and_images(&mut obj, links, &args.images);
        }
    }
    Ok(Value::Object(obj))
}

/// Builds, validates and hands over the event.
pub fn send(args: &SendArgs, config: &Config) -> Result<Sent, SendError> {
    let event = Event::from_value(event_json(args)?, &config.defaults)?;
    hand_over(&event, config)
}

/// Hands a validated event to the daemon's socket when it answers, else writes a durable
/// drop-file into the first spool directory. Used by `send` and `nagios`.
pub fn hand_over(event: &Event, config: &Config) -> Result<Sent, SendError> {
    let line = event.request_body();
    match via_socket(&config.file.ingest.socket, &line) {
        Ok(reply) if reply.ok => {
            return Ok(Sent { id: reply.id.unwrap_or_default(), dedup_key: reply.dedup_key, handed: Handed::Daemon })
        }
        Ok(reply) if reply.code.as_deref() == Some("invalid") => {
            let message = reply.error.unwrap_or_default();
            let (field, rule) = message.split_once(": ").unwrap_or(("event", &message));
            return Err(SendError::Invalid(EventError::new(field, rule)));
        }
        // The daemon answered but could not store it, or did not answer: drop a file instead.
        Ok(_) | Err(_) => {}
    }
    let dir = config
        .file
        .ingest
        .spool_dirs
        .first()
        .ok_or_else(|| SendError::Store("no spool directory is configured".into()))?;
    let id = uuid::Uuid::now_v7().hyphenated().to_string();
    let path = write_drop_file(dir, &id, &line).map_err(|e| {
        SendError::Store(format!(
            "no daemon answered on {} and the spool directory {} is not writable: {e}",
            config.file.ingest.socket.display(),
            dir.display()
        ))
    })?;
    Ok(Sent { id, dedup_key: event.dedup_key().map(str::to_owned), handed: Handed::Spool(path) })
}

fn via_socket(path: &Path, line: &[u8]) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    stream.write_all(line)?;
    stream.write_all(b"\n")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes `<dir>/<id>.json` durably: `.<id>.json.tmp` written and fsynced, renamed into place,
/// then the directory fsynced. Mode 0640, so the daemon's group can read it.
pub fn write_drop_file(dir: &Path, id: &str, body: &[u8]) -> std::io::Result<std::path::PathBuf> {
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let target = dir.join(format!("{id}.json"));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o640).open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|_| target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn args(line: &[&str]) -> SendArgs {
        let mut argv = vec!["pdrelay", "send"];
        argv.extend_from_slice(line);
        match Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Send(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn pd_send_flags_build_events() {
        let k = "a".repeat(32);
        let v = event_json(&args(&[
            "-k",
            &k,
            "-t",
            "trigger",
            "-d",
            "disk full",
            "-i",
            "disk/web1",
            "-f",
            "mount=/var",
            "-f",
            "pct=97",
            "-c",
            "nagios",
            "-u",
            "http://n",
        ]))
        .unwrap();
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["payload"]["custom_details"]["mount"], "/var");
        assert_eq!(v["client"], "nagios");
        let v = event_json(&args(&[
            "--api",
            "v1",
            "-k",
            &k,
            "-t",
            "resolve",
            "-i",
            "x",
            "--link",
            "https://a/b?c=d",
            "--link",
            "https://e=F",
        ]))
        .unwrap();
        assert_eq!(v["event_type"], "resolve");
        assert_eq!(v["incident_key"], "x");
        assert_eq!(v["contexts"][0]["href"], "https://a/b?c=d");
        assert_eq!(v["contexts"][1]["text"], "F");
        let v = event_json(&args(&["--change", "-k", &k, "-d", "deployed v2", "--image", "https://i/g.png"])).unwrap();
        assert!(v.get("event_action").is_none());
        assert_eq!(v["payload"]["summary"], "deployed v2");
        assert_eq!(v["images"], json!([{"src": "https://i/g.png"}]));
        // pd-send's argparse habits: the last of a repeated flag, abbreviations, dash-led values,
        // an empty field name.
        let v = event_json(&args(&[
            "--serv",
            &k,
            "-t",
            "trigger",
            "--desc",
            "first",
            "-d",
            "- disk full",
            "--inc",
            "-abc def",
            "-f",
            "=v",
        ]))
        .unwrap();
        assert_eq!(v["payload"]["summary"], "- disk full");
        assert_eq!(v["dedup_key"], "-abc def");
        assert_eq!(v["payload"]["custom_details"], json!({"": "v"}));
        assert_eq!(event_json(&args(&["-k", &k, "-d", "x"])).unwrap_err().field, "--event-type");
        assert_eq!(event_json(&args(&["-k", &k, "-t", "trigger", "-f", "novalue"])).unwrap_err().field, "--field");
        assert_eq!(
            event_json(&args(&["--api", "v1", "-k", &k, "-t", "trigger", "--severity", "info"])).unwrap_err().field,
            "--severity"
        );
    }

    #[test]
    fn aliases_are_accepted() {
        let k = "a".repeat(32);
        let a = args(&["--routing-key", &k, "--event-action", "acknowledge", "--dedup-key", "d", "--summary", "s"]);
        assert_eq!(a.event_action, Some(ActionArg::Acknowledge));
        assert_eq!(a.dedup_key.as_deref(), Some("d"));
    }

    #[test]
    fn drop_file_is_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_drop_file(dir.path(), "abc", b"{}").unwrap();
        assert_eq!(path, dir.path().join("abc.json"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("abc.json")]);
    }
}

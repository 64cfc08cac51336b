//! Nagios and Icinga notifications into events, as pd-nagios maps them, so that incidents opened
//! by an existing pdagent install keep deduplicating after the switch.
//!
//! Inputs: `pdrelay nagios -k KEY -t NOTIFICATIONTYPE -n host|service [-i KEY] [-f MACRO=VALUE]...`
//! (with no `-f`, the `NAGIOS_*` and `ICINGA_*` environment macros, which Nagios exports when
//! `enable_environment_macros=1`), and the `pd_*.txt` spool files pagerduty_nagios.pl writes
//! (`MACRO=VALUE` lines without the `NAGIOS_` prefix, `CONTACTPAGER` holding the routing key,
//! `pd_nagios_object` saying host or service).
//!
//! Mapping (Nagios 4 "Standard Macros" names): the notification type picks the event action
//! through `[nagios] notification_types` (PROBLEM -> trigger, ACKNOWLEDGEMENT -> acknowledge,
//! RECOVERY -> resolve, others ignored by default); the dedup key is pd-nagios's
//! `event_source=service;host_name=<HOSTNAME>;service_desc=<SERVICEDESC>` or
//! `event_source=host;host_name=<HOSTNAME>`; severity comes from HOSTSTATE or SERVICESTATE through
//! `[nagios] severity`; source is HOSTNAME; component is SERVICEDESC; the summary reads
//! `web1/Disk /var is CRITICAL: DISK CRITICAL - free space: /var 3%`; every macro goes into
//! custom details.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::config::nagios::{NagiosSettings, TypeAction};
use crate::event::ApiVersion;
use crate::event::{Event, EventAction, EventError, IntakeDefaults};

/// What a notification is about (pd-nagios's `-n`, pagerduty_nagios.pl's `pd_nagios_object`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NagiosObject {
    /// A host notification.
    Host,
    /// A service notification.
    Service,
}

impl NagiosObject {
    /// `host` or `service`.
    pub fn as_str(self) -> &'static str {
        match self {
            NagiosObject::Host => "host",
            NagiosObject::Service => "service",
        }
    }
}

/// One notification, as the notification command or spool file gave it.
#[derive(Debug, Clone, Default)]
pub struct Notification {
    /// Routing key (`-k`, or CONTACTPAGER); the default key if absent.
    pub routing_key: Option<String>,
    /// Notification type (`-t`, or NOTIFICATIONTYPE).
    pub notification_type: String,
    /// Host or service.
    pub object: Option<NagiosObject>,
    /// A dedup key to use instead of pd-nagios's (`-i`).
    pub dedup_key: Option<String>,
    /// Macros by Nagios name, without prefix (HOSTNAME, SERVICEDESC, _HOSTRACK, ...).
    pub macros: BTreeMap<String, String>,
}

/// What a notification becomes.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // built once per notification, moved once
pub enum Mapped {
    /// An event to store and send.
    Event(Event),
    /// Nothing to send; the message says why.
    Ignored(String),
}

/// Macros from the environment: `NAGIOS_X` and `ICINGA_X` become `X` (custom variables
/// `NAGIOS__HOSTX` become `_HOSTX`); empty values are left out. NAGIOS_ wins over ICINGA_.
pub fn macros_from_env(vars: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    let mut nagios = BTreeMap::new();
    let mut icinga = BTreeMap::new();
    for (k, v) in vars {
        if v.is_empty() {
            continue;
        }
        if let Some(name) = k.strip_prefix("NAGIOS_") {
            nagios.insert(name.to_owned(), v);
        } else if let Some(name) = k.strip_prefix("ICINGA_") {
            icinga.insert(name.to_owned(), v);
        }
    }
    icinga.extend(nagios);
    icinga
}

/// Macros from `-f MACRO=VALUE` flags (a `NAGIOS_` or `ICINGA_` prefix is dropped).
pub fn macros_from_fields(fields: &[String]) -> Result<BTreeMap<String, String>, EventError> {
    let mut m = BTreeMap::new();
    for f in fields {
        // As pd-nagios: split at the first '='; an empty name or value is kept.
        let (k, v) =
            f.split_once('=').ok_or_else(|| EventError::new("--field", format!("must be MACRO=VALUE (got {f:?})")))?;
        let k = k.strip_prefix("NAGIOS_").or_else(|| k.strip_prefix("ICINGA_")).unwrap_or(k);
        m.insert(k.to_owned(), v.to_owned());
    }
    Ok(m)
}

/// Parses a pagerduty_nagios.pl spool file: `KEY=VALUE` lines (split at the first `=`).
pub fn parse_pl_spool_file(bytes: &[u8]) -> Result<Notification, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("file is not UTF-8 ({e})"))?;
    let mut macros = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| format!("line {}: must be KEY=VALUE", i + 1))?;
        macros.insert(k.trim().to_owned(), v.to_owned());
    }
    let object = match macros.remove("pd_nagios_object").as_deref() {
        Some("host") => NagiosObject::Host,
        Some("service") => NagiosObject::Service,
        Some(other) => return Err(format!("pd_nagios_object: must be host or service (got {other:?})")),
        None => return Err("pd_nagios_object: is required (host or service)".to_owned()),
    };
    let notification_type = macros.get("NOTIFICATIONTYPE").cloned().ok_or("NOTIFICATIONTYPE: is required")?;
    Ok(Notification {
        routing_key: macros.get("CONTACTPAGER").cloned().filter(|k| !k.is_empty()),
        notification_type,
        object: Some(object),
        dedup_key: None,
        macros,
    })
}

/// A macro that must be given; as in pd-nagios, given empty (`-f HOSTNAME=`) is given.
fn required<'a>(macros: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, EventError> {
    macros
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| EventError::new(name, "macro is required (pass -f NAME=$NAME$ or enable environment macros)"))
}

/// Start of pd-nagios's dedup key for a host problem; the host name follows.
pub const HOST_KEY_PREFIX: &str = "event_source=host;host_name=";
/// Start of pd-nagios's dedup key for a service problem; the host name follows, then
/// [`SERVICE_DESC_SEPARATOR`] and the service description.
pub const SERVICE_KEY_PREFIX: &str = "event_source=service;host_name=";
/// Between the host name and the service description in a service problem's dedup key.
pub const SERVICE_DESC_SEPARATOR: &str = ";service_desc=";

/// pd-nagios's dedup (incident) key for a host or service: `event_source=host;host_name=HOST`
/// or `event_source=service;host_name=HOST;service_desc=SERVICE` (parsed back by
/// `sync::ackback::parse_nagios_key`).
pub fn pd_nagios_dedup_key(object: NagiosObject, macros: &BTreeMap<String, String>) -> Result<String, EventError> {
    let host = required(macros, "HOSTNAME")?;
    Ok(match object {
        NagiosObject::Host => format!("{HOST_KEY_PREFIX}{host}"),
        NagiosObject::Service => {
            format!("{SERVICE_KEY_PREFIX}{host}{SERVICE_DESC_SEPARATOR}{}", required(macros, "SERVICEDESC")?)
        }
    })
}

/// Maps a notification to an event, or says why it is ignored.
///
/// Errors: a missing required macro (HOSTNAME, HOSTSTATE for hosts; HOSTNAME, SERVICEDESC,
/// SERVICESTATE for services), a missing object, a bad routing key, a notification type that is
/// not in `[nagios] notification_types` (a misspelt type must not page nobody silently).
pub fn map(n: &Notification, settings: &NagiosSettings, defaults: &IntakeDefaults) -> Result<Mapped, EventError> {
    map_api(n, ApiVersion::V2, settings, defaults)
}

/// [`map`], in the shape `api` selects: v2 as [`map`] describes; v1 is the event pd-nagios
/// queued: `event_type` from the notification type, pd-nagios's incident key, its description
/// (`HOSTNAME=<h>; HOSTSTATE=<s>` for a host, `SERVICEDESC=<d>; SERVICESTATE=<s>; HOSTNAME=<h>`
/// for a service) and details (every macro given, and `pd_nagios_object`).
///
/// Errors: as [`map`].
pub fn map_api(
    n: &Notification,
    api: ApiVersion,
    settings: &NagiosSettings,
    defaults: &IntakeDefaults,
) -> Result<Mapped, EventError> {
    let object = n.object.ok_or_else(|| EventError::new("--notify-type", "must be host or service"))?;
    let macros = &n.macros;
    let host = required(macros, "HOSTNAME")?;
    let (state, output) = match object {
        NagiosObject::Host => (required(macros, "HOSTSTATE")?, macros.get("HOSTOUTPUT")),
        NagiosObject::Service => {
            required(macros, "SERVICEDESC")?;
            (required(macros, "SERVICESTATE")?, macros.get("SERVICEOUTPUT"))
        }
    };
    let ntype = n.notification_type.trim().to_ascii_uppercase();
    let state_upper = state.to_ascii_uppercase();
    let flapping_stop = matches!(ntype.as_str(), "FLAPPINGSTOP" | "FLAPPINGEND");
    let action = match settings.notification_types.get(&ntype) {
        Some(TypeAction::Send(action)) => *action,
        _ if flapping_stop && settings.resolve_on_flapping_stop && matches!(state_upper.as_str(), "OK" | "UP") => {
            EventAction::Resolve
        }
        Some(TypeAction::Ignore) => {
            return Ok(Mapped::Ignored(format!(
                "notification type {ntype} is ignored (see [nagios] notification_types); nothing sent"
            )))
        }
        None => {
            let known: Vec<&str> = settings.notification_types.keys().map(String::as_str).collect();
            let got: String = n.notification_type.chars().take(64).collect();
            return Err(EventError::new(
                "notification type (-t, NOTIFICATIONTYPE)",
                format!("must be one of [nagios] notification_types: {} (got {got:?})", known.join(", ")),
            ));
        }
    };
    let dedup_key = match &n.dedup_key {
        Some(k) if !k.is_empty() => k.clone(),
        _ => pd_nagios_dedup_key(object, macros)?,
    };
    if api == ApiVersion::V1 {
        let description = match object {
            NagiosObject::Host => format!("HOSTNAME={host}; HOSTSTATE={state}"),
            NagiosObject::Service => {
                format!("SERVICEDESC={}; SERVICESTATE={state}; HOSTNAME={host}", macros["SERVICEDESC"])
            }
        };
        let mut details: Map<String, Value> =
            macros.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        details.insert("pd_nagios_object".to_owned(), json!(object.as_str()));
        let mut event = json!({
            "event_type": action.as_str(),
            "incident_key": dedup_key,
            "description": description,
            "details": details,
        });
        if let Some(key) = &n.routing_key {
            event["service_key"] = json!(key);
        }
        return Event::from_value(event, defaults).map(Mapped::Event);
    }
    let subject = match object {
        NagiosObject::Host => host.to_owned(),
        NagiosObject::Service => format!("{host}/{}", macros["SERVICEDESC"]),
    };
    let summary = match output.map(|o| o.trim()).filter(|o| !o.is_empty()) {
        Some(output) => format!("{subject} is {state}: {output}"),
        None => format!("{subject} is {state}"),
    };
    let severity = settings.severity.get(&state_upper).copied().unwrap_or(defaults.severity);
    let mut details: Map<String, Value> = macros.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    details.insert("pd_nagios_object".to_owned(), json!(object.as_str()));
    details.insert("NOTIFICATIONTYPE".to_owned(), json!(ntype));
    let mut payload = json!({
        "summary": summary,
        "source": host,
        "severity": severity.as_str(),
        "class": format!("nagios {}", object.as_str()),
        "custom_details": details,
    });
    if object == NagiosObject::Service {
        payload["component"] = json!(macros["SERVICEDESC"]);
    }
    if let Some(group) = macros.get("HOSTGROUPNAME").filter(|g| !g.is_empty()) {
        payload["group"] = json!(group);
    }
    let mut event = json!({
        "event_action": action.as_str(),
        "dedup_key": dedup_key,
        "payload": payload,
        "client": "Nagios",
    });
    if let Some(key) = &n.routing_key {
        event["routing_key"] = json!(key);
    }
    Event::from_value(event, defaults).map(Mapped::Event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Severity;

    fn macros(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn defaults() -> IntakeDefaults {
        IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error }
    }

    fn service(ntype: &str, state: &str) -> Notification {
        Notification {
            routing_key: Some("k".repeat(32)),
            notification_type: ntype.to_owned(),
            object: Some(NagiosObject::Service),
            dedup_key: None,
            macros: macros(&[
                ("HOSTNAME", "web1"),
                ("SERVICEDESC", "Disk /var"),
                ("SERVICESTATE", state),
                ("SERVICEOUTPUT", "DISK CRITICAL - free space: /var 3%"),
            ]),
        }
    }

    fn host(ntype: &str, state: &str) -> Notification {
        Notification {
            routing_key: Some("k".repeat(32)),
            notification_type: ntype.to_owned(),
            object: Some(NagiosObject::Host),
            dedup_key: None,
            macros: macros(&[("HOSTNAME", "db1"), ("HOSTSTATE", state), ("HOSTOUTPUT", "PING CRITICAL")]),
        }
    }

    fn alert(m: Mapped) -> crate::event::v2::AlertEvent {
        match m {
            Mapped::Event(Event::Alert(a)) => a,
            other => panic!("not an alert: {other:?}"),
        }
    }

    #[test]
    fn every_notification_type_maps_as_configured() {
        let s = NagiosSettings::default();
        let cases = [
            ("PROBLEM", Some(EventAction::Trigger)),
            ("problem", Some(EventAction::Trigger)),
            ("Problem", Some(EventAction::Trigger)),
            ("ACKNOWLEDGEMENT", Some(EventAction::Acknowledge)),
            ("Acknowledgement", Some(EventAction::Acknowledge)),
            ("RECOVERY", Some(EventAction::Resolve)),
            ("FLAPPINGSTART", None),
            ("FLAPPINGSTOP", None),
            ("FLAPPINGDISABLED", None),
            ("FLAPPINGEND", None),
            ("DOWNTIMESTART", None),
            ("DOWNTIMEEND", None),
            ("DOWNTIMECANCELLED", None),
            ("DowntimeRemoved", None),
            ("CUSTOM", None),
        ];
        for (ntype, want) in cases {
            for n in [service(ntype, "CRITICAL"), host(ntype, "DOWN")] {
                let got = map(&n, &s, &defaults()).unwrap();
                match (want, got) {
                    (Some(action), Mapped::Event(e)) => assert_eq!(e.action(), Some(action), "{ntype}"),
                    (None, Mapped::Ignored(msg)) => assert!(msg.contains(&ntype.to_ascii_uppercase()), "{msg}"),
                    (w, g) => panic!("{ntype}: want {w:?}, got {g:?}"),
                }
            }
        }
    }

    #[test]
    fn an_unknown_notification_type_is_an_error() {
        let s = NagiosSettings::default();
        for ntype in ["SOMETHINGNEW", "PROBELM", ""] {
            let err = map(&service(ntype, "CRITICAL"), &s, &defaults()).unwrap_err().to_string();
            assert!(err.contains("notification type") && err.contains("PROBLEM"), "{err}");
        }
    }

    #[test]
    fn flapping_stop_on_ok_resolves_when_asked() {
        let mut s = NagiosSettings::default();
        assert!(matches!(map(&service("FLAPPINGSTOP", "OK"), &s, &defaults()).unwrap(), Mapped::Ignored(_)));
        s.resolve_on_flapping_stop = true;
        for (n, resolves) in [
            (service("FLAPPINGSTOP", "OK"), true),
            (service("FLAPPINGEND", "OK"), true),
            (host("FLAPPINGSTOP", "UP"), true),
            (service("FLAPPINGSTOP", "CRITICAL"), false),
            (service("FLAPPINGSTART", "OK"), false),
        ] {
            let got = map(&n, &s, &defaults()).unwrap();
            assert_eq!(
                matches!(got, Mapped::Event(ref e) if e.action() == Some(EventAction::Resolve)),
                resolves,
                "{n:?}"
            );
        }
    }

    #[test]
    fn states_map_to_severities() {
        let s = NagiosSettings::default();
        for (n, want) in [
            (service("PROBLEM", "CRITICAL"), Severity::Critical),
            (service("PROBLEM", "WARNING"), Severity::Warning),
            (service("PROBLEM", "UNKNOWN"), Severity::Error),
            (service("PROBLEM", "Critical"), Severity::Critical),
            (service("RECOVERY", "OK"), Severity::Info),
            (host("PROBLEM", "DOWN"), Severity::Critical),
            (host("PROBLEM", "UNREACHABLE"), Severity::Critical),
            (host("RECOVERY", "UP"), Severity::Info),
            (service("PROBLEM", "WEIRD"), Severity::Error),
        ] {
            assert_eq!(alert(map(&n, &s, &defaults()).unwrap()).payload.unwrap().severity, want, "{n:?}");
        }
    }

    #[test]
    fn dedup_keys_are_pd_nagios_keys() {
        let s = NagiosSettings::default();
        let a = alert(map(&service("PROBLEM", "CRITICAL"), &s, &defaults()).unwrap());
        assert_eq!(a.dedup_key.as_deref(), Some("event_source=service;host_name=web1;service_desc=Disk /var"));
        let a = alert(map(&host("PROBLEM", "DOWN"), &s, &defaults()).unwrap());
        assert_eq!(a.dedup_key.as_deref(), Some("event_source=host;host_name=db1"));
        // The golden pdagent queue file's key, with '=' inside the service description.
        let m = macros(&[("HOSTNAME", "service.test.local"), ("SERVICEDESC", "service=test-service")]);
        assert_eq!(
            pd_nagios_dedup_key(NagiosObject::Service, &m).unwrap(),
            "event_source=service;host_name=service.test.local;service_desc=service=test-service"
        );
        let mut n = service("PROBLEM", "CRITICAL");
        n.dedup_key = Some("mine".into());
        assert_eq!(alert(map(&n, &s, &defaults()).unwrap()).dedup_key.as_deref(), Some("mine"));
    }

    #[test]
    fn summary_source_component_and_details() {
        let a = alert(map(&service("PROBLEM", "CRITICAL"), &NagiosSettings::default(), &defaults()).unwrap());
        let p = a.payload.unwrap();
        assert_eq!(p.summary, "web1/Disk /var is CRITICAL: DISK CRITICAL - free space: /var 3%");
        assert_eq!(p.source, "web1");
        assert_eq!(p.component.as_deref(), Some("Disk /var"));
        let d = p.custom_details.unwrap();
        assert_eq!(d["SERVICESTATE"], "CRITICAL");
        assert_eq!(d["pd_nagios_object"], "service");
        let mut long = service("PROBLEM", "CRITICAL");
        long.macros.insert("SERVICEOUTPUT".into(), "é".repeat(3000));
        let a = alert(map(&long, &NagiosSettings::default(), &defaults()).unwrap());
        assert_eq!(a.payload.unwrap().summary.chars().count(), 1024);
    }

    #[test]
    fn missing_macros_are_named() {
        let s = NagiosSettings::default();
        for (drop, object) in [
            ("HOSTNAME", NagiosObject::Service),
            ("SERVICEDESC", NagiosObject::Service),
            ("SERVICESTATE", NagiosObject::Service),
            ("HOSTNAME", NagiosObject::Host),
            ("HOSTSTATE", NagiosObject::Host),
        ] {
            let mut n =
                if object == NagiosObject::Host { host("PROBLEM", "DOWN") } else { service("PROBLEM", "CRITICAL") };
            n.macros.remove(drop);
            let err = map(&n, &s, &defaults()).unwrap_err();
            assert_eq!(err.field, drop);
        }
    }

    #[test]
    fn environment_macros_and_custom_variables() {
        let env = vec![
            ("NAGIOS_HOSTNAME".to_owned(), "web1".to_owned()),
            ("ICINGA_HOSTNAME".to_owned(), "ignored".to_owned()),
            ("ICINGA_SERVICEDESC".to_owned(), "HTTP".to_owned()),
            ("NAGIOS__HOSTRACK".to_owned(), "r12".to_owned()),
            ("NAGIOS_EMPTY".to_owned(), String::new()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let m = macros_from_env(env);
        assert_eq!(m, macros(&[("HOSTNAME", "web1"), ("SERVICEDESC", "HTTP"), ("_HOSTRACK", "r12")]));
        let f = macros_from_fields(&["HOSTNAME=a=b".into(), "NAGIOS_SERVICEDESC=x".into()]).unwrap();
        assert_eq!(f, macros(&[("HOSTNAME", "a=b"), ("SERVICEDESC", "x")]));
        assert_eq!(macros_from_fields(&["novalue".into()]).unwrap_err().field, "--field");
    }

    #[test]
    fn pagerduty_nagios_pl_files() {
        let text = format!(
            "CONTACTPAGER={}\nNOTIFICATIONTYPE=PROBLEM\nHOSTNAME=web1\nSERVICEDESC=Load\nSERVICESTATE=WARNING\nSERVICEOUTPUT=load=5\npd_nagios_object=service\n",
            "k".repeat(32)
        );
        let n = parse_pl_spool_file(text.as_bytes()).unwrap();
        assert_eq!(n.macros["SERVICEOUTPUT"], "load=5");
        let a = alert(map(&n, &NagiosSettings::default(), &defaults()).unwrap());
        assert_eq!(a.dedup_key.as_deref(), Some("event_source=service;host_name=web1;service_desc=Load"));
        assert_eq!(a.routing_key.as_str(), "k".repeat(32));
        assert!(parse_pl_spool_file(b"HOSTNAME=x\n").unwrap_err().starts_with("pd_nagios_object"));
        assert!(parse_pl_spool_file(b"garbage\n").unwrap_err().starts_with("line 1"));
        assert!(parse_pl_spool_file(&[0xff]).is_err());
    }
}

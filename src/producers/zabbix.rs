//! Zabbix alerts into events, as pd-zabbix maps them, so that incidents opened through an
//! existing pdagent install keep deduplicating after the switch.
//!
//! Input: `pdrelay zabbix KEY SUBJECT BODY`, the three arguments a Zabbix media-type script
//! gets (`{ALERT.SENDTO} {ALERT.SUBJECT} {ALERT.MESSAGE}`), exactly as pd-zabbix took them. BODY
//! is the message PagerDuty's Zabbix guide has users configure, one `name:value` per line:
//!
//! ```text
//! name:{TRIGGER.NAME}
//! id:{TRIGGER.ID}
//! status:{TRIGGER.STATUS}
//! hostname:{HOSTNAME}
//! ip:{IPADDRESS}
//! value:{TRIGGER.VALUE}
//! event_id:{EVENT.ID}
//! severity:{TRIGGER.SEVERITY}
//! url:{TRIGGER.URL}              (optional: becomes the client URL)
//! incident_key:...               (optional: replaces the dedup key)
//! ```
//!
//! Zabbix itself may append `NOTE: Escalation cancelled: ...` when an action, trigger or host is
//! disabled while a problem is open.
//!
//! Parsing: pd-zabbix's, see [`parse_body`]. A line without a colon (a wrapped `{ITEM.VALUE}`)
//! is glued onto the previous value with no separator, and a line such as `Trigger URL:...` or
//! `https://...` is a field of its own (`Trigger URL`, `https`), exactly as pd-zabbix made them, so
//! that the dedup key, summary and source stay pd-zabbix's.
//!
//! Mapping:
//!
//! | what | how |
//! | --- | --- |
//! | event action | SUBJECT when it is `trigger`, `acknowledge` or `resolve` (pd-zabbix's rule; any case); otherwise the `status` field: `PROBLEM` -> trigger, `OK` or `RESOLVED` -> resolve |
//! | escalation cancelled | a trigger whose NOTE contains `Escalation cancelled` becomes a resolve (Zabbix sends no recovery after it), noted in `pdrelay_note` |
//! | dedup key | `incident_key` when given, else pd-zabbix's `<id>-<hostname>` |
//! | summary | pd-zabbix's description, `<name> : <status> for <hostname>` |
//! | severity | from `severity` through [`SEVERITY_TABLE`]; other words through the usual aliases, else the configured default |
//! | source | hostname |
//! | client, client URL | `Zabbix` and `url`, when `url` is given |
//! | custom details (v1: details) | every field, as given |

use serde_json::{json, Map, Value};

use crate::event::ApiVersion;
use crate::event::{Event, EventAction, EventError, IntakeDefaults, Severity};

/// Zabbix trigger severities (`{TRIGGER.SEVERITY}`, in Zabbix's English names) and the PagerDuty
/// severity each becomes.
pub const SEVERITY_TABLE: &[(&str, Severity)] = &[
    ("Not classified", Severity::Info),
    ("Information", Severity::Info),
    ("Warning", Severity::Warning),
    ("Average", Severity::Error),
    ("High", Severity::Critical),
    ("Disaster", Severity::Critical),
];

/// The text in NOTE that turns a trigger into a resolve.
pub const ESCALATION_CANCELLED: &str = "Escalation cancelled";

/// One Zabbix alert, as the media-type script gets it.
#[derive(Debug, Clone, Default)]
pub struct Alert {
    /// KEY: the routing key (empty: the configured default).
    pub routing_key: String,
    /// SUBJECT: `trigger`, `resolve`, ... (or anything, then `status` decides).
    pub subject: String,
    /// BODY: `name:value` lines.
    pub body: String,
}

/// Parses BODY into (name, value) pairs in order of first appearance, as pd-zabbix did, so that
/// every key built from them is byte for byte pd-zabbix's: BODY is trimmed and split into lines
/// at `\n`; each line is trimmed; a line with a `:` is split at its first one into a name and a
/// value (a repeated name keeps its last value); a line without a `:` is appended to the previous
/// field's value with no separator (a blank line adds nothing), or, before any field, becomes a
/// field named and valued by its own text.
pub fn parse_body(body: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut current: Option<usize> = None;
    for raw in body.trim().split('\n') {
        let line = raw.trim();
        match (line.split_once(':'), current) {
            (Some((name, value)), _) => {
                let index = match fields.iter().position(|(n, _)| n == name) {
                    Some(i) => {
                        fields[i].1 = value.to_owned();
                        i
                    }
                    None => {
                        fields.push((name.to_owned(), value.to_owned()));
                        fields.len() - 1
                    }
                };
                current = Some(index);
            }
            (None, Some(i)) => fields[i].1.push_str(line),
            (None, None) if line.is_empty() => {}
            (None, None) => {
                fields.push((line.to_owned(), line.to_owned()));
                current = Some(fields.len() - 1);
            }
        }
    }
    fields
}

/// The PagerDuty severity for a Zabbix severity name: [`SEVERITY_TABLE`] (any case), then the
/// usual aliases; `None` for an unknown word.
pub fn severity(word: &str) -> Option<Severity> {
    let word = word.trim();
    SEVERITY_TABLE
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(word))
        .map(|(_, s)| *s)
        .or_else(|| Severity::from_alias(word))
}

fn action_word(word: &str) -> Option<EventAction> {
    match word.trim().to_ascii_lowercase().as_str() {
        "trigger" => Some(EventAction::Trigger),
        "acknowledge" => Some(EventAction::Acknowledge),
        "resolve" => Some(EventAction::Resolve),
        _ => None,
    }
}

fn status_action(status: &str) -> Option<EventAction> {
    match status.trim().to_ascii_uppercase().as_str() {
        "PROBLEM" => Some(EventAction::Trigger),
        "OK" | "RESOLVED" => Some(EventAction::Resolve),
        _ => None,
    }
}

/// The event action: SUBJECT when it names one (pd-zabbix's rule), else from `status`.
pub fn event_action(subject: &str, status: Option<&str>) -> Result<EventAction, EventError> {
    action_word(subject).or_else(|| status.and_then(status_action)).ok_or_else(|| {
        let rule = format!(
            "must be trigger, acknowledge or resolve, or BODY must have status:PROBLEM or status:OK (got {subject:?})"
        );
        EventError::new("SUBJECT", rule)
    })
}

/// pd-zabbix's incident key: `incident_key` when given, else `<id>-<hostname>`.
pub fn dedup_key(fields: &Map<String, Value>) -> Result<String, EventError> {
    // As pd-zabbix: a non-empty incident_key wins; id and hostname need only be present.
    let get = |name: &str| fields.get(name).and_then(Value::as_str);
    if let Some(key) = get("incident_key").filter(|k| !k.is_empty()) {
        return Ok(key.to_owned());
    }
    let missing = |name: &str| {
        EventError::new(format!("BODY: {name}"), "is required for the dedup key (or give incident_key:KEY)")
    };
    let id = get("id").ok_or_else(|| missing("id"))?;
    let host = get("hostname").ok_or_else(|| missing("hostname"))?;
    Ok(format!("{id}-{host}"))
}

/// Maps one alert to an event in the shape `api` selects.
///
/// Errors (nothing is sent, exit 2): no event action from SUBJECT or `status`, no dedup key
/// (`incident_key`, or `id` and `hostname`), a trigger without `name`, `status` and `hostname`
/// for its summary, a bad routing key.
pub fn map(alert: &Alert, api: ApiVersion, defaults: &IntakeDefaults) -> Result<Event, EventError> {
    let parsed = parse_body(&alert.body);
    let mut details: Map<String, Value> = parsed.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let field = |details: &Map<String, Value>, name: &str| details.get(name).and_then(Value::as_str).map(str::to_owned);
    let mut action = event_action(&alert.subject, field(&details, "status").as_deref())?;
    if action == EventAction::Trigger && field(&details, "NOTE").is_some_and(|n| n.contains(ESCALATION_CANCELLED)) {
        action = EventAction::Resolve;
        details.insert(
            "pdrelay_note".to_owned(),
            json!("converted from trigger to resolve: Zabbix cancelled the escalation, no recovery will follow"),
        );
    }
    let dedup_key = dedup_key(&details)?;
    let summary = match (field(&details, "name"), field(&details, "status"), field(&details, "hostname")) {
        (Some(name), Some(status), Some(host)) => Some(format!("{name} : {status} for {host}")),
        (name, status, _) if action == EventAction::Trigger => {
            let missing = if name.is_none() {
                "name"
            } else if status.is_none() {
                "status"
            } else {
                "hostname"
            };
            return Err(EventError::new(format!("BODY: {missing}"), "is required for a trigger's summary"));
        }
        _ => None,
    };
    let url = field(&details, "url").map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
    let mut event = Map::new();
    let key = alert.routing_key.trim();
    match api {
        ApiVersion::V1 => {
            if !key.is_empty() {
                event.insert("service_key".into(), json!(key));
            }
            event.insert("event_type".into(), json!(action.as_str()));
            event.insert("incident_key".into(), json!(dedup_key));
            if let Some(summary) = summary {
                event.insert("description".into(), json!(summary));
            }
            event.insert("details".into(), Value::Object(details));
        }
        ApiVersion::V2 => {
            if !key.is_empty() {
                event.insert("routing_key".into(), json!(key));
            }
            event.insert("event_action".into(), json!(action.as_str()));
            event.insert("dedup_key".into(), json!(dedup_key));
            if let Some(summary) = summary {
                let severity = field(&details, "severity").as_deref().and_then(severity).unwrap_or(defaults.severity);
                let mut payload = json!({
                    "summary": summary,
                    "severity": severity.as_str(),
                    "class": "zabbix trigger",
                });
                if let Some(host) = field(&details, "hostname").map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()) {
                    payload["source"] = json!(host);
                }
                payload["custom_details"] = Value::Object(details);
                event.insert("payload".into(), payload);
            }
        }
    }
    if let Some(url) = url {
        event.insert("client".into(), json!("Zabbix"));
        event.insert("client_url".into(), json!(url));
    }
    Event::from_value(Value::Object(event), defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "R0000000000000000000000000000001";

    fn defaults() -> IntakeDefaults {
        IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error }
    }

    /// pd-zabbix's own integration test input (pdagent-integrations, test_10_zabbix.sh).
    fn body(status: &str, value: &str, event_id: &str) -> String {
        format!(
            "name:Zabbix server: just restarted\nid:13502\nstatus:{status}\nhostname:Zabbix server\nip:127.0.0.1\n\
             value:{value}\nevent_id:{event_id}\nseverity:High"
        )
    }

    fn alert(subject: &str, body: &str) -> Alert {
        Alert { routing_key: KEY.into(), subject: subject.into(), body: body.into() }
    }

    fn v2(a: &Alert) -> Value {
        serde_json::from_slice(&map(a, ApiVersion::V2, &defaults()).unwrap().request_body()).unwrap()
    }

    /// pdagent's queue files for that input (test_10_zabbix.pdq1.txt and pdq2.txt), verbatim.
    const GOLDEN_PDQ1: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-zabbix"},"client":"","client_url":"","description":"Zabbix server: just restarted : PROBLEM for Zabbix server","details":{"event_id":"70","hostname":"Zabbix server","id":"13502","ip":"127.0.0.1","name":"Zabbix server: just restarted","severity":"High","status":"PROBLEM","value":"1"},"event_type":"trigger","incident_key":"13502-Zabbix server","service_key":"DUMMY_SERVICE_KEY"}"#;
    const GOLDEN_PDQ2: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-zabbix"},"client":"","client_url":"","description":"Zabbix server: just restarted : OK for Zabbix server","details":{"event_id":"126","hostname":"Zabbix server","id":"13502","ip":"127.0.0.1","name":"Zabbix server: just restarted","severity":"High","status":"OK","value":"0"},"event_type":"resolve","incident_key":"13502-Zabbix server","service_key":"DUMMY_SERVICE_KEY"}"#;

    fn golden(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn v1_output_is_pd_zabbix_golden_output() {
        for (file, subject, status, value, event_id) in
            [(GOLDEN_PDQ1, "trigger", "PROBLEM", "1", "70"), (GOLDEN_PDQ2, "resolve", "OK", "0", "126")]
        {
            let mut want = golden(file);
            let obj = want.as_object_mut().unwrap();
            obj.remove("agent");
            // Empty client fields are left out (pdrelay drops empty optional fields).
            obj.remove("client");
            obj.remove("client_url");
            obj.insert("service_key".into(), json!(KEY));
            let got = map(&alert(subject, &body(status, value, event_id)), ApiVersion::V1, &defaults()).unwrap();
            let got: Value = serde_json::from_slice(&got.request_body()).unwrap();
            assert_eq!(got, want, "{subject}");
        }
    }

    #[test]
    fn v2_event_carries_the_same_keys_summary_and_details() {
        let want = golden(GOLDEN_PDQ1);
        let got = v2(&alert("trigger", &body("PROBLEM", "1", "70")));
        assert_eq!(got["event_action"], "trigger");
        assert_eq!(got["dedup_key"], want["incident_key"]);
        assert_eq!(got["payload"]["summary"], want["description"]);
        assert_eq!(got["payload"]["custom_details"], want["details"]);
        assert_eq!(got["payload"]["source"], "Zabbix server");
        assert_eq!(got["payload"]["severity"], "critical");
        assert_eq!(got["routing_key"], KEY);
        assert!(got.get("client").is_none());
    }

    #[test]
    fn event_action_from_subject_then_status() {
        let cases = [
            ("trigger", "PROBLEM", "trigger"),
            ("TRIGGER", "PROBLEM", "trigger"),
            ("resolve", "OK", "resolve"),
            (" Resolve\n", "OK", "resolve"),
            ("acknowledge", "PROBLEM", "acknowledge"),
            // pd-zabbix's rule: the subject wins over the status.
            ("resolve", "PROBLEM", "resolve"),
            // A subject that is no event type ({TRIGGER.STATUS}, or Zabbix's default subjects).
            ("PROBLEM", "PROBLEM", "trigger"),
            ("Problem: Zabbix server: just restarted", "PROBLEM", "trigger"),
            ("OK", "OK", "resolve"),
            ("Resolved: Zabbix server: just restarted", "RESOLVED", "resolve"),
            ("", "ok", "resolve"),
        ];
        for (subject, status, want) in cases {
            let got = v2(&alert(subject, &body(status, "1", "70")));
            assert_eq!(got["event_action"], want, "{subject:?} {status:?}");
        }
        let err = map(&alert("hello", &body("UNKNOWN", "1", "70")), ApiVersion::V2, &defaults()).unwrap_err();
        assert_eq!(err.field, "SUBJECT");
    }

    #[test]
    fn severities_follow_the_documented_table() {
        let cases = [
            ("Not classified", "info"),
            ("Information", "info"),
            ("Warning", "warning"),
            ("Average", "error"),
            ("High", "critical"),
            ("Disaster", "critical"),
            ("disaster", "critical"),
            (" High ", "critical"),
            ("critical", "critical"),
            ("Catastrophe", "error"),
        ];
        for (word, want) in cases {
            let b = body("PROBLEM", "1", "70").replace("severity:High", &format!("severity:{word}"));
            assert_eq!(v2(&alert("trigger", &b))["payload"]["severity"], want, "{word}");
        }
        let b = body("PROBLEM", "1", "70").replace("\nseverity:High", "");
        assert_eq!(v2(&alert("trigger", &b))["payload"]["severity"], "error");
    }

    #[test]
    fn escalation_cancelled_turns_a_trigger_into_a_resolve() {
        let b = format!("{}\nNOTE: Escalation cancelled: host \"Zabbix server\" disabled.", body("PROBLEM", "1", "70"));
        let got = v2(&alert("trigger", &b));
        assert_eq!(got["event_action"], "resolve");
        assert_eq!(got["dedup_key"], "13502-Zabbix server");
        let d = &got["payload"]["custom_details"];
        assert_eq!(d["NOTE"], " Escalation cancelled: host \"Zabbix server\" disabled.");
        assert!(d["pdrelay_note"].as_str().unwrap().contains("trigger to resolve"));
        // Another note leaves the trigger alone.
        let b = format!("{}\nNOTE:something else", body("PROBLEM", "1", "70"));
        assert_eq!(v2(&alert("trigger", &b))["event_action"], "trigger");
    }

    #[test]
    fn dedup_key_is_pd_zabbix_or_incident_key() {
        let got = v2(&alert("trigger", &body("PROBLEM", "1", "70")));
        assert_eq!(got["dedup_key"], "13502-Zabbix server");
        let b = format!("{}\nincident_key:my/own", body("PROBLEM", "1", "70"));
        assert_eq!(v2(&alert("trigger", &b))["dedup_key"], "my/own");
        // Values are taken as they are after the colon, as pd-zabbix did.
        let b = "name:n\nid: 7\nstatus:PROBLEM\nhostname:web1";
        assert_eq!(v2(&alert("trigger", b))["dedup_key"], " 7-web1");
        for (drop, field) in [("id:13502\n", "BODY: id"), ("hostname:Zabbix server\n", "BODY: hostname")] {
            let b = body("PROBLEM", "1", "70").replace(drop, "");
            assert_eq!(map(&alert("trigger", &b), ApiVersion::V2, &defaults()).unwrap_err().field, field);
        }
    }

    #[test]
    fn body_lines_and_continuations() {
        let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("name:a\nid:1", vec![("name", "a"), ("id", "1")]),
            // Lines are trimmed; Windows line ends; blank lines add nothing.
            ("  name:a  \r\n\r\nid:1\r\n", vec![("name", "a"), ("id", "1")]),
            // Only the first colon splits.
            ("name:Zabbix server: just restarted", vec![("name", "Zabbix server: just restarted")]),
            // A line without a colon is glued onto the previous value, with no separator.
            ("value:line one\nline two\nid:1", vec![("value", "line oneline two"), ("id", "1")]),
            ("NOTE: Escalation cancelled\nby user Admin", vec![("NOTE", " Escalation cancelledby user Admin")]),
            // Any text before the first colon is a name: a space, a tab, a URL's scheme.
            (
                "id:14\nOriginal problem ID:999\nhttps://z/tr?id=1\ntab\tkey:v",
                vec![("id", "14"), ("Original problem ID", "999"), ("https", "//z/tr?id=1"), ("tab\tkey", "v")],
            ),
            // A site's own field names stay fields, as pd-zabbix kept them.
            ("hostname:web1\nhost_group:Linux servers", vec![("hostname", "web1"), ("host_group", "Linux servers")]),
            // The last of a repeated name wins.
            ("id:1\nid:2", vec![("id", "2")]),
            // A first line that is no field.
            ("stray\nid:1", vec![("stray", "stray"), ("id", "1")]),
            ("", vec![]),
        ];
        for (input, want) in cases {
            let got = parse_body(input);
            let want: Vec<(String, String)> = want.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn summary_client_url_and_missing_fields() {
        let b = format!("{}\nurl:https://zabbix.example/tr_events.php?triggerid=13502", body("PROBLEM", "1", "70"));
        let got = v2(&alert("trigger", &b));
        assert_eq!(got["client"], "Zabbix");
        assert_eq!(got["client_url"], "https://zabbix.example/tr_events.php?triggerid=13502");
        let b = body("PROBLEM", "1", "70").replace("name:Zabbix server: just restarted\n", "");
        assert_eq!(map(&alert("trigger", &b), ApiVersion::V2, &defaults()).unwrap_err().field, "BODY: name");
        // A resolve needs only its dedup key.
        let got = v2(&alert("resolve", "id:13502\nhostname:Zabbix server"));
        assert_eq!(got["event_action"], "resolve");
        assert!(got.get("payload").is_none());
        // An empty KEY falls back to the default routing key, and without one is refused.
        let mut a = alert("trigger", &body("PROBLEM", "1", "70"));
        a.routing_key = String::new();
        assert_eq!(map(&a, ApiVersion::V2, &defaults()).unwrap_err().field, "routing_key");
        a.routing_key = "short".into();
        assert_eq!(map(&a, ApiVersion::V2, &defaults()).unwrap_err().field, "routing_key");
    }
}

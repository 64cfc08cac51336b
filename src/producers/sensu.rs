//! Sensu check results into events, as pd-sensu maps them, so that incidents opened through an
//! existing pdagent install keep deduplicating after the switch.
//!
//! Input: `pdrelay sensu -k KEY [-i DEDUP_KEY]` as a Sensu pipe handler, with the event (a check
//! result) as JSON on standard input, pd-sensu's flags as they are. Sensu 1 events
//! (`client.name`, `check.name`, `check.output`, `check.status`, `action`) are read as pd-sensu
//! read them; Sensu Go events (`entity.metadata.name`, `check.metadata.name`, no `action`) are
//! read too.
//!
//! | what | how |
//! | --- | --- |
//! | event action | `action`: `create` -> trigger, `resolve` -> resolve, anything else (`flapping`) -> trigger, as pd-sensu; with no `action` (Sensu Go): `check.status` 0 -> resolve, else trigger |
//! | dedup key | `-i` when given, else pd-sensu's `<client.name>/<check.name>` when the event has `client`, else the event's `id` (`null` written `None`, a number its digits, as pd-sensu's Python wrote them); an event without `action` (Sensu Go): `<entity name>/<check name>`, else `id` |
//! | summary | pd-sensu's description, `<dedup key> : <check output>` (output trimmed; `null` is `None`) |
//! | severity | `check.status`: 0 info, 1 warning, 2 critical, 3 (unknown) and any other code error |
//! | source, component, class | client name; check name; `sensu check` |
//! | client | `Sensu` |
//! | custom details (v1: details) | the whole check result, as pd-sensu sent it |

use serde_json::{json, Map, Value};

use crate::event::ApiVersion;
use crate::event::{Event, EventAction, EventError, IntakeDefaults, Severity};

/// Sensu check status codes and the PagerDuty severity each becomes (any other code: error).
pub const SEVERITY_TABLE: &[(i64, Severity)] =
    &[(0, Severity::Info), (1, Severity::Warning), (2, Severity::Critical), (3, Severity::Error)];

/// The severity for a check status code.
pub fn severity(status: i64) -> Severity {
    SEVERITY_TABLE.iter().find(|(code, _)| *code == status).map(|(_, s)| *s).unwrap_or(Severity::Error)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str().filter(|s| !s.is_empty())
}

/// Client (Sensu 1) or entity (Sensu Go) name.
fn client_name(v: &Value) -> Option<&str> {
    str_at(v, &["client", "name"]).or_else(|| str_at(v, &["entity", "metadata", "name"]))
}

/// Check name, Sensu 1 or Sensu Go.
fn check_name(v: &Value) -> Option<&str> {
    str_at(v, &["check", "name"]).or_else(|| str_at(v, &["check", "metadata", "name"]))
}

/// pd-sensu's event action.
pub fn action(v: &Value) -> Result<EventAction, EventError> {
    match v.get("action") {
        Some(Value::String(a)) if a == "resolve" => Ok(EventAction::Resolve),
        Some(Value::String(_)) => Ok(EventAction::Trigger),
        Some(_) => Err(EventError::new("action", "must be a string (create, resolve or flapping)")),
        None => match v.get("check").and_then(|c| c.get("status")).and_then(Value::as_i64) {
            Some(0) => Ok(EventAction::Resolve),
            Some(_) => Ok(EventAction::Trigger),
            None => Err(EventError::new("action", "is required (or check.status, for a Sensu Go event)")),
        },
    }
}

/// A JSON scalar as pd-sensu's Python formatted it into keys and descriptions (`str()`): text as
/// it is, `null` as `None`, booleans as `True`/`False`, numbers in decimal. Arrays and objects
/// are refused (`field` names them).
fn python_str(v: &Value, field: &str) -> Result<String, EventError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok("None".to_owned()),
        Value::Bool(true) => Ok("True".to_owned()),
        Value::Bool(false) => Ok("False".to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(EventError::new(field, "must be a string, a number or null")),
    }
}

/// pd-sensu's incident key: `-i`, else, for an event with `action` (what pd-sensu read), the
/// client's and check's names `<client.name>/<check.name>` when the event has `client`, else its
/// `id`, each formatted as pd-sensu did (`null` is `None`, a number its digits); for an event
/// without `action` (Sensu Go, which pd-sensu could not read), `<client or entity name>/<check
/// name>`, else `id`.
pub fn dedup_key(v: &Value, given: Option<&str>) -> Result<String, EventError> {
    if let Some(key) = given.filter(|k| !k.is_empty()) {
        return Ok(key.to_owned());
    }
    if v.get("action").is_some() {
        let client = v.get("client").and_then(|c| c.get("name"));
        let check = v.get("check").and_then(|c| c.get("name"));
        if let (Some(client), Some(check)) = (client, check) {
            return Ok(format!("{}/{}", python_str(client, "client.name")?, python_str(check, "check.name")?));
        }
        if let Some(id) = v.get("id").filter(|id| !id.is_null()) {
            return python_str(id, "id");
        }
    }
    if let (Some(client), Some(check)) = (client_name(v), check_name(v)) {
        return Ok(format!("{client}/{check}"));
    }
    match v.get("id").filter(|id| !id.is_null()) {
        Some(id) => python_str(id, "id"),
        None => Err(EventError::new(
            "client.name",
            "and check.name (or id, or -i DEDUP_KEY) are required for the dedup key",
        )),
    }
}

/// Maps one check result (the JSON pd-sensu read on standard input) to an event.
pub fn map(
    result: Value,
    routing_key: Option<&str>,
    given_dedup_key: Option<&str>,
    api: ApiVersion,
    defaults: &IntakeDefaults,
) -> Result<Event, EventError> {
    if !result.is_object() {
        return Err(EventError::new("event", "must be a JSON object (a Sensu check result)"));
    }
    let action = action(&result)?;
    let dedup_key = dedup_key(&result, given_dedup_key)?;
    let output = match result.get("check").and_then(|c| c.get("output")) {
        Some(o) => python_str(o, "check.output")?,
        None => String::new(),
    };
    let output = output.trim();
    let summary = if output.is_empty() { dedup_key.clone() } else { format!("{dedup_key} : {output}") };
    let status = result.get("check").and_then(|c| c.get("status")).and_then(Value::as_i64);
    let source = client_name(&result).map(str::to_owned);
    let component = check_name(&result).map(str::to_owned);
    let key = routing_key.map(str::trim).filter(|k| !k.is_empty());
    let mut event = Map::new();
    match api {
        ApiVersion::V1 => {
            if let Some(key) = key {
                event.insert("service_key".into(), json!(key));
            }
            event.insert("event_type".into(), json!(action.as_str()));
            event.insert("incident_key".into(), json!(dedup_key));
            event.insert("description".into(), json!(summary));
            event.insert("details".into(), result);
        }
        ApiVersion::V2 => {
            if let Some(key) = key {
                event.insert("routing_key".into(), json!(key));
            }
            event.insert("event_action".into(), json!(action.as_str()));
            event.insert("dedup_key".into(), json!(dedup_key));
            let mut payload = json!({
                "summary": summary,
                "severity": status.map(severity).unwrap_or(defaults.severity).as_str(),
                "class": "sensu check",
            });
            if let Some(source) = source {
                payload["source"] = json!(source);
            }
            if let Some(component) = component {
                payload["component"] = json!(component);
            }
            payload["custom_details"] = result;
            event.insert("payload".into(), payload);
            event.insert("client".into(), json!("Sensu"));
        }
    }
    Event::from_value(Value::Object(event), defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "R0000000000000000000000000000002";

    /// pdagent-integrations' test_30_sensu.generic.json, verbatim.
    const TEMPLATE: &str = r#"{"client":{"name":"{{clientname}}","address":"127.0.0.1","environment":"development","subscriptions":["production","client:{{checkname}}"],"socket":{"bind":"127.0.0.1","port":3030},"version":"0.26.5","timestamp":1485537856},"check":{"command":"/etc/sensu/plugins/checkhost.py","subscribers":["production"],"interval":20,"standalone":true,"handlers":["pagerduty"],"name":"{{checkname}}","issued":1485537846,"executed":1485537856,"duration":"0.25E-1","output":"{{output}}","status":2,"type":"standard","history":["1"],"total_state_change":1},"occurrences":1,"occurrences_watermark":1,"action":"{{action}}","timestamp":1485537856,"id":"c6ad4f14-5dce-45a0-a4ee-9b0c0631087b","last_state_change":1485537856,"last_ok":1485537856,"silenced":false,"silenced_by":[]}"#;

    fn check_result(action: &str, output: &str) -> Value {
        let text = TEMPLATE
            .replace("{{action}}", action)
            .replace("{{clientname}}", "DUMMY_CLIENT")
            .replace("{{checkname}}", "DUMMY_CHECK")
            .replace("{{output}}", output);
        serde_json::from_str(&text).unwrap()
    }

    fn defaults() -> IntakeDefaults {
        IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error }
    }

    fn body(event: Event) -> Value {
        serde_json::from_slice(&event.request_body()).unwrap()
    }

    #[test]
    fn v1_output_is_what_pd_sensu_queued() {
        // pdagent-integrations' test_30_sensu.sh: the expected queue entry, without its agent
        // object and empty client fields.
        for (event_type, action, output) in
            [("trigger", "create", "SERVERS ON FIRE"), ("resolve", "resolve", "SERVERS SMOKIN")]
        {
            let input = check_result(action, output);
            let want = json!({
                "details": input.clone(),
                "incident_key": "DUMMY_CLIENT/DUMMY_CHECK",
                "description": format!("DUMMY_CLIENT/DUMMY_CHECK : {output}"),
                "service_key": KEY,
                "event_type": event_type,
            });
            let got = map(input, Some(KEY), None, ApiVersion::V1, &defaults()).unwrap();
            assert_eq!(body(got), want, "{action}");
        }
    }

    #[test]
    fn v2_event_from_a_check_result() {
        let input = check_result("create", "SERVERS ON FIRE\\n");
        let got = body(map(input.clone(), Some(KEY), None, ApiVersion::V2, &defaults()).unwrap());
        assert_eq!(got["event_action"], "trigger");
        assert_eq!(got["dedup_key"], "DUMMY_CLIENT/DUMMY_CHECK");
        let p = &got["payload"];
        assert_eq!(p["summary"], "DUMMY_CLIENT/DUMMY_CHECK : SERVERS ON FIRE");
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["source"], "DUMMY_CLIENT");
        assert_eq!(p["component"], "DUMMY_CHECK");
        assert_eq!(p["custom_details"], input);
        assert_eq!(got["client"], "Sensu");
    }

    #[test]
    fn actions_map_as_pd_sensu() {
        let cases = [("create", "trigger"), ("resolve", "resolve"), ("flapping", "trigger"), ("whatever", "trigger")];
        for (action, want) in cases {
            let got = body(map(check_result(action, "x"), Some(KEY), None, ApiVersion::V2, &defaults()).unwrap());
            assert_eq!(got["event_action"], want, "{action}");
        }
        let mut v = check_result("create", "x");
        v["action"] = json!(3);
        assert_eq!(map(v, Some(KEY), None, ApiVersion::V2, &defaults()).unwrap_err().field, "action");
    }

    #[test]
    fn statuses_map_to_severities() {
        for (status, want) in
            [(0, "info"), (1, "warning"), (2, "critical"), (3, "error"), (127, "error"), (-1, "error")]
        {
            let mut v = check_result("create", "x");
            v["check"]["status"] = json!(status);
            let got = body(map(v, Some(KEY), None, ApiVersion::V2, &defaults()).unwrap());
            assert_eq!(got["payload"]["severity"], want, "{status}");
        }
        let mut v = check_result("create", "x");
        v["check"].as_object_mut().unwrap().remove("status");
        let got = body(map(v, Some(KEY), None, ApiVersion::V2, &defaults()).unwrap());
        assert_eq!(got["payload"]["severity"], "error");
    }

    #[test]
    fn dedup_keys() {
        let d = |v: Value, given: Option<&str>| dedup_key(&v, given);
        assert_eq!(d(check_result("create", "x"), None).unwrap(), "DUMMY_CLIENT/DUMMY_CHECK");
        assert_eq!(d(check_result("create", "x"), Some("mine")).unwrap(), "mine");
        assert_eq!(d(check_result("create", "x"), Some("")).unwrap(), "DUMMY_CLIENT/DUMMY_CHECK");
        let mut no_client = check_result("create", "x");
        no_client.as_object_mut().unwrap().remove("client");
        assert_eq!(d(no_client.clone(), None).unwrap(), "c6ad4f14-5dce-45a0-a4ee-9b0c0631087b");
        no_client.as_object_mut().unwrap().remove("id");
        assert_eq!(d(no_client, None).unwrap_err().field, "client.name");
        // The given key is also what the summary starts with, as in pd-sensu.
        let got = body(map(check_result("create", "out"), Some(KEY), Some("k1"), ApiVersion::V2, &defaults()).unwrap());
        assert_eq!(got["payload"]["summary"], "k1 : out");
    }

    #[test]
    fn sensu_go_events_are_read() {
        let v = json!({
            "entity": {"metadata": {"name": "web1"}},
            "check": {"metadata": {"name": "check-disk"}, "output": "DISK CRITICAL", "status": 2}
        });
        let got = body(map(v, Some(KEY), None, ApiVersion::V2, &defaults()).unwrap());
        assert_eq!(got["event_action"], "trigger");
        assert_eq!(got["dedup_key"], "web1/check-disk");
        assert_eq!(got["payload"]["source"], "web1");
        let v = json!({
            "entity": {"metadata": {"name": "web1"}},
            "check": {"metadata": {"name": "check-disk"}, "output": "DISK OK", "status": 0}
        });
        assert_eq!(body(map(v, Some(KEY), None, ApiVersion::V2, &defaults()).unwrap())["event_action"], "resolve");
    }

    #[test]
    fn bad_input_is_refused_with_the_field() {
        for (input, field) in
            [(json!([1]), "event"), (json!("text"), "event"), (json!({"check": {"name": "c"}}), "action")]
        {
            assert_eq!(map(input, Some(KEY), None, ApiVersion::V2, &defaults()).unwrap_err().field, field);
        }
        assert_eq!(
            map(check_result("create", "x"), Some("bad"), None, ApiVersion::V2, &defaults()).unwrap_err().field,
            "routing_key"
        );
    }
}

//! Routing rules (`[[routes]]`): matchers on an event's fields and its intake, tried in order;
//! the first route that matches sets the routing key, the events URL and the severity, or drops
//! the event. This module holds the rules and the pure decision; the queue applies it at
//! acceptance (and makes acknowledge and resolve follow their trigger), `pdrelay route test`
//! shows it. It does not read the queue, send, or log.

use std::borrow::Cow;

use serde::Deserialize;

use crate::event::{Event, RoutingKey, Severity};

/// Longest pattern accepted, in bytes (a compiled regex is bounded by `regex`'s size limit too).
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Most routes in a config.
pub const MAX_ROUTES: usize = 1000;

/// One `[[routes]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteSection {
    /// A name shown by `route test`, in records and metrics; defaults to `route N` (1-based).
    pub name: String,
    /// Field -> value: all must match. Fields: routing_key, dedup_key, source, component, group,
    /// class, severity, summary, intake (spool, socket, http, send), producer (nagios, zabbix,
    /// sensu, alertmanager...: the event's `client` in lower case, else the intake), and
    /// `custom_details.NAME` (v1: `details.NAME`). A value is matched exactly, or as a glob
    /// with the prefix `glob:` (`*` any text, `?` one character), or as a regular expression with
    /// `re:` (anchored at both ends). An empty table matches every event.
    #[serde(rename = "match")]
    pub matchers: std::collections::BTreeMap<String, String>,
    /// Routing key to send to instead (32 characters).
    pub routing_key: String,
    /// Events API base URL to send to instead, e.g. "https://events.eu.pagerduty.com".
    pub events_url: String,
    /// Severity to set on v2 alert triggers: critical, error, warning or info.
    pub severity: String,
    /// Do not send: the event is kept, not sent, with the route's name as the reason.
    pub drop: bool,
}

/// Which part of an event a matcher reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The routing key (v1: service key), in full.
    RoutingKey,
    /// The dedup key (v1: incident key).
    DedupKey,
    /// `payload.source`.
    Source,
    /// `payload.component`.
    Component,
    /// `payload.group`.
    Group,
    /// `payload.class`.
    Class,
    /// `payload.severity`.
    Severity,
    /// `payload.summary` (v1: description).
    Summary,
    /// How the event came in: spool, socket, http, send, heartbeat.
    Intake,
    /// Which producer made it: the event's `client` in lower case (`nagios`, `zabbix`, `sensu`
    /// from pdrelay's own commands; `alertmanager`, `grafana` from theirs), else the intake.
    Producer,
    /// A top-level key of `custom_details` (v1: `details`); strings as they are, other values as JSON.
    Detail(String),
}

impl Field {
    /// Parses a field name; `None` for an unknown one.
    pub fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "routing_key" | "service_key" => Field::RoutingKey,
            "dedup_key" | "incident_key" => Field::DedupKey,
            "source" => Field::Source,
            "component" => Field::Component,
            "group" => Field::Group,
            "class" => Field::Class,
            "severity" => Field::Severity,
            "summary" | "description" => Field::Summary,
            "intake" => Field::Intake,
            "producer" => Field::Producer,
            other => {
                let key = other.strip_prefix("custom_details.").or_else(|| other.strip_prefix("details."))?;
                if key.is_empty() {
                    return None;
                }
                Field::Detail(key.to_owned())
            }
        })
    }

    /// This field of `event`, which came in through `intake`; `None` when the event has none.
    pub fn value<'a>(&self, event: &'a Event, intake: &'a str) -> Option<Cow<'a, str>> {
        let payload = match event {
            Event::Alert(a) => a.payload.as_ref().map(|p| {
                (
                    Some(p.source.as_str()),
                    p.component.as_deref(),
                    p.group.as_deref(),
                    p.class.as_deref(),
                    Some(p.severity.as_str()),
                    p.custom_details.as_ref(),
                )
            }),
            Event::Change(c) => {
                Some((c.payload.source.as_deref(), None, None, None, None, c.payload.custom_details.as_ref()))
            }
            Event::V1(v) => Some((None, None, None, None, None, v.details.as_ref())),
        };
        let (source, component, group, class, severity, details) = payload.unwrap_or_default();
        let borrowed = |s: Option<&'a str>| s.map(Cow::Borrowed);
        match self {
            Field::RoutingKey => Some(Cow::Borrowed(event.routing_key().as_str())),
            Field::DedupKey => borrowed(event.dedup_key()),
            Field::Source => borrowed(source),
            Field::Component => borrowed(component),
            Field::Group => borrowed(group),
            Field::Class => borrowed(class),
            Field::Severity => borrowed(severity),
            Field::Summary => borrowed(event.summary()),
            Field::Intake => Some(Cow::Borrowed(intake)),
            Field::Producer => {
                let client = match event {
                    Event::Alert(a) => a.client.as_deref(),
                    Event::V1(v) => v.client.as_deref(),
                    Event::Change(_) => None,
                };
                Some(client.filter(|c| !c.is_empty()).map_or(Cow::Borrowed(intake), |c| Cow::Owned(c.to_lowercase())))
            }
            Field::Detail(key) => match details?.get(key)? {
                serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
                other => Some(Cow::Owned(other.to_string())),
            },
        }
    }
}

/// How a value is compared.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// Equal text.
    Exact(String),
    /// A glob or a regular expression, compiled (anchored).
    Regex {
        /// As written, for messages.
        source: String,
        /// Compiled.
        regex: regex::Regex,
    },
}

impl Pattern {
    /// Parses `glob:...`, `re:...` or an exact value. Errors say what is wrong, in one line.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.len() > MAX_PATTERN_BYTES {
            return Err(format!("must be at most {MAX_PATTERN_BYTES} bytes"));
        }
        let anchored = if let Some(glob) = text.strip_prefix("glob:") {
            let mut re = String::from("^(?s:");
            for c in glob.chars() {
                match c {
                    '*' => re.push_str(".*"),
                    '?' => re.push('.'),
                    c => re.push_str(&regex::escape(&c.to_string())),
                }
            }
            re.push_str(")$");
            re
        } else if let Some(re) = text.strip_prefix("re:") {
            format!("^(?:{re})$")
        } else {
            return Ok(Pattern::Exact(text.to_owned()));
        };
        let regex = regex::RegexBuilder::new(&anchored).size_limit(1 << 20).build().map_err(|e| {
            format!("is not a valid pattern ({})", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
        })?;
        Ok(Pattern::Regex { source: text.to_owned(), regex })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == value,
            Pattern::Regex { regex, .. } => regex.is_match(value),
        }
    }
}

/// One field compared with one pattern.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The field.
    pub field: Field,
    /// Its name as written.
    pub name: String,
    /// The pattern.
    pub pattern: Pattern,
}

/// Parses a `match` table (field name -> value or pattern) of the config entry at `at` (e.g.
/// `routes[2]`) into matchers. Each bad entry adds one line `<at>.match.<field>: <rule>` to
/// `problems`. Returns the good matchers, and whether every entry was good.
pub fn parse_matchers(
    at: &str,
    table: &std::collections::BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> (Vec<Matcher>, bool) {
    let mut matchers = Vec::new();
    let mut all_good = true;
    for (field, value) in table {
        match Matcher::parse(field, value) {
            Ok(m) => matchers.push(m),
            Err(rule) => {
                problems.push(format!("{at}.match.{field}: {rule}"));
                all_good = false;
            }
        }
    }
    (matchers, all_good)
}

impl Matcher {
    /// Parses `name = value`; errors are `rule` text for a message naming the key.
    pub fn parse(name: &str, value: &str) -> Result<Matcher, String> {
        let field = Field::parse(name).ok_or_else(|| {
            "is not a field to match (routing_key, dedup_key, source, component, group, class, severity, summary, intake, producer, custom_details.NAME)".to_owned()
        })?;
        Ok(Matcher { field, name: name.to_owned(), pattern: Pattern::parse(value)? })
    }

    /// Whether `event` (come in through `intake`) matches; an absent field matches nothing.
    pub fn matches(&self, event: &Event, intake: &str) -> bool {
        self.field.value(event, intake).is_some_and(|v| self.pattern.matches(&v))
    }
}

/// Whether every matcher matches (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], event: &Event, intake: &str) -> bool {
    matchers.iter().all(|m| m.matches(event, intake))
}

/// A checked route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// All must match.
    pub matchers: Vec<Matcher>,
    /// Routing key to set.
    pub routing_key: Option<RoutingKey>,
    /// Events API base URL to send to (no trailing slash).
    pub events_url: Option<String>,
    /// Severity to set on v2 triggers.
    pub severity: Option<Severity>,
    /// Keep, do not send.
    pub drop: bool,
}

/// The checked `[[routes]]`, in order.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Tried in order; the first that matches applies.
    pub routes: Vec<Route>,
}

/// What routing did to one event.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Routed {
    /// The route that matched, if any.
    pub route: Option<String>,
    /// Where to send, when not `pagerduty.events_url`.
    pub events_url: Option<String>,
    /// Dropped by this route: not sent.
    pub dropped: bool,
}

impl Router {
    /// Checks `[[routes]]`, pushing one line per problem (`routes[N].key: rule`).
    pub fn check(sections: &[RouteSection], problems: &mut Vec<String>) -> Router {
        if sections.len() > MAX_ROUTES {
            problems.push(format!("routes: must be at most {MAX_ROUTES} routes"));
        }
        let mut routes: Vec<Route> = Vec::new();
        // Routes whose matchers all parsed: only these can be said to cover a later one.
        let mut whole: Vec<bool> = Vec::new();
        for (i, s) in sections.iter().enumerate() {
            let at = format!("routes[{}]", i + 1);
            let name = if s.name.is_empty() { format!("route {}", i + 1) } else { s.name.clone() };
            if routes.iter().any(|r| r.name == name) {
                problems.push(format!("{at}.name: must be unique ({name:?} is used by an earlier route)"));
            }
            let (matchers, all_good) = parse_matchers(&at, &s.matchers, problems);
            let broken = !all_good;
            let routing_key = match s.routing_key.as_str() {
                "" => None,
                key => {
                    RoutingKey::parse(key, &format!("{at}.routing_key")).map_err(|e| problems.push(e.to_string())).ok()
                }
            };
            let events_url = match s.events_url.trim_end_matches('/') {
                "" => None,
                url => match reqwest::Url::parse(url) {
                    Ok(u)
                        if matches!(u.scheme(), "http" | "https") && u.query().is_none() && u.fragment().is_none() =>
                    {
                        Some(url.to_owned())
                    }
                    _ => {
                        problems.push(format!(
                            "{at}.events_url: must be an http or https base URL (got {:?})",
                            s.events_url
                        ));
                        None
                    }
                },
            };
            let severity = match s.severity.as_str() {
                "" => None,
                sev => Severity::exact(sev).or_else(|| {
                    problems.push(format!("{at}.severity: must be critical, error, warning or info (got {sev:?})"));
                    None
                }),
            };
            let sets = !s.routing_key.is_empty() || !s.events_url.is_empty() || !s.severity.is_empty();
            if s.drop && sets {
                problems
                    .push(format!("{at}.drop: a dropping route must not also set routing_key, events_url or severity"));
            }
            if !s.drop && !sets {
                problems.push(format!("{at}: does nothing; set routing_key, events_url, severity or drop = true"));
            }
            let route = Route { name, matchers, routing_key, events_url, severity, drop: s.drop };
            let covered =
                if broken { None } else { routes.iter().enumerate().find(|(j, e)| whole[*j] && covers(e, &route)) };
            if let Some((j, earlier)) = covered {
                problems.push(format!(
                    "{at}: unreachable: every event it matches is taken first by routes[{}] ({:?})",
                    j + 1,
                    earlier.name
                ));
            }
            routes.push(route);
            whole.push(!broken);
        }
        Router { routes }
    }

    /// The first route that `event` (come in through `intake`) matches.
    pub fn find(&self, event: &Event, intake: &str) -> Option<&Route> {
        self.routes.iter().find(|r| all_match(&r.matchers, event, intake))
    }

    /// Applies the first matching route to `event`; says what it did.
    pub fn apply(&self, event: &mut Event, intake: &str) -> Routed {
        let Some(route) = self.find(event, intake) else { return Routed::default() };
        if !route.drop {
            if let Some(key) = &route.routing_key {
                set_routing_key(event, key.clone());
            }
            if let (Some(sev), Event::Alert(a)) = (route.severity, &mut *event) {
                if let Some(p) = a.payload.as_mut() {
                    p.severity = sev;
                }
            }
        }
        Routed { route: Some(route.name.clone()), events_url: route.events_url.clone(), dropped: route.drop }
    }
}

/// `pdrelay route test`: which route `event` (come in through `intake`) takes and the request
/// as it would be sent to `default_url` or the route's URL, as lines for a terminal (producer
/// text escaped, routing keys redacted).
pub fn explain(router: &Router, mut event: Event, intake: &str, default_url: &str) -> String {
    let index = router.routes.iter().position(|r| all_match(&r.matchers, &event, intake));
    let routed = router.apply(&mut event, intake);
    let mut out = match (&routed.route, index) {
        (Some(name), Some(i)) => format!("route: {} (routes[{}])\n", crate::text::Escaped(name), i + 1),
        _ => "route: none (no route matches; sent as it is)\n".to_owned(),
    };
    if routed.dropped {
        out.push_str("action: drop (kept as superseded, not sent)\n");
        return out;
    }
    let url = routed.events_url.as_deref().unwrap_or(default_url);
    out.push_str(&format!("routing_key: {}\n", event.routing_key().redacted()));
    out.push_str(&format!("url: {}{}\n", crate::text::Escaped(url), event.kind().endpoint_path()));
    let body = String::from_utf8_lossy(&event.request_body())
        .replace(event.routing_key().as_str(), &event.routing_key().redacted());
    out.push_str(&format!("body: {}\n", crate::text::escape_controls(&body)));
    out
}

/// Replaces the routing key (v1: service key).
pub fn set_routing_key(event: &mut Event, key: RoutingKey) {
    match event {
        Event::Alert(e) => e.routing_key = key,
        Event::Change(e) => e.routing_key = key,
        Event::V1(e) => e.service_key = key,
    }
}

/// Whether `earlier` takes every event `later` could match: each of its matchers is an exact
/// or pattern matcher that `later` repeats, or an exact value that `later`'s exact matcher on the
/// same field satisfies. Conservative: a pair it cannot decide is not reported.
fn covers(earlier: &Route, later: &Route) -> bool {
    earlier.matchers.iter().all(|e| {
        later.matchers.iter().any(|l| {
            l.field == e.field
                && match (&e.pattern, &l.pattern) {
                    (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
                    (Pattern::Regex { source: a, .. }, Pattern::Regex { source: b, .. }) => a == b,
                    (Pattern::Regex { regex, .. }, Pattern::Exact(b)) => regex.is_match(b),
                    (Pattern::Exact(_), Pattern::Regex { .. }) => false,
                }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::IntakeDefaults;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const EU: &str = "fedcba9876543210fedcba9876543210";

    fn event(source: &str) -> Event {
        let json = serde_json::json!({"routing_key": KEY, "event_action": "trigger", "dedup_key": "d",
            "payload": {"summary": "s", "source": source, "severity": "warning", "custom_details": {"team": "db", "n": 3}}});
        Event::from_value(json, &IntakeDefaults::default()).expect("a valid event")
    }

    fn route(matchers: &[(&str, &str)], key: &str) -> RouteSection {
        RouteSection {
            matchers: matchers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            routing_key: key.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn patterns_match_exactly_by_glob_and_by_anchored_regex() {
        let table = [
            ("db1", "db1", true),
            ("db1", "db10", false),
            ("glob:db*", "db10", true),
            ("glob:db?", "db10", false),
            ("glob:a.b", "axb", false),
            ("re:db[0-9]+", "db10", true),
            ("re:db", "xdb", false),
        ];
        for (pattern, value, want) in table {
            assert_eq!(Pattern::parse(pattern).unwrap().matches(value), want, "{pattern} vs {value}");
        }
        assert!(Pattern::parse("re:(").unwrap_err().starts_with("is not a valid pattern"));
    }

    #[test]
    fn first_matching_route_sets_key_url_and_severity() {
        let mut problems = Vec::new();
        let mut eu = route(&[("source", "glob:eu-*"), ("custom_details.team", "db")], EU);
        eu.events_url = "https://events.eu.pagerduty.com/".into();
        eu.severity = "critical".into();
        let router = Router::check(&[eu, route(&[], KEY)], &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let mut e = event("eu-db1");
        let routed = router.apply(&mut e, "socket");
        assert_eq!(routed.route.as_deref(), Some("route 1"));
        assert_eq!(routed.events_url.as_deref(), Some("https://events.eu.pagerduty.com"));
        assert_eq!(e.routing_key().as_str(), EU);
        let Event::Alert(a) = &e else { panic!("alert") };
        assert_eq!(a.payload.as_ref().unwrap().severity, Severity::Critical);
        let mut other = event("us-db1");
        assert_eq!(router.apply(&mut other, "socket").route.as_deref(), Some("route 2"));
        assert_eq!(Field::parse("custom_details.n").unwrap().value(&other, "x").as_deref(), Some("3"));
    }

    #[test]
    fn check_refuses_unreachable_bad_and_idle_routes_one_line_each() {
        let mut problems = Vec::new();
        let mut bad = route(&[("colour", "x"), ("source", "re:(")], "short");
        bad.severity = "high".into();
        let sections = [
            route(&[("intake", "nagios")], KEY),
            route(&[("intake", "nagios"), ("source", "a")], KEY),
            route(&[("source", "glob:web*")], KEY),
            route(&[("source", "web1")], KEY),
            bad,
            RouteSection::default(),
        ];
        Router::check(&sections, &mut problems);
        let joined = problems.join("\n");
        assert!(
            joined.contains("routes[2]: unreachable: every event it matches is taken first by routes[1]"),
            "{joined}"
        );
        assert!(joined.contains("routes[4]: unreachable"), "{joined}");
        assert!(joined.contains("routes[5].match.colour: is not a field"), "{joined}");
        assert!(joined.contains("routes[5].match.source: is not a valid pattern"), "{joined}");
        assert!(joined.contains("routes[5].severity: must be"), "{joined}");
        assert!(joined.contains("routes[5].routing_key"), "{joined}");
        assert!(joined.contains("routes[6]: does nothing"), "{joined}");
        assert!(problems.iter().all(|p| !p.contains('\n')));
    }
}

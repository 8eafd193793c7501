//! The one template language of the sinks: minijinja, with the same context and filters
//! everywhere (the HTTP sink's vendor specs, Slack's messages).
//!
//! Context of every template:
//! - `event`: the whole `io.nectar.Event` as JSON (`event.envelope.event_type`, `event.person.email`, ...);
//! - `lead`: a summary ([`Lead`]): `name`, `email`, `first_name`, `last_name`, `company`,
//!   `score`, `stage`, `source`, `event_type`, `event_id`, `occurred_at` (ms), `workspace_id`,
//!   `lead_key`;
//! - whatever the caller adds (`settings`, `item`, `steps`, `items`).
//!
//! Filters beyond minijinja's built-ins (`lower`, `trim`, `urlencode`, `tojson`, `default`,
//! ...): `md5` and `sha256` (hex of the UTF-8 string), `base64`, `clip(n)` (at most `n`
//! characters, `…` when cut), `rfc3339` and `unix_s` (from epoch milliseconds).
//!
//! [`render_value`] renders a JSON value tree whose strings are templates. One rule keeps
//! types: a string that is exactly one `{{ expression }}` becomes the expression's JSON value
//! (a number stays a number, a list a list); in an object, such a key whose value is none or
//! undefined is left out (optional fields). Any other string renders to a string. A rendered
//! string is capped at [`MAX_RENDERED`] bytes: event fields are untrusted input.

use std::sync::Arc;

use base64::Engine as _;
use md5::Digest as _;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value as JinjaValue};
use minijinja::{Environment, UndefinedBehavior};
use std::time::{SystemTime, UNIX_EPOCH};

use nectar_core::events::{Envelope, Event, LeadScore, Person};
use serde::Serialize;
use serde_json::Value;

/// The most bytes one rendered string may have.
pub const MAX_RENDERED: usize = 256 * 1024;

/// The summary of an event templates get as `lead`.
#[derive(Debug, Serialize)]
pub struct Lead<'a> {
    pub name: Option<String>,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub company: Option<&'a str>,
    pub score: Option<i64>,
    pub stage: Option<&'a str>,
    pub source: &'a str,
    pub event_type: &'a str,
    pub event_id: &'a str,
    pub occurred_at: i64,
    pub workspace_id: &'a str,
    pub lead_key: Option<&'a str>,
}

/// The value as given, unless it is empty or only whitespace.
fn non_blank(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.trim().is_empty())
}

impl<'a> Lead<'a> {
    pub fn of(event: &'a Event) -> Self {
        let person = event.person.as_ref();
        let enrichment = event.enrichment.as_ref();
        let first_name = person
            .and_then(|p| non_blank(p.first_name.as_ref()))
            .or_else(|| enrichment.and_then(|e| non_blank(e.first_name.as_ref())));
        let last_name = person
            .and_then(|p| non_blank(p.last_name.as_ref()))
            .or_else(|| enrichment.and_then(|e| non_blank(e.last_name.as_ref())));
        let joined = {
            let parts: Vec<&str> = [first_name, last_name].into_iter().flatten().map(str::trim).collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        };
        let name = person
            .and_then(|p| non_blank(p.full_name.as_ref()))
            .map(str::to_owned)
            .or(joined);
        let email = person
            .and_then(|p| non_blank(p.email.as_ref()))
            .or_else(|| enrichment.and_then(|e| non_blank(e.email_normalized.as_ref())));
        let company = person
            .and_then(|p| non_blank(p.company.as_ref()))
            .or_else(|| enrichment.and_then(|e| non_blank(e.company_domain.as_ref())));
        Self {
            name,
            first_name,
            last_name,
            email,
            company,
            score: event.score.as_ref().map(|s| s.value.round() as i64),
            stage: event.score.as_ref().map(|s| s.stage.as_str()).filter(|s| !s.is_empty()),
            source: &event.envelope.source,
            event_type: &event.envelope.event_type,
            event_id: &event.envelope.event_id,
            occurred_at: event.envelope.occurred_at,
            workspace_id: &event.envelope.workspace_id,
            lead_key: event.envelope.lead_key.as_deref(),
        }
    }
}

/// `clip(n)`: at most `n` characters, with `…` when cut.
pub fn clip(value: String, max: usize) -> String {
    if value.chars().count() <= max {
        return value;
    }
    let mut s: String = value.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

fn millis(value: &JinjaValue) -> Result<i64, minijinja::Error> {
    i64::try_from(value.clone()).map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("expected epoch milliseconds, got {value}"),
        )
    })
}

/// An environment with the shared filters and chainable undefined values (a missing
/// `event.person.email` is undefined, not an error). Add templates to it with
/// `add_template_owned`.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.add_filter("clip", clip);
    env.add_filter("md5", |s: String| hex::encode(md5::Md5::digest(s.as_bytes())));
    env.add_filter("sha256", |s: String| hex::encode(sha2::Sha256::digest(s.as_bytes())));
    env.add_filter("base64", |s: String| {
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    });
    env.add_filter("unix_s", |v: JinjaValue| -> Result<i64, minijinja::Error> {
        Ok(millis(&v)?.div_euclid(1000))
    });
    env.add_filter("rfc3339", |v: JinjaValue| -> Result<String, minijinja::Error> {
        let ms = millis(&v)?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        Ok(humantime::format_rfc3339_millis(t).to_string())
    });
    env
}

/// A JSON value as a minijinja object, converted on access: a template that reads two fields
/// of an event pays for those two, not for converting the whole event.
#[derive(Debug)]
struct Json(Value);

impl Object for Json {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match &self.0 {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        match &self.0 {
            Value::Object(map) => map.get(key.as_str()?).map(jinja),
            Value::Array(list) => list.get(key.as_usize()?).map(jinja),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match &self.0 {
            Value::Object(map) => Enumerator::Values(map.keys().map(|k| JinjaValue::from(k.as_str())).collect()),
            Value::Array(list) => Enumerator::Seq(list.len()),
            _ => Enumerator::Empty,
        }
    }
}

/// A JSON value for templates (scalars as they are, objects and lists as [`Json`]).
fn jinja(value: &Value) -> JinjaValue {
    match value {
        Value::Null => JinjaValue::from(()),
        Value::Bool(b) => JinjaValue::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => JinjaValue::from(i),
            (None, Some(u)) => JinjaValue::from(u),
            _ => JinjaValue::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => JinjaValue::from(s.as_str()),
        other => JinjaValue::from_object(Json(other.clone())),
    }
}

/// What templates see: named JSON roots (`event`, `lead`, `settings`, `item`, `steps`, ...).
/// Paths (`{{ event.envelope.event_type }}`, `{{ event }}`) are read straight from the JSON;
/// the minijinja context for everything else is built once, on first use.
#[derive(Debug)]
pub struct Scope {
    roots: Vec<(&'static str, Arc<Value>)>,
    jinja: std::sync::OnceLock<JinjaValue>,
}

impl Scope {
    /// The roots `event` and `lead` of `event`, plus `extra`.
    pub fn of_event(event: &Event, extra: Vec<(&'static str, Arc<Value>)>) -> Self {
        let mut roots = extra;
        roots.push(("event", Arc::new(serde_json::to_value(event).unwrap_or_default())));
        roots.push((
            "lead",
            Arc::new(serde_json::to_value(Lead::of(event)).unwrap_or_default()),
        ));
        Self::new(roots)
    }

    pub fn new(roots: Vec<(&'static str, Arc<Value>)>) -> Self {
        Self {
            roots,
            jinja: std::sync::OnceLock::new(),
        }
    }

    /// The minijinja context (built once).
    pub fn jinja(&self) -> &JinjaValue {
        self.jinja.get_or_init(|| {
            let map: std::collections::BTreeMap<&str, JinjaValue> = self
                .roots
                .iter()
                .map(|(name, value)| {
                    let v = match value.as_ref() {
                        Value::Object(_) | Value::Array(_) => JinjaValue::from_dyn_object(
                            minijinja::value::DynObject::new(Arc::new(Json(Value::clone(value)))),
                        ),
                        scalar => jinja(scalar),
                    };
                    (*name, v)
                })
                .collect();
            JinjaValue::from_iter(map)
        })
    }

    /// The value at a path, if the path's root exists.
    fn path(&self, path: &[PathSeg]) -> Option<Option<&Value>> {
        let (PathSeg::Key(root), rest) = path.split_first()? else {
            return None;
        };
        let (_, value) = self.roots.iter().find(|(name, _)| name == root)?;
        let mut value = value.as_ref();
        for seg in rest {
            let next = match (seg, value) {
                (PathSeg::Key(k), Value::Object(map)) => map.get(k.as_str()),
                (PathSeg::Index(i), Value::Array(list)) => list.get(*i),
                _ => None,
            };
            match next {
                Some(v) => value = v,
                None => return Some(None),
            }
        }
        Some(Some(value))
    }
}

/// The context every template sees for `event` (Slack's messages).
pub fn context(event: &Event) -> JinjaValue {
    Scope::of_event(event, Vec::new()).jinja().clone()
}

/// One step of a path expression.
#[derive(Debug, Clone, PartialEq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// `a.b[0].c` as a path, if the expression is only that.
fn parse_path(expr: &str) -> Option<Vec<PathSeg>> {
    let mut out = Vec::new();
    for part in expr.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !ident(name) || ["none", "true", "false", "None", "True", "False"].contains(&name) {
            return None;
        }
        out.push(PathSeg::Key(name.to_owned()));
        while !rest.is_empty() {
            let close = rest.find(']')?;
            out.push(PathSeg::Index(rest.get(1..close)?.parse().ok()?));
            rest = &rest[close + 1..];
            if !(rest.is_empty() || rest.starts_with('[')) {
                return None;
            }
        }
    }
    Some(out)
}

/// A compiled value tree: strings replaced by template names or expressions.
#[derive(Debug, Clone)]
pub enum Compiled {
    Literal(Value),
    /// A template rendering a string.
    Text(Arc<str>),
    /// A string that was exactly `{{ expr }}`: the expression's value, typed. A path is read
    /// from the scope's JSON; anything else is the template `template` (`{{ (expr)|tojson }}`).
    Expr {
        expr: Arc<str>,
        path: Option<Vec<PathSeg>>,
        template: Arc<str>,
    },
    Array(Vec<Compiled>),
    Object(Vec<(String, Compiled)>),
}

/// Whether `s` is exactly one `{{ expression }}`; its expression if so.
fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then(|| inner.trim())
}

/// Compile every string of `value` as a template into `env` (names start with `prefix`); the
/// error names the key path.
pub fn compile(env: &mut Environment<'static>, prefix: &str, value: &Value) -> Result<Compiled, String> {
    compile_with(env, prefix, value, true)
}

/// [`compile`]; with `typed` false, a sole `{{ expression }}` is a text template too, so the
/// environment's auto-escaping applies to every string (HTML bodies).
pub fn compile_with(
    env: &mut Environment<'static>,
    prefix: &str,
    value: &Value,
    typed: bool,
) -> Result<Compiled, String> {
    Ok(match value {
        Value::String(s) if !s.contains("{{") && !s.contains("{%") => Compiled::Literal(value.clone()),
        Value::String(s) => {
            if let Some(expr) = sole_expression(s).filter(|_| typed) {
                env.compile_expression(expr)
                    .map_err(|e| format!("{prefix}: invalid expression `{expr}`: {e}"))?;
                // Compiled once as a template, so it is not parsed again per event.
                let name = format!("{prefix}#expr");
                env.add_template_owned(name.clone(), format!("{{{{ ({expr})|tojson }}}}"))
                    .map_err(|e| format!("{prefix}: invalid expression `{expr}`: {e}"))?;
                Compiled::Expr {
                    expr: Arc::from(expr),
                    path: parse_path(expr),
                    template: Arc::from(name),
                }
            } else {
                env.add_template_owned(prefix.to_owned(), s.clone())
                    .map_err(|e| format!("{prefix}: invalid template: {e}"))?;
                Compiled::Text(Arc::from(prefix))
            }
        }
        Value::Array(values) => Compiled::Array(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| compile_with(env, &format!("{prefix}[{i}]"), v, typed))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Compiled::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), compile_with(env, &format!("{prefix}.{k}"), v, typed)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => Compiled::Literal(other.clone()),
    })
}

/// Render a compiled tree in `scope`. The error names the template and why.
pub fn render_value(env: &Environment<'static>, compiled: &Compiled, scope: &Scope) -> Result<Value, String> {
    Ok(match compiled {
        Compiled::Literal(v) => v.clone(),
        Compiled::Text(name) => Value::String(render_text(env, name, scope)?),
        Compiled::Expr { expr, path, template } => {
            let value = match path.as_deref().and_then(|p| scope.path(p)) {
                Some(found) => found.cloned().unwrap_or(Value::Null),
                None => {
                    let json = env
                        .get_template(template)
                        .and_then(|t| t.render(scope.jinja()))
                        .map_err(|e| format!("`{expr}` failed: {e:#}"))?;
                    serde_json::from_str(&json).map_err(|e| format!("`{expr}` is not JSON: {e}"))?
                }
            };
            if value.as_str().is_some_and(|s| s.len() > MAX_RENDERED) {
                return Err(format!("`{expr}` rendered more than {MAX_RENDERED} bytes"));
            }
            value
        }
        Compiled::Array(items) => Value::Array(
            items
                .iter()
                .map(|c| render_value(env, c, scope))
                .collect::<Result<_, _>>()?,
        ),
        Compiled::Object(fields) => {
            let mut map = serde_json::Map::with_capacity(fields.len());
            for (k, c) in fields {
                let v = render_value(env, c, scope)?;
                if v.is_null() && matches!(c, Compiled::Expr { .. }) {
                    continue;
                }
                map.insert(k.clone(), v);
            }
            Value::Object(map)
        }
    })
}

/// Render the named template to a string (capped at [`MAX_RENDERED`]).
pub fn render_text(env: &Environment<'static>, name: &str, scope: &Scope) -> Result<String, String> {
    let out = env
        .get_template(name)
        .and_then(|t| t.render(scope.jinja()))
        .map_err(|e| format!("template {name} failed: {e:#}"))?;
    if out.len() > MAX_RENDERED {
        return Err(format!("template {name} rendered more than {MAX_RENDERED} bytes"));
    }
    Ok(out)
}

/// Evaluate an expression.
pub fn eval(env: &Environment<'static>, expr: &str, scope: &Scope) -> Result<JinjaValue, String> {
    env.compile_expression(expr)
        .and_then(|e| e.eval(scope.jinja()))
        .map_err(|e| format!("`{expr}` failed: {e:#}"))
}

/// A lead with every field templates commonly read: start checks render every template on it,
/// so a template that cannot work is a configuration error before any event is consumed.
pub fn sample_event() -> Event {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let mut event = Event::new(Envelope {
        event_id: "00000000-0000-7000-8000-000000000000".into(),
        event_type: "lead.captured".into(),
        occurred_at: now,
        received_at: now,
        source: "nectar-start-check".into(),
        workspace_id: "ws-sample".into(),
        lead_key: Some("ws-sample:sample@example.com".into()),
        trace_parent: None,
        consent: None,
    });
    event.person = Some(Person {
        email: Some("sample@example.com".into()),
        first_name: Some("Sample".into()),
        last_name: Some("Lead".into()),
        company: Some("Example".into()),
        ..Person::default()
    });
    event.score = Some(LeadScore {
        value: 42.0,
        delta: 0.0,
        stage: "mql".into(),
        crossed: None,
    });
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Event {
        let mut event = Event::new(Envelope {
            event_id: "e-1".into(),
            event_type: "lead.captured".into(),
            occurred_at: 1_700_000_000_123,
            received_at: 1_700_000_000_500,
            source: "forms".into(),
            workspace_id: "ws".into(),
            lead_key: Some("ws:ada@example.com".into()),
            trace_parent: None,
            consent: None,
        });
        event.person = Some(Person {
            email: Some("Ada@Example.com".into()),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            ..Person::default()
        });
        event
    }

    fn render(value: Value) -> Result<Value, String> {
        let mut env = environment();
        let compiled = compile(&mut env, "body", &value)?;
        let scope = Scope::of_event(&event(), vec![("settings", Arc::new(json!({"list": "L1"})))]);
        render_value(&env, &compiled, &scope)
    }

    #[test]
    fn a_sole_expression_keeps_its_type_and_text_is_a_string() {
        let out = render(json!({
            "time": "{{ event.envelope.occurred_at }}",
            "name": "{{ lead.name }}",
            "line": "{{ lead.first_name }} ({{ lead.email|lower }})",
            "list": ["{{ settings.list }}", 3],
            "literal": true,
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({"time": 1_700_000_000_123i64, "name": "Ada Lovelace", "line": "Ada (ada@example.com)",
                   "list": ["L1", 3], "literal": true})
        );
    }

    #[test]
    fn paths_and_expressions_read_the_same_values() {
        let out = render(json!({
            "whole": "{{ lead }}",
            "indexed": "{{ settings.list }}",
            "computed": "{{ [lead.email|lower] }}",
            "missing": "{{ event.person.phone }}",
            "kept": ["{{ event.nope }}"],
        }))
        .unwrap();
        assert_eq!(out["whole"]["email"], "Ada@Example.com");
        assert_eq!(out["indexed"], "L1");
        assert_eq!(out["computed"], json!(["ada@example.com"]));
        assert!(out.get("missing").is_none(), "left out");
        assert_eq!(out["kept"], json!([null]), "in a list it stays");
        assert_eq!(
            parse_path("event.a[0].b"),
            Some(vec![
                PathSeg::Key("event".into()),
                PathSeg::Key("a".into()),
                PathSeg::Index(0),
                PathSeg::Key("b".into())
            ])
        );
        assert_eq!(parse_path("lead.email|lower"), None);
        assert_eq!(parse_path("none"), None);
    }

    #[test]
    fn undefined_optional_fields_are_left_out() {
        let out = render(json!({"company": "{{ lead.company }}", "email": "{{ lead.email }}"})).unwrap();
        assert_eq!(out, json!({"email": "Ada@Example.com"}));
    }

    #[test]
    fn filters_hash_encode_and_format_times() {
        let out = render(json!({
            "hash": "{{ lead.email|lower|md5 }}",
            "secs": "{{ lead.occurred_at|unix_s }}",
            "at": "{{ lead.occurred_at|rfc3339 }}",
            "b64": "{{ 'a:b'|base64 }}",
            "clip": "{{ 'abcdef'|clip(4) }}",
        }))
        .unwrap();
        // md5("ada@example.com"), as Mailchimp's subscriber hash documents it.
        assert_eq!(out["hash"], "3e3417d7ef77d5932a6734b916515ed5");
        assert_eq!(out["secs"], 1_700_000_000);
        assert_eq!(out["at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(out["b64"], "YTpi");
        assert_eq!(out["clip"], "abc…");
    }

    #[test]
    fn a_bad_template_names_its_key() {
        let err = render(json!({"a": {"b": "{{ lead.name "}})).unwrap_err();
        assert!(err.starts_with("body.a.b:"), "{err}");
    }
}

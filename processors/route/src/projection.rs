//! Reading only what the rules use: route's rules name a handful of the event's fields
//! (`event.envelope.event_type`, `event.score.value`, ...), so route decodes those straight
//! from the Avro bytes into CEL values and skips the rest, instead of decoding the whole
//! event, converting it into a struct and serializing that again into CEL (three full
//! copies of every event, which were route's whole cost: `deploy/local/bench pipeline`).
//!
//! [`Fields`] is the set of paths the compiled rules read, taken from their syntax trees;
//! [`Projector`] is a writer schema compiled against it, and reads one datum into a CEL map
//! holding those paths and nothing else. A path's whole value is decoded (a record, a map,
//! a list, a scalar); records on the way to it hold only the fields asked for. A field the
//! rules name that the writer's schema lacks reads as `null`, as the reader schema's
//! defaults would make it. The values are what the full decode gives (`cel::to_value` of
//! `io.nectar.Event`): the tests compare both on every section.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, ResolvedSchema, UuidSchema};
use cel::Value;
use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map};

/// The variable the rules read.
pub const ROOT: &str = "event";

/// A tree of the paths read below `event`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// The whole value is read (the path ends here, or the value is used as a whole).
    whole: bool,
    children: BTreeMap<String, Fields>,
}

impl Fields {
    /// Everything: what a rule that uses `event` as a whole needs.
    pub fn whole() -> Self {
        Self {
            whole: true,
            children: BTreeMap::new(),
        }
    }

    /// Add `path` (field names below the root); an empty path is the whole value.
    pub fn add(&mut self, path: &[&str]) {
        if self.whole {
            return;
        }
        match path.split_first() {
            None => {
                self.whole = true;
                self.children.clear();
            }
            Some((first, rest)) => self.children.entry((*first).to_owned()).or_default().add(rest),
        }
    }

    /// Add what `expr` reads of [`ROOT`].
    pub fn add_expression(&mut self, expr: &IdedExpr) {
        match root_path(&expr.expr) {
            Some(path) => self.add(&path),
            None => children(expr).into_iter().for_each(|e| self.add_expression(e)),
        }
    }
}

/// The sub-expressions of `expr`, in evaluation order (a comprehension's: range, initial
/// accumulator, condition, step, result).
fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Expr::Select(select) => vec![&select.operand],
        Expr::Call(call) => call.target.as_deref().into_iter().chain(&call.args).collect(),
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map.entries.iter().flat_map(|e| entry_children(&e.expr)).collect(),
        Expr::Struct(s) => s.entries.iter().flat_map(|e| entry_children(&e.expr)).collect(),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_children(entry: &EntryExpr) -> Vec<&IdedExpr> {
    match entry {
        EntryExpr::StructField(f) => vec![&f.value],
        EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
    }
}

/// The identifiers `expr` reads that it does not bind itself (a macro's iteration and
/// accumulator variables are bound inside it): the variables it needs from outside.
pub fn free_variables(expr: &IdedExpr) -> BTreeSet<String> {
    fn walk(expr: &IdedExpr, bound: &mut Vec<String>, out: &mut BTreeSet<String>) {
        match &expr.expr {
            Expr::Ident(name) => {
                if !bound.contains(name) {
                    out.insert(name.clone());
                }
            }
            Expr::Comprehension(c) => {
                walk(&c.iter_range, bound, out);
                walk(&c.accu_init, bound, out);
                let before = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                for e in [&c.loop_cond, &c.loop_step, &c.result] {
                    walk(e, bound, out);
                }
                bound.truncate(before);
            }
            _ => children(expr).into_iter().for_each(|e| walk(e, bound, out)),
        }
    }
    let mut out = BTreeSet::new();
    walk(expr, &mut Vec::new(), &mut out);
    out
}

/// The field names `expr` selects below [`ROOT`], root excluded (`event.score.value`:
/// `[score, value]`; `has(event.score)`: `[score]`; `event` itself: `[]`), or `None` if it
/// is not a selection on the root.
fn root_path(expr: &Expr) -> Option<Vec<&str>> {
    let mut path = Vec::new();
    let mut expr = expr;
    loop {
        match expr {
            Expr::Ident(name) if name == ROOT => {
                path.reverse();
                return Some(path);
            }
            Expr::Select(select) => {
                path.push(select.field.as_str());
                expr = &select.operand.expr;
            }
            _ => return None,
        }
    }
}

/// How to read (or skip) one Avro value.
#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(Vec<Arc<String>>),
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Vec<Node>),
    /// The fields in the writer's order, each kept under its name or skipped; then the
    /// names asked for that the writer lacks (read as null).
    Record {
        fields: Vec<(Option<Key>, Node)>,
        missing: Vec<Key>,
    },
}

/// A writer schema compiled against the [`Fields`] to read.
#[derive(Debug)]
pub struct Projector {
    root: Node,
}

/// Deeper than this the schema is taken to be recursive, which the projection does not read.
const MAX_DEPTH: usize = 64;

impl Projector {
    pub fn new(schema: &Schema, fields: &Fields) -> Result<Self, String> {
        let resolved = ResolvedSchema::new(schema).map_err(|e| format!("the writer schema: {e}"))?;
        let compiler = Compiler {
            names: resolved.get_names(),
        };
        Ok(Self {
            root: compiler.node(schema, Some(fields), None, 0)?,
        })
    }

    /// Read one Avro datum (without the Confluent frame).
    pub fn read(&self, datum: &[u8]) -> Result<Value, String> {
        let mut input = datum;
        read(&self.root, &mut input)
    }
}

struct Compiler<'s> {
    names: &'s HashMap<Name, &'s Schema>,
}

impl Compiler<'_> {
    /// `fields`: what to keep of this value (`None`: skip it, but know how).
    fn node(
        &self,
        schema: &Schema,
        fields: Option<&Fields>,
        namespace: Option<&str>,
        depth: usize,
    ) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err("the writer schema nests deeper than 64 levels (a recursive type?)".into());
        }
        let whole = Fields::whole();
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Int,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes | Schema::BigDecimal => Node::Bytes,
            Schema::String => Node::String,
            Schema::Uuid(UuidSchema::String) => Node::String,
            Schema::Uuid(UuidSchema::Bytes) => Node::Bytes,
            Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) | Schema::Fixed(f) => Node::Fixed(f.size),
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => Node::Bytes,
                InnerDecimalSchema::Fixed(f) => Node::Fixed(f.size),
            },
            Schema::Enum(e) => Node::Enum(e.symbols.iter().map(|s| Arc::new(s.clone())).collect()),
            // A list or a map is read whole: a rule that reads into one reads it all.
            Schema::Array(a) => Node::Array(Box::new(self.node(&a.items, Some(&whole), namespace, depth + 1)?)),
            Schema::Map(m) => Node::Map(Box::new(self.node(&m.types, Some(&whole), namespace, depth + 1)?)),
            Schema::Union(u) => Node::Union(
                u.variants()
                    .iter()
                    .map(|v| self.node(v, fields, namespace, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Record(r) => {
                let namespace = r.name.namespace().or(namespace);
                let mut out = Vec::with_capacity(r.fields.len());
                for field in &r.fields {
                    // What to keep of the field; `None`: skip it.
                    let sub = match fields {
                        None => None,
                        Some(f) if f.whole => Some(&whole),
                        Some(f) => f.children.get(&field.name),
                    };
                    let node = self.node(&field.schema, sub, namespace, depth + 1)?;
                    out.push((sub.map(|_| Key::String(Arc::new(field.name.clone()))), node));
                }
                let missing = match fields {
                    Some(f) if !f.whole => f
                        .children
                        .keys()
                        .filter(|name| !r.fields.iter().any(|field| &field.name == *name))
                        .map(|name| Key::String(Arc::new(name.clone())))
                        .collect(),
                    _ => Vec::new(),
                };
                Node::Record { fields: out, missing }
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(namespace);
                let target = self
                    .names
                    .get(&full)
                    .ok_or_else(|| format!("the writer schema names {full} without defining it"))?;
                return self.node(target, fields, full.namespace(), depth + 1);
            }
        };
        Ok(node)
    }
}

const TRUNCATED: &str = "the value ends before its schema does";

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if input.len() < n {
        return Err(TRUNCATED.into());
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

/// A zig-zag variable-length long, as Avro writes `int` and `long`.
fn long(input: &mut &[u8]) -> Result<i64, String> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = take(input, 1)?[0];
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err("a variable-length integer longer than 10 bytes".into())
}

fn length(input: &mut &[u8]) -> Result<usize, String> {
    usize::try_from(long(input)?).map_err(|_| "a negative length".to_owned())
}

fn string(input: &mut &[u8]) -> Result<String, String> {
    let n = length(input)?;
    String::from_utf8(take(input, n)?.to_vec()).map_err(|_| "a string that is not UTF-8".to_owned())
}

/// Read the blocks of an array or map, calling `item` for each item.
fn blocks(input: &mut &[u8], mut item: impl FnMut(&mut &[u8]) -> Result<(), String>) -> Result<(), String> {
    loop {
        let count = long(input)?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            // A negative count is followed by the block's size in bytes.
            long(input)?;
        }
        for _ in 0..count.unsigned_abs() {
            item(input)?;
        }
    }
}

/// The branch a union value takes (its index comes first).
fn variant<'a>(variants: &'a [Node], input: &mut &[u8]) -> Result<&'a Node, String> {
    let i = long(input)?;
    usize::try_from(i)
        .ok()
        .and_then(|i| variants.get(i))
        .ok_or_else(|| format!("union index {i} out of range"))
}

fn read(node: &Node, input: &mut &[u8]) -> Result<Value, String> {
    Ok(match node {
        Node::Null => Value::Null,
        Node::Boolean => Value::Bool(take(input, 1)?[0] != 0),
        Node::Int => Value::Int(long(input)?),
        Node::Float => Value::Float(f64::from(f32::from_le_bytes(
            take(input, 4)?.try_into().map_err(|_| TRUNCATED)?,
        ))),
        Node::Double => Value::Float(f64::from_le_bytes(take(input, 8)?.try_into().map_err(|_| TRUNCATED)?)),
        Node::Bytes => {
            let n = length(input)?;
            Value::Bytes(Arc::new(take(input, n)?.to_vec()))
        }
        Node::String => Value::String(Arc::new(string(input)?)),
        Node::Fixed(n) => Value::Bytes(Arc::new(take(input, *n)?.to_vec())),
        Node::Enum(symbols) => {
            let i = long(input)?;
            let symbol = usize::try_from(i).ok().and_then(|i| symbols.get(i));
            Value::String(symbol.ok_or_else(|| format!("enum index {i} out of range"))?.clone())
        }
        Node::Array(item) => {
            let mut items = Vec::new();
            blocks(input, |input| {
                items.push(read(item, input)?);
                Ok(())
            })?;
            Value::List(Arc::new(items))
        }
        Node::Map(value) => {
            let mut map = HashMap::new();
            blocks(input, |input| {
                let key = string(input)?;
                map.insert(Key::String(Arc::new(key)), read(value, input)?);
                Ok(())
            })?;
            Value::Map(Map { map: Arc::new(map) })
        }
        Node::Union(variants) => read(variant(variants, input)?, input)?,
        Node::Record { fields, missing } => {
            let mut map = HashMap::with_capacity(fields.len() + missing.len());
            for (name, field) in fields {
                match name {
                    Some(name) => {
                        map.insert(name.clone(), read(field, input)?);
                    }
                    None => skip(field, input)?,
                }
            }
            for name in missing {
                map.insert(name.clone(), Value::Null);
            }
            Value::Map(Map { map: Arc::new(map) })
        }
    })
}

fn skip(node: &Node, input: &mut &[u8]) -> Result<(), String> {
    match node {
        Node::Null => {}
        Node::Boolean => {
            take(input, 1)?;
        }
        Node::Int | Node::Enum(_) => {
            long(input)?;
        }
        Node::Float => {
            take(input, 4)?;
        }
        Node::Double => {
            take(input, 8)?;
        }
        Node::Bytes | Node::String => {
            let n = length(input)?;
            take(input, n)?;
        }
        Node::Fixed(n) => {
            take(input, *n)?;
        }
        Node::Array(item) => blocks(input, |input| skip(item, input))?,
        Node::Map(value) => blocks(input, |input| {
            let n = length(input)?;
            take(input, n)?;
            skip(value, input)
        })?,
        Node::Union(variants) => skip(variant(variants, input)?, input)?,
        Node::Record { fields, .. } => {
            for (_, field) in fields {
                skip(field, input)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RouteConfig, Routed, Router, RuleConfig};
    use nectar_core::events::Event;
    use serde_json::json;

    fn datum(event: &Event) -> Vec<u8> {
        let schema = nectar_core::schema::EVENT.schema();
        let value = apache_avro::to_value(event)
            .expect("to avro")
            .resolve(&schema)
            .expect("fits the schema");
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .expect("a writer")
            .write_value_to_vec(value)
            .expect("encodes")
    }

    fn event(overrides: serde_json::Value) -> Event {
        let mut base = json!({
            "envelope": {
                "event_id": "e-1", "event_type": "lead.captured", "occurred_at": 1_700_000_000_000_i64,
                "received_at": 1_700_000_000_100_i64, "source": "form:contact", "workspace_id": "acme",
                "lead_key": "k1"
            },
            "attributes": {}
        });
        for (k, v) in overrides.as_object().expect("object") {
            base[k] = v.clone();
        }
        serde_json::from_value(base).expect("an event")
    }

    fn events() -> Vec<Event> {
        let full = event(json!({
            "envelope": {
                "event_id": "e-2", "event_type": "payment.succeeded", "occurred_at": -5, "received_at": 0,
                "source": "webhook:stripe", "workspace_id": "acme", "lead_key": null, "trace_parent": "00-ab",
                "consent": {"marketing": true, "analytics": null, "personalization": false}
            },
            "person": {"email": "a@b.co", "first_name": "Ada", "external_ids": {"stripe_customer": "cus_1"}},
            "form": {"form_id": "contact", "form_type": "demo_request", "fields": {"name": "Ada", "msg": "hi"}},
            "commerce": {"amount_minor": 129_900, "currency": "EUR", "status": "paid"},
            "activity": {"channel": "email", "action": "clicked", "url": "https://x.example"},
            "context": {"page_url": "https://www.example.com/pricing", "ip": "203.0.113.7"},
            "attributes": {"plan": "pro", "utm_source": "newsletter"},
            "enrichment": {"email_valid": true, "free_mail": false, "utm": {"utm_medium": "email"}, "external": {}},
            "score": {"value": 91.5, "delta": 12.25, "stage": "sql", "crossed": "sql"}
        }));
        let low = event(json!({"score": {"value": 10.0, "delta": -1.0, "stage": "lead", "crossed": null}}));
        let erasure = event(json!({"envelope": {
            "event_id": "e-3", "event_type": "lead.erasure_requested", "occurred_at": 1, "received_at": 1,
            "source": "app:crm", "workspace_id": "acme", "lead_key": "k9"
        }}));
        vec![event(json!({})), full, low, erasure]
    }

    fn router(rules: &[&str]) -> Router {
        Router::new(&RouteConfig {
            erasure_sinks: vec!["postgres".into()],
            rules: rules
                .iter()
                .enumerate()
                .map(|(i, when)| RuleConfig {
                    name: format!("r{i}"),
                    when: (*when).to_owned(),
                    sinks: vec![format!("s{i}")],
                })
                .collect(),
        })
        .expect("rules compile")
    }

    const RULES: &[&str] = &[
        "event.score != null && event.score.value >= 80.0",
        "event.envelope.lead_key != null && event.envelope.event_type != 'lead.stage_changed'",
        "event.envelope.event_type in ['payment.succeeded', 'order.created']",
        "true",
        "event.enrichment != null && event.enrichment.free_mail == false && event.enrichment.utm.size() > 0",
        "has(event.attributes.plan)",
        "event.attributes.exists(k, k.startsWith('utm'))",
        "event.commerce != null && event.commerce.amount_minor > 1000 && event.commerce.currency == 'EUR'",
        "event.envelope.consent != null && event.envelope.consent.marketing == true",
        "event.person != null && event.person.external_ids.size() > 0",
        "event.envelope.occurred_at < 0",
        "size(event.form.fields) > 1",
        "event.score.delta > 10.0 && event.score.crossed == 'sql'",
        "event.activity != null && event.activity.channel + '/' + event.activity.action == 'email/clicked'",
    ];

    #[test]
    fn projected_events_route_exactly_as_fully_decoded_ones() {
        let schema = nectar_core::schema::EVENT.schema();
        for rules in [RULES.to_vec(), vec!["event != null && event.score != null"]] {
            let router = router(&rules);
            let projector = Projector::new(&schema, router.fields()).expect("compiles");
            for e in events() {
                let projected = projector.read(&datum(&e)).expect("reads");
                let full = router.route(&e);
                assert_eq!(router.route_value(projected), full, "{}", e.envelope.event_id);
            }
        }
    }

    #[test]
    fn the_rules_of_the_equivalence_test_tell_the_events_apart() {
        let router = router(RULES);
        let routed: Vec<Routed> = events().iter().map(|e| router.route(e)).collect();
        let full = &routed[1];
        assert_eq!(
            full.matched.len(),
            RULES.len() - 1,
            "all but the lead_key rule: {full:?}"
        );
        assert!(full.failed.is_empty(), "{full:?}");
        assert!(
            routed[0].failed.iter().any(|f| f.rule == "r11"),
            "size(null) fails: {:?}",
            routed[0]
        );
        assert_eq!(
            routed[3].sinks.iter().next().map(String::as_str),
            Some("postgres"),
            "erasure"
        );
        for (i, a) in routed.iter().enumerate() {
            for b in &routed[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn only_the_fields_the_rules_read_are_decoded() {
        let router = router(&[
            "event.score != null && event.score.value > 1.0",
            "has(event.attributes.x)",
        ]);
        let projector = Projector::new(&nectar_core::schema::EVENT.schema(), router.fields()).expect("compiles");
        let full = &events()[1];
        let Value::Map(projected) = projector.read(&datum(full)).expect("reads") else {
            panic!("a map")
        };
        let keys = |m: &Map| {
            let mut k: Vec<String> = m.map.keys().map(|k| format!("{k:?}")).collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&projected).len(),
            3,
            "envelope, score, attributes: {:?}",
            keys(&projected)
        );
        let Some(Value::Map(envelope)) = projected.get(&cel::objects::KeyRef::String("envelope")) else {
            panic!("an envelope")
        };
        assert_eq!(keys(envelope).len(), 2, "event_id and event_type: {:?}", keys(envelope));
        let Some(Value::Map(score)) = projected.get(&cel::objects::KeyRef::String("score")) else {
            panic!("a score")
        };
        assert_eq!(keys(score).len(), 4, "score is read whole: {:?}", keys(score));
    }

    #[test]
    fn a_field_the_writer_lacks_reads_as_null() {
        let old: Schema = Schema::parse_str(
            r#"{"type": "record", "name": "Event", "namespace": "io.nectar", "fields": [
                {"name": "envelope", "type": {"type": "record", "name": "Envelope", "fields": [
                    {"name": "event_id", "type": "string"}, {"name": "event_type", "type": "string"}]}},
                {"name": "tags", "type": {"type": "array", "items": "string"}}
            ]}"#,
        )
        .expect("schema");
        let router = router(&["event.score == null", "event.envelope.lead_key == null"]);
        let projector = Projector::new(&old, router.fields()).expect("compiles");
        // envelope {event_id "e", event_type "t"}, tags ["a"] (skipped).
        let bytes = [2, b'e', 2, b't', 2, 2, b'a', 0];
        let routed = router.route_value(projector.read(&bytes).expect("reads"));
        assert_eq!(routed.matched, ["r0", "r1"]);
        assert_eq!(
            crate::envelope_str(&projector.read(&bytes).expect("reads"), "event_id"),
            Some("e")
        );
    }

    #[test]
    fn a_truncated_or_corrupt_value_is_an_error_not_a_guess() {
        let router = router(RULES);
        let projector = Projector::new(&nectar_core::schema::EVENT.schema(), router.fields()).expect("compiles");
        let bytes = datum(&events()[1]);
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(projector.read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_union = datum(&events()[0]);
        // The envelope's strings come first; the person union index follows them. Corrupt
        // every byte in turn: none may panic.
        for i in 0..bad_union.len() {
            let keep = bad_union[i];
            bad_union[i] = 0x7f;
            let _ = projector.read(&bad_union);
            bad_union[i] = keep;
        }
    }

    #[test]
    fn fields_follow_selections_on_the_root_through_every_expression() {
        let router = router(&[
            "event.a.b == 1 || [event.c].size() > 0",
            "{'k': event.d.e}.k == 1",
            "event.f.exists(x, x == event.g.h)",
        ]);
        let mut expected = Fields::default();
        for path in [
            &["envelope", "event_id"][..],
            &["envelope", "event_type"],
            &["a", "b"],
            &["c"],
            &["d", "e"],
            &["f"],
            &["g", "h"],
        ] {
            expected.add(path);
        }
        assert_eq!(router.fields(), &expected);
        let mut whole = Fields::default();
        whole.add(&["x"]);
        whole.add(&[]);
        assert_eq!(whole, Fields::whole());
    }
}

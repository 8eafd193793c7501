//! The declarative mapping engine. A [`Rule`] is one row of a vendor's table: the vendor event
//! type it handles, the canonical type it becomes, and where each canonical field sits in the
//! vendor's JSON, as lists of JSON pointers tried in order. The tables themselves are in
//! `vendors.rs`; this module only reads them.

use std::collections::HashMap;

use nectar_core::events::{Activity, Commerce, Context, Person};
use serde_json::Value;

use crate::json::{self, TimeUnit, attribute_text, describe, first_text, first_value};
use crate::money;

/// JSON pointers into the vendor body, tried in order; the first non-empty value wins.
pub(crate) type Pointers = &'static [&'static str];

/// Extra `attributes`: key, and where its value is.
pub(crate) type Attributes = &'static [(&'static str, Pointers)];

/// Where a timestamp is and how it is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Time(pub &'static str, pub TimeUnit);

/// Where the person's details are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PersonSpec {
    pub email: Pointers,
    pub first_name: Pointers,
    pub last_name: Pointers,
    pub full_name: Pointers,
    pub phone: Pointers,
    pub company: Pointers,
    pub job_title: Pointers,
    pub user_id: Pointers,
    /// `person.external_ids`: e.g. `("stripe_customer", &["/data/object/customer"])`.
    pub external_ids: Attributes,
}

impl PersonSpec {
    pub const NONE: Self = Self {
        email: &[],
        first_name: &[],
        last_name: &[],
        full_name: &[],
        phone: &[],
        company: &[],
        job_title: &[],
        user_id: &[],
        external_ids: &[],
    };
}

/// An amount in minor units with its canonical currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Money {
    pub minor: i64,
    pub currency: String,
}

/// How the vendor writes an amount.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Amount {
    /// An integer in Stripe's smallest currency unit.
    Stripe(Pointers),
    /// Decimal text in major units, e.g. Shopify's `"10.00"`.
    Major(Pointers),
    /// Computed from the whole body (e.g. the sum of a Shopify refund's transactions).
    Derived(fn(&Value) -> Result<Option<Money>, FieldError>),
}

/// How an amount found by pointer is written (for [`read_amount`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AmountKind {
    /// Stripe's smallest unit (rescaled where Stripe and ISO 4217 differ).
    Stripe,
    /// Already in ISO 4217 minor units.
    Minor,
    /// Decimal major units.
    Major,
}

/// Where the commerce details are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommerceSpec {
    pub amount: Option<Amount>,
    pub currency: Pointers,
    /// The event is unreadable without an amount and a currency (a payment without them).
    pub required: bool,
    pub order_id: Pointers,
    pub invoice_id: Pointers,
    pub subscription_id: Pointers,
    pub plan: Pointers,
    pub status: Pointers,
}

impl CommerceSpec {
    pub const NONE: Self = Self {
        amount: None,
        currency: &[],
        required: false,
        order_id: &[],
        invoice_id: &[],
        subscription_id: &[],
        plan: &[],
        status: &[],
    };
}

/// The `activity` section: a fixed channel and action, ids by pointer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActivitySpec {
    pub channel: &'static str,
    pub action: &'static str,
    pub object_id: Pointers,
    pub campaign: Pointers,
    pub url: Pointers,
}

impl ActivitySpec {
    pub const fn new(channel: &'static str, action: &'static str) -> Self {
        Self {
            channel,
            action,
            object_id: &[],
            campaign: &[],
            url: &[],
        }
    }
}

/// The `context` section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContextSpec {
    pub page_url: Pointers,
    pub referrer: Pointers,
    pub user_agent: Pointers,
    pub ip: Pointers,
}

/// One mapped vendor event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    /// The vendor's event type (Stripe `type`, Shopify topic, HubSpot `subscriptionType`,
    /// Slack `event.type`).
    pub event: &'static str,
    /// The canonical type it becomes (a `vocab` constant).
    pub canonical: &'static str,
    /// Only events for which this holds are mapped; the others are skipped, not rejected
    /// (e.g. a Shopify checkout that was completed is not abandoned).
    pub when: Option<fn(&Value) -> bool>,
    /// Where `occurred_at` is; the first readable one wins, else the raw event's time.
    pub time: &'static [Time],
    pub person: PersonSpec,
    pub commerce: Option<CommerceSpec>,
    pub activity: Option<ActivitySpec>,
    pub context: Option<ContextSpec>,
    pub attributes: Attributes,
    /// Vendor logic that does not fit a pointer (HubSpot: the changed property into `person`).
    pub finish: Option<fn(&Value, &mut Mapped)>,
}

impl Rule {
    /// A row with nothing but its types; fill the rest with struct-update syntax.
    pub const fn new(event: &'static str, canonical: &'static str) -> Self {
        Self {
            event,
            canonical,
            when: None,
            time: &[],
            person: PersonSpec::NONE,
            commerce: None,
            activity: None,
            context: None,
            attributes: &[],
            finish: None,
        }
    }
}

/// A vendor's table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vendor {
    /// The built-in name (`WebhookReceived.vendor` for a source named after its vendor).
    pub name: &'static str,
    /// Attributes every mapped event of this vendor carries.
    pub attributes: Attributes,
    pub rules: &'static [Rule],
}

/// Why a field could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldError {
    /// Required and absent; names the pointer(s) looked at.
    Missing(String),
    /// Present but unreadable.
    Invalid { field: String, reason: String },
}

/// What a rule read from a body; the caller adds the envelope.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Mapped {
    pub occurred_at: Option<i64>,
    pub person: Option<Person>,
    pub commerce: Option<Commerce>,
    pub activity: Option<Activity>,
    pub context: Option<Context>,
    pub attributes: HashMap<String, String>,
}

impl Mapped {
    /// The person section, created empty on first use.
    pub fn person_mut(&mut self) -> &mut Person {
        self.person.get_or_insert_with(Person::default)
    }
}

/// Applies `rule` of `vendor` to `body`.
pub(crate) fn apply(vendor: &Vendor, rule: &Rule, body: &Value) -> Result<Mapped, FieldError> {
    let mut mapped = Mapped {
        occurred_at: rule
            .time
            .iter()
            .find_map(|Time(pointer, unit)| body.pointer(pointer).and_then(|v| json::time_millis(v, *unit))),
        person: person(body, &rule.person),
        ..Mapped::default()
    };
    if let Some(spec) = &rule.commerce {
        mapped.commerce = Some(commerce(body, spec)?);
    }
    mapped.activity = rule.activity.as_ref().map(|spec| Activity {
        channel: spec.channel.to_owned(),
        action: spec.action.to_owned(),
        object_id: first_text(body, spec.object_id),
        campaign: first_text(body, spec.campaign),
        url: first_text(body, spec.url),
    });
    mapped.context = rule.context.as_ref().and_then(|spec| {
        let context = Context {
            page_url: first_text(body, spec.page_url),
            referrer: first_text(body, spec.referrer),
            user_agent: first_text(body, spec.user_agent),
            ip: first_text(body, spec.ip),
        };
        (context != Context::default()).then_some(context)
    });
    for (key, pointers) in vendor.attributes.iter().chain(rule.attributes) {
        if let Some(value) = first_value(body, pointers).and_then(|(_, v)| attribute_text(v)) {
            mapped.attributes.insert((*key).to_owned(), value);
        }
    }
    if let Some(finish) = rule.finish {
        finish(body, &mut mapped);
    }
    Ok(mapped)
}

fn person(body: &Value, spec: &PersonSpec) -> Option<Person> {
    let person = Person {
        email: first_text(body, spec.email),
        first_name: first_text(body, spec.first_name),
        last_name: first_text(body, spec.last_name),
        full_name: first_text(body, spec.full_name),
        phone: first_text(body, spec.phone),
        company: first_text(body, spec.company),
        job_title: first_text(body, spec.job_title),
        user_id: first_text(body, spec.user_id),
        anonymous_id: None,
        external_ids: spec
            .external_ids
            .iter()
            .filter_map(|(key, pointers)| Some(((*key).to_owned(), first_text(body, pointers)?)))
            .collect(),
    };
    (person != Person::default()).then_some(person)
}

fn commerce(body: &Value, spec: &CommerceSpec) -> Result<Commerce, FieldError> {
    let money = match spec.amount {
        None => None,
        Some(Amount::Derived(derive)) => derive(body)?,
        Some(Amount::Stripe(pointers)) => read_amount(body, AmountKind::Stripe, pointers, spec.currency)?,
        Some(Amount::Major(pointers)) => read_amount(body, AmountKind::Major, pointers, spec.currency)?,
    };
    let currency = match &money {
        Some(m) => Some(m.currency.clone()),
        None => read_currency(body, spec.currency)?,
    };
    if spec.required && money.is_none() {
        let field = match spec.amount {
            Some(Amount::Stripe(p) | Amount::Major(p)) => describe(p),
            _ => "amount".to_owned(),
        };
        return Err(FieldError::Missing(field));
    }
    Ok(Commerce {
        amount_minor: money.map(|m| m.minor),
        currency,
        order_id: first_text(body, spec.order_id),
        invoice_id: first_text(body, spec.invoice_id),
        subscription_id: first_text(body, spec.subscription_id),
        plan: first_text(body, spec.plan),
        status: first_text(body, spec.status),
    })
}

/// The canonical currency at `pointers`, if any.
pub(crate) fn read_currency<S: AsRef<str>>(body: &Value, pointers: &[S]) -> Result<Option<String>, FieldError> {
    match first_value(body, pointers) {
        None => Ok(None),
        Some((pointer, value)) => {
            let invalid = |reason: String| FieldError::Invalid {
                field: pointer.to_owned(),
                reason,
            };
            let text = json::text(value).ok_or_else(|| invalid("not text".to_owned()))?;
            money::currency_code(&text).map(Some).map_err(invalid)
        }
    }
}

/// The amount at `amount` in the currency at `currency`, in ISO minor units. An amount without
/// a currency cannot be read, so the currency is then required.
pub(crate) fn read_amount<S: AsRef<str>>(
    body: &Value,
    kind: AmountKind,
    amount: &[S],
    currency: &[S],
) -> Result<Option<Money>, FieldError> {
    let Some((pointer, value)) = first_value(body, amount) else {
        return Ok(None);
    };
    let currency = read_currency(body, currency)?.ok_or_else(|| FieldError::Missing(describe(currency)))?;
    let invalid = |reason: String| FieldError::Invalid {
        field: pointer.to_owned(),
        reason,
    };
    let minor = match kind {
        AmountKind::Stripe | AmountKind::Minor => {
            let n = value
                .as_i64()
                .ok_or_else(|| invalid(format!("{value} is not an integer amount")))?;
            if kind == AmountKind::Stripe {
                money::stripe_to_minor(n, &currency).map_err(invalid)?
            } else {
                n
            }
        }
        AmountKind::Major => {
            let text = json::text(value).ok_or_else(|| invalid(format!("{value} is not a decimal amount")))?;
            money::major_to_minor(&text, &currency).map_err(invalid)?
        }
    };
    Ok(Some(Money { minor, currency }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VENDOR: Vendor = Vendor {
        name: "acme",
        attributes: &[("acme_id", &["/id"])],
        rules: &[],
    };

    #[test]
    fn required_commerce_names_the_missing_field() {
        let rule = Rule {
            commerce: Some(CommerceSpec {
                amount: Some(Amount::Stripe(&["/amount_received", "/amount"])),
                currency: &["/currency"],
                required: true,
                ..CommerceSpec::NONE
            }),
            ..Rule::new("x", "payment.succeeded")
        };
        assert_eq!(
            apply(&VENDOR, &rule, &json!({"currency": "usd"})),
            Err(FieldError::Missing("/amount_received or /amount".into()))
        );
        assert_eq!(
            apply(&VENDOR, &rule, &json!({"amount": 5})),
            Err(FieldError::Missing("/currency".into()))
        );
        assert!(matches!(
            apply(&VENDOR, &rule, &json!({"amount": "5", "currency": "usd"})),
            Err(FieldError::Invalid { field, .. }) if field == "/amount"
        ));
        let ok = apply(&VENDOR, &rule, &json!({"id": 7, "amount": 5, "currency": "usd"})).expect("maps");
        assert_eq!(ok.commerce.as_ref().and_then(|c| c.amount_minor), Some(5));
        assert_eq!(ok.commerce.and_then(|c| c.currency).as_deref(), Some("USD"));
        assert_eq!(ok.attributes.get("acme_id").map(String::as_str), Some("7"));
    }

    #[test]
    fn empty_sections_stay_null() {
        let rule = Rule {
            person: PersonSpec {
                email: &["/email"],
                ..PersonSpec::NONE
            },
            context: Some(ContextSpec {
                page_url: &["/url"],
                referrer: &[],
                user_agent: &[],
                ip: &[],
            }),
            ..Rule::new("x", "contact.updated")
        };
        let mapped = apply(&VENDOR, &rule, &json!({"email": ""})).expect("maps");
        assert_eq!(mapped.person, None);
        assert_eq!(mapped.context, None);
    }
}

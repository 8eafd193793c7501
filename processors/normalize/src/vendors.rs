//! The built-in vendor tables: one [`Rule`] per mapped vendor event. Adding a vendor event is
//! adding a row; field names were checked against each vendor's documentation and published
//! examples (sources in `MAPPING.md`). Pointers are absolute from the delivery body's root.
//!
//! Body shapes (see `producers/ingest/WEBHOOKS.md`): Stripe sends one Event object (the
//! resource under `/data/object`); Shopify one resource, its topic in the `X-Shopify-Topic`
//! header; HubSpot one event per record (ingest splits the delivered array); Slack the Events
//! API envelope, the event under `/event`.

use serde_json::Value;

use crate::json::{self, TimeUnit};
use crate::money;
use crate::rules::{
    ActivitySpec, Amount, Attributes, CommerceSpec, ContextSpec, FieldError, Mapped, Money, PersonSpec, Rule, Time,
    Vendor,
};
use crate::vocab::*;

/// Every built-in vendor.
pub(crate) const VENDORS: &[Vendor] = &[STRIPE, SHOPIFY, HUBSPOT, SLACK];

// ---------------------------------------------------------------------------------------------
// Stripe: https://docs.stripe.com/api/events/object, objects under /data/object.

const STRIPE_TIME: &[Time] = &[Time("/created", TimeUnit::Seconds)];
/// `customer` is an id in webhooks, an object only when expanded.
const STRIPE_CUSTOMER: Attributes = &[(
    "stripe_customer",
    &["/data/object/customer", "/data/object/customer/id"],
)];

const STRIPE_PAYMENT_INTENT_PERSON: PersonSpec = PersonSpec {
    email: &[
        "/data/object/receipt_email",
        "/data/object/last_payment_error/payment_method/billing_details/email",
    ],
    full_name: &["/data/object/last_payment_error/payment_method/billing_details/name"],
    external_ids: STRIPE_CUSTOMER,
    ..PersonSpec::NONE
};

const STRIPE_INVOICE_PERSON: PersonSpec = PersonSpec {
    email: &["/data/object/customer_email"],
    full_name: &["/data/object/customer_name"],
    phone: &["/data/object/customer_phone"],
    external_ids: STRIPE_CUSTOMER,
    ..PersonSpec::NONE
};

const STRIPE_INVOICE_COMMERCE: CommerceSpec = CommerceSpec {
    currency: &["/data/object/currency"],
    required: true,
    invoice_id: &["/data/object/id"],
    // API versions before 2025-03-31.basil: `subscription`; since: `parent.subscription_details`.
    subscription_id: &[
        "/data/object/subscription",
        "/data/object/parent/subscription_details/subscription",
    ],
    plan: &[
        "/data/object/lines/data/0/price/id",
        "/data/object/lines/data/0/plan/id",
    ],
    status: &["/data/object/status"],
    ..CommerceSpec::NONE
};

const STRIPE_SUBSCRIPTION_PERSON: PersonSpec = PersonSpec {
    external_ids: STRIPE_CUSTOMER,
    ..PersonSpec::NONE
};

const STRIPE_SUBSCRIPTION_COMMERCE: CommerceSpec = CommerceSpec {
    currency: &[
        "/data/object/currency",
        "/data/object/items/data/0/price/currency",
        "/data/object/plan/currency",
    ],
    subscription_id: &["/data/object/id"],
    plan: &["/data/object/items/data/0/price/id", "/data/object/plan/id"],
    status: &["/data/object/status"],
    ..CommerceSpec::NONE
};

const STRIPE_SUBSCRIPTION_ATTRIBUTES: Attributes = &[
    (
        "plan_nickname",
        &[
            "/data/object/items/data/0/price/nickname",
            "/data/object/plan/nickname",
            "/data/object/plan/name",
        ],
    ),
    ("trial_end", &["/data/object/trial_end"]),
    ("cancel_at_period_end", &["/data/object/cancel_at_period_end"]),
];

const STRIPE_CUSTOMER_PERSON: PersonSpec = PersonSpec {
    email: &["/data/object/email"],
    full_name: &["/data/object/name"],
    phone: &["/data/object/phone"],
    external_ids: &[("stripe_customer", &["/data/object/id"])],
    ..PersonSpec::NONE
};

pub(crate) const STRIPE: Vendor = Vendor {
    name: "stripe",
    attributes: &[("stripe_object_id", &["/data/object/id"]), ("livemode", &["/livemode"])],
    rules: &[
        // A completed Checkout is a placed purchase (payment or subscription mode); setup mode
        // only saves a payment method and is skipped.
        Rule {
            when: Some(stripe_checkout_is_purchase),
            time: STRIPE_TIME,
            person: PersonSpec {
                email: &["/data/object/customer_details/email", "/data/object/customer_email"],
                full_name: &["/data/object/customer_details/name"],
                phone: &["/data/object/customer_details/phone"],
                external_ids: STRIPE_CUSTOMER,
                ..PersonSpec::NONE
            },
            commerce: Some(CommerceSpec {
                amount: Some(Amount::Stripe(&["/data/object/amount_total"])),
                currency: &["/data/object/currency"],
                required: true,
                order_id: &["/data/object/id"],
                invoice_id: &["/data/object/invoice"],
                subscription_id: &["/data/object/subscription"],
                status: &["/data/object/payment_status"],
                ..CommerceSpec::NONE
            }),
            attributes: &[
                ("checkout_mode", &["/data/object/mode"]),
                ("client_reference_id", &["/data/object/client_reference_id"]),
                ("payment_intent", &["/data/object/payment_intent"]),
            ],
            ..Rule::new("checkout.session.completed", ORDER_CREATED)
        },
        // PaymentIntents of invoices are skipped: invoice.paid / invoice.payment_failed carry
        // the same payment with the subscription (only detectable before API 2025-03-31.basil,
        // which removed `invoice` from PaymentIntent).
        Rule {
            when: Some(stripe_not_invoiced),
            time: STRIPE_TIME,
            person: STRIPE_PAYMENT_INTENT_PERSON,
            commerce: Some(CommerceSpec {
                amount: Some(Amount::Stripe(&["/data/object/amount_received", "/data/object/amount"])),
                currency: &["/data/object/currency"],
                required: true,
                status: &["/data/object/status"],
                ..CommerceSpec::NONE
            }),
            attributes: &[("description", &["/data/object/description"])],
            ..Rule::new("payment_intent.succeeded", PAYMENT_SUCCEEDED)
        },
        Rule {
            when: Some(stripe_not_invoiced),
            time: STRIPE_TIME,
            person: STRIPE_PAYMENT_INTENT_PERSON,
            commerce: Some(CommerceSpec {
                amount: Some(Amount::Stripe(&["/data/object/amount"])),
                currency: &["/data/object/currency"],
                required: true,
                status: &["/data/object/status"],
                ..CommerceSpec::NONE
            }),
            attributes: &[
                ("description", &["/data/object/description"]),
                ("failure_code", &["/data/object/last_payment_error/code"]),
                ("decline_code", &["/data/object/last_payment_error/decline_code"]),
                ("failure_message", &["/data/object/last_payment_error/message"]),
            ],
            ..Rule::new("payment_intent.payment_failed", PAYMENT_FAILED)
        },
        Rule {
            time: STRIPE_TIME,
            person: STRIPE_INVOICE_PERSON,
            commerce: Some(CommerceSpec {
                amount: Some(Amount::Stripe(&["/data/object/amount_paid"])),
                ..STRIPE_INVOICE_COMMERCE
            }),
            attributes: &[
                ("billing_reason", &["/data/object/billing_reason"]),
                ("invoice_number", &["/data/object/number"]),
                ("hosted_invoice_url", &["/data/object/hosted_invoice_url"]),
            ],
            ..Rule::new("invoice.paid", PAYMENT_SUCCEEDED)
        },
        Rule {
            time: STRIPE_TIME,
            person: STRIPE_INVOICE_PERSON,
            commerce: Some(CommerceSpec {
                amount: Some(Amount::Stripe(&["/data/object/amount_due"])),
                ..STRIPE_INVOICE_COMMERCE
            }),
            attributes: &[
                ("billing_reason", &["/data/object/billing_reason"]),
                ("invoice_number", &["/data/object/number"]),
                ("attempt_count", &["/data/object/attempt_count"]),
                ("next_payment_attempt", &["/data/object/next_payment_attempt"]),
            ],
            ..Rule::new("invoice.payment_failed", PAYMENT_FAILED)
        },
        // `incomplete` subscriptions wait for their first payment; they start when Stripe
        // reports them active (the customer.subscription.updated row below).
        Rule {
            when: Some(stripe_subscription_live),
            time: STRIPE_TIME,
            person: STRIPE_SUBSCRIPTION_PERSON,
            commerce: Some(STRIPE_SUBSCRIPTION_COMMERCE),
            attributes: STRIPE_SUBSCRIPTION_ATTRIBUTES,
            ..Rule::new("customer.subscription.created", SUBSCRIPTION_STARTED)
        },
        Rule {
            when: Some(stripe_subscription_activated),
            time: STRIPE_TIME,
            person: STRIPE_SUBSCRIPTION_PERSON,
            commerce: Some(STRIPE_SUBSCRIPTION_COMMERCE),
            attributes: STRIPE_SUBSCRIPTION_ATTRIBUTES,
            ..Rule::new("customer.subscription.updated", SUBSCRIPTION_STARTED)
        },
        Rule {
            time: STRIPE_TIME,
            person: STRIPE_SUBSCRIPTION_PERSON,
            commerce: Some(STRIPE_SUBSCRIPTION_COMMERCE),
            attributes: &[
                ("cancellation_reason", &["/data/object/cancellation_details/reason"]),
                ("cancellation_feedback", &["/data/object/cancellation_details/feedback"]),
                ("canceled_at", &["/data/object/canceled_at"]),
                ("ended_at", &["/data/object/ended_at"]),
            ],
            ..Rule::new("customer.subscription.deleted", SUBSCRIPTION_CANCELLED)
        },
        // `amount_refunded` is the charge's refunded total so far (several partial refunds
        // each send charge.refunded with the running total).
        Rule {
            time: STRIPE_TIME,
            person: PersonSpec {
                email: &["/data/object/billing_details/email", "/data/object/receipt_email"],
                full_name: &["/data/object/billing_details/name"],
                phone: &["/data/object/billing_details/phone"],
                external_ids: STRIPE_CUSTOMER,
                ..PersonSpec::NONE
            },
            commerce: Some(CommerceSpec {
                amount: Some(Amount::Stripe(&["/data/object/amount_refunded"])),
                currency: &["/data/object/currency"],
                required: true,
                invoice_id: &["/data/object/invoice"],
                ..CommerceSpec::NONE
            }),
            attributes: &[
                ("payment_intent", &["/data/object/payment_intent"]),
                ("fully_refunded", &["/data/object/refunded"]),
            ],
            ..Rule::new("charge.refunded", REFUND_ISSUED)
        },
        Rule {
            time: STRIPE_TIME,
            person: STRIPE_CUSTOMER_PERSON,
            activity: Some(ActivitySpec {
                object_id: &["/data/object/id"],
                ..ActivitySpec::new("stripe", "created")
            }),
            ..Rule::new("customer.created", CONTACT_UPDATED)
        },
        Rule {
            time: STRIPE_TIME,
            person: STRIPE_CUSTOMER_PERSON,
            activity: Some(ActivitySpec {
                object_id: &["/data/object/id"],
                ..ActivitySpec::new("stripe", "updated")
            }),
            ..Rule::new("customer.updated", CONTACT_UPDATED)
        },
    ],
};

fn str_at<'a>(body: &'a Value, pointer: &str) -> Option<&'a str> {
    body.pointer(pointer).and_then(Value::as_str)
}

fn present(body: &Value, pointer: &str) -> bool {
    body.pointer(pointer).and_then(json::text).is_some()
}

fn stripe_checkout_is_purchase(body: &Value) -> bool {
    str_at(body, "/data/object/mode") != Some("setup")
}

fn stripe_not_invoiced(body: &Value) -> bool {
    !present(body, "/data/object/invoice") && body.pointer("/data/object/invoice").is_none_or(|v| !v.is_object())
}

fn stripe_subscription_live(body: &Value) -> bool {
    !matches!(
        str_at(body, "/data/object/status"),
        Some("incomplete" | "incomplete_expired")
    )
}

/// An `incomplete` subscription whose first payment went through.
fn stripe_subscription_activated(body: &Value) -> bool {
    str_at(body, "/data/previous_attributes/status") == Some("incomplete")
        && matches!(str_at(body, "/data/object/status"), Some("active" | "trialing"))
}

// ---------------------------------------------------------------------------------------------
// Shopify: https://shopify.dev/docs/api/webhooks, one resource per delivery.

const SHOPIFY_ORDER_PERSON: PersonSpec = PersonSpec {
    email: &["/email", "/contact_email", "/customer/email"],
    first_name: &["/customer/first_name", "/billing_address/first_name"],
    last_name: &["/customer/last_name", "/billing_address/last_name"],
    phone: &["/phone", "/customer/phone", "/billing_address/phone"],
    company: &["/billing_address/company", "/customer/default_address/company"],
    external_ids: &[("shopify_customer", &["/customer/id"])],
    ..PersonSpec::NONE
};

/// `total_price` is in the shop currency `currency` (`presentment_currency` is the buyer's).
const SHOPIFY_ORDER_COMMERCE: CommerceSpec = CommerceSpec {
    amount: Some(Amount::Major(&["/total_price"])),
    currency: &["/currency"],
    required: true,
    order_id: &["/id"],
    status: &["/financial_status"],
    ..CommerceSpec::NONE
};

const SHOPIFY_ORDER_CONTEXT: ContextSpec = ContextSpec {
    page_url: &[],
    referrer: &["/referring_site"],
    user_agent: &["/client_details/user_agent"],
    ip: &["/browser_ip", "/client_details/browser_ip"],
};

const SHOPIFY_ORDER_ATTRIBUTES: Attributes = &[
    ("order_name", &["/name"]),
    ("order_number", &["/order_number"]),
    ("source_name", &["/source_name"]),
    ("landing_site", &["/landing_site"]),
    ("buyer_accepts_marketing", &["/buyer_accepts_marketing"]),
];

const SHOPIFY_CHECKOUT: Rule = Rule {
    when: Some(shopify_open_checkout_with_contact),
    time: &[
        Time("/updated_at", TimeUnit::Rfc3339),
        Time("/created_at", TimeUnit::Rfc3339),
    ],
    person: PersonSpec {
        email: &["/email", "/customer/email"],
        first_name: &[
            "/customer/first_name",
            "/billing_address/first_name",
            "/shipping_address/first_name",
        ],
        last_name: &[
            "/customer/last_name",
            "/billing_address/last_name",
            "/shipping_address/last_name",
        ],
        phone: &[
            "/phone",
            "/customer/phone",
            "/billing_address/phone",
            "/shipping_address/phone",
        ],
        company: &["/billing_address/company", "/shipping_address/company"],
        external_ids: &[("shopify_customer", &["/customer/id"])],
        ..PersonSpec::NONE
    },
    commerce: Some(CommerceSpec {
        amount: Some(Amount::Major(&["/total_price"])),
        currency: &["/currency", "/presentment_currency"],
        required: true,
        ..CommerceSpec::NONE
    }),
    attributes: &[
        ("checkout_id", &["/id"]),
        ("checkout_token", &["/token"]),
        ("cart_token", &["/cart_token"]),
        ("recovery_url", &["/abandoned_checkout_url"]),
        ("buyer_accepts_marketing", &["/buyer_accepts_marketing"]),
    ],
    ..Rule::new("checkouts/create", CART_ABANDONED)
};

const SHOPIFY_CUSTOMER: Rule = Rule {
    person: PersonSpec {
        email: &["/email"],
        first_name: &["/first_name"],
        last_name: &["/last_name"],
        phone: &["/phone", "/default_address/phone"],
        company: &["/default_address/company"],
        external_ids: &[("shopify_customer", &["/id"])],
        ..PersonSpec::NONE
    },
    attributes: &[
        ("email_marketing_state", &["/email_marketing_consent/state"]),
        ("accepts_marketing", &["/accepts_marketing"]),
        ("customer_state", &["/state"]),
        ("verified_email", &["/verified_email"]),
        ("tags", &["/tags"]),
    ],
    ..Rule::new("customers/create", CONTACT_UPDATED)
};

pub(crate) const SHOPIFY: Vendor = Vendor {
    name: "shopify",
    attributes: &[],
    rules: &[
        Rule {
            time: &[Time("/created_at", TimeUnit::Rfc3339)],
            person: SHOPIFY_ORDER_PERSON,
            commerce: Some(SHOPIFY_ORDER_COMMERCE),
            context: Some(SHOPIFY_ORDER_CONTEXT),
            attributes: SHOPIFY_ORDER_ATTRIBUTES,
            ..Rule::new("orders/create", ORDER_CREATED)
        },
        Rule {
            time: &[
                Time("/updated_at", TimeUnit::Rfc3339),
                Time("/created_at", TimeUnit::Rfc3339),
            ],
            person: SHOPIFY_ORDER_PERSON,
            commerce: Some(SHOPIFY_ORDER_COMMERCE),
            context: Some(SHOPIFY_ORDER_CONTEXT),
            attributes: SHOPIFY_ORDER_ATTRIBUTES,
            ..Rule::new("orders/paid", PAYMENT_SUCCEEDED)
        },
        // Shopify has no "abandoned" webhook: a checkout is abandoned once the buyer gave
        // contact details and has not completed it. Open checkouts with contact details map to
        // cart.abandoned (one per delivery; `checkout_token` groups them); completed ones are
        // skipped, orders/create covers them.
        SHOPIFY_CHECKOUT,
        Rule {
            event: "checkouts/update",
            ..SHOPIFY_CHECKOUT
        },
        Rule {
            time: &[Time("/created_at", TimeUnit::Rfc3339)],
            activity: Some(ActivitySpec {
                object_id: &["/id"],
                ..ActivitySpec::new("shopify", "created")
            }),
            ..SHOPIFY_CUSTOMER
        },
        Rule {
            event: "customers/update",
            time: &[
                Time("/updated_at", TimeUnit::Rfc3339),
                Time("/created_at", TimeUnit::Rfc3339),
            ],
            activity: Some(ActivitySpec {
                object_id: &["/id"],
                ..ActivitySpec::new("shopify", "updated")
            }),
            ..SHOPIFY_CUSTOMER
        },
        // A refund names its order, not the customer: no person, join on commerce.order_id.
        Rule {
            time: &[
                Time("/processed_at", TimeUnit::Rfc3339),
                Time("/created_at", TimeUnit::Rfc3339),
            ],
            commerce: Some(CommerceSpec {
                amount: Some(Amount::Derived(shopify_refund_total)),
                order_id: &["/order_id"],
                ..CommerceSpec::NONE
            }),
            attributes: &[
                ("refund_id", &["/id"]),
                ("refund_note", &["/note"]),
                ("restock", &["/restock"]),
            ],
            ..Rule::new("refunds/create", REFUND_ISSUED)
        },
        // Mandatory privacy-law compliance topic: the store asks to erase a customer's data.
        Rule {
            person: PersonSpec {
                email: &["/customer/email"],
                phone: &["/customer/phone"],
                external_ids: &[("shopify_customer", &["/customer/id"])],
                ..PersonSpec::NONE
            },
            attributes: &[
                ("shop_domain", &["/shop_domain"]),
                ("orders_to_redact", &["/orders_to_redact"]),
            ],
            ..Rule::new("customers/redact", LEAD_ERASURE_REQUESTED)
        },
    ],
};

fn shopify_open_checkout_with_contact(body: &Value) -> bool {
    let completed = present(body, "/completed_at");
    let contact = ["/email", "/phone", "/customer/email", "/customer/phone"]
        .iter()
        .any(|p| present(body, p));
    !completed && contact
}

/// The money a Shopify refund sent back: its successful `refund` transactions, summed (they
/// share the order's currency). A refund without any (restock only) has no amount.
fn shopify_refund_total(body: &Value) -> Result<Option<Money>, FieldError> {
    let Some(transactions) = body.pointer("/transactions").and_then(Value::as_array) else {
        return Ok(None);
    };
    let mut total: Option<Money> = None;
    for (i, t) in transactions.iter().enumerate() {
        let kind = t.get("kind").and_then(Value::as_str);
        let status = t.get("status").and_then(Value::as_str);
        if kind != Some("refund") || status.is_some_and(|s| s != "success") {
            continue;
        }
        let field = |name: &str| format!("/transactions/{i}/{name}");
        let invalid = |name: &str, reason: String| FieldError::Invalid {
            field: field(name),
            reason,
        };
        let currency = t
            .get("currency")
            .and_then(json::text)
            .ok_or_else(|| FieldError::Missing(field("currency")))?;
        let currency = money::currency_code(&currency).map_err(|r| invalid("currency", r))?;
        let amount = t
            .get("amount")
            .and_then(json::text)
            .ok_or_else(|| FieldError::Missing(field("amount")))?;
        let minor = money::major_to_minor(&amount, &currency).map_err(|r| invalid("amount", r))?;
        total = Some(match total {
            None => Money { minor, currency },
            Some(sum) if sum.currency == currency => Money {
                minor: sum
                    .minor
                    .checked_add(minor)
                    .ok_or_else(|| invalid("amount", "the total is too large".into()))?,
                currency,
            },
            Some(sum) => {
                return Err(invalid(
                    "currency",
                    format!("{currency} differs from the refund's {}", sum.currency),
                ));
            }
        });
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// HubSpot: https://developers.hubspot.com/docs/api/webhooks, one event object per record.
// Payloads identify the CRM object by `objectId` only: no e-mail unless the changed property is
// the e-mail itself.

const HUBSPOT_TIME: &[Time] = &[Time("/occurredAt", TimeUnit::Milliseconds)];
const HUBSPOT_CONTACT: PersonSpec = PersonSpec {
    external_ids: &[("hubspot_contact", &["/objectId"])],
    ..PersonSpec::NONE
};
const HUBSPOT_PROPERTY: Attributes = &[
    ("property_name", &["/propertyName"]),
    ("property_value", &["/propertyValue"]),
];

const fn hubspot_activity(action: &'static str) -> Option<ActivitySpec> {
    Some(ActivitySpec {
        object_id: &["/objectId"],
        ..ActivitySpec::new("hubspot", action)
    })
}

pub(crate) const HUBSPOT: Vendor = Vendor {
    name: "hubspot",
    attributes: &[("portal_id", &["/portalId"]), ("change_source", &["/changeSource"])],
    rules: &[
        Rule {
            time: HUBSPOT_TIME,
            person: HUBSPOT_CONTACT,
            activity: hubspot_activity("created"),
            ..Rule::new("contact.creation", CONTACT_UPDATED)
        },
        Rule {
            time: HUBSPOT_TIME,
            person: HUBSPOT_CONTACT,
            activity: hubspot_activity("property_changed"),
            attributes: HUBSPOT_PROPERTY,
            finish: Some(hubspot_contact_property),
            ..Rule::new("contact.propertyChange", CONTACT_UPDATED)
        },
        // A plain deletion can be undone for 90 days and is how CRM users clean up duplicates:
        // not an erasure request. HubSpot sends contact.privacyDeletion (as well) for those.
        Rule {
            time: HUBSPOT_TIME,
            person: HUBSPOT_CONTACT,
            activity: hubspot_activity("deleted"),
            ..Rule::new("contact.deletion", CONTACT_UPDATED)
        },
        Rule {
            time: HUBSPOT_TIME,
            person: HUBSPOT_CONTACT,
            ..Rule::new("contact.privacyDeletion", LEAD_ERASURE_REQUESTED)
        },
        Rule {
            time: HUBSPOT_TIME,
            activity: hubspot_activity("created"),
            attributes: &[("hubspot_deal", &["/objectId"])],
            ..Rule::new("deal.creation", DEAL_CREATED)
        },
        Rule {
            time: HUBSPOT_TIME,
            activity: hubspot_activity("property_changed"),
            attributes: &[
                ("hubspot_deal", &["/objectId"]),
                ("property_name", &["/propertyName"]),
                ("property_value", &["/propertyValue"]),
            ],
            ..Rule::new("deal.propertyChange", DEAL_UPDATED)
        },
    ],
};

/// A changed contact property that is a person field (HubSpot's internal property names).
fn hubspot_contact_property(body: &Value, mapped: &mut Mapped) {
    let (Some(name), Some(value)) = (
        body.get("propertyName").and_then(Value::as_str),
        body.get("propertyValue").and_then(json::text),
    ) else {
        return;
    };
    let person = mapped.person_mut();
    let slot = match name {
        "email" => &mut person.email,
        "firstname" => &mut person.first_name,
        "lastname" => &mut person.last_name,
        "phone" | "mobilephone" => &mut person.phone,
        "company" => &mut person.company,
        "jobtitle" => &mut person.job_title,
        _ => return,
    };
    *slot = Some(value);
}

// ---------------------------------------------------------------------------------------------
// Slack: Events API envelope (https://api.slack.com/types/event), the event under /event.

const SLACK_TIME: &[Time] = &[Time("/event_time", TimeUnit::Seconds)];
const SLACK_AUTHOR: PersonSpec = PersonSpec {
    external_ids: &[("slack_user", &["/event/user"])],
    ..PersonSpec::NONE
};
const SLACK_MESSAGE_ATTRIBUTES: Attributes = &[
    ("slack_channel", &["/event/channel"]),
    ("channel_type", &["/event/channel_type"]),
    ("message_ts", &["/event/ts"]),
    ("thread_ts", &["/event/thread_ts"]),
];

pub(crate) const SLACK: Vendor = Vendor {
    name: "slack",
    attributes: &[("slack_team", &["/team_id"])],
    rules: &[
        // `profile.email` is present only with the users:read.email scope.
        Rule {
            when: Some(slack_person_joined),
            time: SLACK_TIME,
            person: PersonSpec {
                email: &["/event/user/profile/email"],
                first_name: &["/event/user/profile/first_name"],
                last_name: &["/event/user/profile/last_name"],
                full_name: &["/event/user/profile/real_name", "/event/user/real_name"],
                phone: &["/event/user/profile/phone"],
                job_title: &["/event/user/profile/title"],
                external_ids: &[("slack_user", &["/event/user/id"])],
                ..PersonSpec::NONE
            },
            activity: Some(ActivitySpec {
                object_id: &["/event/user/id"],
                ..ActivitySpec::new("slack", "team_join")
            }),
            ..Rule::new("team_join", COMMUNITY_JOINED)
        },
        // Message text is not copied: it is content, not a marketing signal.
        Rule {
            when: Some(slack_person_posted),
            time: SLACK_TIME,
            person: SLACK_AUTHOR,
            activity: Some(ActivitySpec {
                object_id: &["/event/channel"],
                ..ActivitySpec::new("slack", "message")
            }),
            attributes: SLACK_MESSAGE_ATTRIBUTES,
            ..Rule::new("message", COMMUNITY_ENGAGED)
        },
        Rule {
            when: Some(slack_person_posted),
            time: SLACK_TIME,
            person: SLACK_AUTHOR,
            activity: Some(ActivitySpec {
                object_id: &["/event/channel"],
                ..ActivitySpec::new("slack", "app_mention")
            }),
            attributes: SLACK_MESSAGE_ATTRIBUTES,
            ..Rule::new("app_mention", COMMUNITY_ENGAGED)
        },
    ],
};

fn slack_person_joined(body: &Value) -> bool {
    body.pointer("/event/user/is_bot").and_then(Value::as_bool) != Some(true)
}

/// A message written by a person: it has a `user`, no `bot_id`, and either no subtype or one
/// of the subtypes people produce (edits, deletions, joins and bot posts are not engagement).
fn slack_person_posted(body: &Value) -> bool {
    str_at(body, "/event/user").is_some()
        && body.pointer("/event/bot_id").is_none_or(Value::is_null)
        && matches!(
            str_at(body, "/event/subtype"),
            None | Some("thread_broadcast" | "file_share" | "me_message")
        )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn rows_are_unique_and_canonical() {
        for vendor in VENDORS {
            let mut seen = HashSet::new();
            for rule in vendor.rules {
                assert!(seen.insert(rule.event), "{} {} mapped twice", vendor.name, rule.event);
                assert!(
                    is_canonical(rule.canonical),
                    "{} {} -> {}",
                    vendor.name,
                    rule.event,
                    rule.canonical
                );
            }
        }
    }
}

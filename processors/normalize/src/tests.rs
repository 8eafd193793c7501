//! End-to-end tests of the three entry points with payloads modelled on the vendors' published
//! examples (Stripe's Stripe-CLI event fixtures, Shopify's webhook sample payloads, HubSpot's
//! documented example body, Slack's Events API examples), trimmed to the fields that matter.

use std::collections::HashMap;

use nectar_core::events::{AppEvent, Consent, Envelope, Event, FormSubmitted, WebhookReceived};
use nectar_core::ids;
use serde_json::json;

use crate::vocab::*;
use crate::{NormalizeConfig, Normalizer, Reject};

const WS: &str = "acme";
const RECEIVED: i64 = 1_800_000_000_000;

fn envelope(id: &str, event_type: &str, source: &str) -> Envelope {
    Envelope {
        event_id: id.into(),
        event_type: event_type.into(),
        occurred_at: RECEIVED,
        received_at: RECEIVED,
        source: source.into(),
        workspace_id: WS.into(),
        lead_key: None,
        trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        consent: None,
    }
}

fn hook(vendor: &str, event_type: Option<&str>, body: serde_json::Value) -> WebhookReceived {
    WebhookReceived {
        envelope: envelope("raw-hook-1", "webhook.received", &format!("webhook:{vendor}")),
        vendor: vendor.into(),
        vendor_event_type: event_type.map(str::to_owned),
        vendor_event_id: Some("evt_1".into()),
        verified: true,
        content_type: Some("application/json".into()),
        body: body.to_string().into_bytes(),
        headers: HashMap::new(),
    }
}

fn normalizer() -> Normalizer {
    Normalizer::new(&NormalizeConfig::default()).expect("default config is valid")
}

fn config(value: serde_json::Value) -> Normalizer {
    Normalizer::new(&serde_json::from_value::<NormalizeConfig>(value).expect("config parses")).expect("config is valid")
}

/// The single event a raw event must map to.
fn one(result: Result<Vec<Event>, Reject>) -> Event {
    let mut events = result.expect("normalizes");
    assert_eq!(events.len(), 1, "{events:#?}");
    events.remove(0)
}

fn skipped(result: Result<Vec<Event>, Reject>) {
    assert_eq!(result.expect("skipped, not rejected"), Vec::<Event>::new());
}

fn attr<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    event.attributes.get(key).map(String::as_str)
}

fn email(event: &Event) -> Option<&str> {
    event.person.as_ref().and_then(|p| p.email.as_deref())
}

fn external<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    event
        .person
        .as_ref()
        .and_then(|p| p.external_ids.get(key))
        .map(String::as_str)
}

fn amount(event: &Event) -> (Option<i64>, Option<&str>) {
    let c = event.commerce.as_ref().expect("commerce");
    (c.amount_minor, c.currency.as_deref())
}

fn key_of(email: &str) -> Option<String> {
    ids::lead_key(WS, Some(email), None)
}

// --- Stripe -----------------------------------------------------------------------------------

fn stripe(event_type: &str, object: serde_json::Value) -> WebhookReceived {
    stripe_with(event_type, object, json!(null))
}

fn stripe_with(event_type: &str, object: serde_json::Value, previous: serde_json::Value) -> WebhookReceived {
    let mut data = json!({ "object": object });
    if !previous.is_null() {
        data["previous_attributes"] = previous;
    }
    hook(
        "stripe",
        Some(event_type),
        json!({
            "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
            "object": "event",
            "api_version": "2022-11-15",
            "created": 1_686_089_970,
            "data": data,
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null },
            "type": event_type
        }),
    )
}

#[test]
fn stripe_checkout_session_completed_is_an_order() {
    let raw = stripe(
        "checkout.session.completed",
        json!({
            "id": "cs_test_a1b2", "object": "checkout.session",
            "amount_subtotal": 25000, "amount_total": 25000, "currency": "usd",
            "customer": "cus_NffrFeUfNV2Hib",
            "customer_details": { "email": "Jenny.Rosen@Example.com", "name": "Jenny Rosen", "phone": null, "tax_exempt": "none", "tax_ids": [] },
            "customer_email": null, "client_reference_id": "cart_42", "invoice": null,
            "mode": "payment", "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "payment_status": "paid",
            "status": "complete", "subscription": null
        }),
    );
    let event = one(normalizer().webhook(&raw));
    assert_eq!(event.envelope.event_type, ORDER_CREATED);
    assert_eq!(event.envelope.event_id, "raw-hook-1", "one output keeps the raw id");
    assert_eq!(
        event.envelope.occurred_at, 1_686_089_970_000,
        "Stripe `created` seconds"
    );
    assert_eq!(event.envelope.received_at, RECEIVED);
    assert_eq!(event.envelope.source, "webhook:stripe");
    assert_eq!(event.envelope.trace_parent, raw.envelope.trace_parent);
    assert_eq!(
        event.envelope.lead_key,
        key_of("jenny.rosen@example.com"),
        "webhooks get a lead key"
    );
    assert_eq!(email(&event), Some("Jenny.Rosen@Example.com"));
    assert_eq!(
        event.person.as_ref().and_then(|p| p.full_name.as_deref()),
        Some("Jenny Rosen")
    );
    assert_eq!(external(&event, "stripe_customer"), Some("cus_NffrFeUfNV2Hib"));
    let commerce = event.commerce.as_ref().expect("commerce");
    assert_eq!(
        (commerce.amount_minor, commerce.currency.as_deref()),
        (Some(25000), Some("USD"))
    );
    assert_eq!(commerce.order_id.as_deref(), Some("cs_test_a1b2"));
    assert_eq!(commerce.status.as_deref(), Some("paid"));
    assert_eq!(attr(&event, "client_reference_id"), Some("cart_42"));
    assert_eq!(attr(&event, "vendor"), Some("stripe"));
    assert_eq!(attr(&event, "vendor_event_type"), Some("checkout.session.completed"));
    assert_eq!(attr(&event, "vendor_event_id"), Some("evt_1"));
    assert_eq!(attr(&event, "verified"), Some("true"));
    assert_eq!(attr(&event, "livemode"), Some("false"));
}

#[test]
fn stripe_checkout_in_setup_mode_is_skipped() {
    let raw = stripe(
        "checkout.session.completed",
        json!({"id": "cs_test_setup", "mode": "setup", "amount_total": null, "currency": null, "customer": "cus_1"}),
    );
    skipped(normalizer().webhook(&raw));
}

#[test]
fn stripe_payment_intent_succeeded() {
    let raw = stripe(
        "payment_intent.succeeded",
        json!({
            "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "object": "payment_intent",
            "amount": 2000, "amount_received": 2000, "currency": "usd",
            "customer": "cus_NffrFeUfNV2Hib", "description": "Pro plan", "invoice": null,
            "receipt_email": "jenny.rosen@example.com", "status": "succeeded", "created": 1_680_800_504
        }),
    );
    let event = one(normalizer().webhook(&raw));
    assert_eq!(event.envelope.event_type, PAYMENT_SUCCEEDED);
    assert_eq!(amount(&event), (Some(2000), Some("USD")));
    assert_eq!(
        event.commerce.as_ref().and_then(|c| c.status.as_deref()),
        Some("succeeded")
    );
    assert_eq!(event.envelope.lead_key, key_of("jenny.rosen@example.com"));
    assert_eq!(attr(&event, "stripe_object_id"), Some("pi_3MtwBwLkdIwHu7ix28a3tqPa"));
}

#[test]
fn stripe_payment_intents_of_invoices_are_left_to_the_invoice_events() {
    let raw = stripe(
        "payment_intent.succeeded",
        json!({"id": "pi_1", "amount": 2000, "amount_received": 2000, "currency": "usd", "invoice": "in_1"}),
    );
    skipped(normalizer().webhook(&raw));
}

#[test]
fn stripe_payment_intent_payment_failed() {
    let raw = stripe(
        "payment_intent.payment_failed",
        json!({
            "id": "pi_000000000000000000000000", "object": "payment_intent",
            "amount": 2000, "amount_received": 0, "currency": "usd", "customer": null, "invoice": null,
            "last_payment_error": {
                "charge": "ch_000000000000000000000000", "code": "card_declined", "decline_code": "generic_decline",
                "message": "Your card was declined.",
                "payment_method": { "id": "pm_1", "object": "payment_method",
                    "billing_details": { "email": "ada@example.com", "name": "Ada Lovelace", "phone": null } },
                "type": "card_error"
            },
            "receipt_email": null, "status": "requires_payment_method"
        }),
    );
    let event = one(normalizer().webhook(&raw));
    assert_eq!(event.envelope.event_type, PAYMENT_FAILED);
    assert_eq!(amount(&event), (Some(2000), Some("USD")));
    assert_eq!(email(&event), Some("ada@example.com"));
    assert_eq!(attr(&event, "failure_code"), Some("card_declined"));
    assert_eq!(attr(&event, "decline_code"), Some("generic_decline"));
}

#[test]
fn stripe_invoice_paid_in_a_zero_decimal_currency() {
    let raw = stripe(
        "invoice.paid",
        json!({
            "id": "in_1MtHbELkdIwHu7ixl4OzzPMv", "object": "invoice",
            "amount_due": 5000, "amount_paid": 5000, "currency": "jpy",
            "billing_reason": "subscription_cycle", "customer": "cus_NeZwdNtLEOXuvB",
            "customer_email": "jennyrosen@example.com", "customer_name": "Jenny Rosen", "customer_phone": null,
            "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_1", "number": "EE1DF78D-0001",
            "lines": { "object": "list", "data": [ { "id": "il_1", "amount": 5000, "currency": "jpy",
                "price": { "id": "price_1MtHbELkdIwHu7ix", "object": "price", "nickname": "Pro", "unit_amount": 5000 } } ] },
            "status": "paid", "subscription": "sub_1MowQVLkdIwHu7ixeRlqHVzs"
        }),
    );
    let event = one(normalizer().webhook(&raw));
    assert_eq!(event.envelope.event_type, PAYMENT_SUCCEEDED);
    // JPY has no minor unit: Stripe's 5000 is ¥5000, and so is the canonical amount.
    assert_eq!(amount(&event), (Some(5000), Some("JPY")));
    let commerce = event.commerce.as_ref().expect("commerce");
    assert_eq!(commerce.invoice_id.as_deref(), Some("in_1MtHbELkdIwHu7ixl4OzzPMv"));
    assert_eq!(
        commerce.subscription_id.as_deref(),
        Some("sub_1MowQVLkdIwHu7ixeRlqHVzs")
    );
    assert_eq!(commerce.plan.as_deref(), Some("price_1MtHbELkdIwHu7ix"));
    assert_eq!(attr(&event, "billing_reason"), Some("subscription_cycle"));
    assert_eq!(event.envelope.lead_key, key_of("jennyrosen@example.com"));
}

#[test]
fn stripe_invoice_subscription_moved_to_parent_in_basil() {
    let raw = stripe(
        "invoice.payment_failed",
        json!({
            "id": "in_2", "object": "invoice", "amount_due": 1999, "amount_paid": 0, "currency": "eur",
            "attempt_count": 2, "customer": "cus_1", "customer_email": "ada@example.com", "status": "open",
            "parent": { "type": "subscription_details", "subscription_details": { "subscription": "sub_9" } }
        }),
    );
    let event = one(normalizer().webhook(&raw));
    assert_eq!(event.envelope.event_type, PAYMENT_FAILED);
    assert_eq!(amount(&event), (Some(1999), Some("EUR")));
    assert_eq!(
        event.commerce.as_ref().and_then(|c| c.subscription_id.as_deref()),
        Some("sub_9")
    );
    assert_eq!(attr(&event, "attempt_count"), Some("2"));
}

fn subscription(status: &str) -> serde_json::Value {
    json!({
        "id": "sub_1MowQVLkdIwHu7ixeRlqHVzs", "object": "subscription",
        "cancel_at_period_end": false, "currency": "usd", "customer": "cus_Na6dX7aXxi11N4",
        "cancellation_details": { "comment": null, "feedback": "too_expensive", "reason": "cancellation_requested" },
        "items": { "object": "list", "data": [ { "id": "si_1", "object": "subscription_item",
            "price": { "id": "price_1MowQULkdIwHu7ixraBm864M", "object": "price", "currency": "usd", "nickname": "Pro monthly", "unit_amount": 1000 },
            "quantity": 1 } ] },
        "status": status
    })
}

#[test]
fn stripe_subscription_lifecycle() {
    let n = normalizer();
    let started = one(n.webhook(&stripe("customer.subscription.created", subscription("active"))));
    assert_eq!(started.envelope.event_type, SUBSCRIPTION_STARTED);
    let commerce = started.commerce.as_ref().expect("commerce");
    assert_eq!(
        commerce.subscription_id.as_deref(),
        Some("sub_1MowQVLkdIwHu7ixeRlqHVzs")
    );
    assert_eq!(commerce.plan.as_deref(), Some("price_1MowQULkdIwHu7ixraBm864M"));
    assert_eq!(
        (commerce.amount_minor, commerce.currency.as_deref()),
        (None, Some("USD"))
    );
    assert_eq!(attr(&started, "plan_nickname"), Some("Pro monthly"));
    assert_eq!(external(&started, "stripe_customer"), Some("cus_Na6dX7aXxi11N4"));
    assert_eq!(started.envelope.lead_key, None, "a customer id alone names no lead");

    // Waiting for its first payment: not started yet...
    skipped(n.webhook(&stripe("customer.subscription.created", subscription("incomplete"))));
    // ...until Stripe reports it active.
    let activated = stripe_with(
        "customer.subscription.updated",
        subscription("active"),
        json!({"status": "incomplete"}),
    );
    assert_eq!(one(n.webhook(&activated)).envelope.event_type, SUBSCRIPTION_STARTED);
    let renewed = stripe_with(
        "customer.subscription.updated",
        subscription("active"),
        json!({"items": {}}),
    );
    skipped(n.webhook(&renewed));

    let ended = one(n.webhook(&stripe("customer.subscription.deleted", subscription("canceled"))));
    assert_eq!(ended.envelope.event_type, SUBSCRIPTION_CANCELLED);
    assert_eq!(attr(&ended, "cancellation_reason"), Some("cancellation_requested"));
    assert_eq!(attr(&ended, "cancellation_feedback"), Some("too_expensive"));
}

#[test]
fn stripe_charge_refunded_in_isk_uses_iso_minor_units() {
    let raw = stripe(
        "charge.refunded",
        json!({
            "id": "ch_3MmlLrLkdIwHu7ix0snN0B15", "object": "charge", "amount": 100_000, "amount_refunded": 50_000,
            "billing_details": { "email": "sigga@example.is", "name": "Sigríður", "phone": null },
            "currency": "isk", "customer": "cus_1", "invoice": null,
            "payment_intent": "pi_1", "receipt_email": null, "refunded": false, "status": "succeeded"
        }),
    );
    let event = one(normalizer().webhook(&raw));
    assert_eq!(event.envelope.event_type, REFUND_ISSUED);
    // Stripe keeps ISK two-decimal (50000 = 500 kr.); ISO 4217 ISK has no minor unit.
    assert_eq!(amount(&event), (Some(500), Some("ISK")));
    assert_eq!(attr(&event, "fully_refunded"), Some("false"));
    assert_eq!(email(&event), Some("sigga@example.is"));
}

#[test]
fn stripe_customers_are_contact_updates() {
    let n = normalizer();
    let customer = json!({"id": "cus_NffrFeUfNV2Hib", "object": "customer", "email": "jennyrosen@example.com", "name": "Jenny Rosen", "phone": "+15555550123"});
    for (t, action) in [("customer.created", "created"), ("customer.updated", "updated")] {
        let event = one(n.webhook(&stripe(t, customer.clone())));
        assert_eq!(event.envelope.event_type, CONTACT_UPDATED);
        assert_eq!(
            event.activity.as_ref().map(|a| (a.channel.as_str(), a.action.as_str())),
            Some(("stripe", action))
        );
        assert_eq!(external(&event, "stripe_customer"), Some("cus_NffrFeUfNV2Hib"));
        assert_eq!(
            event.person.as_ref().and_then(|p| p.phone.as_deref()),
            Some("+15555550123")
        );
        assert_eq!(event.envelope.lead_key, key_of("jennyrosen@example.com"));
        assert_eq!(event.commerce, None);
    }
}

#[test]
fn unmapped_vendor_types_are_skipped_not_rejected() {
    let n = normalizer();
    skipped(n.webhook(&stripe(
        "balance.available",
        json!({"object": "balance", "available": []}),
    )));
    // Even with a body that would not parse: nobody claimed a mapped type.
    let mut raw = hook("stripe", Some("balance.available"), json!(null));
    raw.body = b"not json".to_vec();
    skipped(n.webhook(&raw));
    // No type at all (e.g. a form-encoded Slack slash command).
    skipped(n.webhook(&hook("slack", None, json!({"command": "/nectar"}))));
    // A source nobody configured.
    skipped(n.webhook(&hook("acme", Some("order.created"), json!({"id": 1}))));
}

#[test]
fn a_payment_without_an_amount_is_rejected_naming_vendor_type_and_field() {
    let raw = stripe(
        "payment_intent.succeeded",
        json!({"id": "pi_1", "currency": "usd", "invoice": null}),
    );
    let reject = normalizer().webhook(&raw).unwrap_err();
    assert_eq!(
        reject,
        Reject::MissingField {
            vendor: "stripe".into(),
            event_type: "payment_intent.succeeded".into(),
            field: "/data/object/amount_received or /data/object/amount".into(),
        }
    );
    assert_eq!(
        reject.to_string(),
        "stripe payment_intent.succeeded: required field `/data/object/amount_received or /data/object/amount` is missing"
    );

    let raw = stripe(
        "invoice.paid",
        json!({"id": "in_1", "amount_paid": 100, "currency": "dollars"}),
    );
    let reject = normalizer().webhook(&raw).unwrap_err().to_string();
    assert!(
        reject.starts_with("stripe invoice.paid: field `/data/object/currency` is invalid"),
        "{reject}"
    );
}

#[test]
fn an_unreadable_body_of_a_mapped_type_is_rejected() {
    let mut raw = hook("stripe", Some("invoice.paid"), json!(null));
    raw.body = b"{\"id\": \"evt_1\", \"type\": \"invoice.pa".to_vec();
    let reject = normalizer().webhook(&raw).unwrap_err();
    assert!(
        matches!(&reject, Reject::InvalidBody { vendor, event_type, .. } if vendor == "stripe" && event_type == "invoice.paid")
    );
    assert!(reject.to_string().contains("not valid JSON"), "{reject}");
    let raw = hook("hubspot", Some("contact.creation"), json!([{"objectId": 1}]));
    assert!(
        normalizer()
            .webhook(&raw)
            .unwrap_err()
            .to_string()
            .contains("expected a JSON object")
    );
}

#[test]
fn unverified_deliveries_are_normalized_and_marked() {
    let mut raw = stripe("customer.created", json!({"id": "cus_1", "email": "a@example.com"}));
    raw.verified = false;
    let event = one(normalizer().webhook(&raw));
    assert_eq!(attr(&event, "verified"), Some("false"));
}

#[test]
fn sources_not_named_after_their_vendor_use_its_table() {
    let mut raw = stripe("customer.created", json!({"id": "cus_1", "email": "a@example.com"}));
    raw.vendor = "stripe_eu".into();
    skipped(normalizer().webhook(&raw));
    let event = one(config(json!({"sources": {"stripe_eu": "stripe"}})).webhook(&raw));
    assert_eq!(event.envelope.event_type, CONTACT_UPDATED);
    assert_eq!(attr(&event, "vendor"), Some("stripe_eu"));
}

// --- Shopify ----------------------------------------------------------------------------------

fn shopify(topic: &str, body: serde_json::Value) -> WebhookReceived {
    let mut raw = hook("shopify", Some(topic), body);
    raw.headers = HashMap::from([
        ("x-shopify-topic".to_owned(), topic.to_owned()),
        ("x-shopify-shop-domain".to_owned(), "example.myshopify.com".to_owned()),
    ]);
    raw
}

fn shopify_order(total: &str, currency: &str) -> serde_json::Value {
    json!({
        "id": 820_982_911_946_154_508_u64, "email": "jon@example.com", "closed_at": null,
        "created_at": "2019-05-23T11:07:56+01:00", "updated_at": "2019-05-23T11:09:12+01:00",
        "number": 234, "token": "123456abcd", "total_price": total, "subtotal_price": total,
        "currency": currency, "financial_status": "paid", "buyer_accepts_marketing": true,
        "name": "#9999", "referring_site": "https://www.google.com/", "landing_site": "/products/shirt",
        "browser_ip": "203.0.113.7",
        "client_details": { "browser_ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (Macintosh)" },
        "order_number": 1234, "source_name": "web", "phone": null,
        "billing_address": { "first_name": "Bob", "last_name": "Biller", "company": "Acme Ltd", "phone": "555-555-BILL" },
        "customer": { "id": 115_310_627_314_723_954_u64, "email": "john@example.com", "first_name": "John", "last_name": "Smith", "phone": null }
    })
}

#[test]
fn shopify_orders_create_converts_decimal_prices() {
    let event = one(normalizer().webhook(&shopify("orders/create", shopify_order("10.00", "GBP"))));
    assert_eq!(event.envelope.event_type, ORDER_CREATED);
    assert_eq!(amount(&event), (Some(1000), Some("GBP")));
    assert_eq!(
        event.envelope.occurred_at, 1_558_606_076_000,
        "created_at with its +01:00 offset"
    );
    let commerce = event.commerce.as_ref().expect("commerce");
    assert_eq!(commerce.order_id.as_deref(), Some("820982911946154508"));
    assert_eq!(commerce.status.as_deref(), Some("paid"));
    assert_eq!(attr(&event, "order_name"), Some("#9999"));
    let person = event.person.as_ref().expect("person");
    assert_eq!(
        person.email.as_deref(),
        Some("jon@example.com"),
        "the order's e-mail first"
    );
    assert_eq!(person.first_name.as_deref(), Some("John"));
    assert_eq!(person.company.as_deref(), Some("Acme Ltd"));
    assert_eq!(external(&event, "shopify_customer"), Some("115310627314723954"));
    let context = event.context.as_ref().expect("context");
    assert_eq!(context.ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(context.referrer.as_deref(), Some("https://www.google.com/"));
    assert_eq!(context.user_agent.as_deref(), Some("Mozilla/5.0 (Macintosh)"));
}

#[test]
fn shopify_orders_paid_in_yen_keeps_whole_units() {
    let event = one(normalizer().webhook(&shopify("orders/paid", shopify_order("1500", "JPY"))));
    assert_eq!(event.envelope.event_type, PAYMENT_SUCCEEDED);
    assert_eq!(amount(&event), (Some(1500), Some("JPY")));
    assert_eq!(event.envelope.occurred_at, 1_558_606_152_000, "updated_at");
    let event = one(normalizer().webhook(&shopify("orders/paid", shopify_order("1500.00", "JPY"))));
    assert_eq!(amount(&event), (Some(1500), Some("JPY")));
    let reject = normalizer()
        .webhook(&shopify("orders/paid", shopify_order("1500.50", "JPY")))
        .unwrap_err();
    assert!(
        reject.to_string().starts_with(
            "shopify orders/paid: field `/total_price` is invalid: `1500.50` has more decimals than JPY allows (0)"
        ),
        "{reject}"
    );
}

fn checkout(email: Option<&str>, completed_at: Option<&str>) -> serde_json::Value {
    json!({
        "id": 981_820_079_255_243_537_u64, "token": "123123123", "cart_token": "eeafa272cebfd4b22385bc4b645e762c",
        "email": email, "gateway": null, "buyer_accepts_marketing": false,
        "created_at": "2020-01-14T10:31:13-05:00", "updated_at": "2020-01-14T10:35:00-05:00",
        "completed_at": completed_at, "currency": "USD", "presentment_currency": "USD",
        "total_price": "398.00", "subtotal_price": "398.00",
        "abandoned_checkout_url": "https://checkout.local/548380009/checkouts/123123123/recover?key=example-secret-token",
        "billing_address": { "first_name": "Bob", "last_name": "Biller", "phone": "555-555-BILL", "name": "Bob Biller" },
        "shipping_address": { "first_name": "Steve", "last_name": "Shipper", "phone": "555-555-SHIP" },
        "customer": null
    })
}

#[test]
fn shopify_open_checkouts_with_contact_details_are_abandoned_carts() {
    let n = normalizer();
    for topic in ["checkouts/create", "checkouts/update"] {
        let event = one(n.webhook(&shopify(topic, checkout(Some("example@email.com"), None))));
        assert_eq!(event.envelope.event_type, CART_ABANDONED);
        assert_eq!(amount(&event), (Some(39800), Some("USD")));
        assert_eq!(attr(&event, "checkout_token"), Some("123123123"));
        assert!(attr(&event, "recovery_url").is_some_and(|u| u.contains("/recover")));
        assert_eq!(event.envelope.lead_key, key_of("example@email.com"));
        assert_eq!(event.person.as_ref().and_then(|p| p.first_name.as_deref()), Some("Bob"));
        assert_eq!(event.envelope.occurred_at, 1_579_016_100_000);
    }
    // Completed: it is an order now. No contact details: Shopify does not call it abandoned.
    skipped(n.webhook(&shopify(
        "checkouts/update",
        checkout(Some("example@email.com"), Some("2020-01-14T10:40:00-05:00")),
    )));
    skipped(n.webhook(&shopify("checkouts/create", checkout(None, None))));
}

#[test]
fn shopify_topic_from_the_header_when_ingest_recorded_none() {
    let mut raw = shopify("checkouts/create", checkout(Some("example@email.com"), None));
    raw.vendor_event_type = None;
    raw.headers = HashMap::from([("X-Shopify-Topic".to_owned(), "checkouts/create".to_owned())]);
    assert_eq!(one(normalizer().webhook(&raw)).envelope.event_type, CART_ABANDONED);
}

#[test]
fn shopify_customers_are_contact_updates() {
    let customer = json!({
        "id": 706_405_506_930_370_084_u64, "email": "bob@biller.com", "created_at": "2021-12-31T19:00:00-05:00",
        "updated_at": "2022-01-02T10:00:00-05:00", "first_name": "Bob", "last_name": "Biller", "state": "enabled",
        "verified_email": true, "phone": null, "tags": "vip,newsletter",
        "email_marketing_consent": { "state": "subscribed", "opt_in_level": "single_opt_in", "consent_updated_at": null },
        "default_address": { "company": "Biller Inc", "phone": "555-625-1199" }
    });
    let n = normalizer();
    let created = one(n.webhook(&shopify("customers/create", customer.clone())));
    assert_eq!(created.envelope.event_type, CONTACT_UPDATED);
    assert_eq!(created.activity.as_ref().map(|a| a.action.as_str()), Some("created"));
    assert_eq!(created.envelope.occurred_at, 1_640_995_200_000);
    let person = created.person.as_ref().expect("person");
    assert_eq!(
        (person.company.as_deref(), person.phone.as_deref()),
        (Some("Biller Inc"), Some("555-625-1199"))
    );
    assert_eq!(attr(&created, "email_marketing_state"), Some("subscribed"));
    let updated = one(n.webhook(&shopify("customers/update", customer)));
    assert_eq!(updated.activity.as_ref().map(|a| a.action.as_str()), Some("updated"));
    assert_eq!(updated.envelope.occurred_at, 1_641_135_600_000);
    assert_eq!(updated.envelope.lead_key, key_of("bob@biller.com"));
}

#[test]
fn shopify_refund_sums_its_successful_refund_transactions() {
    let refund = json!({
        "id": 929_361_464, "order_id": 450_789_469, "created_at": "2020-01-14T10:34:55-05:00",
        "note": "wrong size", "processed_at": "2020-01-14T10:34:55-05:00", "restock": true,
        "refund_line_items": [ { "id": 1_058_498_311, "quantity": 1, "line_item_id": 518_995_019, "subtotal": 199.0 } ],
        "transactions": [
            { "id": 1_072_844_685, "order_id": 450_789_469, "kind": "refund", "gateway": "bogus", "status": "success",
              "amount": "199.00", "currency": "USD" },
            { "id": 1_072_844_686, "order_id": 450_789_469, "kind": "refund", "gateway": "bogus", "status": "failure",
              "amount": "10.00", "currency": "USD" },
            { "id": 1_072_844_687, "order_id": 450_789_469, "kind": "refund", "gateway": "bogus", "status": "success",
              "amount": "10.00", "currency": "USD" }
        ]
    });
    let event = one(normalizer().webhook(&shopify("refunds/create", refund)));
    assert_eq!(event.envelope.event_type, REFUND_ISSUED);
    assert_eq!(amount(&event), (Some(20900), Some("USD")));
    assert_eq!(
        event.commerce.as_ref().and_then(|c| c.order_id.as_deref()),
        Some("450789469")
    );
    assert_eq!(event.person, None, "a refund names its order, not the customer");
    assert_eq!(event.envelope.lead_key, None);
    let restock_only = json!({"id": 1, "order_id": 2, "transactions": [], "created_at": "2020-01-14T10:34:55-05:00"});
    assert_eq!(
        amount(&one(normalizer().webhook(&shopify("refunds/create", restock_only)))),
        (None, None)
    );
}

#[test]
fn shopify_customers_redact_is_an_erasure_request() {
    let body = json!({
        "shop_id": 954_889, "shop_domain": "{shop}.myshopify.com",
        "customer": { "id": 191_167, "email": "john@example.com", "phone": "555-625-1199" },
        "orders_to_redact": [299_938, 280_263, 220_458]
    });
    let event = one(normalizer().webhook(&shopify("customers/redact", body)));
    assert_eq!(event.envelope.event_type, LEAD_ERASURE_REQUESTED);
    assert_eq!(event.envelope.lead_key, key_of("john@example.com"));
    assert_eq!(external(&event, "shopify_customer"), Some("191167"));
    assert_eq!(attr(&event, "orders_to_redact"), Some("299938,280263,220458"));
}

// --- HubSpot ----------------------------------------------------------------------------------

/// The documented example delivery element, with another type / property where given.
fn hubspot(subscription_type: &str, property: Option<(&str, &str)>) -> WebhookReceived {
    let mut body = json!({
        "eventId": 1, "subscriptionId": 12345, "portalId": 62515, "occurredAt": 1_564_113_600_000_i64,
        "subscriptionType": subscription_type, "attemptNumber": 0, "objectId": 123,
        "changeSource": "CRM", "changeFlag": "NEW", "appId": 54321
    });
    if let Some((name, value)) = property {
        body["propertyName"] = json!(name);
        body["propertyValue"] = json!(value);
    }
    hook("hubspot", Some(subscription_type), body)
}

#[test]
fn hubspot_contact_events() {
    let n = normalizer();
    let created = one(n.webhook(&hubspot("contact.creation", None)));
    assert_eq!(created.envelope.event_type, CONTACT_UPDATED);
    assert_eq!(
        created.envelope.occurred_at, 1_564_113_600_000,
        "occurredAt milliseconds"
    );
    assert_eq!(external(&created, "hubspot_contact"), Some("123"));
    assert_eq!(created.activity.as_ref().map(|a| a.action.as_str()), Some("created"));
    assert_eq!(attr(&created, "portal_id"), Some("62515"));
    assert_eq!(
        created.envelope.lead_key, None,
        "the payload names the contact by id only"
    );

    let changed = one(n.webhook(&hubspot("contact.propertyChange", Some(("email", "Ada@Example.com")))));
    assert_eq!(changed.envelope.event_type, CONTACT_UPDATED);
    assert_eq!(attr(&changed, "property_name"), Some("email"));
    assert_eq!(attr(&changed, "property_value"), Some("Ada@Example.com"));
    assert_eq!(email(&changed), Some("Ada@Example.com"));
    assert_eq!(
        changed.envelope.lead_key,
        key_of("ada@example.com"),
        "a changed e-mail names the lead"
    );
    let renamed = one(n.webhook(&hubspot("contact.propertyChange", Some(("firstname", "Ada")))));
    assert_eq!(
        renamed.person.as_ref().and_then(|p| p.first_name.as_deref()),
        Some("Ada")
    );

    let deleted = one(n.webhook(&hubspot("contact.deletion", None)));
    assert_eq!(
        deleted.envelope.event_type, CONTACT_UPDATED,
        "a plain deletion is not an erasure request"
    );
    assert_eq!(deleted.activity.as_ref().map(|a| a.action.as_str()), Some("deleted"));
    let erased = one(n.webhook(&hubspot("contact.privacyDeletion", None)));
    assert_eq!(erased.envelope.event_type, LEAD_ERASURE_REQUESTED);
    assert_eq!(external(&erased, "hubspot_contact"), Some("123"));

    skipped(n.webhook(&hubspot("contact.merge", None)));
}

#[test]
fn hubspot_deal_events() {
    let n = normalizer();
    let created = one(n.webhook(&hubspot("deal.creation", None)));
    assert_eq!(created.envelope.event_type, DEAL_CREATED);
    assert_eq!(attr(&created, "hubspot_deal"), Some("123"));
    assert_eq!(created.person, None);
    let staged = one(n.webhook(&hubspot("deal.propertyChange", Some(("dealstage", "closedwon")))));
    assert_eq!(staged.envelope.event_type, DEAL_UPDATED);
    assert_eq!(attr(&staged, "property_name"), Some("dealstage"));
    assert_eq!(attr(&staged, "property_value"), Some("closedwon"));
    assert_eq!(
        staged.activity.as_ref().and_then(|a| a.object_id.as_deref()),
        Some("123")
    );
}

// --- Slack ------------------------------------------------------------------------------------

fn slack(event: serde_json::Value) -> WebhookReceived {
    let event_type = event["type"].as_str().map(str::to_owned);
    hook(
        "slack",
        event_type.as_deref(),
        json!({
            "token": "XXYYZZ", "team_id": "T123ABC456", "api_app_id": "A123ABC456",
            "event": event, "type": "event_callback", "event_id": "Ev123ABC456", "event_time": 1_515_449_522,
            "authorizations": [ { "team_id": "T123ABC456", "user_id": "U123ABC456", "is_bot": false } ]
        }),
    )
}

#[test]
fn slack_team_join_is_community_joined() {
    let n = normalizer();
    let join = |is_bot: bool| {
        slack(json!({
            "type": "team_join",
            "user": {
                "id": "W012A3CDE", "team_id": "T123ABC456", "name": "spengler", "real_name": "Egon Spengler",
                "is_bot": is_bot,
                "profile": { "first_name": "Egon", "last_name": "Spengler", "real_name": "Egon Spengler",
                    "title": "Head of Research", "phone": "", "email": "spengler@ghostbusters.example.com" }
            }
        }))
    };
    let event = one(n.webhook(&join(false)));
    assert_eq!(event.envelope.event_type, COMMUNITY_JOINED);
    assert_eq!(event.envelope.occurred_at, 1_515_449_522_000, "event_time seconds");
    let person = event.person.as_ref().expect("person");
    assert_eq!(person.job_title.as_deref(), Some("Head of Research"));
    assert_eq!(person.phone, None, "empty strings are no value");
    assert_eq!(external(&event, "slack_user"), Some("W012A3CDE"));
    assert_eq!(event.envelope.lead_key, key_of("spengler@ghostbusters.example.com"));
    assert_eq!(attr(&event, "slack_team"), Some("T123ABC456"));
    skipped(n.webhook(&join(true)));
}

#[test]
fn slack_messages_by_people_are_community_engagement() {
    let n = normalizer();
    let message = one(n.webhook(&slack(json!({
        "type": "message", "channel": "C123ABC456", "user": "U123ABC456",
        "text": "Hello world", "ts": "1355517523.000005", "channel_type": "channel"
    }))));
    assert_eq!(message.envelope.event_type, COMMUNITY_ENGAGED);
    let activity = message.activity.as_ref().expect("activity");
    assert_eq!(
        (activity.channel.as_str(), activity.action.as_str()),
        ("slack", "message")
    );
    assert_eq!(activity.object_id.as_deref(), Some("C123ABC456"));
    assert_eq!(external(&message, "slack_user"), Some("U123ABC456"));
    assert!(
        message.attributes.values().all(|v| v != "Hello world"),
        "message text is not copied"
    );

    let mention = one(n.webhook(&slack(json!({
        "type": "app_mention", "user": "U061F7AUR", "text": "<@U0LAN0Z89> is it everything a river should be?",
        "ts": "1515449522.000016", "channel": "C123ABC456", "event_ts": "1515449522000016"
    }))));
    assert_eq!(
        mention.activity.as_ref().map(|a| a.action.as_str()),
        Some("app_mention")
    );

    skipped(n.webhook(&slack(json!({
        "type": "message", "subtype": "bot_message", "bot_id": "B123ABC456", "text": "beep", "ts": "1.2", "channel": "C1"
    }))));
    skipped(n.webhook(&slack(json!({
        "type": "message", "subtype": "message_changed", "channel": "C1", "ts": "1.3",
        "message": { "type": "message", "user": "U1", "text": "edited" }
    }))));
}

// --- Generic sources --------------------------------------------------------------------------

fn sendgrid() -> Normalizer {
    config(json!({
        "generic": {
            "sendgrid": {
                "events": { "open": "email.engaged", "click": "email.engaged", "unsubscribe": "email.engaged" },
                "channel": "email",
                "occurred_at": { "pointer": "/timestamp", "unit": "seconds" },
                "fields": { "url": "/url", "campaign": "/category", "object_id": "/sg_message_id" }
            }
        }
    }))
}

#[test]
fn generic_sources_map_their_declared_types() {
    let body = json!({
        "email": "example@test.com", "timestamp": 1_513_299_569, "event": "click", "category": "cat facts",
        "sg_event_id": "sg_event_id", "sg_message_id": "sg_message_id", "url": "https://sendgrid.com",
        "useragent": "Mozilla/4.0"
    });
    let event = one(sendgrid().webhook(&hook("sendgrid", Some("click"), body)));
    assert_eq!(event.envelope.event_type, EMAIL_ENGAGED);
    assert_eq!(event.envelope.occurred_at, 1_513_299_569_000);
    assert_eq!(event.envelope.lead_key, key_of("example@test.com"));
    let activity = event.activity.as_ref().expect("activity");
    assert_eq!(
        (activity.channel.as_str(), activity.action.as_str()),
        ("email", "click")
    );
    assert_eq!(activity.url.as_deref(), Some("https://sendgrid.com"));
    assert_eq!(activity.campaign.as_deref(), Some("cat facts"));
    assert_eq!(
        attr(&event, "useragent"),
        Some("Mozilla/4.0"),
        "the rest of the body is kept"
    );
    skipped(sendgrid().webhook(&hook("sendgrid", Some("processed"), json!({"email": "x@test.com"}))));
}

#[test]
fn generic_form_encoded_bodies_with_the_type_inside() {
    let n = config(json!({
        "generic": {
            "mailchimp": {
                "events": { "unsubscribe": "email.engaged", "subscribe": "newsletter.subscribed" },
                "event_type": "/type",
                "channel": "email",
                "fields": { "email": "/data[email]", "first_name": "/data[merges][FNAME]", "campaign": "/data[campaign_id]" }
            }
        }
    }));
    let mut raw = hook("mailchimp", None, json!(null));
    raw.content_type = Some("application/x-www-form-urlencoded".into());
    raw.body = b"type=unsubscribe&fired_at=2009-03-26+21%3A40%3A57&data%5Baction%5D=unsub&data%5Breason%5D=manual\
&data%5Bemail%5D=api%2Bunsub%40mailchimp.com&data%5Bmerges%5D%5BFNAME%5D=Mailchimp&data%5Bcampaign_id%5D=cb398d21d2"
        .to_vec();
    let event = one(n.webhook(&raw));
    assert_eq!(event.envelope.event_type, EMAIL_ENGAGED);
    assert_eq!(email(&event), Some("api+unsub@mailchimp.com"));
    assert_eq!(
        event.person.as_ref().and_then(|p| p.first_name.as_deref()),
        Some("Mailchimp")
    );
    assert_eq!(event.activity.as_ref().map(|a| a.action.as_str()), Some("unsubscribe"));
    // Mailchimp's `fired_at` carries no time zone: without `occurred_at` the receipt time.
    assert_eq!(event.envelope.occurred_at, RECEIVED);
    assert_eq!(attr(&event, "fired_at"), Some("2009-03-26 21:40:57"));
}

#[test]
fn several_outputs_get_distinct_derived_ids() {
    let n = config(json!({
        "generic": { "calendly": { "events": { "invitee.created": ["meeting.booked", "lead.captured"] } } }
    }));
    let raw = hook("calendly", Some("invitee.created"), json!({"email": "ada@example.com"}));
    let events = n.webhook(&raw).expect("normalizes");
    let types: Vec<&str> = events.iter().map(|e| e.envelope.event_type.as_str()).collect();
    assert_eq!(types, [MEETING_BOOKED, LEAD_CAPTURED]);
    let expected: Vec<String> = (0..2)
        .map(|i| ids::derived_event_id(WS, "normalize", &format!("raw-hook-1#{i}")))
        .collect();
    let got: Vec<&str> = events.iter().map(|e| e.envelope.event_id.as_str()).collect();
    assert_eq!(got, expected);
    assert_ne!(got[0], got[1]);
    assert!(got.iter().all(|id| *id != "raw-hook-1"));
    // Deterministic: a replay yields the same ids.
    let again: Vec<String> = n
        .webhook(&raw)
        .expect("normalizes")
        .into_iter()
        .map(|e| e.envelope.event_id)
        .collect();
    assert_eq!(again, expected);
    assert!(events.iter().all(|e| e.envelope.lead_key == key_of("ada@example.com")));
}

#[test]
fn invalid_configurations_are_refused_with_every_reason() {
    let bad: NormalizeConfig = serde_json::from_value(json!({
        "form_types": { "webinar": "webinar.attended" },
        "sources": { "stripe_eu": "stripee" },
        "generic": {
            "stripe": { "events": { "x": "lead.captured" } },
            "acme": { "events": { "x": "lead.captured" }, "fields": { "email": "email", "amount": "/a", "amount_minor": "/b" } }
        }
    }))
    .expect("parses");
    let err = Normalizer::new(&bad).unwrap_err();
    for part in [
        "form_types.webinar: `webinar.attended` is not a canonical event type",
        "sources.stripe_eu: `stripee` is not a built-in vendor (stripe, shopify, hubspot, slack)",
        "generic.stripe: the source already uses a built-in vendor table",
        "generic.acme.fields.email: `email` is not a JSON pointer",
        "generic.acme.fields: set `amount` (decimal text) or `amount_minor` (integer), not both",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
}

// --- Forms ------------------------------------------------------------------------------------

fn form(form_type: Option<&str>, fields: &[(&str, &str)]) -> FormSubmitted {
    FormSubmitted {
        envelope: Envelope {
            consent: Some(Consent {
                marketing: Some(true),
                ..Consent::default()
            }),
            occurred_at: 1_795_000_000_000,
            ..envelope("raw-form-1", "form.submitted", "form:contact")
        },
        form_id: "contact".into(),
        form_type: form_type.map(str::to_owned),
        email: Some("Lead@Example.com".into()),
        fields: fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        page_url: Some("https://acme.example/pricing?utm_source=news".into()),
        referrer: Some("https://www.google.com/".into()),
        user_agent: Some("Mozilla/5.0".into()),
        client_ip: Some("198.51.100.4".into()),
        anonymous_id: Some("anon-7".into()),
    }
}

#[test]
fn contact_form_is_a_captured_lead() {
    let raw = form(
        Some("contact"),
        &[
            ("name", "Ada Lovelace"),
            ("company", "Analytical Engines"),
            ("title", "CTO"),
            ("phone", "+44 20 7946 0000"),
            ("message", "Hi!"),
        ],
    );
    let event = one(normalizer().form(&raw));
    assert_eq!(event.envelope.event_type, LEAD_CAPTURED);
    assert_eq!(event.envelope.event_id, "raw-form-1");
    assert_eq!(event.envelope.occurred_at, 1_795_000_000_000, "the raw time");
    assert_eq!(event.envelope.consent, raw.envelope.consent, "consent is kept");
    assert_eq!(event.envelope.lead_key, key_of("lead@example.com"));
    let person = event.person.as_ref().expect("person");
    assert_eq!(person.full_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(person.company.as_deref(), Some("Analytical Engines"));
    assert_eq!(person.job_title.as_deref(), Some("CTO"));
    assert_eq!(person.phone.as_deref(), Some("+44 20 7946 0000"));
    assert_eq!(person.anonymous_id.as_deref(), Some("anon-7"));
    let form = event.form.as_ref().expect("form");
    assert_eq!(
        form.fields,
        HashMap::from([("message".to_owned(), "Hi!".to_owned())]),
        "person fields leave `fields`"
    );
    assert_eq!(form.form_type.as_deref(), Some("contact"));
    let context = event.context.as_ref().expect("context");
    assert_eq!(context.ip.as_deref(), Some("198.51.100.4"));
    assert_eq!(context.page_url, raw.page_url);
}

#[test]
fn form_types_pick_the_canonical_type() {
    let n = normalizer();
    for (form_type, expected) in [
        (Some("signup"), LEAD_CAPTURED),
        (Some("demo_request"), DEMO_REQUESTED),
        (Some("Demo"), DEMO_REQUESTED),
        (Some("newsletter"), NEWSLETTER_SUBSCRIBED),
        (Some("erasure"), LEAD_ERASURE_REQUESTED),
        (Some("something_else"), LEAD_CAPTURED),
        (None, LEAD_CAPTURED),
    ] {
        assert_eq!(
            one(n.form(&form(form_type, &[]))).envelope.event_type,
            expected,
            "{form_type:?}"
        );
    }
}

#[test]
fn erasure_form_keeps_the_person_to_erase() {
    let event = one(normalizer().form(&form(Some("erasure"), &[("first_name", "Ada")])));
    assert_eq!(event.envelope.event_type, LEAD_ERASURE_REQUESTED);
    assert_eq!(event.envelope.lead_key, key_of("lead@example.com"));
}

#[test]
fn configured_form_types_override_and_fan_out() {
    let n =
        config(json!({"form_types": {"Webinar": ["lead.captured", "meeting.booked"], "contact": "demo.requested"}}));
    assert_eq!(
        one(n.form(&form(Some("contact"), &[]))).envelope.event_type,
        DEMO_REQUESTED
    );
    let events = n.form(&form(Some("webinar"), &[])).expect("normalizes");
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].envelope.event_id,
        ids::derived_event_id(WS, "normalize", "raw-form-1#0")
    );
    assert_eq!(
        events[1].envelope.event_id,
        ids::derived_event_id(WS, "normalize", "raw-form-1#1")
    );
    assert_eq!(events[1].envelope.event_type, MEETING_BOOKED);
}

#[test]
fn lead_key_falls_back_to_the_anonymous_id() {
    let mut raw = form(None, &[]);
    raw.email = None;
    let event = one(normalizer().form(&raw));
    assert_eq!(event.envelope.lead_key, ids::lead_key(WS, None, Some("anon-7")));
}

// --- App events -------------------------------------------------------------------------------

fn app(event_type: &str, properties: serde_json::Value) -> AppEvent {
    AppEvent {
        envelope: envelope("raw-app-1", event_type, "app:crm"),
        producer: "crm".into(),
        user_id: Some("u-42".into()),
        anonymous_id: None,
        email: Some("buyer@example.com".into()),
        properties_json: properties.to_string(),
    }
}

#[test]
fn app_types_get_the_app_prefix_and_flattened_properties() {
    let event = one(normalizer().app(&app(
        "trial.started",
        json!({"plan": {"id": "pro", "seats": 5}, "first_name": "Grace", "company": "Navy", "tags": ["a", "b"]}),
    )));
    assert_eq!(event.envelope.event_type, "app.trial.started");
    assert_eq!(event.envelope.event_id, "raw-app-1");
    assert_eq!(attr(&event, "plan.id"), Some("pro"));
    assert_eq!(attr(&event, "plan.seats"), Some("5"));
    assert_eq!(attr(&event, "tags.1"), Some("b"));
    let person = event.person.as_ref().expect("person");
    assert_eq!(person.first_name.as_deref(), Some("Grace"));
    assert_eq!(person.company.as_deref(), Some("Navy"));
    assert_eq!(person.user_id.as_deref(), Some("u-42"));
    assert_eq!(event.envelope.lead_key, key_of("buyer@example.com"));
}

#[test]
fn canonical_app_types_are_kept_with_commerce() {
    let event = one(normalizer().app(&app(
        "payment.succeeded",
        json!({"amount_minor": 4900, "currency": "eur", "invoice_id": "INV-7", "plan": "pro"}),
    )));
    assert_eq!(event.envelope.event_type, PAYMENT_SUCCEEDED);
    assert_eq!(amount(&event), (Some(4900), Some("EUR")));
    assert_eq!(
        event.commerce.as_ref().and_then(|c| c.invoice_id.as_deref()),
        Some("INV-7")
    );
    // The app's own `app.` types are not prefixed twice.
    assert_eq!(
        one(normalizer().app(&app("app.seat.added", json!({}))))
            .envelope
            .event_type,
        "app.seat.added"
    );
}

#[test]
fn app_erasure_requests() {
    for t in ["lead.erasure_requested", "erasure.requested"] {
        let event = one(normalizer().app(&app(t, json!({"reason": "gdpr"}))));
        assert_eq!(event.envelope.event_type, LEAD_ERASURE_REQUESTED, "{t}");
        assert_eq!(event.envelope.lead_key, key_of("buyer@example.com"));
    }
}

#[test]
fn unreadable_app_properties_are_rejected() {
    let mut raw = app("deal.won", json!({}));
    raw.properties_json = "[1, 2]".into();
    assert_eq!(
        normalizer().app(&raw).unwrap_err().to_string(),
        "invalid payload: app:crm deal.won: properties_json is not a JSON object but an array"
    );
    raw.properties_json = "{".into();
    assert!(
        normalizer()
            .app(&raw)
            .unwrap_err()
            .to_string()
            .contains("properties_json is not valid JSON")
    );
    let raw = app("payment.succeeded", json!({"amount_minor": "49.00", "currency": "EUR"}));
    assert!(
        normalizer()
            .app(&raw)
            .unwrap_err()
            .to_string()
            .contains("property `amount_minor`")
    );
}

//! The canonical event types: the only values `envelope.event_type` takes on `nectar.events`,
//! apart from `app.<type>` for app events with a type of their own. Documented in `MAPPING.md`;
//! scoring rules, routes and sinks key on these strings, so renaming one is a breaking change.

/// A person left their details on a contact or signup form (also the default for forms).
pub const LEAD_CAPTURED: &str = "lead.captured";
/// A person asked for a demo.
pub const DEMO_REQUESTED: &str = "demo.requested";
/// A person subscribed to a newsletter.
pub const NEWSLETTER_SUBSCRIBED: &str = "newsletter.subscribed";
/// A payment went through (Stripe PaymentIntent or Invoice, Shopify order paid).
pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded";
/// A payment attempt failed.
pub const PAYMENT_FAILED: &str = "payment.failed";
/// A subscription began (or became active after its first payment).
pub const SUBSCRIPTION_STARTED: &str = "subscription.started";
/// A subscription ended.
pub const SUBSCRIPTION_CANCELLED: &str = "subscription.cancelled";
/// Money went back to the customer.
pub const REFUND_ISSUED: &str = "refund.issued";
/// A purchase was placed (Shopify order, completed Stripe Checkout).
pub const ORDER_CREATED: &str = "order.created";
/// A checkout with the buyer's contact details that has not (yet) been completed.
pub const CART_ABANDONED: &str = "cart.abandoned";
/// An e-mail was opened or clicked, or its recipient unsubscribed (Mailchimp/SendGrid style).
pub const EMAIL_ENGAGED: &str = "email.engaged";
/// A meeting was booked.
pub const MEETING_BOOKED: &str = "meeting.booked";
/// A booked meeting took place with the person present.
pub const MEETING_ATTENDED: &str = "meeting.attended";
/// A contact record was created, changed or deleted in a CRM or billing system.
pub const CONTACT_UPDATED: &str = "contact.updated";
/// A deal was created in a CRM.
pub const DEAL_CREATED: &str = "deal.created";
/// A deal's properties changed in a CRM (e.g. its stage).
pub const DEAL_UPDATED: &str = "deal.updated";
/// A person joined a community workspace (Slack `team_join`).
pub const COMMUNITY_JOINED: &str = "community.joined";
/// A person posted in a community workspace (Slack `message`, `app_mention`).
pub const COMMUNITY_ENGAGED: &str = "community.engaged";
/// A person asked to be forgotten (GDPR Art. 17). Downstream stages erase the lead.
pub const LEAD_ERASURE_REQUESTED: &str = nectar_core::events::ERASURE;

/// Prefix of app events whose type is not in the vocabulary: `trial.started` becomes
/// `app.trial.started`.
pub const APP_PREFIX: &str = "app.";

/// Every canonical type, in the order `MAPPING.md` lists them.
pub const ALL: &[&str] = &[
    LEAD_CAPTURED,
    DEMO_REQUESTED,
    NEWSLETTER_SUBSCRIBED,
    PAYMENT_SUCCEEDED,
    PAYMENT_FAILED,
    SUBSCRIPTION_STARTED,
    SUBSCRIPTION_CANCELLED,
    REFUND_ISSUED,
    ORDER_CREATED,
    CART_ABANDONED,
    EMAIL_ENGAGED,
    MEETING_BOOKED,
    MEETING_ATTENDED,
    CONTACT_UPDATED,
    DEAL_CREATED,
    DEAL_UPDATED,
    COMMUNITY_JOINED,
    COMMUNITY_ENGAGED,
    LEAD_ERASURE_REQUESTED,
];

/// App event types that mean "erase this lead", besides [`LEAD_ERASURE_REQUESTED`] itself.
pub const ERASURE_ALIASES: &[&str] = &["erasure.requested"];

/// Whether `event_type` is one of the canonical types (not counting `app.*`).
pub fn is_canonical(event_type: &str) -> bool {
    ALL.contains(&event_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_unique_and_dotted() {
        let mut seen = std::collections::HashSet::new();
        for t in ALL {
            assert!(seen.insert(*t), "{t} listed twice");
            assert!(t.contains('.') && !t.starts_with(APP_PREFIX), "{t}");
        }
        assert!(is_canonical("payment.succeeded"));
        assert!(!is_canonical("app.trial.started"));
    }
}

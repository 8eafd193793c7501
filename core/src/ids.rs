//! Event ids and lead keys.
//!
//! An event id is deterministic whenever the source gives something to derive it from: a
//! vendor's delivery id or a producer's `Idempotency-Key` becomes a UUIDv5 under a fixed
//! namespace, scoped by workspace and source, so a retried webhook or a re-sent request yields
//! the same id and every sink delivers it once. Only events with nothing to derive from get a
//! fresh UUIDv7 (time-ordered, which keeps index and primary-key inserts local).

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Namespace for Nectar's UUIDv5 event ids. Never change it: ids would change with it.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6e65_6374_6172_4e45_8000_0000_0000_0001);

/// The id of an event that the source identified by `key` (vendor event id or idempotency key).
pub fn derived_event_id(workspace_id: &str, source: &str, key: &str) -> String {
    // Unit separators keep ("a", "b/c") and ("a/b", "c") apart.
    let name = format!("{workspace_id}\u{1f}{source}\u{1f}{key}");
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// A fresh, time-ordered id for an event with nothing to derive one from.
pub fn new_event_id() -> String {
    Uuid::now_v7().to_string()
}

/// The normalized form of an e-mail address used for the lead key: trimmed, lower-case.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Whether `email` is a deliverable-looking address: an RFC 5322 addr-spec (as the
/// `email_address` crate parses it) without display name or domain literal, a dot in the
/// domain, at most 254 characters. Forms are for reachable people, not `root@localhost`.
pub fn valid_email(email: &str) -> bool {
    email.len() <= 254
        && email_address::EmailAddress::parse_with_options(
            email,
            email_address::Options::default()
                .without_display_text()
                .without_domain_literal(),
        )
        .is_ok_and(|a| a.domain().contains('.'))
}

/// The stable key of a lead within a workspace: a hash of the normalized e-mail, else of the
/// anonymous id. It is the Kafka message key, so one lead's events share a partition.
pub fn lead_key(workspace_id: &str, email: Option<&str>, anonymous_id: Option<&str>) -> Option<String> {
    let (kind, value) = match (email.map(normalize_email), anonymous_id) {
        (Some(email), _) if !email.is_empty() => ("email", email),
        (_, Some(anon)) if !anon.trim().is_empty() => ("anon", anon.trim().to_owned()),
        _ => return None,
    };
    let digest = Sha256::digest(format!("{workspace_id}\u{1f}{kind}\u{1f}{value}").as_bytes());
    Some(hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_scoped() {
        let a = derived_event_id("acme", "webhook:stripe", "evt_1");
        assert_eq!(a, derived_event_id("acme", "webhook:stripe", "evt_1"));
        assert_ne!(a, derived_event_id("other", "webhook:stripe", "evt_1"));
        assert_ne!(a, derived_event_id("acme", "webhook:shopify", "evt_1"));
        assert_eq!(Uuid::parse_str(&a).map(|u| u.get_version_num()), Ok(5));
    }

    #[test]
    fn lead_key_ignores_case_and_whitespace_and_prefers_email() {
        let k = lead_key("acme", Some(" Ada@Example.com "), Some("anon-1"));
        assert_eq!(k, lead_key("acme", Some("ada@example.com"), None));
        assert_ne!(k, lead_key("acme", None, Some("anon-1")));
        assert_eq!(lead_key("acme", Some("  "), None), None);
        assert_eq!(k.map(|k| k.len()), Some(32));
    }
}

//! W3C trace context (`traceparent`), carried from the HTTP request into the event envelope
//! and the Kafka record's `traceparent` header, so one trace follows an event across stages.

use rand::RngCore;

/// The Kafka header and HTTP header name.
pub const TRACEPARENT: &str = "traceparent";

/// A `traceparent` for this hop: the caller's trace id with a new span id when the caller sent
/// a valid one, else a new trace.
pub fn child_or_new(incoming: Option<&str>) -> String {
    let mut rng = rand::rng();
    let mut span = [0u8; 8];
    rng.fill_bytes(&mut span);
    let span = hex::encode(span);
    match incoming.and_then(parse) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span}-{flags}"),
        None => {
            let mut trace = [0u8; 16];
            rng.fill_bytes(&mut trace);
            format!("00-{}-{span}-01", hex::encode(trace))
        }
    }
}

/// `(trace_id, flags)` of a valid version-00 traceparent.
fn parse(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = parts.next().is_none()
        && version == "00"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_callers_trace_and_makes_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = child_or_new(Some(incoming));
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{out}");
        assert!(!out.contains("00f067aa0ba902b7"));
        assert!(out.ends_with("-01"));
    }

    #[test]
    fn invalid_incoming_starts_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let out = child_or_new(Some(bad));
            assert!(parse(&out).is_some(), "{out}");
            assert!(!out.contains("4bf92f35"), "{out}");
        }
    }
}

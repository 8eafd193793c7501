//! Reading vendor JSON: values by JSON pointer (RFC 6901), text from scalars, timestamps,
//! and flattening nested objects into `attributes`.

use std::collections::HashMap;

use serde_json::Value;

/// A scalar as text: strings (trimmed, non-empty), numbers, booleans. Objects, arrays and null
/// are not text.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_owned())
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Like [`text`], but an array of scalars becomes their texts joined with `,` (e.g. Shopify's
/// `orders_to_redact`). For `attributes`.
pub(crate) fn attribute_text(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(text).collect();
            (!parts.is_empty()).then(|| parts.join(","))
        }
        other => text(other),
    }
}

/// The first pointer that resolves to a non-null value, with the pointer.
pub(crate) fn first_value<'a, S: AsRef<str>>(body: &'a Value, pointers: &'a [S]) -> Option<(&'a str, &'a Value)> {
    pointers.iter().find_map(|p| {
        let p = p.as_ref();
        body.pointer(p).filter(|v| !v.is_null()).map(|v| (p, v))
    })
}

/// The first pointer that resolves to a scalar with text.
pub(crate) fn first_text<S: AsRef<str>>(body: &Value, pointers: &[S]) -> Option<String> {
    pointers.iter().find_map(|p| body.pointer(p.as_ref()).and_then(text))
}

/// Pointers joined for error messages: `/a or /b`.
pub(crate) fn describe<S: AsRef<str>>(pointers: &[S]) -> String {
    let names: Vec<&str> = pointers.iter().map(AsRef::as_ref).collect();
    names.join(" or ")
}

/// How a vendor writes a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Unix seconds (Stripe `created`, Slack `event_time`), an integer, a float or numeric text.
    Seconds,
    /// Unix milliseconds (HubSpot `occurredAt`).
    Milliseconds,
    /// RFC 3339 text with a `Z` or numeric offset (Shopify `created_at`).
    Rfc3339,
}

/// Milliseconds since the epoch from a value written in `unit`; `None` when it is not one.
pub(crate) fn time_millis(value: &Value, unit: TimeUnit) -> Option<i64> {
    let number = || match value {
        Value::Number(n) => n.as_i64().map(|i| i as f64).or_else(|| n.as_f64()),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let millis = match unit {
        TimeUnit::Seconds => number()? * 1000.0,
        TimeUnit::Milliseconds => number()?,
        TimeUnit::Rfc3339 => return rfc3339_millis(value.as_str()?),
    };
    // Before 1970 or after 9999 is not a timestamp from a live system.
    (millis.is_finite() && (0.0..253_402_300_800_000.0).contains(&millis)).then(|| millis.round() as i64)
}

/// Parses RFC 3339 date-time text (`2024-11-10T10:30:00-05:00`, `2023-11-14T22:13:20.5Z`) to
/// milliseconds since the epoch. Fractions beyond milliseconds are truncated.
pub(crate) fn rfc3339_millis(text: &str) -> Option<i64> {
    let b = text.trim().as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits
            .iter()
            .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut millis = 0;
    if at(i, b".") {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &b[start..i.min(start + 3)];
        millis = frac.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')) * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            if !at(i + 3, b":") {
                return None;
            }
            let minutes = num(i + 1, i + 3)? * 60 + num(i + 4, i + 6)?;
            i += 6;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    if i != b.len()
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // A leap second (:60) is read as the last millisecond of the minute before.
    let (second, millis) = if second == 60 { (59, 999) } else { (second, millis) };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Flattens `value` into `out`: nested keys joined with `.`, array elements by index
/// (`items.0.sku`); nulls are left out, scalars become text.
pub(crate) fn flatten(prefix: &str, value: &Value, out: &mut HashMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&key(k), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&key(&i.to_string()), v, out);
            }
        }
        Value::Null => {}
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Number(n) => {
            out.insert(prefix.to_owned(), n.to_string());
        }
        Value::Bool(b) => {
            out.insert(prefix.to_owned(), b.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rfc3339_with_offsets_fractions_and_leap_years() {
        assert_eq!(rfc3339_millis("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(rfc3339_millis("2023-11-14T17:13:20-05:00"), Some(1_700_000_000_000));
        assert_eq!(rfc3339_millis("2023-11-15T03:43:20+05:30"), Some(1_700_000_000_000));
        assert_eq!(rfc3339_millis("2023-11-14T22:13:20.5Z"), Some(1_700_000_000_500));
        assert_eq!(rfc3339_millis("2023-11-14T22:13:20.123456Z"), Some(1_700_000_000_123));
        assert_eq!(rfc3339_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_millis("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+0500",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20Zjunk",
            "yesterday",
        ] {
            assert_eq!(rfc3339_millis(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_in_each_unit() {
        assert_eq!(
            time_millis(&json!(1_700_000_000), TimeUnit::Seconds),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            time_millis(&json!(1_700_000_000.25), TimeUnit::Seconds),
            Some(1_700_000_000_250)
        );
        assert_eq!(
            time_millis(&json!("1700000000"), TimeUnit::Seconds),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            time_millis(&json!(1_564_113_600_000_i64), TimeUnit::Milliseconds),
            Some(1_564_113_600_000)
        );
        assert_eq!(time_millis(&json!(-5), TimeUnit::Seconds), None);
        assert_eq!(time_millis(&json!({}), TimeUnit::Seconds), None);
    }

    #[test]
    fn flattening_joins_keys_and_indexes_arrays() {
        let mut out = HashMap::new();
        flatten(
            "",
            &json!({"plan": {"id": "pro", "seats": 5}, "tags": ["a", "b"], "gone": null, "ok": true}),
            &mut out,
        );
        assert_eq!(out.get("plan.id").map(String::as_str), Some("pro"));
        assert_eq!(out.get("plan.seats").map(String::as_str), Some("5"));
        assert_eq!(out.get("tags.1").map(String::as_str), Some("b"));
        assert_eq!(out.get("ok").map(String::as_str), Some("true"));
        assert!(!out.contains_key("gone"));
    }

    #[test]
    fn pointers_skip_nulls_and_non_scalars() {
        let body = json!({"a": null, "b": {"c": 1}, "d": " x "});
        assert_eq!(first_text(&body, &["/a", "/b", "/d"]), Some("x".to_owned()));
        assert_eq!(first_value(&body, &["/a", "/b"]).map(|(p, _)| p), Some("/b"));
        assert_eq!(attribute_text(&json!([1, "b", null])), Some("1,b".to_owned()));
    }
}

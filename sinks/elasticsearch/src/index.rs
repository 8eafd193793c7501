//! `target.index`: the index an event is written to, rendered per event from a small template.
//!
//! Placeholders (all in UTC, from the event's `envelope.occurred_at`):
//!
//! | placeholder      | meaning                                              |
//! |------------------|------------------------------------------------------|
//! | `%Y`             | year, four digits                                    |
//! | `%m`             | month, `01`–`12`                                     |
//! | `%d`             | day of the month, `01`–`31`                          |
//! | `%H`             | hour, `00`–`23`                                      |
//! | `%%`             | a literal `%`                                        |
//! | `{workspace_id}` | the tenant, lower-cased, anything but `a-z 0-9 - _` as `_` |
//!
//! The default `nectar-events-%Y.%m.%d` gives daily indices. Every part comes from the event
//! itself, never from the clock, so a redelivered event lands in the index it was first
//! written to and its `_id` overwrites the same document: that is what makes redelivery
//! idempotent. (Changing `target.index` while old events may still be redelivered breaks
//! that: a redelivery would create a second copy in the new index.)
//!
//! The literal text before the first placeholder is the index template's pattern
//! (`nectar-events-*`), so the template always matches the indices the sink creates.

use std::fmt::Write;

/// Longest index name Elasticsearch and OpenSearch accept, in bytes.
const MAX_INDEX_NAME_BYTES: usize = 255;

/// Characters index names may not contain (both engines' rules; `:` since ES 7).
const FORBIDDEN: &[char] = &['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':'];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Year,
    Month,
    Day,
    Hour,
    Workspace,
}

/// A parsed `target.index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexTemplate {
    parts: Vec<Part>,
}

impl IndexTemplate {
    /// Parse and check a template; the error says what is wrong (without the key name).
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            if c == '%' {
                let part = match rest[1..].chars().next() {
                    Some('Y') => Part::Year,
                    Some('m') => Part::Month,
                    Some('d') => Part::Day,
                    Some('H') => Part::Hour,
                    Some('%') => {
                        literal.push('%');
                        rest = &rest[2..];
                        continue;
                    }
                    Some(other) => {
                        return Err(format!(
                            "`%{other}` is not a placeholder (use %Y, %m, %d, %H, %% or {{workspace_id}})"
                        ));
                    }
                    None => return Err("ends with a lone `%`".into()),
                };
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
                rest = &rest[2..];
            } else if c == '{' {
                let Some(end) = rest.find('}') else {
                    return Err("has a `{` without a closing `}`".into());
                };
                let name = &rest[1..end];
                if name != "workspace_id" {
                    return Err(format!("`{{{name}}}` is not a placeholder (only {{workspace_id}} is)"));
                }
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Workspace);
                rest = &rest[end + 1..];
            } else {
                if c == '}' {
                    return Err("has a `}` without an opening `{`".into());
                }
                if FORBIDDEN.contains(&c) {
                    return Err(format!("contains `{c}`, which index names cannot contain"));
                }
                if c.is_uppercase() {
                    return Err(format!("contains `{c}`: index names must be lower case"));
                }
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let template = Self { parts };
        match template.parts.first() {
            None => return Err("is empty".into()),
            Some(Part::Literal(l)) if l.starts_with(['-', '_', '+', '.']) => {
                return Err("must not start with `-`, `_`, `+` or `.`".into());
            }
            Some(Part::Literal(l)) if template.parts.len() == 1 && (l == "." || l == "..") => {
                return Err("cannot be `.` or `..`".into());
            }
            _ => {}
        }
        if template.prefix().len() > MAX_INDEX_NAME_BYTES {
            return Err(format!("is longer than {MAX_INDEX_NAME_BYTES} bytes"));
        }
        Ok(template)
    }

    /// The fixed text before the first placeholder (the whole name when there is none).
    pub fn prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(l)) => l,
            _ => "",
        }
    }

    /// Whether the name varies per event.
    pub fn has_placeholders(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Literal(_)))
    }

    /// The index pattern every rendered name matches: the prefix plus `*`, or the fixed name.
    pub fn pattern(&self) -> String {
        if self.has_placeholders() {
            format!("{}*", self.prefix())
        } else {
            self.prefix().to_owned()
        }
    }

    /// The index for an event that occurred at `occurred_at` (ms since the epoch) in
    /// `workspace_id`. Fails only for dates outside years 0–9999 or a name over 255 bytes.
    pub fn render(&self, occurred_at: i64, workspace_id: &str) -> Result<String, String> {
        let needs_date = self
            .parts
            .iter()
            .any(|p| matches!(p, Part::Year | Part::Month | Part::Day | Part::Hour));
        let date = if needs_date {
            let date = UtcDateTime::from_millis(occurred_at);
            if !(0..=9999).contains(&date.year) {
                return Err(format!(
                    "occurred_at {occurred_at} is in the year {}, outside 0–9999: no index name for it",
                    date.year
                ));
            }
            Some(date)
        } else {
            None
        };
        let mut name = String::with_capacity(64);
        for part in &self.parts {
            // `write!` to a String cannot fail.
            let _ = match (part, &date) {
                (Part::Literal(l), _) => write!(name, "{l}"),
                (Part::Year, Some(d)) => write!(name, "{:04}", d.year),
                (Part::Month, Some(d)) => write!(name, "{:02}", d.month),
                (Part::Day, Some(d)) => write!(name, "{:02}", d.day),
                (Part::Hour, Some(d)) => write!(name, "{:02}", d.hour),
                (Part::Workspace, _) => write!(name, "{}", sanitize_workspace(workspace_id)),
                (_, None) => Ok(()),
            };
        }
        if name.len() > MAX_INDEX_NAME_BYTES {
            return Err(format!(
                "index name `{name}` is longer than {MAX_INDEX_NAME_BYTES} bytes"
            ));
        }
        Ok(name)
    }
}

/// A workspace id as an index name part: lower case, only `a-z 0-9 - _`, never empty.
fn sanitize_workspace(workspace_id: &str) -> String {
    let s: String = workspace_id
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// A UTC calendar date and hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
}

impl UtcDateTime {
    /// From milliseconds since the Unix epoch (proleptic Gregorian calendar; Howard Hinnant's
    /// `civil_from_days`, exact for every i64 day count in range).
    pub fn from_millis(millis: i64) -> Self {
        const DAY_MS: i64 = 86_400_000;
        let days = millis.div_euclid(DAY_MS);
        let hour = (millis.rem_euclid(DAY_MS) / 3_600_000) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097); // [0, 146096]
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
        let mp = (5 * doy + 2) / 153; // [0, 11], March-based
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self { year, month, day, hour }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_default_renders_from_occurred_at_in_utc() {
        let t = IndexTemplate::parse("nectar-events-%Y.%m.%d").unwrap();
        // 2023-11-14T22:13:20Z
        assert_eq!(t.render(1_700_000_000_000, "acme").unwrap(), "nectar-events-2023.11.14");
        assert_eq!(t.pattern(), "nectar-events-*");
        assert_eq!(t.prefix(), "nectar-events-");
        // One millisecond before midnight and midnight itself fall on different days.
        assert_eq!(t.render(1_704_067_199_999, "acme").unwrap(), "nectar-events-2023.12.31");
        assert_eq!(t.render(1_704_067_200_000, "acme").unwrap(), "nectar-events-2024.01.01");
    }

    #[test]
    fn hours_workspace_and_escaped_percent() {
        let t = IndexTemplate::parse("ev-{workspace_id}-%Y%m%d%H-100%%").unwrap();
        assert_eq!(
            t.render(1_700_000_000_000, "Acme Corp/EU").unwrap(),
            "ev-acme_corp_eu-2023111422-100%"
        );
        assert_eq!(t.pattern(), "ev-*");
        assert_eq!(t.render(0, "").unwrap(), "ev-_-1970010100-100%");
    }

    #[test]
    fn fixed_name_is_its_own_pattern() {
        let t = IndexTemplate::parse("nectar-events").unwrap();
        assert!(!t.has_placeholders());
        assert_eq!(t.pattern(), "nectar-events");
        assert_eq!(t.render(0, "x").unwrap(), "nectar-events");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (template, says) in [
            ("", "empty"),
            ("Events-%Y", "lower case"),
            ("events %Y", "` `"),
            ("events-%Q", "%Q"),
            ("events-%", "lone"),
            ("events-{tenant}", "{tenant}"),
            ("events-{workspace_id", "closing"),
            ("_events", "must not start"),
            ("events:%Y", "`:`"),
            ("events*", "`*`"),
        ] {
            let err = IndexTemplate::parse(template).unwrap_err();
            assert!(err.contains(says), "{template:?}: {err}");
        }
    }

    #[test]
    fn dates_before_the_epoch_and_far_out_of_range() {
        let t = IndexTemplate::parse("e-%Y.%m.%d.%H").unwrap();
        assert_eq!(t.render(-1, "w").unwrap(), "e-1969.12.31.23");
        // 2000-02-29 (a leap day in a century leap year).
        assert_eq!(t.render(951_782_400_000, "w").unwrap(), "e-2000.02.29.00");
        assert!(t.render(i64::MAX, "w").unwrap_err().contains("outside"));
        assert!(t.render(-70_000_000_000_000, "w").unwrap_err().contains("outside"));
    }

    #[test]
    fn civil_dates_match_a_day_by_day_walk() {
        // Walk day by day from 1969-01-01 for 60 years and compare with a naive calendar.
        let mut expected = (1969_i64, 1_u32, 1_u32);
        let start_days = -365_i64;
        for i in 0..(60 * 366) {
            let millis = (start_days + i) * 86_400_000 + 5 * 3_600_000;
            let d = UtcDateTime::from_millis(millis);
            assert_eq!(
                (d.year, d.month, d.day, d.hour),
                (expected.0, expected.1, expected.2, 5)
            );
            let (y, m, day) = expected;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            expected = if day < len {
                (y, m, day + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }
}

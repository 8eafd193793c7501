//! Phone numbers in E.164, with the `phonenumber` crate (a port of Google's libphonenumber,
//! carrying its metadata).

use phonenumber::Mode;
use phonenumber::country::Id;

/// Longer input is not a phone number; it is not worth parsing.
const MAX_LEN: usize = 64;

/// The configured default region (`US`, `gb`, ...).
pub(crate) fn region(code: &str) -> Result<Id, String> {
    code.to_ascii_uppercase()
        .parse::<Id>()
        .map_err(|_| format!("default_phone_region: {code:?} is not an ISO 3166-1 alpha-2 region"))
}

/// `+14155552671` for a number valid for its region, else `None`. Numbers without `+CC` (or an
/// international call prefix) are read in `default_region`; without one they stay `None`.
pub(crate) fn e164(raw: &str, default_region: Option<Id>) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > MAX_LEN {
        return None;
    }
    // The parser has panicked on odd input in past releases; one bad form field must not
    // take the processor down.
    std::panic::catch_unwind(|| {
        let number = phonenumber::parse(default_region, raw).ok()?;
        phonenumber::is_valid(&number).then(|| number.format().mode(Mode::E164).to_string())
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_numbers_use_the_default_region() {
        let us = Some(region("US").unwrap());
        assert_eq!(e164("(201) 555-0123", us).as_deref(), Some("+12015550123"));
        assert_eq!(e164("201.555.0123", us).as_deref(), Some("+12015550123"));
        let gb = Some(region("gb").unwrap());
        assert_eq!(e164("020 7946 0018", gb).as_deref(), Some("+442079460018"));
        assert_eq!(e164("07400 123456", gb).as_deref(), Some("+447400123456"));
        // Without a region a national number cannot be placed.
        assert_eq!(e164("(201) 555-0123", None), None);
    }

    #[test]
    fn international_numbers_ignore_the_default_region() {
        let us = Some(region("US").unwrap());
        assert_eq!(e164("+44 20 7946 0018", us).as_deref(), Some("+442079460018"));
        assert_eq!(e164("+49 30 901820", None).as_deref(), Some("+4930901820"));
        assert_eq!(e164("+33 1 42 68 53 00", None).as_deref(), Some("+33142685300"));
        // An international call prefix from the default region.
        assert_eq!(e164("011 44 20 7946 0018", us).as_deref(), Some("+442079460018"));
    }

    #[test]
    fn invalid_numbers_are_none() {
        let us = Some(region("US").unwrap());
        for bad in [
            "12345",
            "+1 000 000 0000",
            "+999 1234 5678",
            "call me",
            "",
            "555-0123",
            &"9".repeat(80),
        ] {
            assert_eq!(e164(bad, us), None, "{bad}");
        }
    }

    #[test]
    fn unknown_region_is_a_config_error() {
        assert!(region("XX").is_err());
        assert!(region("USA").is_err());
    }
}

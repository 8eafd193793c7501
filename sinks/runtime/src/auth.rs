//! The one auth component of the HTTP sinks: static credentials, and OAuth 2.0 access tokens
//! from a token endpoint (client credentials, refresh token with rotation, JWT bearer grant
//! with an RS256 assertion), cached until [`EXPIRY_MARGIN`] before they expire.
//!
//! A connector calls [`Auth::apply`] on each request. When the target answers 401 to a token,
//! it calls [`Auth::invalidate`] and retries once with a fresh token; a second 401 is fatal
//! ("credentials rejected"). Token endpoints are RFC 6749 §5 (`access_token`, `expires_in`,
//! `refresh_token`; errors `{"error": "invalid_grant", ...}`) and RFC 7523 for the JWT grant.
//!
//! The token requests are a form POST each, written here rather than with the `oauth2`
//! crate: its current release is built on reqwest 0.12 (the workspace uses 0.13), and the
//! JWT bearer grant, the one most targets here need, is not among its flows.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nectar_core::Sensitive;
use reqwest::RequestBuilder;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::http::{error_chain, excerpt};

/// Refresh this long before the token endpoint's expiry, so a token never expires in flight.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// How long an assertion is valid: Salesforce wants `exp` "within 3 minutes"; Google allows
/// an hour.
const ASSERTION_LIFETIME: u64 = 150;

/// The grant type of a JWT bearer assertion (RFC 7523 §2.1).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Why no credential could be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint refused the client, the refresh token or the assertion.
    #[error("credentials rejected: {0}")]
    Rejected(String),
    /// The token endpoint could not be reached or failed (worth retrying).
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
}

/// How requests are authenticated.
#[derive(Debug)]
pub enum Auth {
    None,
    Bearer(Sensitive<String>),
    Basic {
        username: String,
        password: Sensitive<String>,
    },
    /// A key in a header (`X-Kit-Api-Key: <key>`).
    Header {
        name: String,
        value: Sensitive<String>,
    },
    /// A key in the query string (`?api_secret=<key>`).
    Query {
        name: String,
        value: Sensitive<String>,
    },
    /// `Authorization: Bearer <access token>` from a token endpoint.
    OAuth2(Box<TokenSource>),
}

impl Auth {
    /// Add the credential to `request`. Also returns the access token used, for
    /// [`Auth::refresh`] when the target refuses it.
    pub async fn apply(&self, request: RequestBuilder) -> Result<(RequestBuilder, Option<String>), AuthError> {
        Ok(match self {
            Auth::None => (request, None),
            Auth::Bearer(token) => (request.bearer_auth(token.expose()), None),
            Auth::Basic { username, password } => (request.basic_auth(username, Some(password.expose())), None),
            Auth::Header { name, value } => (request.header(name.as_str(), value.expose().as_str()), None),
            Auth::Query { name, value } => (request.query(&[(name.as_str(), value.expose().as_str())]), None),
            Auth::OAuth2(source) => {
                let token = source.token().await?;
                (request.bearer_auth(&token), Some(token))
            }
        })
    }

    /// Whether a 401 is worth one retry with a fresh credential (only tokens expire).
    pub fn refreshes(&self) -> bool {
        matches!(self, Auth::OAuth2(_))
    }

    /// The target refused `stale`: fetch a new token (unless another request already did).
    pub async fn refresh(&self, stale: Option<&str>) -> Result<(), AuthError> {
        if let (Auth::OAuth2(source), Some(stale)) = (self, stale) {
            source.refresh(stale).await?;
        }
        Ok(())
    }
}

/// An OAuth 2.0 grant.
#[derive(Debug)]
pub enum Grant {
    /// RFC 6749 §4.4. `basic`: client id and secret as HTTP Basic (the RFC's preference),
    /// else as form fields.
    ClientCredentials {
        client_id: String,
        client_secret: Sensitive<String>,
        scope: Option<String>,
        basic: bool,
        /// Extra form fields (Zoom's `account_id`, an `audience`).
        extra: Vec<(String, String)>,
    },
    /// RFC 6749 §6. A new refresh token in the answer replaces the old one (rotation).
    RefreshToken {
        client_id: String,
        client_secret: Sensitive<String>,
    },
    /// RFC 7523: an RS256-signed assertion (Salesforce: `iss` = consumer key, `sub` = user,
    /// `aud` = login URL; Google: `iss` = service account, `scope`, `aud` = token URI, `sub`
    /// = the user for domain-wide delegation).
    JwtBearer {
        issuer: String,
        subject: Option<String>,
        audience: String,
        scope: Option<String>,
        key: Box<EncodingKey>,
        key_id: Option<String>,
    },
}

/// A token endpoint and its cached token.
#[derive(Debug)]
pub struct TokenSource {
    token_url: String,
    grant: Grant,
    http: reqwest::Client,
    state: Mutex<TokenState>,
}

#[derive(Debug)]
struct TokenState {
    refresh_token: Option<Sensitive<String>>,
    cached: Option<(Sensitive<String>, Instant)>,
}

/// RFC 6749 §5.1 (HubSpot's newer reference pages show camelCase names: both are read).
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(alias = "accessToken")]
    access_token: String,
    #[serde(default, alias = "expiresIn")]
    expires_in: Option<u64>,
    #[serde(default, alias = "refreshToken")]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// How long a token without `expires_in` is used (Salesforce's answer has none; its session
/// timeout is at least 15 minutes). A 401 refreshes it earlier.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(15 * 60);

impl TokenSource {
    pub fn new(
        token_url: String,
        grant: Grant,
        refresh_token: Option<Sensitive<String>>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            token_url,
            grant,
            http,
            state: Mutex::new(TokenState {
                refresh_token,
                cached: None,
            }),
        }
    }

    /// An RS256 key from PEM (PKCS#1 or PKCS#8), or an error that says what is wrong.
    pub fn rsa_key(pem: &str) -> Result<EncodingKey, String> {
        EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| format!("not an RSA private key in PEM: {e}"))
    }

    /// The current access token, fetching a new one when none is cached or it is about to
    /// expire.
    pub async fn token(&self) -> Result<String, AuthError> {
        self.fetch(None).await
    }

    /// A new token after the target refused `stale` (the cached one, unless another request
    /// refreshed it meanwhile: then that one).
    pub async fn refresh(&self, stale: &str) -> Result<String, AuthError> {
        self.fetch(Some(stale)).await
    }

    async fn fetch(&self, stale: Option<&str>) -> Result<String, AuthError> {
        let mut state = self.state.lock().await;
        if let Some((token, until)) = &state.cached
            && Instant::now() < *until
            && stale != Some(token.expose().as_str())
        {
            return Ok(token.expose().clone());
        }
        let mut form: Vec<(String, String)> = Vec::new();
        let mut request = self.http.post(&self.token_url);
        match &self.grant {
            Grant::ClientCredentials {
                client_id,
                client_secret,
                scope,
                basic,
                extra,
            } => {
                form.push(("grant_type".into(), "client_credentials".into()));
                if let Some(scope) = scope {
                    form.push(("scope".into(), scope.clone()));
                }
                form.extend(extra.iter().cloned());
                if *basic {
                    request = request.basic_auth(client_id, Some(client_secret.expose()));
                } else {
                    form.push(("client_id".into(), client_id.clone()));
                    form.push(("client_secret".into(), client_secret.expose().clone()));
                }
            }
            Grant::RefreshToken {
                client_id,
                client_secret,
            } => {
                let refresh = state
                    .refresh_token
                    .as_ref()
                    .ok_or_else(|| AuthError::Rejected("no refresh token".into()))?;
                form.extend([
                    ("grant_type".into(), "refresh_token".into()),
                    ("refresh_token".into(), refresh.expose().clone()),
                    ("client_id".into(), client_id.clone()),
                    ("client_secret".into(), client_secret.expose().clone()),
                ]);
            }
            Grant::JwtBearer { .. } => {
                form.push(("grant_type".into(), JWT_BEARER.into()));
                form.push(("assertion".into(), self.assertion()?));
            }
        }
        let body = serde_urlencoded::to_string(&form).map_err(|e| AuthError::Rejected(e.to_string()))?;
        let answer = request
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| AuthError::Unavailable(error_chain(&e.without_url())))?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(AuthError::Unavailable(format!(
                "token endpoint answered HTTP {}: {}",
                status.as_u16(),
                excerpt(&text)
            )));
        }
        if !status.is_success() {
            // RFC 6749 §5.2: `{"error": "invalid_grant", "error_description": "..."}`.
            let detail = match serde_json::from_str::<TokenErrorAnswer>(&text) {
                Ok(TokenErrorAnswer {
                    error,
                    error_description: Some(d),
                }) => format!("{error}: {d}"),
                Ok(TokenErrorAnswer { error, .. }) => error,
                Err(_) => excerpt(&text),
            };
            return Err(AuthError::Rejected(format!(
                "token endpoint {} answered HTTP {}: {detail}",
                self.token_url,
                status.as_u16()
            )));
        }
        let token: TokenResponse = serde_json::from_str(&text)
            .map_err(|e| AuthError::Unavailable(format!("token endpoint answered {e}: {}", excerpt(&text))))?;
        let lifetime = token.expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let until = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN).max(Duration::from_secs(1));
        if let Some(rotated) = token.refresh_token.filter(|r| !r.is_empty()) {
            state.refresh_token = Some(Sensitive::new(rotated));
        }
        state.cached = Some((Sensitive::new(token.access_token.clone()), until));
        Ok(token.access_token)
    }

    /// Sign an assertion now (JWT grants), so a key that cannot sign fails at start.
    pub fn check_signing(&self) -> Result<(), AuthError> {
        match self.grant {
            Grant::JwtBearer { .. } => self.assertion().map(|_| ()),
            _ => Ok(()),
        }
    }

    fn assertion(&self) -> Result<String, AuthError> {
        let Grant::JwtBearer {
            issuer,
            subject,
            audience,
            scope,
            key,
            key_id,
        } = &self.grant
        else {
            return Err(AuthError::Rejected("not a JWT bearer grant".into()));
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": issuer, "aud": audience, "iat": now, "exp": now + ASSERTION_LIFETIME,
        });
        if let Some(sub) = subject {
            claims["sub"] = sub.clone().into();
        }
        if let Some(scope) = scope {
            claims["scope"] = scope.clone().into();
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key_id.clone();
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| AuthError::Rejected(format!("cannot sign the assertion: {e}")))
    }
}

/// The Standard Webhooks signature (<https://www.standardwebhooks.com/>): `webhook-id`,
/// `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`,
/// where the secret is `whsec_<base64 key>`.
#[derive(Debug, Clone)]
pub struct WebhookSigner {
    key: Sensitive<Vec<u8>>,
}

impl WebhookSigner {
    /// From `whsec_<base64>` (or bare base64).
    pub fn new(secret: &str) -> Result<Self, String> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("not a `whsec_<base64>` secret: {e}"))?;
        if key.len() < 16 {
            return Err("the secret's key is shorter than 16 bytes".into());
        }
        Ok(Self {
            key: Sensitive::new(key),
        })
    }

    /// The three headers for `body` sent as message `id` at `timestamp` (epoch seconds).
    pub fn headers(&self, id: &str, timestamp: u64, body: &[u8]) -> [(&'static str, String); 3] {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.expose()).expect("any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", format!("v1,{signature}")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature_matches_the_published_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md,
        // "Signature scheme") and its reference libraries' tests.
        let signer = WebhookSigner::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let [id, ts, sig] = signer.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(id.1, "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(ts.1, "1614265330");
        assert_eq!(sig.1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_secret_that_is_not_base64_is_refused() {
        assert!(WebhookSigner::new("whsec_***").is_err());
        assert!(WebhookSigner::new("whsec_c2hvcnQ=").is_err(), "5 bytes is too short");
    }
}

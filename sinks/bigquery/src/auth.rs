//! Service-account authentication: Google's "OAuth 2.0 for Server to Server Applications"
//! (<https://developers.google.com/identity/protocols/oauth2/service-account#httprest>).
//!
//! The sink signs a JWT with the key file's RSA private key (RS256; claims `iss` = the
//! service account's e-mail, `scope`, `aud` = the key file's `token_uri`, `iat`, `exp` one
//! hour later at most), posts it to `token_uri` with
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, and uses the access token it gets
//! (`{"access_token", "expires_in", "token_type": "Bearer"}`) until shortly before it
//! expires. A refused assertion is answered `400 {"error": "invalid_grant", ...}`.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nectar_core::Sensitive;
use nectar_sink::http::{error_chain, excerpt};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// The grant type of a JWT bearer assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Google allows an assertion to live one hour at most.
const ASSERTION_LIFETIME: u64 = 3600;

/// The fields of a service-account key file the sink uses.
#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    #[serde(rename = "type", default)]
    pub key_type: Option<String>,
    pub client_email: String,
    pub private_key: Sensitive<String>,
    #[serde(default)]
    pub private_key_id: Option<String>,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let key: Self = serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!("not a service-account key file (JSON with client_email, private_key, token_uri): {e}")
        })?;
        if let Some(t) = &key.key_type
            && t != "service_account"
        {
            anyhow::bail!("the key file is of type `{t}`; the sink needs a `service_account` key");
        }
        if !(key.token_uri.starts_with("https://") || key.token_uri.starts_with("http://")) {
            anyhow::bail!("the key file's token_uri `{}` is not a URL", key.token_uri);
        }
        Ok(key)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the key file {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// The JWT claim set Google expects.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// Why no access token could be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint refused the service account (`invalid_grant`, a deleted or
    /// disabled account, a revoked key): retrying cannot help.
    #[error("the token endpoint {uri} refused the service account {account}: {detail}")]
    Rejected {
        uri: String,
        account: String,
        detail: String,
    },
    /// The endpoint could not be reached or failed: try again later.
    #[error("the token endpoint {uri} is unavailable: {detail}")]
    Unavailable { uri: String, detail: String },
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct TokenErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

struct CachedToken {
    token: Sensitive<String>,
    refresh_at: Instant,
}

/// Access tokens for one service account, cached until shortly before they expire. One
/// request at a time fetches a new token; the others wait for it.
pub struct TokenSource {
    http: reqwest::Client,
    key: EncodingKey,
    account: String,
    key_id: Option<String>,
    token_uri: String,
    scope: String,
    cached: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.account)
            .field("token_uri", &self.token_uri)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(http: reqwest::Client, key: &ServiceAccountKey, scope: &str) -> anyhow::Result<Self> {
        let encoding = EncodingKey::from_rsa_pem(key.private_key.expose().as_bytes())
            .map_err(|e| anyhow::anyhow!("the key file's private_key is not an RSA private key in PEM: {e}"))?;
        let source = Self {
            http,
            key: encoding,
            account: key.client_email.clone(),
            key_id: key.private_key_id.clone(),
            token_uri: key.token_uri.clone(),
            scope: scope.to_owned(),
            cached: Mutex::new(None),
        };
        // Sign once now, so a key the backend cannot use fails at start, not mid-stream.
        source
            .assertion(now_secs())
            .map_err(|e| anyhow::anyhow!("cannot sign with the key file's private_key: {e}"))?;
        Ok(source)
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The signed assertion for `now` (seconds since the epoch).
    pub fn assertion(&self, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = Claims {
            iss: self.account.clone(),
            scope: self.scope.clone(),
            aud: self.token_uri.clone(),
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
    }

    /// A valid access token: the cached one, or a new one.
    pub async fn token(&self) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.expose().clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.expose().clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forget `stale` (a token the API refused with 401) and get a new one. A token another
    /// request already replaced is not fetched again.
    pub async fn refresh(&self, stale: &str) -> Result<String, TokenError> {
        {
            let mut cached = self.cached.lock().await;
            if cached.as_ref().is_some_and(|c| c.token.expose() == stale) {
                *cached = None;
            }
        }
        self.token().await
    }

    async fn fetch(&self) -> Result<CachedToken, TokenError> {
        let unavailable = |detail: String| TokenError::Unavailable {
            uri: self.token_uri.clone(),
            detail,
        };
        let assertion = self
            .assertion(now_secs())
            .map_err(|e| unavailable(format!("cannot sign the assertion: {e}")))?;
        let started = Instant::now();
        let response = self
            .http
            .post(&self.token_uri)
            .form(&[("grant_type", JWT_BEARER), ("assertion", assertion.as_str())])
            .send()
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| unavailable(error_chain(&e)))?;
        if status.is_success() {
            let answer: TokenAnswer = serde_json::from_str(&body)
                .map_err(|e| unavailable(format!("unreadable answer ({e}): {}", excerpt(&body))))?;
            if answer
                .token_type
                .as_deref()
                .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
            {
                return Err(unavailable(format!("unexpected token_type in {}", excerpt(&body))));
            }
            let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
            return Ok(CachedToken {
                token: Sensitive::new(answer.access_token),
                refresh_at: started + refresh_after(lifetime),
            });
        }
        let detail = match serde_json::from_str::<TokenErrorAnswer>(&body) {
            Ok(e) => match e.error_description {
                Some(d) => format!("{}: {d} (HTTP {})", e.error, status.as_u16()),
                None => format!("{} (HTTP {})", e.error, status.as_u16()),
            },
            Err(_) => format!("HTTP {}: {}", status.as_u16(), excerpt(&body)),
        };
        if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(TokenError::Rejected {
                uri: self.token_uri.clone(),
                account: self.account.clone(),
                detail,
            })
        } else {
            Err(unavailable(detail))
        }
    }
}

/// When to replace a token that lives `lifetime`: five minutes before it expires, or halfway
/// through a shorter life.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let margin = Duration::from_secs(300).min(lifetime / 2);
    lifetime - margin
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_replaced_before_they_expire() {
        assert_eq!(refresh_after(Duration::from_secs(3599)), Duration::from_secs(3299));
        assert_eq!(refresh_after(Duration::from_secs(60)), Duration::from_secs(30));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn key_files_are_checked() {
        let e = ServiceAccountKey::from_json("{\"type\": \"authorized_user\", \"client_email\": \"a\", \"private_key\": \"k\", \"token_uri\": \"https://t\"}")
            .unwrap_err();
        assert!(e.to_string().contains("service_account"), "{e}");
        let e = ServiceAccountKey::from_json("{\"client_email\": \"a\"}").unwrap_err();
        assert!(e.to_string().contains("private_key"), "{e}");
        let key = ServiceAccountKey::from_json(
            "{\"type\": \"service_account\", \"client_email\": \"a@p.iam.gserviceaccount.com\", \"private_key\": \"k\", \"token_uri\": \"https://oauth2.googleapis.com/token\", \"project_id\": \"p\"}",
        )
        .expect("parses");
        assert!(!format!("{key:?}").contains("private_key:"), "the key never prints");
        let e = TokenSource::new(reqwest::Client::new(), &key, "s").unwrap_err();
        assert!(e.to_string().contains("not an RSA private key"), "{e}");
    }
}

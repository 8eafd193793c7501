//! The bearer token: a private app's static token, or an OAuth access token refreshed at
//! HubSpot's token endpoint (`grant_type=refresh_token`, form-encoded), cached until a minute
//! before it expires and refreshed once more when HubSpot answers 401 to it.

use std::time::{Duration, Instant};

use nectar_core::Sensitive;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::OAuthConfig;

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    /// The token endpoint refused the app's credentials or the refresh token.
    Rejected(String),
    /// The token endpoint could not be reached or failed (worth retrying).
    Unavailable(String),
}

#[derive(Debug)]
pub enum Auth {
    Static(Sensitive<String>),
    OAuth(OAuthClient),
}

#[derive(Debug)]
pub struct OAuthClient {
    client_id: String,
    client_secret: Sensitive<String>,
    token_url: String,
    http: reqwest::Client,
    state: Mutex<OAuthState>,
}

#[derive(Debug)]
struct OAuthState {
    refresh_token: Sensitive<String>,
    cached: Option<(Sensitive<String>, Instant)>,
}

/// HubSpot's token response (`snake_case`; the newer reference pages show camelCase, so both
/// are read).
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(alias = "accessToken")]
    access_token: String,
    #[serde(alias = "expiresIn")]
    expires_in: u64,
    #[serde(default, alias = "refreshToken")]
    refresh_token: Option<String>,
}

/// Refresh this long before HubSpot's expiry, so a token never expires in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

impl Auth {
    pub fn new(
        token: Option<&Sensitive<String>>,
        oauth: Option<&OAuthConfig>,
        token_url: Option<String>,
        http: reqwest::Client,
    ) -> Self {
        match (oauth, token) {
            (Some(o), _) => Auth::OAuth(OAuthClient {
                client_id: o.client_id.clone(),
                client_secret: o.client_secret.clone(),
                token_url: token_url.unwrap_or_default(),
                http,
                state: Mutex::new(OAuthState {
                    refresh_token: o.refresh_token.clone(),
                    cached: None,
                }),
            }),
            (None, Some(t)) => Auth::Static(t.clone()),
            (None, None) => Auth::Static(Sensitive::new(String::new())),
        }
    }

    /// Whether a 401 is worth one refresh and a second try.
    pub fn refreshable(&self) -> bool {
        matches!(self, Auth::OAuth(_))
    }

    /// The token to send now.
    pub async fn token(&self) -> Result<String, AuthError> {
        match self {
            Auth::Static(t) => Ok(t.expose().clone()),
            Auth::OAuth(o) => o.token(None).await,
        }
    }

    /// A fresh token after HubSpot refused `rejected` (unless another call refreshed it
    /// meanwhile).
    pub async fn refresh_after_401(&self, rejected: &str) -> Result<String, AuthError> {
        match self {
            Auth::Static(t) => Ok(t.expose().clone()),
            Auth::OAuth(o) => o.token(Some(rejected)).await,
        }
    }
}

impl OAuthClient {
    async fn token(&self, rejected: Option<&str>) -> Result<String, AuthError> {
        let mut state = self.state.lock().await;
        if let Some((token, expires)) = &state.cached
            && Instant::now() + EXPIRY_MARGIN < *expires
            && rejected != Some(token.expose().as_str())
        {
            return Ok(token.expose().clone());
        }
        let form = serde_urlencoded::to_string([
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose().as_str()),
            ("refresh_token", state.refresh_token.expose().as_str()),
        ])
        .map_err(|e| AuthError::Unavailable(format!("cannot encode the token request: {e}")))?;
        let response = self
            .http
            .post(&self.token_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                AuthError::Unavailable(format!(
                    "token endpoint {}: {}",
                    self.token_url,
                    nectar_sink::http::error_chain(&e)
                ))
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(AuthError::Unavailable(format!(
                "token endpoint answered HTTP {}: {}",
                status.as_u16(),
                nectar_sink::http::excerpt(&body)
            )));
        }
        if !status.is_success() {
            // 400 BAD_REFRESH_TOKEN / BAD_CLIENT_ID / BAD_CLIENT_SECRET, 401, 403.
            return Err(AuthError::Rejected(format!(
                "HubSpot's token endpoint refused the OAuth credentials (HTTP {}): {}",
                status.as_u16(),
                nectar_sink::http::excerpt(&body)
            )));
        }
        let token: TokenResponse = serde_json::from_str(&body).map_err(|e| {
            AuthError::Unavailable(format!(
                "unreadable token response ({e}): {}",
                nectar_sink::http::excerpt(&body)
            ))
        })?;
        if let Some(rotated) = token.refresh_token.filter(|r| !r.is_empty()) {
            state.refresh_token = Sensitive::new(rotated);
        }
        let expires = Instant::now() + Duration::from_secs(token.expires_in);
        state.cached = Some((Sensitive::new(token.access_token.clone()), expires));
        Ok(token.access_token)
    }
}

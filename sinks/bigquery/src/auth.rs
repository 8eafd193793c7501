//! Service-account authentication: Google's "OAuth 2.0 for Server to Server Applications"
//! (<https://developers.google.com/identity/protocols/oauth2/service-account#httprest>).
//!
//! The sink signs a JWT with the key file's RSA private key (RS256; claims `iss` = the
//! service account's e-mail, `scope`, `aud` = the key file's `token_uri`, `iat`, `exp`),
//! posts it to `token_uri` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, and
//! uses the access token it gets (`{"access_token", "expires_in", "token_type": "Bearer"}`)
//! until shortly before it expires. A refused assertion is answered `400 {"error":
//! "invalid_grant", ...}`. The grant itself is the shared `nectar_sink::auth`; this module
//! reads the key file.

use std::path::Path;

use nectar_core::Sensitive;
use nectar_sink::auth::{Grant, TokenSource};
use serde::Deserialize;

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

impl ServiceAccountKey {
    /// The shared auth component's token source for this key: Google's JWT bearer grant
    /// (`iss` = the account, `scope`, `aud` = the key file's `token_uri`), signed once here so
    /// a key the backend cannot use fails at start, not mid-stream.
    pub fn token_source(&self, scope: &str, http: reqwest::Client) -> anyhow::Result<TokenSource> {
        let key = TokenSource::rsa_key(self.private_key.expose())
            .map_err(|e| anyhow::anyhow!("the key file's private_key is {e}"))?;
        let source = TokenSource::new(
            self.token_uri.clone(),
            Grant::JwtBearer {
                issuer: self.client_email.clone(),
                subject: None,
                audience: self.token_uri.clone(),
                scope: Some(scope.to_owned()),
                key: Box::new(key),
                key_id: self.private_key_id.clone(),
            },
            None,
            http,
        );
        source
            .check_signing()
            .map_err(|e| anyhow::anyhow!("cannot sign with the key file's private_key: {e}"))?;
        Ok(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = key.token_source("s", reqwest::Client::new()).unwrap_err();
        assert!(e.to_string().contains("not an RSA private key"), "{e}");
    }
}

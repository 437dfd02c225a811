//! IAM database login with a service-account key file: the OAuth2 access token a login needs,
//! which google-cloud-auth does not make from a key file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

use super::{LOGIN_SCOPE, REFRESH_BEFORE, REQUEST_TIMEOUT, deepest};

/// IAM login with a service-account key file. google-cloud-auth turns a key file into
/// self-signed JWTs (AIP-4111), which Google's APIs accept but a database login does not: it
/// needs an OAuth2 access token. This trades a signed assertion for one at the key's
/// `token_uri` (RFC 7523), as Google's other client libraries do.
pub(super) struct KeyFileLogin {
    key: serde_json::Value,
    token_uri: String,
    /// The token and when it stops being worth using.
    cached: Mutex<Option<(String, std::time::Instant)>>,
}

/// Names the endpoint only: the key and the token are secrets.
impl std::fmt::Debug for KeyFileLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFileLogin")
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl KeyFileLogin {
    /// The key file when it is a service-account key, else None (other kinds of credentials
    /// give real access tokens through google-cloud-auth).
    pub(super) fn load(path: &std::path::Path) -> Result<Option<KeyFileLogin>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        if key["type"] != "service_account" {
            return Ok(None);
        }
        let token_uri = key["token_uri"]
            .as_str()
            .unwrap_or("https://oauth2.googleapis.com/token")
            .to_string();
        Ok(Some(KeyFileLogin {
            key,
            token_uri,
            cached: Mutex::new(None),
        }))
    }

    /// Ok(token), or Err((reason, transient)); a token is reused until 4 minutes before it
    /// expires.
    pub(super) async fn token(&self) -> Result<String, (String, bool)> {
        let mut cached = self.cached.lock().await;
        if let Some((token, good_until)) = cached.as_ref()
            && std::time::Instant::now() < *good_until
        {
            return Ok(token.clone());
        }
        let assertion = self.assertion().await?;
        let (token, lifetime) = self.exchange(&assertion).await?;
        let good_until = std::time::Instant::now() + lifetime.saturating_sub(REFRESH_BEFORE);
        *cached = Some((token.clone(), good_until));
        Ok(token)
    }

    /// A JWT asking for the login scope, signed with the key by google-cloud-auth's signer.
    async fn assertion(&self) -> Result<String, (String, bool)> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT",
            "kid": self.key["private_key_id"].as_str().unwrap_or_default()});
        let claims = serde_json::json!({"iss": self.key["client_email"], "scope": LOGIN_SCOPE,
            "aud": self.token_uri, "iat": now, "exp": now + 3600});
        let unsigned = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signer =
            google_cloud_auth::credentials::service_account::Builder::new(self.key.clone())
                .build_signer()
                .map_err(|e| (format!("the key file: {}", deepest(&e)), false))?;
        let signature = signer
            .sign(unsigned.as_bytes())
            .await
            .map_err(|e| (format!("signing with the key file: {}", deepest(&e)), false))?;
        Ok(format!("{unsigned}.{}", b64.encode(&signature)))
    }

    /// The JWT-bearer grant at `token_uri`: the access token and how long it lasts.
    async fn exchange(&self, assertion: &str) -> Result<(String, Duration), (String, bool)> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| (e.to_string(), false))?;
        let reply = client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion),
            ])
            .send()
            .await
            .map_err(|e| (format!("{}: {}", self.token_uri, deepest(&e)), true))?;
        let status = reply.status();
        let body: serde_json::Value = reply.json().await.unwrap_or_default();
        match body["access_token"].as_str() {
            Some(token) if status.is_success() => {
                let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(3600));
                Ok((token.to_string(), lifetime))
            }
            // An OAuth error names itself in `error` and `error_description`; neither holds
            // a secret, unlike the rest of a reply might.
            _ => Err((
                format!(
                    "{} answered {status}: {} {}",
                    self.token_uri,
                    body["error"].as_str().unwrap_or_default(),
                    body["error_description"].as_str().unwrap_or_default()
                ),
                status.is_server_error() || status.as_u16() == 429,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_login_never_prints_its_key_or_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let key = serde_json::json!({"type": "service_account", "private_key": "SECRET-KEY",
            "client_email": "sa@p.iam.gserviceaccount.com", "token_uri": "http://127.0.0.1:9/token"});
        std::fs::write(&path, key.to_string()).unwrap();
        let login = KeyFileLogin::load(&path)
            .unwrap()
            .expect("a service-account key");
        *login.cached.try_lock().unwrap() =
            Some(("SECRET-TOKEN".into(), std::time::Instant::now()));
        let printed = format!("{login:?}");
        assert!(printed.contains("http://127.0.0.1:9/token"), "{printed}");
        assert!(!printed.contains("SECRET"), "{printed}");
        let user_key = dir.path().join("user.json");
        std::fs::write(&user_key, r#"{"type": "authorized_user"}"#).unwrap();
        assert!(KeyFileLogin::load(&user_key).unwrap().is_none());
    }
}

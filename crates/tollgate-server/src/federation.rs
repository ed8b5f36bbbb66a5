//! The external sign-in providers the operator configured, behind core's `IdentityProvider`:
//! OpenID Connect (`[oidc.<name>]`, through the `openidconnect` crate) and plain OAuth 2.0
//! (`[oauth2.<name>]`, such as X, through the `oauth2` crate and a user-info endpoint).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use tollgate_core::{ExternalIdentity, IdentityProvider, ProviderError};

use crate::config::{Config, OAuth2Config, OAuth2Preset, https_or_loopback};

/// An OpenID Connect provider through the `openidconnect` crate: discovery (on first use, again
/// after an hour, and at once when an ID token names a key we do not have, so the provider can
/// rotate its keys), authorization code with PKCE S256, ID token checked for signature, issuer,
/// audience and nonce.
struct OidcProvider {
    name: String,
    display_name: String,
    issuer: String,
    client_id: String,
    client_secret: secrecy::SecretString,
    redirect_uri: String,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<openidconnect::core::CoreProviderMetadata>)>>,
}

type OidcClient = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// How long discovered metadata (endpoints and signing keys) is kept.
const OIDC_METADATA_TTL: Duration = Duration::from_secs(3600);

impl OidcProvider {
    /// The provider's metadata: cached, or discovered afresh when stale or when `refresh`.
    async fn metadata(&self, refresh: bool) -> Result<Arc<openidconnect::core::CoreProviderMetadata>, ProviderError> {
        let mut cached = self.metadata.lock().await;
        if let Some((fetched, metadata)) = cached.as_ref()
            && !refresh
            && fetched.elapsed() < OIDC_METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = openidconnect::IssuerUrl::new(self.issuer.clone())
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let metadata = Arc::new(
            openidconnect::core::CoreProviderMetadata::discover_async(issuer, &self.http)
                .await
                .map_err(|e| ProviderError::Unavailable(format!("discovery at {} failed: {e}", self.issuer)))?,
        );
        *cached = Some((tokio::time::Instant::now(), metadata.clone()));
        Ok(metadata)
    }

    async fn client(&self, refresh: bool) -> Result<OidcClient, ProviderError> {
        let metadata = self.metadata(refresh).await?;
        let redirect = openidconnect::RedirectUrl::new(self.redirect_uri.clone())
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(openidconnect::core::CoreClient::from_provider_metadata(
            (*metadata).clone(),
            openidconnect::ClientId::new(self.client_id.clone()),
            Some(openidconnect::ClientSecret::new(
                self.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_redirect_uri(redirect))
    }
}

#[async_trait::async_trait]
impl IdentityProvider for OidcProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn display_name(&self) -> &str {
        &self.display_name
    }

    async fn authorization_url(&self, state: &str, nonce: &str, pkce_verifier: &str) -> Result<String, ProviderError> {
        let client = self.client(false).await?;
        let challenge = openidconnect::PkceCodeChallenge::from_code_verifier_sha256(
            &openidconnect::PkceCodeVerifier::new(pkce_verifier.to_owned()),
        );
        let (state, nonce) = (state.to_owned(), nonce.to_owned());
        let (url, _, _) = client
            .authorize_url(
                openidconnect::core::CoreAuthenticationFlow::AuthorizationCode,
                move || openidconnect::CsrfToken::new(state),
                move || openidconnect::Nonce::new(nonce),
            )
            .add_scope(openidconnect::Scope::new("email".into()))
            .add_scope(openidconnect::Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok(url.to_string())
    }

    async fn finish(&self, code: &str, pkce_verifier: &str, nonce: &str) -> Result<ExternalIdentity, ProviderError> {
        use openidconnect::TokenResponse as _;
        let client = self.client(false).await?;
        let response = client
            .exchange_code(openidconnect::AuthorizationCode::new(code.to_owned()))
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?
            .set_pkce_verifier(openidconnect::PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(exchange_error)?;
        let id_token = response
            .id_token()
            .ok_or_else(|| ProviderError::Refused("the provider returned no ID token".into()))?;
        let nonce = openidconnect::Nonce::new(nonce.to_owned());
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            // Signed with a key we have not seen: the provider may have rotated; look again once.
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_)) => {
                let client = self.client(true).await?;
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|e| ProviderError::Refused(format!("the ID token is not valid: {e}")))?
                    .clone()
            }
            Err(other) => return Err(ProviderError::Refused(format!("the ID token is not valid: {other}"))),
        };
        Ok(ExternalIdentity {
            issuer: claims.issuer().to_string(),
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims.name().and_then(|n| n.get(None)).map(|n| n.to_string()),
        })
    }
}

/// A provider speaking OAuth 2.0 without OpenID Connect: authorization code with PKCE (S256)
/// and state; who signed in comes from its user-info endpoint, read with the access token.
struct OAuth2Provider {
    name: String,
    display_name: String,
    issuer: String,
    client: oauth2::basic::BasicClient<
        oauth2::EndpointSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    >,
    scopes: Vec<String>,
    userinfo_url: String,
    subject_pointer: String,
    name_pointer: Option<String>,
    email_pointer: Option<String>,
    http: reqwest::Client,
}

/// The most a user-info answer may be.
const MAX_USERINFO_BYTES: usize = 1 << 20;

#[async_trait::async_trait]
impl IdentityProvider for OAuth2Provider {
    fn name(&self) -> &str {
        &self.name
    }

    fn display_name(&self) -> &str {
        &self.display_name
    }

    async fn authorization_url(&self, state: &str, _nonce: &str, pkce_verifier: &str) -> Result<String, ProviderError> {
        let challenge = oauth2::PkceCodeChallenge::from_code_verifier_sha256(&oauth2::PkceCodeVerifier::new(
            pkce_verifier.to_owned(),
        ));
        let state = state.to_owned();
        let (url, _) = self
            .client
            .authorize_url(move || oauth2::CsrfToken::new(state))
            .add_scopes(self.scopes.iter().map(|s| oauth2::Scope::new(s.clone())))
            .set_pkce_challenge(challenge)
            .url();
        Ok(url.to_string())
    }

    async fn finish(&self, code: &str, pkce_verifier: &str, _nonce: &str) -> Result<ExternalIdentity, ProviderError> {
        use oauth2::TokenResponse as _;
        let token = self
            .client
            .exchange_code(oauth2::AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(oauth2::PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(exchange_error)?;
        let mut response = self
            .http
            .get(&self.userinfo_url)
            .bearer_auth(token.access_token().secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("the user-info request failed: {e}")))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!(
                "the user-info endpoint answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::Refused(format!(
                "the user-info endpoint answered {status}"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("reading user info: {e}")))?
        {
            if body.len() + chunk.len() > MAX_USERINFO_BYTES {
                return Err(ProviderError::Refused("the user-info answer is too large".to_owned()));
            }
            body.extend_from_slice(&chunk);
        }
        let info: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Refused(format!("the user-info answer is not JSON: {e}")))?;
        userinfo_identity(
            &info,
            &self.issuer,
            &self.subject_pointer,
            self.name_pointer.as_deref(),
            self.email_pointer.as_deref(),
        )
        .map_err(ProviderError::Refused)
    }
}

/// A failed code exchange: the provider's refusal (an OAuth error answer, such as `invalid_grant`
/// for a wrong code or PKCE verifier), or the provider being unreachable or broken.
fn exchange_error<RE, T>(error: oauth2::RequestTokenError<RE, T>) -> ProviderError
where
    RE: std::error::Error + 'static,
    T: oauth2::ErrorResponse + 'static,
{
    let message = format!("the code exchange failed: {error}");
    match error {
        oauth2::RequestTokenError::ServerResponse(_) => ProviderError::Refused(message),
        _ => ProviderError::Unavailable(message),
    }
}

/// Reads who signed in out of a user-info answer. The subject must be a non-empty string or a
/// number; the address, if any, never counts as verified.
fn userinfo_identity(
    info: &serde_json::Value,
    issuer: &str,
    subject_pointer: &str,
    name_pointer: Option<&str>,
    email_pointer: Option<&str>,
) -> Result<ExternalIdentity, String> {
    let text = |pointer: Option<&str>| {
        pointer
            .and_then(|p| info.pointer(p))
            .and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.trim().to_owned()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
    };
    let subject =
        text(Some(subject_pointer)).ok_or_else(|| format!("the user-info answer has no id at {subject_pointer}"))?;
    Ok(ExternalIdentity {
        issuer: issuer.to_owned(),
        subject,
        email: text(email_pointer),
        email_verified: false,
        name: text(name_pointer),
    })
}

/// X's OAuth 2.0 settings (docs.x.com: authorization code with PKCE, confidential clients use
/// HTTP Basic at the token endpoint; `GET /2/users/me` answers `{"data": {"id", "name",
/// "username"}}` and gives no address).
struct Preset {
    display_name: &'static str,
    authorization_url: &'static str,
    token_url: &'static str,
    userinfo_url: &'static str,
    scopes: &'static [&'static str],
    issuer: &'static str,
    subject_pointer: &'static str,
    name_pointer: Option<&'static str>,
}

const X: Preset = Preset {
    display_name: "X",
    authorization_url: "https://x.com/i/oauth2/authorize",
    token_url: "https://api.x.com/2/oauth2/token",
    userinfo_url: "https://api.x.com/2/users/me",
    scopes: &["users.read", "tweet.read"],
    issuer: "https://x.com",
    subject_pointer: "/data/id",
    name_pointer: Some("/data/name"),
};

fn oauth2_provider(
    name: &str,
    config: &OAuth2Config,
    redirect_uri: String,
    http: &reqwest::Client,
) -> anyhow::Result<OAuth2Provider> {
    let preset = config.preset.map(|p| match p {
        OAuth2Preset::X => &X,
    });
    let required = |value: &Option<String>, preset_value: Option<&str>, key: &str| {
        value
            .clone()
            .or_else(|| preset_value.map(str::to_owned))
            .with_context(|| format!("[oauth2.{name}] needs {key} (or a preset)"))
    };
    let authorization_url = required(
        &config.authorization_url,
        preset.map(|p| p.authorization_url),
        "authorization_url",
    )?;
    let token_url = required(&config.token_url, preset.map(|p| p.token_url), "token_url")?;
    let userinfo_url = required(&config.userinfo_url, preset.map(|p| p.userinfo_url), "userinfo_url")?;
    let subject_pointer = required(
        &config.subject_pointer,
        preset.map(|p| p.subject_pointer),
        "subject_pointer",
    )?;
    let issuer = match (&config.issuer, preset) {
        (Some(issuer), _) => issuer.clone(),
        (None, Some(preset)) => preset.issuer.to_owned(),
        // The authorization server's origin names it.
        (None, None) => reqwest::Url::parse(&authorization_url)
            .map(|u| u.origin().ascii_serialization())
            .with_context(|| format!("[oauth2.{name}].authorization_url is not a URL"))?,
    };
    anyhow::ensure!(
        subject_pointer.starts_with('/'),
        "[oauth2.{name}].subject_pointer is a JSON pointer such as \"/data/id\""
    );
    for (key, url) in [
        ("authorization_url", &authorization_url),
        ("token_url", &token_url),
        ("userinfo_url", &userinfo_url),
    ] {
        reqwest::Url::parse(url).with_context(|| format!("[oauth2.{name}].{key} is not a URL"))?;
        anyhow::ensure!(https_or_loopback(url), "[oauth2.{name}].{key} must be an https:// URL");
    }
    let client = oauth2::basic::BasicClient::new(oauth2::ClientId::new(config.client_id.clone()))
        .set_client_secret(oauth2::ClientSecret::new(
            config.client_secret.expose_secret().to_owned(),
        ))
        .set_auth_uri(
            oauth2::AuthUrl::new(authorization_url)
                .with_context(|| format!("[oauth2.{name}].authorization_url is not a URL"))?,
        )
        .set_token_uri(
            oauth2::TokenUrl::new(token_url).with_context(|| format!("[oauth2.{name}].token_url is not a URL"))?,
        )
        .set_redirect_uri(oauth2::RedirectUrl::new(redirect_uri).context("the console URL is not a URL")?);
    Ok(OAuth2Provider {
        name: name.to_owned(),
        display_name: config
            .display_name
            .clone()
            .or_else(|| preset.map(|p| p.display_name.to_owned()))
            .unwrap_or_else(|| name.to_owned()),
        issuer,
        client,
        scopes: config.scopes.clone().unwrap_or_else(|| {
            preset
                .map(|p| p.scopes.iter().map(|s| (*s).to_owned()).collect())
                .unwrap_or_default()
        }),
        userinfo_url,
        subject_pointer,
        name_pointer: config
            .name_pointer
            .clone()
            .or_else(|| preset.and_then(|p| p.name_pointer.map(str::to_owned))),
        email_pointer: config.email_pointer.clone(),
        http: http.clone(),
    })
}

/// The configured providers, OpenID Connect and OAuth 2.0. Presets are applied and URLs checked
/// here, so a mistake stops start-up (and `serve --validate-and-exit`).
pub(crate) fn identity_providers(config: &Config) -> anyhow::Result<Vec<Arc<dyn IdentityProvider>>> {
    let http = reqwest::Client::builder()
        // Following redirects would open the server to SSRF.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client for sign-in providers")?;
    let redirect_uri = |name: &str| {
        format!(
            "{}/api/auth/oidc/{name}/callback",
            config.console_url.trim_end_matches('/')
        )
    };
    // Names (and their uniqueness) and OpenID issuers were checked with the configuration.
    let mut providers: Vec<Arc<dyn IdentityProvider>> = Vec::new();
    for (name, provider) in &config.oidc {
        openidconnect::IssuerUrl::new(provider.issuer.clone())
            .with_context(|| format!("[oidc.{name}].issuer is not a URL"))?;
        providers.push(Arc::new(OidcProvider {
            name: name.clone(),
            display_name: provider.display_name.clone().unwrap_or_else(|| name.clone()),
            issuer: provider.issuer.trim_end_matches('/').to_owned(),
            client_id: provider.client_id.clone(),
            client_secret: provider.client_secret.clone(),
            redirect_uri: redirect_uri(name),
            http: http.clone(),
            metadata: tokio::sync::Mutex::new(None),
        }));
    }
    for (name, provider) in &config.oauth2 {
        providers.push(Arc::new(oauth2_provider(name, provider, redirect_uri(name), &http)?));
    }
    Ok(providers)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::userinfo_identity;

    #[test]
    fn reads_who_signed_in_from_user_info() {
        let x = json!({"data": {"id": "2244994945", "name": "X Dev", "username": "XDevelopers"}});
        let identity = userinfo_identity(&x, "https://x.com", "/data/id", Some("/data/name"), None).unwrap();
        assert_eq!(identity.subject, "2244994945");
        assert_eq!(identity.name.as_deref(), Some("X Dev"));
        assert_eq!((identity.email, identity.email_verified), (None, false));
        // Numbers are ids too; an address never counts as verified.
        let numeric = json!({"id": 42, "email": "a@example.com", "email_verified": true});
        let identity = userinfo_identity(&numeric, "i", "/id", None, Some("/email")).unwrap();
        assert_eq!(identity.subject, "42");
        assert_eq!(
            (identity.email.as_deref(), identity.email_verified),
            (Some("a@example.com"), false)
        );
        // No id, an empty one, or one of the wrong type: refused.
        for info in [
            json!({}),
            json!({"data": {"id": "  "}}),
            json!({"data": {"id": {"x": 1}}}),
        ] {
            assert!(userinfo_identity(&info, "i", "/data/id", None, None).is_err(), "{info}");
        }
    }
}

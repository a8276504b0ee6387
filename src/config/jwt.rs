//! `jwt.providers` and the flat key-source form, resolved into one list of
//! [`JwtProvider`]s (SPEC §6.2: keys are bound to their issuer).
//!
//! The flat form (`jwks_urls` / `public_keys` + at most one of `issuers`) is kept for one
//! issuer, or none, and becomes a single provider, so verification has one code path.
//! With two or more flat `issuers` the keys could not be told apart by issuer: that is a
//! start-up error naming `jwt.providers`.

use serde::{Deserialize, Serialize};

use super::{JwtConfig, PublicKeyConfig};

/// One identity provider of `jwt.providers`: its issuer, exactly one key source
/// (`jwks_url`, `discovery: true` or `public_keys`), and optionally its own audiences.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// The `iss` its tokens carry, compared exactly.
    pub issuer: String,
    /// The JWKS endpoint.
    pub jwks_url: Option<String>,
    /// Read `jwks_uri` from `{issuer}/.well-known/openid-configuration`.
    pub discovery: bool,
    /// Static PEM keys.
    pub public_keys: Vec<PublicKeyConfig>,
    /// Overrides `jwt.audiences` for this issuer when set (`[]`: no audience check).
    pub audiences: Option<Vec<String>>,
}

/// A provider as verification uses it: the keys it trusts verify only tokens of its
/// issuer.
#[derive(Debug, Clone)]
pub struct JwtProvider {
    /// Config path for messages: `jwt.providers[i]`, or `jwt` for the flat form.
    pub path: String,
    /// `None` only for the flat form without `issuers`: any (or no) `iss` is accepted.
    pub issuer: Option<String>,
    pub jwks_urls: Vec<String>,
    /// Fetch `jwks_uri` from the issuer's discovery document.
    pub discovery: bool,
    pub public_keys: Vec<PublicKeyConfig>,
    /// Empty: no audience check.
    pub audiences: Vec<String>,
}

/// A configuration error: the key it concerns and what is wrong.
pub type KeyError = (String, String);

fn error(key: impl Into<String>, message: impl Into<String>) -> KeyError {
    (key.into(), message.into())
}

impl JwtConfig {
    /// The configured providers, validated: `jwt.providers` as they are, or the flat form
    /// as one provider. Errors name the key at fault.
    pub fn resolved_providers(&self) -> Result<Vec<JwtProvider>, KeyError> {
        if self.providers.is_empty() {
            return self.flat_provider().map(|p| p.into_iter().collect());
        }
        if !(self.jwks_urls.is_empty() && self.public_keys.is_empty() && self.issuers.is_empty()) {
            return Err(error(
                "jwt.providers",
                "set either jwt.providers or the flat jwt.jwks_urls / jwt.public_keys / \
                 jwt.issuers, not both (move them into a provider)",
            ));
        }
        let mut resolved: Vec<JwtProvider> = Vec::with_capacity(self.providers.len());
        for (i, p) in self.providers.iter().enumerate() {
            let path = format!("jwt.providers[{i}]");
            if p.issuer.trim().is_empty() {
                return Err(error(format!("{path}.issuer"), "is required"));
            }
            if resolved
                .iter()
                .any(|r| r.issuer.as_deref() == Some(&p.issuer))
            {
                return Err(error(
                    format!("{path}.issuer"),
                    format!("`{}` is configured twice", p.issuer),
                ));
            }
            let sources = usize::from(p.jwks_url.is_some())
                + usize::from(p.discovery)
                + usize::from(!p.public_keys.is_empty());
            if sources != 1 {
                return Err(error(
                    path,
                    "needs exactly one key source: jwks_url, discovery: true or public_keys",
                ));
            }
            if let Some(url) = &p.jwks_url {
                check_http_url(&format!("{path}.jwks_url"), url)?;
            }
            if p.discovery {
                check_http_url(&format!("{path}.issuer"), &p.issuer)
                    .map_err(|(key, m)| (key, format!("{m} (needed for discovery)")))?;
            }
            resolved.push(JwtProvider {
                issuer: Some(p.issuer.clone()),
                jwks_urls: p.jwks_url.iter().cloned().collect(),
                discovery: p.discovery,
                public_keys: p.public_keys.clone(),
                audiences: p
                    .audiences
                    .clone()
                    .unwrap_or_else(|| self.audiences.clone()),
                path,
            });
        }
        Ok(resolved)
    }

    /// The flat form as (at most) one provider; `None` when it has no key source.
    fn flat_provider(&self) -> Result<Option<JwtProvider>, KeyError> {
        if self.issuers.len() > 1 {
            return Err(error(
                "jwt.providers",
                "two or more jwt.issuers need jwt.providers: configure each issuer with \
                 its own jwks_url, discovery or public_keys, so that one identity \
                 provider's keys cannot sign another's tokens",
            ));
        }
        for url in &self.jwks_urls {
            check_http_url("jwt.jwks_urls", url)?;
        }
        if self.jwks_urls.is_empty() && self.public_keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(JwtProvider {
            path: "jwt".into(),
            issuer: self.issuers.first().cloned(),
            jwks_urls: self.jwks_urls.clone(),
            discovery: false,
            public_keys: self.public_keys.clone(),
            audiences: self.audiences.clone(),
        }))
    }
}

pub(super) fn check_http_url(key: &str, url: &str) -> Result<(), KeyError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(error(key, "must be an http:// or https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(issuer: &str) -> ProviderConfig {
        ProviderConfig {
            issuer: issuer.into(),
            jwks_url: Some(format!("{issuer}/jwks.json")),
            ..ProviderConfig::default()
        }
    }

    fn key_of(config: &JwtConfig) -> String {
        match config.resolved_providers() {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err((key, _)) => key,
        }
    }

    #[test]
    fn the_flat_form_is_one_provider() {
        let config = JwtConfig {
            jwks_urls: vec!["https://a/jwks".into(), "https://a/more".into()],
            issuers: vec!["https://a".into()],
            audiences: vec!["tollgate".into()],
            ..JwtConfig::default()
        };
        let providers = config.resolved_providers().expect("valid");
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].issuer.as_deref(), Some("https://a"));
        assert_eq!(providers[0].jwks_urls.len(), 2);
        assert_eq!(providers[0].audiences, ["tollgate"]);
        let open = JwtConfig {
            jwks_urls: vec!["https://a/jwks".into()],
            ..JwtConfig::default()
        };
        assert_eq!(open.resolved_providers().expect("valid")[0].issuer, None);
        assert!(
            JwtConfig::default()
                .resolved_providers()
                .expect("valid")
                .is_empty()
        );
    }

    #[test]
    fn two_flat_issuers_name_jwt_providers() {
        let config = JwtConfig {
            jwks_urls: vec!["https://a/jwks".into(), "https://b/jwks".into()],
            issuers: vec!["https://a".into(), "https://b".into()],
            ..JwtConfig::default()
        };
        let (key, message) = config.resolved_providers().expect_err("ambiguous");
        assert_eq!(key, "jwt.providers");
        assert!(message.contains("jwt.issuers"), "{message}");
    }

    #[test]
    fn providers_and_flat_sources_exclude_each_other() {
        for edit in [
            |c: &mut JwtConfig| c.jwks_urls = vec!["https://c/jwks".into()],
            |c: &mut JwtConfig| c.issuers = vec!["https://c".into()],
            |c: &mut JwtConfig| {
                c.public_keys = vec![PublicKeyConfig {
                    pem: "x".into(),
                    kid: None,
                }]
            },
        ] {
            let mut config = JwtConfig {
                providers: vec![provider("https://a")],
                ..JwtConfig::default()
            };
            edit(&mut config);
            assert_eq!(key_of(&config), "jwt.providers");
        }
    }

    #[test]
    fn each_provider_needs_one_key_source_and_its_own_issuer() {
        let none = ProviderConfig {
            jwks_url: None,
            ..provider("https://a")
        };
        let two = ProviderConfig {
            discovery: true,
            ..provider("https://a")
        };
        for bad in [none, two] {
            let config = JwtConfig {
                providers: vec![provider("https://b"), bad],
                ..JwtConfig::default()
            };
            assert_eq!(key_of(&config), "jwt.providers[1]");
        }
        let config = JwtConfig {
            providers: vec![provider("https://a"), provider("https://a")],
            ..JwtConfig::default()
        };
        assert_eq!(key_of(&config), "jwt.providers[1].issuer");
        let config = JwtConfig {
            providers: vec![provider("")],
            ..JwtConfig::default()
        };
        assert_eq!(key_of(&config), "jwt.providers[0].issuer");
        let config = JwtConfig {
            providers: vec![ProviderConfig {
                jwks_url: Some("ftp://a/jwks".into()),
                ..provider("https://a")
            }],
            ..JwtConfig::default()
        };
        assert_eq!(key_of(&config), "jwt.providers[0].jwks_url");
        let config = JwtConfig {
            providers: vec![ProviderConfig {
                issuer: "my-service".into(),
                jwks_url: None,
                discovery: true,
                ..ProviderConfig::default()
            }],
            ..JwtConfig::default()
        };
        assert_eq!(key_of(&config), "jwt.providers[0].issuer");
    }

    #[test]
    fn provider_audiences_override_the_default() {
        let config = JwtConfig {
            audiences: vec!["tollgate".into()],
            providers: vec![
                ProviderConfig {
                    audiences: Some(vec!["api://a".into()]),
                    ..provider("https://a")
                },
                provider("https://b"),
                ProviderConfig {
                    issuer: "https://c".into(),
                    discovery: true,
                    audiences: Some(vec![]),
                    ..ProviderConfig::default()
                },
            ],
            ..JwtConfig::default()
        };
        let p = config.resolved_providers().expect("valid");
        assert_eq!(p[0].audiences, ["api://a"]);
        assert_eq!(p[1].audiences, ["tollgate"]);
        assert!(p[2].audiences.is_empty());
        assert!(p[2].discovery && p[2].jwks_urls.is_empty());
    }
}

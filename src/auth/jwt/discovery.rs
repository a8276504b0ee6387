//! OpenID Connect discovery (SPEC §6.2 `discovery: true`): the `jwks_uri` of an issuer,
//! read from `{issuer}/.well-known/openid-configuration`.
//!
//! The document must name the configured issuer exactly (OpenID Connect Discovery §4.3);
//! one that names another is refused, so a provider cannot be pointed at keys that
//! claim to belong to someone else.

use super::jwks::fetch_json;

/// The discovery document's URL: the issuer without a trailing `/`, then
/// `/.well-known/openid-configuration`.
pub(super) fn document_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Fetches the discovery document of `issuer` and returns its `jwks_uri`.
#[tracing::instrument(level = "debug", skip(http))]
pub(super) async fn jwks_uri(http: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let url = document_url(issuer);
    let body = fetch_json(http, &url)
        .await
        .map_err(|e| format!("discovery document {url}: {e}"))?;
    parse(&body, issuer).map_err(|e| format!("discovery document {url} refused: {e}"))
}

/// The `jwks_uri` of a discovery document for `issuer`.
fn parse(body: &[u8], issuer: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        issuer: String,
        jwks_uri: String,
    }
    let document: Document = serde_json::from_slice(body)
        .map_err(|e| format!("not an OpenID provider configuration: {e}"))?;
    if document.issuer != issuer {
        return Err(format!(
            "it names issuer `{}`, not the configured `{issuer}`",
            document.issuer
        ));
    }
    match reqwest::Url::parse(&document.jwks_uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(document.jwks_uri)
        }
        _ => Err(format!(
            "jwks_uri `{}` is not an http(s) URL",
            document.jwks_uri
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_url_follows_the_issuer() {
        assert_eq!(
            document_url("https://sso.example/realms/a/"),
            "https://sso.example/realms/a/.well-known/openid-configuration"
        );
        assert_eq!(
            document_url("https://sso.example"),
            "https://sso.example/.well-known/openid-configuration"
        );
    }

    #[test]
    fn the_document_must_name_the_issuer_and_an_http_jwks_uri() {
        let doc =
            |iss: &str, uri: &str| serde_json::json!({"issuer": iss, "jwks_uri": uri}).to_string();
        let ok = doc("https://idp", "https://keys.idp/jwks");
        assert_eq!(
            parse(ok.as_bytes(), "https://idp").as_deref(),
            Ok("https://keys.idp/jwks")
        );
        let e = parse(ok.as_bytes(), "https://other").expect_err("wrong issuer");
        assert!(e.contains("https://other"), "{e}");
        // Exact comparison: a trailing slash is another issuer.
        assert!(parse(ok.as_bytes(), "https://idp/").is_err());
        assert!(
            parse(
                doc("https://idp", "file:///etc/keys").as_bytes(),
                "https://idp"
            )
            .is_err()
        );
        assert!(parse(b"{\"issuer\": \"https://idp\"}", "https://idp").is_err());
        assert!(parse(b"<html>", "https://idp").is_err());
    }
}

//! Outbound HTTP clients (Ollama, the JWKS endpoints, the auth webhook) and the one TLS
//! crypto provider they share.
//!
//! rustls is built with `ring` only (sqlx already builds it): aws-lc's C build alone was
//! about a twelfth of a clean release build's CPU time.
//! reqwest (JWKS, webhook) is built without a provider of its own (`rustls-no-provider`)
//! and takes the process default, so every reqwest client must come from
//! [`client_builder`], which installs `ring` first. The Ollama hop is hyper-util's client
//! (`upstream::client`); its TLS config comes from [`tls_client_config`]: the same
//! provider and the same root store (the platform's, as reqwest's), so an `https://`
//! server verifies the same way on both paths. Tests build their clients here too: the
//! path they exercise is the shipped one.

use std::sync::{Arc, Once};

/// A reqwest builder with the process's TLS provider in place.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// A rustls client config as reqwest builds one: the process's provider, TLS 1.2 and
/// 1.3, the platform's roots, no client certificate. ALPN is left to the connector.
pub fn tls_client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Makes `ring` the process-wide rustls provider (once; an embedding program that
/// installed its own first keeps it).
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

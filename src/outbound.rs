//! Outbound HTTP clients (Ollama, the JWKS endpoints, the auth webhook) and the one TLS
//! crypto provider they share.
//!
//! rustls is built with `ring` only (sqlx already builds it): aws-lc's C build alone was
//! about a twelfth of a clean release build's CPU time, and the benchmark must build and
//! run from a clean clone in minutes.
//! reqwest is built without a provider of its own (`rustls-no-provider`) and takes the
//! process default, so every client must come from [`client_builder`], which installs
//! `ring` first. Tests build their clients here too: the path they exercise is the
//! shipped one.

use std::sync::Once;

/// A reqwest builder with the process's TLS provider in place.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// Makes `ring` the process-wide rustls provider (once; an embedding program that
/// installed its own first keeps it).
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

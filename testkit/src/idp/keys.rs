//! The committed signing-key fixtures (`testkit/fixtures/`, see its README) and the
//! JWKS derived from them.
//!
//! Each key set has one RSA 2048, one EC P-256, one EC P-384 and one Ed25519 key, all
//! PKCS#8. The JWKS publishes one JWK per (key, algorithm) pair, so every algorithm has
//! its own `kid` and an accurate `alg`; the RSA key appears under six kids (RS256/384/512,
//! PS256/384/512). JWK parameters are computed from the private keys with
//! [`Jwk::from_encoding_key`].

use std::sync::LazyLock;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};

/// Every asymmetric algorithm the mock IdP signs with.
pub const SIGNING_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A PKCS#8 private key and its SPKI public key, both PEM.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PemPair {
    pub(crate) private_pem: &'static str,
    pub(crate) public_pem: &'static str,
}

/// The PEM files of one key set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PemSet {
    pub(crate) name: &'static str,
    pub(crate) rsa: PemPair,
    pub(crate) ec256: PemPair,
    pub(crate) ec384: PemPair,
    pub(crate) ed25519: PemPair,
}

macro_rules! pem_set {
    ($dir:literal) => {
        PemSet {
            name: $dir,
            rsa: PemPair {
                private_pem: include_str!(concat!("../../fixtures/", $dir, "/rsa.pem")),
                public_pem: include_str!(concat!("../../fixtures/", $dir, "/rsa.pub.pem")),
            },
            ec256: PemPair {
                private_pem: include_str!(concat!("../../fixtures/", $dir, "/ec256.pem")),
                public_pem: include_str!(concat!("../../fixtures/", $dir, "/ec256.pub.pem")),
            },
            ec384: PemPair {
                private_pem: include_str!(concat!("../../fixtures/", $dir, "/ec384.pem")),
                public_pem: include_str!(concat!("../../fixtures/", $dir, "/ec384.pub.pem")),
            },
            ed25519: PemPair {
                private_pem: include_str!(concat!("../../fixtures/", $dir, "/ed25519.pem")),
                public_pem: include_str!(concat!("../../fixtures/", $dir, "/ed25519.pub.pem")),
            },
        }
    };
}

pub(crate) const SET1: PemSet = pem_set!("set1");
pub(crate) const SET2: PemSet = pem_set!("set2");
pub(crate) const FOREIGN: PemSet = pem_set!("foreign");

impl PemSet {
    /// The key pair that signs `alg`.
    ///
    /// # Panics
    /// For HMAC algorithms (the IdP has no shared secrets).
    pub(crate) fn pair(&self, alg: Algorithm) -> PemPair {
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.rsa,
            Algorithm::ES256 => self.ec256,
            Algorithm::ES384 => self.ec384,
            Algorithm::EdDSA => self.ed25519,
            _ => panic!("testkit: the mock IdP has no key for {alg:?}"),
        }
    }
}

/// The `kid` of `alg` in the set named `set`: e.g. `set1-rs256`, `foreign-eddsa`.
pub(crate) fn kid_for(set: &str, alg: Algorithm) -> String {
    format!("{set}-{}", format!("{alg:?}").to_ascii_lowercase())
}

fn encoding_key(alg: Algorithm, pem: &str) -> EncodingKey {
    let parsed = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    };
    parsed.expect("testkit: fixture private key parses")
}

/// One signing key ready to use.
pub(crate) struct SigningKey {
    pub(crate) alg: Algorithm,
    pub(crate) kid: String,
    pub(crate) key: EncodingKey,
    pub(crate) jwk: Jwk,
}

/// A key set with parsed keys and its JWKS.
pub(crate) struct LoadedSet {
    pub(crate) pems: PemSet,
    pub(crate) keys: Vec<SigningKey>,
    pub(crate) jwks: JwkSet,
}

impl LoadedSet {
    fn load(pems: PemSet) -> Self {
        let keys: Vec<SigningKey> = SIGNING_ALGORITHMS
            .iter()
            .map(|&alg| {
                let key = encoding_key(alg, pems.pair(alg).private_pem);
                let kid = kid_for(pems.name, alg);
                let mut jwk = Jwk::from_encoding_key(&key, alg)
                    .expect("testkit: JWK from fixture private key");
                jwk.common.key_id = Some(kid.clone());
                jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                SigningKey { alg, kid, key, jwk }
            })
            .collect();
        let jwks = JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        };
        Self { pems, keys, jwks }
    }

    /// The signing key for `alg`.
    ///
    /// # Panics
    /// For algorithms the IdP does not sign with (HS*).
    pub(crate) fn key(&self, alg: Algorithm) -> &SigningKey {
        self.keys
            .iter()
            .find(|k| k.alg == alg)
            .unwrap_or_else(|| panic!("testkit: the mock IdP has no key for {alg:?}"))
    }
}

/// The two rotating sets (index 0 served first) and the foreign set, parsed once.
pub(crate) static SETS: LazyLock<[LoadedSet; 2]> =
    LazyLock::new(|| [LoadedSet::load(SET1), LoadedSet::load(SET2)]);
pub(crate) static FOREIGN_SET: LazyLock<LoadedSet> = LazyLock::new(|| LoadedSet::load(FOREIGN));

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use jsonwebtoken::DecodingKey;
    use jsonwebtoken::jwk::AlgorithmParameters;

    use super::*;

    fn public_jwk(alg: Algorithm, pem: &str) -> Jwk {
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("public fixture parses");
        Jwk::from_decoding_key(&key, Some(alg)).expect("JWK from public fixture")
    }

    #[test]
    fn jwk_parameters_match_the_public_pem_files() {
        for set in [&SETS[0], &SETS[1], &*FOREIGN_SET] {
            for key in &set.keys {
                let expected = public_jwk(key.alg, set.pems.pair(key.alg).public_pem);
                assert_eq!(key.jwk.algorithm, expected.algorithm, "{}", key.kid);
                match &key.jwk.algorithm {
                    AlgorithmParameters::RSA(p) => assert_eq!(p.e, "AQAB"),
                    AlgorithmParameters::EllipticCurve(p) => assert!(!p.x.contains('=')),
                    AlgorithmParameters::OctetKeyPair(p) => assert_eq!(p.x.len(), 43),
                    other => panic!("unexpected key type {other:?}"),
                }
            }
        }
    }

    #[test]
    fn kids_are_distinct_across_sets() {
        let kids: Vec<&str> = [&SETS[0], &SETS[1], &*FOREIGN_SET]
            .iter()
            .flat_map(|s| s.keys.iter().map(|k| k.kid.as_str()))
            .collect();
        let unique: HashSet<&&str> = kids.iter().collect();
        assert_eq!(unique.len(), kids.len());
        assert_eq!(kids.len(), 27);
    }

    #[test]
    fn key_material_differs_between_sets() {
        for alg in SIGNING_ALGORITHMS {
            let a = &SETS[0].key(alg).jwk.algorithm;
            let b = &SETS[1].key(alg).jwk.algorithm;
            let f = &FOREIGN_SET.key(alg).jwk.algorithm;
            assert_ne!(a, b, "{alg:?}");
            assert_ne!(a, f, "{alg:?}");
            assert_ne!(b, f, "{alg:?}");
        }
    }
}

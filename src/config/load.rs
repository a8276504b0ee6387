//! Reading, merging and validating configuration: defaults ← YAML file ← `TOLLGATE__…`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::Config;
use super::expand::{expand_str, is_whole_reference};

/// Why configuration could not be loaded. Every message names the file, variable or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file is not valid YAML: {0}")]
    Yaml(String),
    #[error("config references environment variable `{0}`, which is not set")]
    UnsetVariable(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Loads the configuration from `path` (or `TOLLGATE_CONFIG`, or defaults only) and the
/// process environment.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let path = path
        .map(Path::to_path_buf)
        .or_else(|| env.get("TOLLGATE_CONFIG").map(PathBuf::from));
    let text = match &path {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?,
        ),
        None => None,
    };
    load_from(text.as_deref(), &env)
}

/// Loads from YAML text (if any) and an explicit environment. Pure: used by tests.
pub fn load_from(yaml: Option<&str>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let mut tree = match yaml {
        Some(text) if !text.trim().is_empty() => {
            let value: Value =
                serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
            match value {
                Value::Null => Value::Object(Map::new()),
                Value::Object(_) => value,
                _ => return Err(ConfigError::Yaml("the top level must be a mapping".into())),
            }
        }
        _ => Value::Object(Map::new()),
    };
    expand_tree(&mut tree, env)?;
    apply_env_overrides(&mut tree, env)?;
    strip_nulls(&mut tree);
    let url_given = tree.pointer("/upstream/url").is_some();

    let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // An unknown field's path is its parent; name the full key instead.
        let key = match unknown_field_name(&inner) {
            Some(field) if path == "." => field.to_string(),
            Some(field) if path == field || path.ends_with(&format!(".{field}")) => path,
            Some(field) => format!("{path}.{field}"),
            None => path,
        };
        invalid(&key, inner)
    })?;
    validate(&config)?;
    if url_given && !config.upstream.servers.is_empty() {
        return Err(invalid(
            "upstream.url",
            "and `upstream.servers` are both set: use `servers` alone for several servers",
        ));
    }
    Ok(config)
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn expand_tree(value: &mut Value, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains('$') => {
            let whole = is_whole_reference(s);
            let expanded = expand_str(s, env).map_err(ConfigError::UnsetVariable)?;
            *value = if whole {
                scalar_from_text(&expanded)
            } else {
                Value::String(expanded)
            };
        }
        Value::Array(items) => {
            for item in items {
                expand_tree(item, env)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                expand_tree(item, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads an environment-provided value as a YAML scalar, so `20` is a number and `true` a
/// boolean; anything that is not a plain number, boolean, null or flow list stays text.
fn scalar_from_text(text: &str) -> Value {
    if text.is_empty() {
        return Value::String(String::new());
    }
    match serde_saphyr::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null | Value::Array(_))) => v,
        _ => Value::String(text.to_string()),
    }
}

/// `TOLLGATE__SECTION__KEY=value` sets `section.key` (double underscore between levels).
fn apply_env_overrides(tree: &mut Value, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let mut vars: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("TOLLGATE__"))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name["TOLLGATE__".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(invalid(name, "malformed override variable name"));
        }
        let mut node = &mut *tree;
        for (i, part) in path.iter().enumerate() {
            let Value::Object(map) = node else {
                return Err(invalid(&path[..i].join("."), "is not a section"));
            };
            if i + 1 == path.len() {
                map.insert(part.clone(), scalar_from_text(raw));
                break;
            }
            node = map
                .entry(part.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    Ok(())
}

/// An explicit `null` means "the default", which for every nullable key is "unset".
fn strip_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(strip_nulls);
    }
}

const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn validate(c: &Config) -> Result<(), ConfigError> {
    c.server
        .listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| invalid("server.listen", "must be an address like 127.0.0.1:4000"))?;
    if let Some(key) = &c.server.master_key
        && !key.expose().is_empty()
        && key.expose().len() < 16
    {
        return Err(invalid(
            "server.master_key",
            "must be at least 16 characters",
        ));
    }
    for (key, retention) in [
        ("usage.retention_days", &c.usage),
        ("audit.retention_days", &c.audit),
    ] {
        // 0 would delete every row as it is written; beyond 100 years is a typo.
        if retention
            .retention_days
            .is_some_and(|d| !(1..=36_500).contains(&d))
        {
            return Err(invalid(key, "must be between 1 and 36500 days, or null"));
        }
    }
    if c.server.max_body_bytes == 0 {
        return Err(invalid("server.max_body_bytes", "must be greater than 0"));
    }
    if c.server.request_timeout_s == 0 {
        return Err(invalid(
            "server.request_timeout_s",
            "must be greater than 0",
        ));
    }
    let db = c.database.url.expose();
    if !(db.starts_with("sqlite:")
        || db.starts_with("postgres://")
        || db.starts_with("postgresql://"))
    {
        return Err(invalid(
            "database.url",
            "must start with sqlite: or postgres://",
        ));
    }
    if c.database.max_connections == 0 {
        return Err(invalid(
            "database.max_connections",
            "must be greater than 0",
        ));
    }
    if let Some(url) = &c.redis.url {
        let u = url.expose();
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            return Err(invalid(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
    }
    check_http_url("upstream.url", &c.upstream.url)?;
    validate_servers(&c.upstream)?;
    if c.upstream.connect_timeout_s == 0 {
        return Err(invalid(
            "upstream.connect_timeout_s",
            "must be greater than 0",
        ));
    }
    let prices = std::iter::once(("pricing.default".to_string(), c.pricing.default)).chain(
        c.pricing
            .models
            .iter()
            .map(|(m, p)| (format!("pricing.models.{m}"), *p)),
    );
    for (key, p) in prices {
        if !(p.input.is_finite() && p.output.is_finite() && p.input >= 0.0 && p.output >= 0.0) {
            return Err(invalid(&key, "prices must be non-negative numbers"));
        }
    }
    for alg in &c.jwt.algorithms {
        if !ALLOWED_ALGORITHMS.contains(&alg.as_str()) {
            return Err(invalid(
                "jwt.algorithms",
                format!(
                    "`{alg}` is not allowed (asymmetric algorithms only: {})",
                    ALLOWED_ALGORITHMS.join(", ")
                ),
            ));
        }
    }
    let providers = c
        .jwt
        .resolved_providers()
        .map_err(|(key, message)| invalid(&key, message))?;
    if c.jwt.enabled && providers.is_empty() {
        return Err(invalid(
            "jwt.providers",
            "jwt.enabled needs jwt.providers, or the flat jwks_urls or public_keys",
        ));
    }
    if let Some(budget) = c.jwt.auto_register.max_budget
        && !(budget.is_finite() && budget >= 0.0)
    {
        return Err(invalid(
            "jwt.auto_register.max_budget",
            "must be non-negative",
        ));
    }
    if let Some(url) = &c.auth_webhook.url {
        check_http_url("auth_webhook.url", url)?;
    }
    Ok(())
}

fn validate_servers(u: &super::UpstreamConfig) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, server) in u.servers.iter().enumerate() {
        let key = format!("upstream.servers[{i}].name");
        let name = &server.name;
        let well_formed = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !well_formed {
            return Err(invalid(
                &key,
                format!("`{name}` must be 1-32 characters of a-z, 0-9 and -"),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(invalid(&key, format!("`{name}` is used by two servers")));
        }
        check_http_url(&format!("upstream.servers[{i}].url"), &server.url)?;
        for (field, value) in [
            ("parallel", server.parallel),
            ("max_loaded_models", server.max_loaded_models),
        ] {
            if value == Some(0) {
                return Err(invalid(
                    &format!("upstream.servers[{i}].{field}"),
                    "must be greater than 0",
                ));
            }
        }
    }
    for (key, value) in [
        ("upstream.parallel", u64::from(u.parallel)),
        ("upstream.max_loaded_models", u64::from(u.max_loaded_models)),
        ("upstream.discovery_interval_s", u.discovery_interval_s),
        (
            "upstream.eject_after_failures",
            u64::from(u.eject_after_failures),
        ),
        ("upstream.eject_s", u.eject_s),
        ("upstream.queue_max_depth", u.queue_max_depth),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be greater than 0"));
        }
    }
    Ok(())
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(invalid(key, "must be an http:// or https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(yaml: &str) -> String {
        match load_from(Some(yaml), &env(&[])) {
            Ok(_) => panic!("expected an error for {yaml:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_serve_without_a_file() {
        let c = load_from(None, &env(&[])).expect("defaults");
        assert_eq!(c.server.listen, "127.0.0.1:4000");
        assert_eq!(c.database.url.expose(), "sqlite://tollgate.db?mode=rwc");
        assert_eq!(c.upstream.url, "http://127.0.0.1:11434");
        assert!(c.redis.url.is_none());
        assert!(c.server.master_key.is_none());
    }

    #[test]
    fn one_url_is_one_server_named_default() {
        let c = load_from(
            Some("upstream:\n  url: http://10.0.0.1:11434/\n"),
            &env(&[]),
        )
        .expect("config");
        let servers = c.upstream.server_specs();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].name, "default");
        assert_eq!(servers[0].url, "http://10.0.0.1:11434");
        assert_eq!((servers[0].parallel, servers[0].max_loaded_models), (4, 3));
    }

    #[test]
    fn servers_take_the_defaults_they_do_not_override() {
        let c = load_from(
            Some(
                "upstream:\n  parallel: 2\n  servers:\n    - { name: gpu-a, url: \"http://a:1\", parallel: 4, max_loaded_models: 2 }\n    - { name: gpu-b, url: \"http://b:1\" }\n",
            ),
            &env(&[]),
        )
        .expect("config");
        let s = c.upstream.server_specs();
        assert_eq!(
            (s[0].name.as_str(), s[0].parallel, s[0].max_loaded_models),
            ("gpu-a", 4, 2)
        );
        assert_eq!(
            (s[1].name.as_str(), s[1].parallel, s[1].max_loaded_models),
            ("gpu-b", 2, 3)
        );
    }

    #[test]
    fn url_and_servers_together_are_refused_naming_both() {
        let e = err(
            "upstream:\n  url: http://a:1\n  servers:\n    - { name: a, url: \"http://a:1\" }\n",
        );
        assert!(
            e.contains("upstream.url") && e.contains("upstream.servers"),
            "{e}"
        );
    }

    #[test]
    fn bad_or_repeated_server_names_are_refused_naming_them() {
        for (yaml, named) in [
            ("- { name: GPU, url: \"http://a:1\" }", "`GPU`"),
            ("- { name: \"\", url: \"http://a:1\" }", "servers[0].name"),
            (
                "- { name: a-very-long-server-name-beyond-32-chars, url: \"http://a:1\" }",
                "a-very-long",
            ),
            (
                "- { name: a, url: \"http://a:1\" }\n    - { name: a, url: \"http://b:1\" }",
                "`a` is used by two servers",
            ),
            ("- { name: a, url: \"ftp://a\" }", "servers[0].url"),
            (
                "- { name: a, url: \"http://a:1\", parallel: 0 }",
                "servers[0].parallel",
            ),
        ] {
            let e = err(&format!("upstream:\n  servers:\n    {yaml}\n"));
            assert!(e.contains(named), "{yaml}: {e}");
        }
    }

    #[test]
    fn retention_days_are_read_checked_and_unknown_keys_named() {
        let c = load_from(
            Some("usage:\n  retention_days: 30\naudit:\n  retention_days: 365\n"),
            &env(&[]),
        )
        .expect("valid");
        assert_eq!(c.usage.retention_days, Some(30));
        assert_eq!(c.audit.retention_days, Some(365));
        let c = load_from(None, &env(&[])).expect("defaults");
        assert_eq!(
            (c.usage.retention_days, c.audit.retention_days),
            (None, None)
        );
        let e = err("usage:\n  retention_days: 0\n");
        assert!(e.contains("usage.retention_days"), "{e}");
        let e = err("audit:\n  retention: 3\n");
        assert!(e.contains("audit.retention"), "{e}");
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let e = err("sever:\n  listen: 127.0.0.1:1\n");
        assert!(e.contains("`sever`"), "{e}");
    }

    #[test]
    fn unknown_nested_key_is_named_with_its_path() {
        let e = err("database:\n  ulr: \"sqlite://x.db\"\n");
        assert!(e.contains("database.ulr"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err("server:\n  shutdown_grace_s: soon\n");
        assert!(e.contains("server.shutdown_grace_s"), "{e}");
    }

    #[test]
    fn short_master_key_is_refused() {
        let e = err("server:\n  master_key: short\n");
        assert!(e.contains("server.master_key"), "{e}");
    }

    #[test]
    fn hs256_is_never_allowed() {
        let e = err("jwt:\n  algorithms: [RS256, HS256]\n");
        assert!(e.contains("jwt.algorithms"), "{e}");
    }

    #[test]
    fn variables_expand_with_defaults_and_types() {
        let yaml = "server:\n  master_key: \"${MK}\"\n  shutdown_grace_s: ${GRACE:-7}\n  listen: \"${HOST:-127.0.0.1}:${PORT}\"\n";
        let c = load_from(
            Some(yaml),
            &env(&[("MK", "0123456789abcdefXYZ"), ("PORT", "4100")]),
        )
        .expect("valid");
        assert_eq!(
            c.server.master_key.as_ref().map(|k| k.expose()),
            Some("0123456789abcdefXYZ")
        );
        assert_eq!(c.server.shutdown_grace_s, 7);
        assert_eq!(c.server.listen, "127.0.0.1:4100");
    }

    #[test]
    fn unset_variable_is_named() {
        let e = load_from(Some("server:\n  master_key: ${NOPE_NOT_SET}\n"), &env(&[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("NOPE_NOT_SET"), "{e}");
    }

    #[test]
    fn variables_in_comments_are_inert() {
        let c = load_from(Some("# ${NOT_SET}\nserver: {}\n"), &env(&[]));
        assert!(c.is_ok());
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let c = load_from(
            Some("database:\n  max_connections: 3\n"),
            &env(&[
                ("TOLLGATE__DATABASE__MAX_CONNECTIONS", "9"),
                ("TOLLGATE__JWT__AUTO_REGISTER__RPM_LIMIT", "12"),
                ("TOLLGATE__REDIS__FAILURE_MODE", "open"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.database.max_connections, 9);
        assert_eq!(c.jwt.auto_register.rpm_limit, Some(12));
        assert_eq!(c.redis.failure_mode, crate::config::FailureMode::Open);
    }

    #[test]
    fn env_override_typo_is_named() {
        let e = load_from(None, &env(&[("TOLLGATE__SERVER__LISTN", "x")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("server.listn"), "{e}");
    }

    #[test]
    fn durations_parse_and_reject() {
        let c = load_from(
            Some("jwt:\n  auto_register:\n    budget_duration: 30d\n"),
            &env(&[]),
        )
        .expect("valid");
        assert_eq!(
            c.jwt.auto_register.budget_duration.map(|d| d.as_secs()),
            Some(30 * 86_400)
        );
        let e = err("jwt:\n  auto_register:\n    duration: fortnight\n");
        assert!(e.contains("jwt.auto_register.duration"), "{e}");
    }

    #[test]
    fn two_flat_issuers_are_refused_naming_jwt_providers() {
        let e = err(
            "jwt:\n  enabled: true\n  jwks_urls: [\"https://a/jwks\", \"https://b/jwks\"]\n  issuers: [\"https://a\", \"https://b\"]\n",
        );
        assert!(e.contains("jwt.providers"), "{e}");
        // Disabled or not: the configuration is ambiguous either way.
        let e = err("jwt:\n  issuers: [\"https://a\", \"https://b\"]\n");
        assert!(e.contains("jwt.providers"), "{e}");
    }

    #[test]
    fn providers_load_from_yaml() {
        let yaml = "jwt:\n  enabled: true\n  audiences: [tollgate]\n  providers:\n    - issuer: https://a.example\n      jwks_url: https://a.example/jwks\n    - issuer: https://b.example\n      discovery: true\n      audiences: [api://b]\n";
        let c = load_from(Some(yaml), &env(&[])).expect("valid");
        let p = c.jwt.resolved_providers().expect("valid");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].audiences, ["tollgate"]);
        assert!(p[1].discovery);
        assert_eq!(p[1].audiences, ["api://b"]);
        let e = err(
            "jwt:\n  providers:\n    - issuer: https://a.example\n      jwks_uri: https://a.example/jwks\n",
        );
        assert!(e.contains("jwks_uri"), "{e}");
        let e = err(
            "jwt:\n  jwks_urls: [\"https://a/jwks\"]\n  providers:\n    - issuer: https://a.example\n      discovery: true\n",
        );
        assert!(e.contains("jwt.providers"), "{e}");
        let e = err("jwt:\n  enabled: true\n");
        assert!(e.contains("jwt.providers"), "{e}");
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config.example.yaml");
        let c = load_from(
            Some(text),
            &env(&[("TOLLGATE_MASTER_KEY", "sk-master-0123456789abcdef")]),
        );
        assert!(c.is_ok(), "{:?}", c.err());
    }
}

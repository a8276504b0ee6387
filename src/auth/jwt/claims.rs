//! Claim access (dotted paths) and the registered-claim checks: `exp`, `nbf`, `iat`,
//! `iss`, `aud`.

use serde_json::Value;

/// Looks a claim up by path. A key that exists verbatim wins (claim names such as
/// `https://example.com/roles` contain dots); otherwise `a.b.c` walks nested objects.
pub(super) fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    if let Some(found) = object.get(path) {
        return Some(found);
    }
    path.match_indices('.').find_map(|(at, _)| {
        let child = object.get(&path[..at])?;
        lookup(child, &path[at + 1..])
    })
}

/// A scalar claim as a string: strings as they are, numbers and booleans printed;
/// `None` for null, objects and arrays.
pub(super) fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The strings of a claim that is a single string or an array of strings (other
/// elements are ignored).
pub(super) fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A NumericDate (seconds since the epoch, fractions allowed), floored.
fn numeric_date(value: &Value) -> Option<i64> {
    if let Some(i) = value.as_i64() {
        return Some(i);
    }
    let f = value.as_f64()?;
    // `as` saturates, and NaN cannot come out of JSON.
    f.is_finite().then(|| f.floor() as i64)
}

/// What the registered-claim checks need from the configuration.
#[derive(Debug)]
pub(super) struct Registered {
    pub(super) leeway: i64,
    pub(super) issuers: Vec<String>,
    pub(super) audiences: Vec<String>,
}

impl Registered {
    /// Checks `exp` (required), `nbf`, `iat`, `iss` and `aud` at time `now`. Returns
    /// `exp`, or the failure reason.
    pub(super) fn check(&self, claims: &Value, now: i64) -> Result<i64, &'static str> {
        let Some(object) = claims.as_object() else {
            return Err("jwt_invalid_claims");
        };
        let exp = match object.get("exp") {
            None | Some(Value::Null) => return Err("jwt_missing_exp"),
            Some(v) => numeric_date(v).ok_or("jwt_invalid_claims")?,
        };
        if now >= exp.saturating_add(self.leeway) {
            return Err("jwt_expired");
        }
        if let Some(v) = object.get("nbf") {
            let nbf = numeric_date(v).ok_or("jwt_invalid_claims")?;
            if nbf > now.saturating_add(self.leeway) {
                return Err("jwt_not_yet_valid");
            }
        }
        if let Some(v) = object.get("iat") {
            let iat = numeric_date(v).ok_or("jwt_invalid_claims")?;
            if iat > now.saturating_add(self.leeway) {
                return Err("jwt_issued_in_future");
            }
        }
        match object.get("iss") {
            Some(Value::String(iss)) => {
                if !self.issuers.is_empty() && !self.issuers.iter().any(|i| i == iss) {
                    return Err("jwt_wrong_issuer");
                }
            }
            None if self.issuers.is_empty() => {}
            None => return Err("jwt_wrong_issuer"),
            Some(_) => return Err("jwt_invalid_claims"),
        }
        if !self.audiences.is_empty() {
            let matches = match object.get("aud") {
                Some(Value::String(aud)) => self.audiences.iter().any(|a| a == aud),
                Some(Value::Array(auds)) => auds
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|aud| self.audiences.iter().any(|a| a == aud)),
                _ => false,
            };
            if !matches {
                return Err("jwt_wrong_audience");
            }
        }
        Ok(exp)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dotted_paths_walk_objects_and_prefer_verbatim_names() {
        let claims = json!({
            "ext": {"team": "t1", "deep": {"n": 7}},
            "https://example.com/roles": ["a"],
            "a.b": "verbatim",
            "a": {"b": "nested"},
        });
        assert_eq!(lookup(&claims, "ext.team"), Some(&json!("t1")));
        assert_eq!(lookup(&claims, "ext.deep.n"), Some(&json!(7)));
        assert_eq!(
            lookup(&claims, "https://example.com/roles"),
            Some(&json!(["a"]))
        );
        assert_eq!(lookup(&claims, "a.b"), Some(&json!("verbatim")));
        assert_eq!(lookup(&claims, "ext.missing"), None);
        assert_eq!(lookup(&claims, "ext.team.x"), None);
        assert_eq!(scalar_string(&json!(42)), Some("42".into()));
        assert_eq!(scalar_string(&json!(true)), Some("true".into()));
        assert_eq!(scalar_string(&json!({"a": 1})), None);
        assert_eq!(scalar_string(&json!([1])), None);
    }

    fn registered() -> Registered {
        Registered {
            leeway: 30,
            issuers: vec!["https://idp".into()],
            audiences: vec!["tollgate".into(), "other".into()],
        }
    }

    #[test]
    fn registered_claims() {
        let r = registered();
        let now = 1_000_000;
        let ok = json!({"iss": "https://idp", "aud": "tollgate", "exp": now + 10});
        assert_eq!(r.check(&ok, now), Ok(now + 10));
        // Fractional NumericDates are accepted.
        let frac = json!({"iss": "https://idp", "aud": ["x", "other"], "exp": 1_000_010.5});
        assert_eq!(r.check(&frac, now), Ok(now + 10));
        let case = |claims: Value| r.check(&claims, now).expect_err("rejected");
        assert_eq!(
            case(json!({"iss": "https://idp", "aud": "tollgate"})),
            "jwt_missing_exp"
        );
        assert_eq!(
            case(json!({"iss": "https://idp", "aud": "tollgate", "exp": "soon"})),
            "jwt_invalid_claims"
        );
        assert_eq!(
            case(json!({"iss": "https://idp", "aud": "tollgate", "exp": now - 30})),
            "jwt_expired"
        );
        // Within the leeway.
        assert!(
            r.check(
                &json!({"iss": "https://idp", "aud": "tollgate", "exp": now - 29}),
                now
            )
            .is_ok()
        );
        assert!(r.check(&json!({"iss": "https://idp", "aud": "tollgate", "exp": now + 60, "nbf": now + 30, "iat": now + 30}), now).is_ok());
        assert_eq!(
            case(
                json!({"iss": "https://idp", "aud": "tollgate", "exp": now + 60, "nbf": now + 31})
            ),
            "jwt_not_yet_valid"
        );
        assert_eq!(
            case(
                json!({"iss": "https://idp", "aud": "tollgate", "exp": now + 60, "iat": now + 31})
            ),
            "jwt_issued_in_future"
        );
        assert_eq!(
            case(json!({"aud": "tollgate", "exp": now + 60})),
            "jwt_wrong_issuer"
        );
        assert_eq!(
            case(json!({"iss": ["https://idp"], "aud": "tollgate", "exp": now + 60})),
            "jwt_invalid_claims"
        );
        assert_eq!(
            case(json!({"iss": "https://idp", "exp": now + 60})),
            "jwt_wrong_audience"
        );
        assert_eq!(
            case(json!({"iss": "https://idp", "aud": ["a", "b"], "exp": now + 60})),
            "jwt_wrong_audience"
        );
        assert_eq!(case(json!(["not", "an", "object"])), "jwt_invalid_claims");
        // Nothing configured: iss and aud are free.
        let open = Registered {
            leeway: 0,
            issuers: vec![],
            audiences: vec![],
        };
        assert!(open.check(&json!({"exp": now + 1}), now).is_ok());
        assert_eq!(open.check(&json!({"exp": now}), now), Err("jwt_expired"));
    }
}

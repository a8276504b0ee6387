//! `${VAR}` and `${VAR:-default}` expansion inside configuration values.
//!
//! Expansion runs on parsed YAML string values, never on raw text, so a `${…}` inside a
//! comment is inert and an expanded value can never inject YAML structure.

use std::collections::HashMap;

/// Expands every `${VAR}` / `${VAR:-default}` in `input`. `$$` is a literal `$`.
/// Returns the name of the first referenced variable that is unset and has no default.
pub fn expand_str(input: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                out.push_str(&rest[pos..]);
                return Ok(out);
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (env.get(name), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(name.to_string()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// True when the whole string is one `${…}` reference, so its expansion may be read as a
/// YAML scalar (a number or boolean) rather than kept as text.
pub fn is_whole_reference(input: &str) -> bool {
    input.starts_with("${") && input.ends_with('}') && input[2..].find('}') == Some(input.len() - 3)
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

    #[test]
    fn expands_set_and_default() {
        let e = env(&[("A", "1")]);
        assert_eq!(expand_str("x${A}y", &e).as_deref(), Ok("x1y"));
        assert_eq!(expand_str("${B:-dflt}", &e).as_deref(), Ok("dflt"));
        assert_eq!(expand_str("${A:-dflt}", &e).as_deref(), Ok("1"));
        assert_eq!(expand_str("cost $$5", &e).as_deref(), Ok("cost $5"));
    }

    #[test]
    fn unset_without_default_names_the_variable() {
        assert_eq!(
            expand_str("${MISSING}", &env(&[])),
            Err("MISSING".to_string())
        );
    }

    #[test]
    fn whole_reference_detection() {
        assert!(is_whole_reference("${A}"));
        assert!(is_whole_reference("${A:-3}"));
        assert!(!is_whole_reference("${A}${B}"));
        assert!(!is_whole_reference("x${A}"));
    }
}

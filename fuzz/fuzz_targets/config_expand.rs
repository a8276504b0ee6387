//! `${VAR}` / `${VAR:-default}` / `$$` expansion of configuration values, alone and
//! through the loader (a value in the YAML, and an environment value read back as a
//! YAML scalar through a whole reference).
//!
//! Input (UTF-8): the value, then optionally `\0` and `NAME=value` lines (the
//! environment; `TOLLGATE__…` names are applied as overrides by the loader).

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tollgate::config::fuzzing::{expand_str, is_whole_reference, load_from};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (input, env_lines) = text.split_once('\0').unwrap_or((text, ""));
    let env: HashMap<String, String> = env_lines
        .split('\n')
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

    let expanded = expand_str(input, &env);
    match &expanded {
        Ok(out) if !input.contains("${") => {
            assert_eq!(
                out,
                &input.replace("$$", "$"),
                "only `$$` changes without `${{`"
            );
        }
        Ok(_) => {}
        Err(name) => {
            assert!(
                input.contains(&format!("${{{name}")),
                "unset `{name}` is referenced"
            );
            assert!(!env.contains_key(name), "`{name}` is set");
        }
    }
    if is_whole_reference(input) {
        assert!(input.starts_with("${") && input.ends_with('}'));
        assert!(
            !input[2..input.len() - 1].contains('}'),
            "one reference: {input}"
        );
    }

    let quoted = serde_json::to_string(input).expect("a string serializes");
    let yaml = format!("upstream:\n  url: {quoted}\n");
    let _ = load_from(Some(yaml.as_str()), &env);
    let mut env = env;
    env.insert("FUZZ_VALUE".into(), input.to_owned());
    let _ = load_from(
        Some(
            "server:\n  max_body_bytes: ${FUZZ_VALUE}\nupstream:\n  url: \"${FUZZ_VALUE:-http://127.0.0.1:11434}\"\n",
        ),
        &env,
    );
});

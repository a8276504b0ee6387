//! The layering of `src/` (README, "Layout"), checked on the source itself.
//!
//! Every top-level module of the library belongs to one layer. A module may use modules
//! of its own layer or of a layer below, never one above, and the top-level modules
//! form no cycle. References are read from the code (`crate::x`, `use crate::{x, y}`,
//! and `super::` paths that climb to the crate root); comments are ignored. Parent and
//! child modules of one folder may refer to each other freely: only top-level modules
//! are compared.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "a test: an unreadable source tree fails it"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. A module may depend on its own layer and those listed before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "config",
            "error",
            "json",
            "request_id",
            "outbound",
            "tasks",
            "telemetry",
        ],
    ),
    ("storage", &["store"]),
    ("domain", &["auth", "limits", "usage", "upstream"]),
    ("services", &["services"]),
    // The composition root: built from everything below; the state handlers receive.
    ("composition", &["app"]),
    ("http", &["http"]),
    ("serving", &["server"]),
];

/// One source file: the module path it defines (`["auth", "jwt", "claims"]`) and its text.
struct Source {
    file: String,
    module: Vec<String>,
    text: String,
}

/// A dependency of one top-level module on another, with where it was seen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    file: String,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, members)| members.contains(&module))
}

/// Removes `//` comments (doc comments included), keeping string literals intact enough
/// for this purpose: a `crate::` inside a string is not a dependency either, but no
/// source has one.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The top-level names inside a `{ … }` group that starts `s` (after the `{`).
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut expecting = true;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting = true,
            c if expecting && depth == 0 && is_ident(c) => {
                let name = ident(&s[i..]);
                heads.push(name.to_string());
                expecting = false;
                for _ in 1..name.len() {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    heads
}

/// The top-level modules a file refers to.
fn references(source: &Source) -> BTreeSet<String> {
    let text = strip_comments(&source.text);
    let mut found = BTreeSet::new();
    // `crate::x` and `crate::{x, y}`.
    for (i, _) in text.match_indices("crate::") {
        if i > 0 && text[..i].ends_with(|c: char| is_ident(c) || c == ':') {
            continue; // `$crate::`, `foo_crate::`, `tollgate::crate::` do not count
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group));
        } else {
            found.insert(ident(rest).to_string());
        }
    }
    // `super::…` climbing to the crate root. A file's `super` is its parent module; the
    // root is reached after as many `super`s as the module path is long.
    let depth = source.module.len();
    for (i, _) in text.match_indices("super::") {
        if i > 0 && text[..i].ends_with(|c: char| is_ident(c) || c == ':') {
            continue;
        }
        let mut rest = &text[i..];
        let mut climbs = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = r;
        }
        if climbs == depth {
            if let Some(group) = rest.strip_prefix('{') {
                found.extend(group_heads(group));
            } else {
                found.insert(ident(rest).to_string());
            }
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn edges(sources: &[Source], modules: &BTreeSet<String>) -> BTreeSet<Edge> {
    let mut edges = BTreeSet::new();
    for source in sources {
        let Some(from) = source.module.first() else {
            continue;
        };
        for to in references(source) {
            if &to != from && modules.contains(&to) {
                edges.insert(Edge {
                    from: from.clone(),
                    to,
                    file: source.file.clone(),
                });
            }
        }
    }
    edges
}

/// Everything wrong with the layering, one line each.
fn violations(sources: &[Source]) -> Vec<String> {
    let modules: BTreeSet<String> = sources
        .iter()
        .filter_map(|s| s.module.first().cloned())
        .collect();
    let mut problems = Vec::new();
    for m in &modules {
        if layer_of(m).is_none() {
            problems.push(format!(
                "module `{m}` belongs to no layer: add it to LAYERS (and the README)"
            ));
        }
    }
    let edges = edges(sources, &modules);
    for e in &edges {
        if let (Some(from), Some(to)) = (layer_of(&e.from), layer_of(&e.to))
            && to > from
        {
            problems.push(format!(
                "{}: `{}` ({}) uses `{}` ({}), a layer above it",
                e.file, e.from, LAYERS[from].0, e.to, LAYERS[to].0
            ));
        }
    }
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in &edges {
        graph.entry(&e.from).or_default().insert(&e.to);
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!(
            "the top-level modules form a cycle: {}",
            cycle.join(" -> ")
        ));
    }
    problems
}

/// A cycle in `graph`, as the modules along it (first repeated at the end).
fn find_cycle<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

/// Every `.rs` file under `src/` except the crate roots (`lib.rs`, and `main.rs`, the
/// binary, which sits above every layer).
fn read_sources(root: &Path) -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(root).expect("under src/");
            let mut module: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                return None;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            Some(Source {
                file: format!("src/{}", rel.display()),
                module,
                text,
            })
        })
        .collect()
}

#[test]
fn modules_depend_only_on_their_layer_and_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = read_sources(&src);
    assert!(
        sources.len() > 20,
        "expected the library's sources under {}",
        src.display()
    );
    let problems = violations(&sources);
    assert!(
        problems.is_empty(),
        "the layering of src/ is broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_layer_module_exists() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (layer, members) in LAYERS {
        for m in *members {
            assert!(
                src.join(format!("{m}.rs")).exists() || src.join(m).join("mod.rs").exists(),
                "LAYERS names `{m}` ({layer}), which is not a module of src/"
            );
        }
    }
}

// The checker itself, on made-up sources: it must catch what it is there to catch.

fn source(module: &str, text: &str) -> Source {
    Source {
        file: format!("src/{}.rs", module.replace("::", "/")),
        module: module.split("::").map(str::to_string).collect(),
        text: text.to_string(),
    }
}

#[test]
fn an_import_from_a_higher_layer_is_reported() {
    let sources = [
        source(
            "store",
            "use crate::http::router;\nuse crate::config::Config;",
        ),
        source("http", "use crate::store::Store;"),
        source("config", ""),
    ];
    let problems = violations(&sources);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`store` (storage) uses `http` (http)")),
        "{problems:?}"
    );
}

#[test]
fn grouped_imports_and_super_paths_count() {
    let sources = [
        source("limits", "use crate::{config::X, services::proxy};"),
        source("store::sql", "use super::super::app::App;"),
        source("services", ""),
        source("app", ""),
        source("config", ""),
    ];
    let problems = violations(&sources);
    assert!(
        problems.iter().any(|p| p.contains("uses `services`")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("uses `app`")),
        "{problems:?}"
    );
}

#[test]
fn comments_and_child_modules_do_not_count() {
    let sources = [
        source(
            "store",
            "// see [`crate::http::router`]\n/// [`crate::app::App`]\nuse super::types;",
        ),
        source("store::types", "use super::StoreError;"),
        source("http", ""),
        source("app", ""),
    ];
    assert_eq!(violations(&sources), Vec::<String>::new());
}

#[test]
fn a_cycle_within_one_layer_is_reported() {
    let sources = [
        source("auth", "use crate::usage::Change;"),
        source("usage", "use crate::auth::Caller;"),
    ];
    let problems = violations(&sources);
    assert!(problems.iter().any(|p| p.contains("cycle")), "{problems:?}");
}

#[test]
fn a_module_outside_every_layer_is_reported() {
    let sources = [source("gadgets", "")];
    assert!(violations(&sources)[0].contains("belongs to no layer"));
}

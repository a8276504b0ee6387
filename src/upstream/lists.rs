//! `/api/tags`, `/api/ps` and `/v1/models` across several servers: each in-service
//! server's list is read and the entries merged, one per model (the first server's entry
//! wins), before the proxy filters them for the caller. With one server the proxy passes
//! its answer through unchanged instead.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::{Upstream, canonical_model};

/// Which list, and where its entries and their names are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `{"models": [{"name": …}]}`: `/api/tags`, `/api/ps`.
    Native,
    /// `{"object": "list", "data": [{"id": …}]}`: `/v1/models`.
    OpenAi,
}

impl ListKind {
    fn field(self) -> &'static str {
        match self {
            Self::Native => "models",
            Self::OpenAi => "data",
        }
    }

    fn name(self, entry: &Value) -> Option<&str> {
        match self {
            Self::Native => entry.get("name").or_else(|| entry.get("model")),
            Self::OpenAi => entry.get("id"),
        }
        .and_then(Value::as_str)
    }
}

impl Upstream {
    /// The merged list at `path`; `None` when no server in service answered.
    pub async fn merged_list(&self, path: &'static str, kind: ListKind) -> Option<Value> {
        let servers = self.fleet.in_service();
        let docs =
            futures_util::future::join_all(servers.iter().map(|&i| self.get_json(i, path))).await;
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        let mut answered = false;
        for doc in docs.into_iter().flatten() {
            let Some(list) = doc.get(kind.field()).and_then(Value::as_array) else {
                continue;
            };
            answered = true;
            for entry in list {
                if let Some(name) = kind.name(entry)
                    && seen.insert(canonical_model(name))
                {
                    entries.push(entry.clone());
                }
            }
        }
        if !answered {
            return None;
        }
        let mut doc = Map::new();
        if kind == ListKind::OpenAi {
            doc.insert("object".into(), Value::String("list".into()));
        }
        doc.insert(kind.field().into(), Value::Array(entries));
        Some(Value::Object(doc))
    }
}

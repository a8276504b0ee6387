//! What the management handlers enforce beyond the shapes utoipa derives, written into
//! `/openapi.json` so that the document allows exactly what the routes accept (SPEC §4.2):
//! paging bounds, non-blank names, the `team_id` alphabet, "`key` or `key_id`", dates.
//!
//! Each rule takes its bounds from the code that enforces them ([`paging`], [`json`]) and
//! names the schema and property it refines; a rule whose target is missing is an error,
//! so a renamed field cannot silently drop its constraint.
//!
//! [`json`]: crate::json
//! [`paging`]: crate::services::paging

use serde_json::{Map, Value, json};

use crate::json::NOT_BLANK;
use crate::services::paging::{MAX_LOG_ROWS, MAX_PAGE, MAX_PAGE_SIZE};

/// The `team_id` alphabet of `/team/new` (`services::teams::check_team_id`).
const TEAM_ID_PATTERN: &str = "^[A-Za-z0-9._:@-]{1,128}$";
/// The length limit of a mapping's claim name and value (`services::mappings`).
const CLAIM_TEXT_MAX: u64 = 512;

/// A string property that must be present and non-null in one branch of a "one of these
/// is required" rule.
fn present_string() -> Value {
    json!({"type": "string"})
}

/// A list property that must be present with at least one entry.
fn present_list() -> Value {
    json!({"type": "array", "minItems": 1})
}

/// Refines the serialized document in place.
pub fn apply(doc: &mut Value) -> Result<(), String> {
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or("no components.schemas")?;
    for schema in ["GenerateKey", "UpdateKey", "NewTeam", "UpdateTeam"] {
        refine(
            schemas,
            schema,
            "models/items",
            json!({"pattern": NOT_BLANK}),
        )?;
        refine(schemas, schema, "max_budget", json!({"minimum": 0}))?;
    }
    for schema in ["GenerateKey", "UpdateKey"] {
        refine(
            schemas,
            schema,
            "allowed_routes/items",
            json!({"pattern": "^/"}),
        )?;
    }
    refine(
        schemas,
        "NewTeam",
        "team_id",
        json!({"pattern": TEAM_ID_PATTERN}),
    )?;
    for schema in ["NewMapping", "UpdateMapping"] {
        for field in ["jwt_claim_name", "jwt_claim_value"] {
            refine(
                schemas,
                schema,
                field,
                json!({"minLength": 1, "maxLength": CLAIM_TEXT_MAX, "pattern": NOT_BLANK}),
            )?;
        }
    }
    let key = [("key", present_string()), ("key_id", present_string())];
    for schema in ["KeyRef", "RegenerateKey", "UpdateKey", "NewMapping"] {
        require_any(schemas, schema, &key)?;
    }
    require_any(
        schemas,
        "DeleteKeys",
        &[
            ("key", present_string()),
            ("key_id", present_string()),
            ("keys", present_list()),
            ("key_ids", present_list()),
        ],
    )?;
    require_any(
        schemas,
        "DeleteTeams",
        &[("team_id", present_string()), ("team_ids", present_list())],
    )?;

    // No NUL in any declared string of a management request (`http::extract`).
    for schema in REQUEST_SCHEMAS {
        let target = schemas
            .get_mut(*schema)
            .ok_or_else(|| format!("no schema {schema}"))?;
        refuse_nul(target);
    }

    let paths = doc
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .ok_or("no paths")?;
    for (path, name, max) in [
        ("/key/list", "page", MAX_PAGE),
        ("/key/list", "size", MAX_PAGE_SIZE),
        ("/team/list", "page", MAX_PAGE),
        ("/team/list", "size", MAX_PAGE_SIZE),
        ("/jwt/key/mapping/list", "page", MAX_PAGE),
        ("/jwt/key/mapping/list", "size", MAX_PAGE_SIZE),
        ("/spend/logs", "limit", MAX_LOG_ROWS),
        ("/audit/logs", "limit", MAX_LOG_ROWS),
        ("/audit/logs", "page", MAX_PAGE),
    ] {
        let schema = query_schema(paths, path, name)?;
        schema.insert("minimum".into(), json!(1));
        schema.insert("maximum".into(), json!(max));
    }
    for path in ["/spend/logs", "/audit/logs"] {
        for name in ["start", "end"] {
            let schema = query_schema(paths, path, name)?;
            schema.insert(
                "anyOf".into(),
                json!([{"format": "date"}, {"format": "date-time"}]),
            );
        }
    }
    for (path, item) in paths.iter_mut() {
        if !MANAGEMENT_PREFIXES.iter().any(|p| path.starts_with(p)) {
            continue;
        }
        if let Some(params) = item
            .pointer_mut("/get/parameters")
            .and_then(Value::as_array_mut)
        {
            for param in params {
                if let Some(schema) = param.get_mut("schema") {
                    refuse_nul(schema);
                }
            }
        }
    }
    // `key` or `key_id`: one query object, so that the rule can be stated.
    let info = paths
        .get_mut("/key/info")
        .and_then(|p| p.get_mut("get"))
        .and_then(Value::as_object_mut)
        .ok_or("no GET /key/info")?;
    info.insert(
        "parameters".into(),
        json!([{
            "name": "key_ref",
            "in": "query",
            "description": "`key` (the key itself) or `key_id` (its stable id); `key_id` \
                wins when both are given.",
            "required": true,
            "style": "form",
            "explode": true,
            "schema": {"$ref": "#/components/schemas/KeyRef"},
        }]),
    );
    Ok(())
}

/// The request bodies (and query objects) of the management routes.
const REQUEST_SCHEMAS: &[&str] = &[
    "KeyRef",
    "RegenerateKey",
    "GenerateKey",
    "UpdateKey",
    "DeleteKeys",
    "NewTeam",
    "UpdateTeam",
    "DeleteTeams",
    "NewMapping",
    "UpdateMapping",
    "MappingId",
];

/// Paths of the management routes.
const MANAGEMENT_PREFIXES: &[&str] =
    &["/key/", "/team/", "/jwt/key/mapping/", "/spend/", "/audit/"];

/// Adds "no NUL" to every string schema inside `schema`, except `metadata`, which is
/// kept as JSON and may hold anything.
fn refuse_nul(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let is_string = match object.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
        _ => false,
    };
    if is_string && !object.contains_key("not") {
        object.insert("not".into(), json!({"type": "string", "pattern": "\\x00"}));
    }
    for (name, child) in object.iter_mut() {
        match name.as_str() {
            "properties" => {
                if let Some(properties) = child.as_object_mut() {
                    for (property, schema) in properties.iter_mut() {
                        if property != "metadata" {
                            refuse_nul(schema);
                        }
                    }
                }
            }
            "items" => refuse_nul(child),
            "anyOf" | "oneOf" | "allOf" => {
                if let Some(branches) = child.as_array_mut() {
                    branches.iter_mut().for_each(refuse_nul);
                }
            }
            _ => {}
        }
    }
}

/// Merges `patch` into the schema at `path` (`property` or `property/items`) of the
/// component `schema`.
fn refine(
    schemas: &mut Map<String, Value>,
    schema: &str,
    path: &str,
    patch: Value,
) -> Result<(), String> {
    let pointer = match path.split_once('/') {
        Some((property, rest)) => format!("/properties/{property}/{rest}"),
        None => format!("/properties/{path}"),
    };
    let target = schemas
        .get_mut(schema)
        .and_then(|s| s.pointer_mut(&pointer))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("no {schema}{pointer}"))?;
    if let Value::Object(patch) = patch {
        target.extend(patch);
    }
    Ok(())
}

/// At least one of `alternatives` must be present (and not `null`, and a list not empty).
fn require_any(
    schemas: &mut Map<String, Value>,
    schema: &str,
    alternatives: &[(&str, Value)],
) -> Result<(), String> {
    let object = schemas
        .get_mut(schema)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("no schema {schema}"))?;
    let mut branches = Vec::new();
    for (property, shape) in alternatives {
        if object
            .get("properties")
            .is_none_or(|p| p.get(property).is_none())
        {
            return Err(format!("no {schema}.{property}"));
        }
        branches.push(json!({"required": [property], "properties": {*property: shape}}));
    }
    object.insert("anyOf".into(), Value::Array(branches));
    Ok(())
}

/// The schema of the query parameter `name` of `GET path`.
fn query_schema<'a>(
    paths: &'a mut Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    paths
        .get_mut(path)
        .and_then(|p| p.pointer_mut("/get/parameters"))
        .and_then(Value::as_array_mut)
        .and_then(|params| {
            params
                .iter_mut()
                .find(|p| p["name"] == name && p["in"] == "query")
        })
        .and_then(|p| p.get_mut("schema"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("no query parameter {name} of GET {path}"))
}

//! `GET /api/openapi.json` (no auth): the OpenAPI 3.1 document of every route, written by hand
//! in `openapi.json` beside this file and served with this process's page limits filled in.
//!
//! Kept true to the code by `tests/it/api_openapi.rs` (every route of the router is documented
//! and every documented operation is routed) and by `make fuzz-api` (schemathesis checks every
//! response against it).

use super::state::{AppState, Limits};
use axum::extract::State;
use axum::Json;
use serde_json::Value;
use std::sync::LazyLock;

/// The document as written (`src/api/openapi.json`).
pub(super) const SOURCE: &str = include_str!("openapi.json");

/// The document, parsed once (the unit tests below check that it parses).
static DOCUMENT: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(SOURCE).expect("src/api/openapi.json is valid JSON"));

/// The document with `limits` in place of the defaults it was written with: the largest page
/// of the task listings (`api.max_limit`).
pub(super) fn document(limits: &Limits) -> Value {
    let mut doc = DOCUMENT.clone();
    if let Some(max) = doc.pointer_mut("/components/parameters/Limit/schema/anyOf/0/maximum") {
        *max = limits.max_page.into();
    }
    doc
}

/// `GET /api/openapi.json`. Served without a key, like `/healthz`: it holds no secret and no
/// data, only what the README says too, and tools fetch it before they are given a key.
pub(super) async fn serve(State(state): State<AppState>) -> Json<Value> {
    Json(document(&state.limits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `{"$ref": "#/…"}` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_parses_and_every_reference_resolves() {
        let doc: Value = serde_json::from_str(SOURCE).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r.strip_prefix('#').expect("local references only");
            let pointer = pointer.replace("~1", "/").replace("~0", "~");
            assert!(doc.pointer(&pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn operation_ids_are_unique_and_limits_are_filled_in() {
        let doc = document(&Limits {
            body: 1024,
            default_page: 10,
            max_page: 42,
        });
        let mut ids = std::collections::HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
            }
        }
        assert_eq!(
            doc.pointer("/components/parameters/Limit/schema/anyOf/0/maximum")
                .unwrap(),
            42
        );
    }
}

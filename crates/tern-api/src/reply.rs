//! The success envelope (docs/flespi.md#the-rest-api): `{"result": [...]}`, `pagination` for pages,
//! `fields` to trim items, CSV for `Accept: text/csv`, and `result` with `errors` for a partial
//! success.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::call::Call;
use crate::error::{ErrorItem, json_response};
use crate::selector::{locate, scalar_text};

/// A page of a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Pagination {
    /// The `limit` asked for; null when only `offset` was given.
    pub limit: Option<u64>,
    pub offset: u64,
    /// Items before paging.
    pub count: u64,
}

#[derive(Debug, Serialize)]
struct Envelope<'a> {
    result: &'a [Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    pagination: Option<Pagination>,
    #[serde(skip_serializing_if = "<[ErrorItem]>::is_empty")]
    errors: &'a [ErrorItem],
}

/// What a handler answers: the items (and the errors of items that failed).
#[derive(Debug)]
pub(crate) struct Reply {
    items: Vec<Value>,
    errors: Vec<ErrorItem>,
    page: Option<(Option<u64>, u64)>,
    fields: Vec<String>,
    csv: bool,
}

impl Reply {
    /// A list answer: paged when the call asked for `limit` or `offset`.
    pub fn list(call: &Call, items: Vec<Value>) -> Reply {
        let p = &call.params;
        let page =
            (p.limit.is_some() || p.offset.is_some()).then(|| (p.limit, p.offset.unwrap_or(0)));
        Reply {
            items,
            errors: Vec::new(),
            page,
            fields: p.fields.clone(),
            csv: call.csv,
        }
    }

    /// The items a change produced, with the errors of the items that failed (a partial
    /// success is 400 with both).
    pub fn changed(call: &Call, items: Vec<Value>, errors: Vec<ErrorItem>) -> Reply {
        Reply {
            items,
            errors,
            page: None,
            fields: call.params.fields.clone(),
            csv: call.csv,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let Reply {
            mut items,
            errors,
            page,
            fields,
            csv,
        } = self;
        let pagination = page.map(|(limit, offset)| {
            let count = items.len() as u64;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(items.len());
            items.drain(..start);
            if let Some(limit) = limit {
                items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            }
            Pagination {
                limit,
                offset,
                count,
            }
        });
        if !fields.is_empty() {
            items = items.iter().map(|item| project(item, &fields)).collect();
        }
        if !errors.is_empty() {
            return json_response(
                StatusCode::BAD_REQUEST,
                &Envelope {
                    result: &items,
                    pagination,
                    errors: &errors,
                },
            );
        }
        if csv {
            let body = to_csv(&items, &fields);
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                body,
            )
                .into_response();
        }
        json_response(
            StatusCode::OK,
            &Envelope {
                result: &items,
                pagination,
                errors: &[],
            },
        )
    }
}

/// Keeps only the dotted `fields` of an item, at the same place (nested stays nested, a flat
/// dotted key stays flat). Missing fields are left out.
fn project(item: &Value, fields: &[String]) -> Value {
    let mut out = Map::new();
    for field in fields {
        if let Some((keys, value)) = locate(item, field) {
            insert(&mut out, &keys, value.clone());
        }
    }
    Value::Object(out)
}

fn insert(map: &mut Map<String, Value>, keys: &[String], value: Value) {
    match keys {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = map
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// RFC 4180 CSV: a header row, then one row per item; `\r\n` line ends.
pub(crate) fn to_csv(items: &[Value], fields: &[String]) -> String {
    let columns: Vec<String> = if fields.is_empty() {
        let mut cols: Vec<String> = Vec::new();
        for item in items {
            let mut leaves = Vec::new();
            flatten(item, String::new(), &mut leaves);
            for leaf in leaves {
                if !cols.contains(&leaf) {
                    cols.push(leaf);
                }
            }
        }
        cols
    } else {
        fields.to_vec()
    };
    let mut out = String::new();
    write_row(&mut out, columns.iter().map(String::as_str));
    for item in items {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| locate(item, c).map_or_else(String::new, |(_, v)| cell(v)))
            .collect();
        write_row(&mut out, cells.iter().map(String::as_str));
    }
    out
}

/// Dotted paths of the leaves of an item (arrays are leaves).
fn flatten(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) if !map.is_empty() || prefix.is_empty() => {
            for (k, inner) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(inner, path, out);
            }
        }
        _ => out.push(prefix),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Array(_) | Value::Object(_) => v.to_string(),
        _ => scalar_text(v).unwrap_or_default(),
    }
}

fn write_row<'a>(out: &mut String, cells: impl Iterator<Item = &'a str>) {
    for (i, c) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        if c.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&c.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(c);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projection() {
        let v = json!({"id": 1, "access": {"type": 1, "acl": []}, "a.b": 2, "name": "x"});
        let fields = [
            "id".to_string(),
            "access.type".to_string(),
            "a.b".to_string(),
            "missing".to_string(),
        ];
        assert_eq!(
            project(&v, &fields),
            json!({"id": 1, "access": {"type": 1}, "a.b": 2})
        );
    }

    #[test]
    fn csv() {
        let items = [
            json!({"id": 1, "name": "a,b", "access": {"type": 1}}),
            json!({"id": 2, "name": "say \"hi\"", "extra": true}),
        ];
        assert_eq!(
            to_csv(&items, &[]),
            "access.type,id,name,extra\r\n1,1,\"a,b\",\r\n,2,\"say \"\"hi\"\"\",true\r\n"
        );
        assert_eq!(
            to_csv(&items, &["id".into(), "access".into()]),
            "id,access\r\n1,\"{\"\"type\"\":1}\"\r\n2,\r\n"
        );
    }
}

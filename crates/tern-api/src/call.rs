//! One REST call taken apart before a handler runs: the caller (401/403 first), the query
//! parameters (`fields`, `limit`, `offset`, `data`), the raw path for selectors, and the JSON
//! body (413 when too large, 400 when malformed).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::ApiState;
use crate::auth::{self, Caller};
use crate::error::{ApiError, ErrorItem};
use crate::selector::Selector;

/// Everything a handler needs from the request.
#[derive(Debug)]
pub(crate) struct Call {
    pub caller: Caller,
    /// The path as sent (percent-encoded): selectors are split before they are decoded.
    pub path: String,
    pub params: Params,
    /// The client asked for `Accept: text/csv`.
    pub csv: bool,
    /// The JSON body, `None` when empty.
    pub body: Option<Value>,
}

/// The query parameters every call understands.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pub fields: Vec<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    /// `data=<JSON object>`: the method's parameters (GET, DELETE).
    pub data: Option<Map<String, Value>>,
}

impl FromRequest<ApiState> for Call {
    type Rejection = ApiError;

    async fn from_request(req: Request, api: &ApiState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let caller = auth::authenticate(api, &parts)?;
        let params = Params::parse(parts.uri.query().unwrap_or(""), api.options.max_limit)?;
        let body = read_body(&parts.headers, body, api.options.max_body).await?;
        Ok(Call {
            caller,
            csv: accepts_csv(&parts.headers),
            path: parts.uri.path().to_string(),
            params,
            body,
        })
    }
}

fn accepts_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/csv"))
}

async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Option<Value>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(bytes) => bytes,
        Err(err) => {
            let limit = std::error::Error::source(&err).is_some_and(|e| {
                e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
            });
            return Err(if limit {
                too_large()
            } else {
                ApiError::bad_request(format!("could not read the request body: {err}"))
            });
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

impl Params {
    pub fn parse(query: &str, max_limit: u64) -> Result<Params, ApiError> {
        let mut params = Params::default();
        let mut errors = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_query(value);
            match name {
                "fields" => {
                    params.fields = value
                        .split(',')
                        .map(str::trim)
                        .filter(|f| !f.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                "limit" => match whole_number("limit", &value) {
                    Ok(n) if n > max_limit => {
                        errors.push(bad(format!("limit must be at most {max_limit}")))
                    }
                    Ok(n) => params.limit = Some(n),
                    Err(e) => errors.push(e),
                },
                "offset" => match whole_number("offset", &value) {
                    Ok(n) => params.offset = Some(n),
                    Err(e) => errors.push(e),
                },
                // Clients send `data` half-encoded: a `+` that cannot be a form-encoded space
                // (the JSON would not parse) is taken as a literal plus (`1e+5`).
                "data" => match serde_json::from_str::<Value>(&value).or_else(|e| {
                    let literal = percent_decode_str(pair.split_once('=').map_or("", |p| p.1))
                        .decode_utf8_lossy()
                        .into_owned();
                    serde_json::from_str::<Value>(&literal).map_err(|_| e)
                }) {
                    Ok(Value::Object(map)) => params.data = Some(map),
                    Ok(_) => errors.push(bad("data must be a JSON object")),
                    Err(e) => errors.push(bad(format!("data is not valid JSON: {e}"))),
                },
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(params)
        } else {
            Err(ApiError::invalid(errors))
        }
    }
}

fn bad(reason: impl Into<String>) -> ErrorItem {
    ErrorItem::new(StatusCode::BAD_REQUEST, reason)
}

fn whole_number(name: &str, value: &str) -> Result<u64, ErrorItem> {
    let v = value.trim();
    if v.starts_with('-') {
        return Err(bad(format!("{name} must not be negative")));
    }
    v.parse::<u64>()
        .map_err(|_| bad(format!("{name} must be a whole number, found `{v}`")))
}

/// Decodes a query value (`application/x-www-form-urlencoded`: `+` is a space).
fn decode_query(value: &str) -> String {
    let spaced = value.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

impl Call {
    /// The raw path segment `n` places from the end (0 is the last).
    pub fn segment_from_end(&self, n: usize) -> &str {
        self.path
            .trim_end_matches('/')
            .rsplit('/')
            .nth(n)
            .unwrap_or("")
    }

    /// The item selector in the path segment `n` places from the end.
    pub fn selector(&self, n: usize) -> Result<Selector, ApiError> {
        Selector::parse(self.segment_from_end(n))
    }

    /// The method parameters of `data=`, or their defaults.
    pub fn data<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        match &self.params.data {
            None => Ok(T::default()),
            Some(map) => serde_json::from_value(Value::Object(map.clone()))
                .map_err(|e| ApiError::bad_request(format!("data: {e}"))),
        }
    }

    /// The items of a POST body: an array, or one object. Every item is checked before
    /// anything is done; all problems are reported at once.
    pub fn items<T: DeserializeOwned>(&self) -> Result<Vec<T>, ApiError> {
        let values = match &self.body {
            None => {
                return Err(ApiError::bad_request(
                    "a JSON body is required: an array of items or one item",
                ));
            }
            Some(Value::Array(list)) => list.clone(),
            Some(v @ Value::Object(_)) => vec![v.clone()],
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the body must be an array of items or one item (a JSON object)",
                ));
            }
        };
        let mut items = Vec::with_capacity(values.len());
        let mut errors = Vec::new();
        for (i, v) in values.into_iter().enumerate() {
            match serde_json::from_value::<T>(v) {
                Ok(item) => items.push(item),
                Err(e) => errors.push(bad(format!("item {i}: {e}")).at(i)),
            }
        }
        if errors.is_empty() {
            Ok(items)
        } else {
            Err(ApiError::invalid(errors))
        }
    }

    /// The body of a PUT or PATCH: one object, checked against `T`; fields in `read_only` are
    /// refused by name.
    pub fn changes<T: DeserializeOwned>(
        &self,
        read_only: &[&str],
    ) -> Result<(T, Map<String, Value>), ApiError> {
        let map = match &self.body {
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err(ApiError::bad_request("the body must be a JSON object")),
            None => {
                return Err(ApiError::bad_request(
                    "a JSON body is required: the fields to change",
                ));
            }
        };
        let fixed: Vec<ErrorItem> = read_only
            .iter()
            .filter(|f| map.contains_key(**f))
            .map(|f| bad(format!("field `{f}` cannot be changed")))
            .collect();
        if !fixed.is_empty() {
            return Err(ApiError::invalid(fixed));
        }
        let typed = serde_json::from_value(Value::Object(map.clone()))
            .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        Ok((typed, map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streamed_bodies_over_the_limit_are_413() {
        let headers = HeaderMap::new();
        let err = read_body(&headers, Body::from("[1, 2, 3]"), 4)
            .await
            .expect_err("too large");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok = read_body(&headers, Body::from(" [1] "), 5)
            .await
            .expect("fits");
        assert_eq!(ok, Some(serde_json::json!([1])));
        assert_eq!(
            read_body(&headers, Body::from("  "), 5)
                .await
                .expect("empty"),
            None
        );
    }

    #[test]
    fn query_parameters() {
        let p = Params::parse(
            "fields=id,%20name&limit=5&offset=2&data=%7B%22a%22%3A1%7D&other=x",
            10,
        )
        .expect("parses");
        assert_eq!(p.fields, vec!["id", "name"]);
        assert_eq!((p.limit, p.offset), (Some(5), Some(2)));
        assert_eq!(p.data.map(Value::Object), Some(serde_json::json!({"a": 1})));
        // A raw `+` that cannot be a space (it would break the JSON) is a plus.
        let p = Params::parse(r#"data={"from":1e+5,%20"count":1}"#, 10).expect("lenient");
        assert_eq!(
            p.data.map(Value::Object),
            Some(serde_json::json!({"from": 1e5, "count": 1}))
        );
        let err = Params::parse("limit=-1&offset=x&limit=11", 10).expect_err("three problems");
        assert_eq!(err.errors.len(), 3);
    }
}

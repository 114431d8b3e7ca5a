//! What every `/gw` handler shares: a devices-layer error as the flespi envelope, the answer
//! to a change of several items (`changed_each`), and a
//! method's `data` taken from the query or, when absent, from a JSON body (even on GET:
//! docs/flespi.md#devices).

use axum::http::StatusCode;
use serde_json::Value;
use tern_gw::GwError;

use crate::call::Call;
use crate::error::{ApiError, ErrorItem};
use crate::reply::Reply;

/// A devices-layer error as the envelope: 403 for a quota (as accounts and tokens), 404 for
/// an item that is gone, 500 when the store cannot read, 400 otherwise.
pub(crate) fn gw_error(e: &GwError) -> ErrorItem {
    let status = match e {
        GwError::NotFound { .. } => StatusCode::NOT_FOUND,
        GwError::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
        GwError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        GwError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    ErrorItem::new(status, e.to_string())
}

pub(crate) fn api_error(e: &GwError) -> ApiError {
    let item = gw_error(e);
    ApiError {
        status: StatusCode::from_u16(item.code).unwrap_or(StatusCode::BAD_REQUEST),
        errors: vec![item],
    }
}

/// `data` from the query or, when absent, from a JSON body (re-register tools send one on
/// GET).
pub(crate) fn data_of<T: serde::de::DeserializeOwned + Default>(
    call: &Call,
) -> Result<T, ApiError> {
    if call.params.data.is_some() {
        return call.data();
    }
    match &call.body {
        None => Ok(T::default()),
        Some(v @ Value::Object(_)) => serde_json::from_value(v.clone())
            .map_err(|e| ApiError::bad_request(format!("data: {e}"))),
        Some(_) => Err(ApiError::bad_request("data must be a JSON object")),
    }
}

/// The answer to a change of several items: `op` on each, what it returns (one item, or
/// several) in the result and its failure as an error at the item's index (a partial success
/// is 400 with both).
pub(crate) fn changed_each<T, R: IntoIterator<Item = Value>>(
    call: &Call,
    items: impl IntoIterator<Item = T>,
    mut op: impl FnMut(T) -> Result<R, GwError>,
) -> Reply {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match op(item) {
            Ok(items) => done.extend(items),
            Err(e) => failed.push(gw_error(&e).at(i)),
        }
    }
    Reply::changed(call, done, failed)
}

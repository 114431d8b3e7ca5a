//! One module per resource of docs/flespi.md#the-rest-api. Every handler takes the
//! [`Call`](crate::call::Call) apart in two steps: validate the whole input (a failure changes
//! nothing), then apply it item by item (failures there are reported next to what was done).
//!
//! The `#[utoipa::path]` annotation on each handler is what registers its route (see
//! `openapi`), so the OpenAPI description cannot list a route that is not served, nor miss one.

pub(crate) mod auth;
pub(crate) mod customer;
pub(crate) mod gw_channels;
pub(crate) mod gw_commands;
pub(crate) mod gw_common;
pub(crate) mod gw_devices;
pub(crate) mod gw_groups;
pub(crate) mod gw_history;
pub(crate) mod gw_logs;
pub(crate) mod gw_protocols;
pub(crate) mod gw_streams;
pub(crate) mod messages;
pub(crate) mod platform_logs;
pub(crate) mod platform_webhooks;
pub(crate) mod sessions;
pub(crate) mod subaccounts;
pub(crate) mod subscriptions;
pub(crate) mod tokens;

use axum::http::StatusCode;
use serde::Serialize;
use tern_broker::Cid;
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorItem};
use crate::reply::Pagination;

// Only described, never built: `reply::Reply` writes this shape.
/// The success envelope.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct ResultOf<T: ToSchema> {
    pub result: Vec<T>,
    /// Present when `limit` or `offset` was given.
    pub pagination: Option<Pagination>,
    /// Present on a partial success (status 400): the items that failed.
    pub errors: Option<Vec<ErrorItem>>,
}

/// `fields`, `limit`, `offset` and `data` (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only described: `call::Params` parses them
pub(crate) struct ListQuery {
    /// Comma-separated dotted paths to keep of each item (`id,access.type`).
    pub fields: Option<String>,
    /// At most this many items (0 ..= 100000).
    pub limit: Option<u64>,
    /// Skip this many items first.
    pub offset: Option<u64>,
    /// Method parameters as a JSON object.
    pub data: Option<String>,
}

/// `fields` alone (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only described: `call::Params` parses it
pub(crate) struct FieldsQuery {
    /// Comma-separated dotted paths to keep of each item.
    pub fields: Option<String>,
}

/// The item selector in the path (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described: `selector` parses it from the raw path
pub(crate) struct Sel {
    /// `all`, ids (`1,2`), `field=value` (wildcards `*`, `?`), `{expression}`; comma-separated,
    /// all must hold.
    pub sel: String,
}

/// 400 about item `index`.
pub(crate) fn invalid_item(index: usize, reason: impl Into<String>) -> ErrorItem {
    ErrorItem::new(StatusCode::BAD_REQUEST, reason).at(index)
}

/// The account an item names (`cid`), which must be the acting account or below it.
pub(crate) fn account_in_scope(
    api: &ApiState,
    call: &Call,
    cid: Option<Cid>,
) -> Result<Cid, String> {
    let acting = call.caller.cid;
    match cid {
        None => Ok(acting),
        Some(c) if api.directory.account(c).is_some() && api.directory.is_within(c, acting) => {
            Ok(c)
        }
        Some(c) => Err(format!(
            "account {c} is not the acting account {acting} or below it"
        )),
    }
}

/// Fails with every collected input error, or goes on.
pub(crate) fn check(errors: Vec<ErrorItem>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

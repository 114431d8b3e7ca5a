//! `GET /auth/info`: the calling token.

use axum::extract::State;

use super::{FieldsQuery, ResultOf};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorEnvelope};
use crate::items::{NoData, TokenItem, to_value};
use crate::reply::Reply;

/// The token of this call.
#[utoipa::path(
    get, path = "/auth/info", tag = "auth", params(FieldsQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The calling token", body = ResultOf<TokenItem>),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
    )
)]
pub(crate) async fn info(State(_api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let item = to_value(&TokenItem::from(&call.caller.token));
    Ok(Reply::list(&call, vec![item]))
}

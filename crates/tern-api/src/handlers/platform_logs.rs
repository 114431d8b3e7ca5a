//! The account's own logs (docs/flespi.md#logs): `GET /platform/customer/logs`, its REST calls
//! (`call_log`), and `GET /mqtt/logs`, its MQTT session events, both of the acting account only
//! (`x-flespi-cid` reads a sub-account's). Read like entity logs (`gw_logs`): `data` `from`,
//! `to`, `count`, `reverse`, `filter`, `fields`, CSV with `Accept: text/csv`.

use axum::extract::State;
use axum::response::Response;
use tern_gw::logs::{LogsData, Origin};

use super::ListQuery;
use super::gw_common::{api_error, data_of};
use super::gw_history::{self, Kind};
use crate::ApiState;
use crate::call::Call;
use crate::error::ApiError;

async fn read(api: &ApiState, call: &Call, origin: Origin) -> Result<Response, ApiError> {
    let data: LogsData = data_of(call)?;
    let query = data.query().map_err(|e| api_error(&e))?;
    let ids = vec![call.caller.cid];
    gw_history::answer(api, call, Kind::Logs(origin), ids, query).await
}

/// Reads the account's REST call log.
#[utoipa::path(
    get, path = "/platform/customer/logs", tag = "platform", params(ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The account's REST calls (`timestamp`, `event_code` 600, `origin_type` 1, `origin_id` the account, `host`, `app`, `method`, `uri`, `token_id`, `http_code`, `transport`, `duration`) by `timestamp` (newest first with `reverse`); `warnings` when truncated"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn customer_logs(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Response, ApiError> {
    read(&api, &call, Origin::Customer).await
}

/// Reads the account's MQTT sessions log.
#[utoipa::path(
    get, path = "/mqtt/logs", tag = "mqtt", params(ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The account's MQTT session events (`timestamp`, `event_code` 700 connected, 701 disconnected, 702 expired, `origin_type` 14, `origin_id` the session, `event`, `session_id`, `client_id`, `cid`, `ip`, `protocol_version`, `clean`, `published`, `received`, `rejected`, `reason`) by `timestamp` (newest first with `reverse`); `warnings` when truncated"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn mqtt_logs(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Response, ApiError> {
    read(&api, &call, Origin::MqttSessions).await
}

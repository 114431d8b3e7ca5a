//! Reading and deleting message history, the same for device messages (`/gw/devices/{sel}/
//! messages`, by `timestamp`), channel buffers (`/gw/channels/{sel}/messages`, by
//! `server.timestamp`) and entity logs (`.../logs`, read only, by `timestamp`): `data` parsed,
//! at most `gw.max_concurrent_reads` reads at once, the read on the blocking pool, CSV or JSON
//! with a `warnings` entry when truncated.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tern_gw::logs::Origin;
use tern_gw::{DeleteData, Gateway, GwError, History, MessageQuery, MessagesData};

use super::gw_common::{api_error, data_of};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, json_response};
use crate::reply::{Reply, to_csv};

/// Whose history a call reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Devices,
    Channels,
    /// Entity logs (read only, by record `timestamp`).
    Logs(Origin),
}

impl Kind {
    /// The key the history is ordered by, for the truncation warning.
    fn time_key(self) -> &'static str {
        match self {
            Kind::Devices | Kind::Logs(_) => "timestamp",
            Kind::Channels => "server.timestamp",
        }
    }

    fn read(self, gw: &Gateway, ids: &[u64], q: &MessageQuery) -> Result<History, GwError> {
        match self {
            Kind::Devices => gw.messages(ids, q),
            Kind::Channels => gw.channel_history(ids, q),
            Kind::Logs(origin) => gw.logs(origin, ids, q),
        }
    }

    fn delete(self, gw: &Gateway, id: u64, q: &MessageQuery) -> Result<(), GwError> {
        match self {
            Kind::Devices => gw.delete_messages(id, q),
            Kind::Channels => gw.delete_channel_messages(id, q),
            Kind::Logs(_) => Err(GwError::Invalid("log records are not deleted".into())),
        }
    }
}

/// Runs `f` on the blocking pool with the gateway, as one of the reads allowed at once.
async fn blocking<T: Send + 'static>(
    api: &ApiState,
    f: impl FnOnce(&Gateway) -> Result<T, GwError> + Send + 'static,
) -> Result<T, ApiError> {
    let _turn = api.gateway.reading().await;
    let gw: Arc<Gateway> = api.gateway.clone();
    tokio::task::spawn_blocking(move || f(&gw))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| api_error(&e))
}

/// `GET .../messages` of the selected `ids`.
pub(crate) async fn read(
    api: &ApiState,
    call: &Call,
    kind: Kind,
    ids: Vec<u64>,
) -> Result<Response, ApiError> {
    let data: MessagesData = data_of(call)?;
    let query = data.query().map_err(|e| api_error(&e))?;
    answer(api, call, kind, ids, query).await
}

/// The answer to a read of `ids` with a parsed `query` (`read`, and logs with their own `data`).
pub(crate) async fn answer(
    api: &ApiState,
    call: &Call,
    kind: Kind,
    ids: Vec<u64>,
    query: MessageQuery,
) -> Result<Response, ApiError> {
    let fields = query.fields.clone();
    let history = blocking(api, move |gw| kind.read(gw, &ids, &query)).await?;
    if call.csv {
        return Ok((
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&history.messages, &fields),
        )
            .into_response());
    }
    let mut body = json!({ "result": history.messages });
    if history.truncated {
        body["warnings"] = json!([{
            "reason": format!(
                "the answer was truncated at {} messages (gw.max_messages_per_call): ask again from the last {}",
                api.gateway.options.max_messages_per_call,
                kind.time_key()
            )
        }]);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `DELETE .../messages` of the selected `ids`.
pub(crate) async fn delete(
    api: &ApiState,
    call: &Call,
    kind: Kind,
    ids: Vec<u64>,
) -> Result<Reply, ApiError> {
    let data: DeleteData = data_of(call)?;
    let query = data.query().map_err(|e| api_error(&e))?;
    blocking(api, move |gw| {
        ids.iter().try_for_each(|id| kind.delete(gw, *id, &query))
    })
    .await?;
    Ok(Reply::changed(call, Vec::new(), Vec::new()))
}

//! Commands to devices (docs/teltonika.md#commands): POST `/gw/devices/{sel}/commands` (sent
//! now, answered with the device's response), POST/GET/DELETE
//! `/gw/devices/{sel}/commands-queue[/{id}]` (kept until the device connects), GET
//! `/gw/devices/{sel}/commands-result[/{id}]`. The domain is `tern_gw::commands`.

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use tern_gw::{CommandInput, GwError};
use utoipa::IntoParams;

use super::gw_common::{api_error, changed_each, gw_error};
use super::gw_devices::selected;
use super::{Sel, check, invalid_item};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorItem};
use crate::reply::Reply;

/// The path of one queued command or result (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described: the handlers parse the raw path
pub(crate) struct SelCommand {
    /// Device selector.
    pub sel: String,
    /// Command ids (`1,2`) or `all`.
    pub id: String,
}

/// The commands of the body, every one checked first.
fn commands(call: &Call) -> Result<Vec<CommandInput>, ApiError> {
    let raw = call.items::<Value>()?;
    let mut out = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    for (i, v) in raw.into_iter().enumerate() {
        match serde_json::from_value::<CommandInput>(v) {
            Ok(c) => match c.payload() {
                Ok(_) => out.push(c),
                Err(e) => errors.push(invalid_item(i, e.to_string())),
            },
            Err(e) => errors.push(invalid_item(i, format!("item {i}: {e}"))),
        }
    }
    check(errors)?;
    Ok(out)
}

/// flespi's answer to a command for a device that is not connected: error code 2.
fn command_error(e: &GwError, index: usize) -> ErrorItem {
    match e {
        GwError::NotConnected { .. } => ErrorItem {
            code: 2,
            reason: e.to_string(),
            index: Some(index),
        },
        _ => gw_error(e).at(index),
    }
}

/// The command ids of the last path segment (`None`: all).
fn command_ids(call: &Call) -> Result<Option<Vec<u64>>, ApiError> {
    let seg = call.segment_from_end(0);
    if seg == "all" {
        return Ok(None);
    }
    seg.split(',')
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("`{s}` is not a command id")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Sends commands to the selected devices now and waits for their responses.
#[utoipa::path(
    post, path = "/gw/devices/{sel}/commands", tag = "gw", params(Sel),
    request_body(content = Object, description = "An array of commands (or one): `{\"name\":\"custom\",\"properties\":{\"text\":\"getinfo\"}}` (or `hex`), or `{\"name\":\"codec12\",\"properties\":{\"payload\",\"hex\",\"crlf\"}}`; optional `timeout` (s)"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "One result per device and command: `response`, `executed`, or `reason` \"timeout\""), (status = 400, description = "Bad command, or a device that is not connected (error code 2)"))
)]
pub(crate) async fn post(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let commands = commands(&call)?;
    let ids = selected(&api, &call, 1)?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut i = 0;
    for id in ids {
        for c in &commands {
            match api.gateway.command(id, c).await {
                Ok(item) => done.push(item),
                Err(e) => failed.push(command_error(&e, i)),
            }
            i += 1;
        }
    }
    Ok(Reply::changed(&call, done, failed))
}

/// Queues commands for the selected devices (sent when each connects).
#[utoipa::path(
    post, path = "/gw/devices/{sel}/commands-queue", tag = "gw", params(Sel),
    request_body(content = Object, description = "An array of commands (or one) as for `/commands`, with `ttl` (60..2592000 s, default 86400)"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The queued commands"), (status = 400, description = "Bad command"))
)]
pub(crate) async fn queue(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let commands = commands(&call)?;
    let ids = selected(&api, &call, 1)?;
    let each = ids
        .iter()
        .flat_map(|id| commands.iter().map(move |c| (*id, c)));
    Ok(changed_each(&call, each, |(id, c)| {
        api.gateway.queue_command(id, c).map(std::iter::once)
    }))
}

/// Lists the queued commands of the selected devices.
#[utoipa::path(
    get, path = "/gw/devices/{sel}/commands-queue/{id}", tag = "gw", params(SelCommand),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The queued commands, with `attempts`"))
)]
pub(crate) async fn list_queue(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let wanted = command_ids(&call)?;
    let mut items = Vec::new();
    for id in selected(&api, &call, 2)? {
        items.extend(
            api.gateway
                .queued_commands(id, None)
                .into_iter()
                .filter(|v| keep(&wanted, v)),
        );
    }
    Ok(Reply::list(&call, items))
}

/// Lists the queued commands of the selected devices (all of them).
#[utoipa::path(
    get, path = "/gw/devices/{sel}/commands-queue", tag = "gw", params(Sel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The queued commands, with `attempts`"))
)]
pub(crate) async fn list_queue_all(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    let mut items = Vec::new();
    for id in selected(&api, &call, 1)? {
        items.extend(api.gateway.queued_commands(id, None));
    }
    Ok(Reply::list(&call, items))
}

/// Cancels queued commands of the selected devices.
#[utoipa::path(
    delete, path = "/gw/devices/{sel}/commands-queue/{id}", tag = "gw", params(SelCommand),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The canceled commands"))
)]
pub(crate) async fn cancel(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let wanted = command_ids(&call)?;
    let mut done = Vec::new();
    for id in selected(&api, &call, 2)? {
        match &wanted {
            None => done.extend(api.gateway.cancel_commands(id, None)),
            Some(list) => {
                for c in list {
                    done.extend(api.gateway.cancel_commands(id, Some(*c)));
                }
            }
        }
    }
    Ok(Reply::changed(&call, done, Vec::new()))
}

/// Cancels every queued command of the selected devices.
#[utoipa::path(
    delete, path = "/gw/devices/{sel}/commands-queue", tag = "gw", params(Sel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The canceled commands"))
)]
pub(crate) async fn cancel_all(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let mut done = Vec::new();
    for id in selected(&api, &call, 1)? {
        done.extend(api.gateway.cancel_commands(id, None));
    }
    Ok(Reply::changed(&call, done, Vec::new()))
}

/// The results of the selected devices' commands.
#[utoipa::path(
    get, path = "/gw/devices/{sel}/commands-result/{id}", tag = "gw", params(SelCommand),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The results, oldest first"))
)]
pub(crate) async fn results(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let wanted = command_ids(&call)?;
    read_results(&api, &call, 2, wanted).await
}

/// The results of the selected devices' commands (all of them).
#[utoipa::path(
    get, path = "/gw/devices/{sel}/commands-result", tag = "gw", params(Sel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The results, oldest first"))
)]
pub(crate) async fn results_all(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    read_results(&api, &call, 1, None).await
}

async fn read_results(
    api: &ApiState,
    call: &Call,
    sel: usize,
    wanted: Option<Vec<u64>>,
) -> Result<Reply, ApiError> {
    let ids = selected(api, call, sel)?;
    let Some(_turn) = api.gateway.reading().await else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        ));
    };
    let gw = api.gateway.clone();
    let items = tokio::task::spawn_blocking(move || {
        let mut items = Vec::new();
        for id in ids {
            let h = gw.command_results(id, None)?;
            items.extend(h.messages.into_iter().filter(|v| keep(&wanted, v)));
        }
        Ok::<_, GwError>(items)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| api_error(&e))?;
    Ok(Reply::list(call, items))
}

fn keep(wanted: &Option<Vec<u64>>, item: &Value) -> bool {
    wanted
        .as_ref()
        .is_none_or(|w| item["id"].as_u64().is_some_and(|id| w.contains(&id)))
}

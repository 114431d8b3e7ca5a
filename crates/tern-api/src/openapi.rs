//! The router and its OpenAPI 3.1 description, built from the same registrations: each
//! `routes!(...)` below mounts handlers at the path of their `#[utoipa::path]` annotation and
//! adds that annotation to the description served at `/api.json`.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiState;
use crate::error::{method_not_allowed, unknown_uri};
use crate::handlers::{
    auth, customer, gw_channels, gw_commands, gw_devices, gw_groups, gw_logs, gw_protocols,
    gw_streams, messages, platform_logs, platform_webhooks, sessions, subaccounts, subscriptions,
    tokens,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tern REST API",
        description = "The flespi REST API as tern serves it: tokens, sub-accounts, MQTT sessions, \
            subscriptions and retained messages. Every call is also available over MQTT by \
            publishing to `flespi/rest/<method>/<uri>`."
    ),
    modifiers(&TokenAuth),
    tags(
        (name = "auth", description = "The calling token"),
        (name = "platform", description = "Accounts and tokens (master tokens only)"),
        (name = "mqtt", description = "MQTT sessions, subscriptions and retained messages"),
        (name = "gw", description = "Devices, their messages and telemetry, and device groups"),
    )
)]
struct ApiDoc;

/// The `FlespiToken` security scheme: `Authorization: FlespiToken <key>`.
struct TokenAuth;

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "FlespiToken",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`FlespiToken <key>` (or the bare key); `x-flespi-cid: <id>` acts inside a sub-account",
            ))),
        );
    }
}

/// Every endpoint, registered with its description.
fn endpoints() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::info))
        .routes(routes!(auth::regions))
        .routes(routes!(customer::get, customer::put))
        .routes(routes!(tokens::create))
        .routes(routes!(
            tokens::list,
            tokens::put,
            tokens::patch,
            tokens::delete
        ))
        .routes(routes!(subaccounts::create))
        .routes(routes!(
            subaccounts::list,
            subaccounts::put,
            subaccounts::patch,
            subaccounts::delete
        ))
        .routes(routes!(sessions::list, sessions::delete))
        .routes(routes!(subscriptions::create))
        .routes(routes!(subscriptions::list, subscriptions::delete))
        .routes(routes!(messages::publish))
        .routes(routes!(messages::list, messages::delete))
        .routes(routes!(gw_devices::create))
        .routes(routes!(
            gw_devices::list,
            gw_devices::put,
            gw_devices::patch,
            gw_devices::delete
        ))
        .routes(routes!(gw_devices::move_cid))
        .routes(routes!(
            gw_devices::post_messages,
            gw_devices::get_messages,
            gw_devices::delete_messages
        ))
        .routes(routes!(
            gw_devices::telemetry_all,
            gw_devices::delete_telemetry_all
        ))
        .routes(routes!(gw_devices::telemetry, gw_devices::delete_telemetry))
        .routes(routes!(gw_commands::post))
        .routes(routes!(
            gw_commands::queue,
            gw_commands::list_queue_all,
            gw_commands::cancel_all
        ))
        .routes(routes!(gw_commands::list_queue, gw_commands::cancel))
        .routes(routes!(gw_commands::results_all))
        .routes(routes!(gw_commands::results))
        .routes(routes!(gw_channels::create))
        .routes(routes!(
            gw_channels::list,
            gw_channels::put,
            gw_channels::patch,
            gw_channels::delete
        ))
        .routes(routes!(gw_channels::ingest))
        .routes(routes!(gw_channels::connections))
        .routes(routes!(
            gw_channels::get_messages,
            gw_channels::delete_messages
        ))
        .routes(routes!(gw_logs::device_logs))
        .routes(routes!(gw_logs::channel_logs))
        .routes(routes!(gw_logs::const_values))
        .routes(routes!(platform_logs::customer_logs))
        .routes(routes!(platform_logs::mqtt_logs))
        .routes(routes!(gw_streams::create))
        .routes(routes!(
            gw_streams::list,
            gw_streams::put,
            gw_streams::patch,
            gw_streams::delete
        ))
        .routes(routes!(
            gw_streams::list_devices,
            gw_streams::add_devices,
            gw_streams::remove_devices
        ))
        .routes(routes!(
            gw_streams::list_channels,
            gw_streams::add_channels,
            gw_streams::remove_channels
        ))
        .routes(routes!(gw_streams::logs))
        .routes(routes!(gw_streams::protocols))
        .routes(routes!(platform_webhooks::create))
        .routes(routes!(
            platform_webhooks::list,
            platform_webhooks::put,
            platform_webhooks::patch,
            platform_webhooks::delete
        ))
        .routes(routes!(platform_webhooks::logs))
        .routes(routes!(gw_protocols::list))
        .routes(routes!(gw_protocols::device_types))
        .routes(routes!(gw_groups::create))
        .routes(routes!(
            gw_groups::list,
            gw_groups::put,
            gw_groups::patch,
            gw_groups::delete
        ))
        .routes(routes!(
            gw_groups::list_devices,
            gw_groups::add_devices,
            gw_groups::remove_devices
        ))
}

/// The OpenAPI description of every endpoint [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    endpoints().split_for_parts().1
}

/// The REST API: every endpoint, `/api.json`, and JSON 404/405 answers under `/auth`,
/// `/platform` and `/mqtt`. It claims no other path (the daemon's `/health` and `/metrics` merge
/// beside it).
pub fn router(state: ApiState) -> Router {
    let (routes, doc) = endpoints().split_for_parts();
    let json: Arc<str> = match doc.to_json() {
        Ok(json) => json.into(),
        Err(err) => {
            tracing::error!(%err, "could not serialize the OpenAPI description");
            "{}".into()
        }
    };
    routes
        .route(
            "/api.json",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    json.to_string(),
                )
                    .into_response()
            }),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .route("/auth/{*rest}", any(unknown_uri))
        .route("/platform/{*rest}", any(unknown_uri))
        .route("/mqtt/{*rest}", any(unknown_uri))
        .route("/gw/{*rest}", any(unknown_uri))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::durable::durable,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::call_log::log_calls,
        ))
        .with_state(state)
}

/// The router the REST-over-MQTT bridge calls: every URI answers with the JSON envelope.
pub(crate) fn bridge_router(state: ApiState) -> Router {
    router(state).fallback(unknown_uri)
}

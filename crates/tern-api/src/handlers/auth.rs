//! `GET /auth/info`: the calling token; `GET /auth/regions`: where browser apps find this
//! server.

use axum::Extension;
use axum::extract::State;
use axum::http::uri::Authority;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tern_net::{Listener, LocalAddr};
use utoipa::ToSchema;

use super::{FieldsQuery, ResultOf};
use crate::call::Call;
use crate::error::{ApiError, ErrorEnvelope};
use crate::items::{NoData, TokenItem, to_value};
use crate::reply::Reply;
use crate::{ApiState, RegionOptions};

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

/// Where a browser app finds this server (docs/flespi.md#browser-apps): one region, `local`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct RegionItem {
    /// Always `local`.
    pub name: &'static str,
    /// Always true: the only region.
    pub default: bool,
    /// The REST API's base URL, with scheme (`https://example.org:9005`).
    pub rest: String,
    /// MQTT over WebSocket, `host:port` without scheme (apps prepend `wss://`).
    #[serde(rename = "mqtt-ws")]
    pub mqtt_ws: String,
    /// MQTT over TCP, `host:port`; null when the `mqtt` listener is off.
    pub mqtt: Option<String>,
    /// The host name alone.
    pub gw: String,
}

/// Where a browser app finds this server: built from the request's `Host` on the listener
/// that was asked (the connection's local address without one), or from `[http.region]`. It
/// needs no token.
#[utoipa::path(
    get, path = "/auth/regions", tag = "auth",
    responses(
        (status = 200, description = "The one region, `local`", body = ResultOf<RegionItem>),
    )
)]
pub(crate) async fn regions(
    State(api): State<ApiState>,
    listener: Option<Extension<Listener>>,
    local: Option<Extension<LocalAddr>>,
    headers: HeaderMap,
) -> Response {
    let (tls, authority) = asked(&api, listener, local, &headers);
    /// The envelope, keeping the item's keys in the order flespi writes them.
    #[derive(Serialize)]
    struct Regions {
        result: [RegionItem; 1],
    }
    let item = region_item(&api.options.region, tls, authority.as_ref());
    let body = serde_json::to_string(&Regions { result: [item] }).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Whether the listener asked is the TLS one, and the authority a client named it by: the
/// request's `Host`, or the listener's local address without one.
fn asked(
    api: &ApiState,
    listener: Option<Extension<Listener>>,
    local: Option<Extension<LocalAddr>>,
    headers: &HeaderMap,
) -> (bool, Option<Authority>) {
    let region = &api.options.region;
    let tls = match listener {
        Some(Extension(l)) => l.is_tls(),
        // REST over MQTT: no HTTP listener was asked; browsers need the TLS one.
        None => region.https.is_some() || region.http.is_none(),
    };
    let bound = if tls { region.https } else { region.http };
    let authority = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .filter(usable_host)
        .or_else(|| {
            let addr = local.map(|Extension(LocalAddr(a))| a).or(bound)?;
            if addr.ip().is_unspecified() {
                // A bound 0.0.0.0 (REST over MQTT): only this machine can be named.
                return format!("localhost:{}", addr.port()).parse().ok();
            }
            addr.to_string().parse().ok()
        });
    (tls, authority)
}

/// The REST API's base URL as the client of this request reaches it (`rest` of
/// `/auth/regions`): where a channel's `uri` points.
pub(crate) fn rest_base(
    api: &ApiState,
    listener: Option<Extension<Listener>>,
    local: Option<Extension<LocalAddr>>,
    headers: &HeaderMap,
) -> String {
    let (tls, authority) = asked(api, listener, local, headers);
    region_item(&api.options.region, tls, authority.as_ref()).rest
}

/// Whether a `Host` can be handed back to a browser: a host, no user info, a numeric port if
/// any.
fn usable_host(a: &Authority) -> bool {
    let (text, host) = (a.as_str(), a.host());
    if host.is_empty() || text.contains('@') {
        return false;
    }
    let after = text.strip_prefix(host).unwrap_or(":");
    after.is_empty() || a.port_u16().is_some()
}

/// The region as seen through `authority` (the request's `Host`) on a TLS listener or not,
/// with the configured overrides.
fn region_item(region: &RegionOptions, tls: bool, authority: Option<&Authority>) -> RegionItem {
    let (scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
    let host = authority.map_or("localhost", Authority::host).to_string();
    let port = authority
        .and_then(Authority::port_u16)
        .unwrap_or(default_port);
    let rest = region.rest.clone().unwrap_or_else(|| match authority {
        Some(a) => format!("{scheme}://{a}"),
        None => format!("{scheme}://{host}:{port}"),
    });
    let gw = region
        .rest
        .as_deref()
        .and_then(|r| r.parse::<axum::http::Uri>().ok())
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_else(|| host.clone());
    RegionItem {
        name: "local",
        default: true,
        rest,
        mqtt_ws: region
            .mqtt_ws
            .clone()
            .unwrap_or_else(|| format!("{host}:{port}")),
        mqtt: region
            .mqtt
            .clone()
            .or_else(|| region.mqtt_port.map(|p| format!("{host}:{p}"))),
        gw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(s: &str) -> Option<Authority> {
        s.parse().ok()
    }

    #[test]
    fn region_from_the_host() {
        let region = RegionOptions {
            mqtt_port: Some(1883),
            ..RegionOptions::default()
        };
        let r = region_item(&region, true, authority("example.org:9005").as_ref());
        assert_eq!(r.rest, "https://example.org:9005");
        assert_eq!(r.mqtt_ws, "example.org:9005");
        assert_eq!(r.mqtt.as_deref(), Some("example.org:1883"));
        assert_eq!(r.gw, "example.org");
        let r = region_item(&region, false, authority("[::1]").as_ref());
        assert_eq!(r.rest, "http://[::1]");
        assert_eq!(r.mqtt_ws, "[::1]:80");
        assert_eq!(r.gw, "[::1]");
        let r = region_item(&RegionOptions::default(), true, None);
        assert_eq!(r.rest, "https://localhost:443");
        assert_eq!(r.mqtt, None);
    }

    #[test]
    fn unusable_hosts_are_not_echoed() {
        for bad in ["user@example.org", "example.org:http", "example.org:99999"] {
            assert!(
                authority(bad).is_none_or(|a| !usable_host(&a)),
                "{bad} is usable"
            );
        }
        for good in ["example.org", "example.org:9005", "[::1]:8080", "10.0.0.1"] {
            assert!(authority(good).is_some_and(|a| usable_host(&a)), "{good}");
        }
    }

    #[test]
    fn overrides_win() {
        let region = RegionOptions {
            rest: Some("https://broker.example.com".into()),
            mqtt_ws: Some("broker.example.com:443".into()),
            mqtt: Some("broker.example.com:1883".into()),
            mqtt_port: Some(7000),
            ..RegionOptions::default()
        };
        let r = region_item(&region, false, authority("10.0.0.5:8080").as_ref());
        assert_eq!(r.rest, "https://broker.example.com");
        assert_eq!(r.mqtt_ws, "broker.example.com:443");
        assert_eq!(r.mqtt.as_deref(), Some("broker.example.com:1883"));
        assert_eq!(r.gw, "broker.example.com");
    }
}

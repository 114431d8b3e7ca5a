//! CORS for every route of the HTTP listeners (docs/flespi.md#browser-apps): browser apps
//! (TrackIt, the Toolbox, the telemetry dashboard) call the REST API from pages served by
//! other hosts.
//!
//! [`layer`] wraps the whole router the listeners serve, in front of its routing, so that a
//! route merged in later gets the same treatment without doing anything:
//!
//! - `OPTIONS` with `Origin` and `Access-Control-Request-Method` is a preflight on any path,
//!   known or not, answered here before authentication, rate limiting and routing: 204 with
//!   `Access-Control-Allow-Origin: *`, the methods of [`ALLOW_METHODS`], the headers of
//!   [`ALLOW_HEADERS`] plus any the request asks for, and `Access-Control-Max-Age: 86400`.
//!   Chrome's private network preflight (`Access-Control-Request-Private-Network: true`) is
//!   allowed too.
//! - Every other answer, errors included, carries `Access-Control-Allow-Origin: *`. Nothing
//!   uses cookies, so no `Access-Control-Allow-Credentials`.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The methods a preflight allows.
pub const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";

/// The request headers a preflight always allows (a request may ask for more, which are
/// allowed too).
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, x-flespi-app, x-flespi-cid";

/// How long a browser may cache a preflight's answer, seconds.
pub const MAX_AGE: &str = "86400";

const PRIVATE_NETWORK: &str = "access-control-request-private-network";
const ALLOW_PRIVATE_NETWORK: &str = "access-control-allow-private-network";

/// `router` with CORS in front of its routing.
pub fn layer(router: Router) -> Router {
    Router::new()
        .fallback_service(router)
        .layer(axum::middleware::from_fn(cors))
}

async fn cors(req: Request, next: Next) -> Response {
    if is_preflight(&req) {
        return preflight(req.headers());
    }
    let mut res = next.run(req).await;
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

fn is_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight(request: &HeaderMap) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    let headers = allow_headers(request);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_str(&headers).unwrap_or(HeaderValue::from_static(ALLOW_HEADERS)),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    // The answer depends on what the request asked for: caches must not mix them up.
    h.insert(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"),
    );
    if request
        .get(PRIVATE_NETWORK)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        h.insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
    }
    res
}

/// [`ALLOW_HEADERS`] followed by every header name the request asks for that is not among
/// them (names that are not tokens are left out).
fn allow_headers(request: &HeaderMap) -> String {
    let mut out = ALLOW_HEADERS.to_string();
    let mut names: Vec<String> = ALLOW_HEADERS
        .split(", ")
        .map(str::to_ascii_lowercase)
        .collect();
    let asked = request
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.bytes().all(is_token_byte));
    for name in asked {
        let lower = name.to_ascii_lowercase();
        if !names.contains(&lower) {
            out.push_str(", ");
            out.push_str(&lower);
            names.push(lower);
        }
    }
    out
}

/// A byte of an HTTP token (RFC 9110 §5.6.2).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")),
        );
        h
    }

    #[test]
    fn allowed_headers_add_what_the_request_asks_for_once() {
        assert_eq!(allow_headers(&HeaderMap::new()), ALLOW_HEADERS);
        assert_eq!(
            allow_headers(&asking(
                "authorization,X-Flespi-App, x-custom ,x-custom, bad name"
            )),
            format!("{ALLOW_HEADERS}, x-custom")
        );
    }
}

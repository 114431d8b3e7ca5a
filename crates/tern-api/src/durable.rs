//! Changes are durable before they are answered (docs/flespi.md#the-rest-api): every request that
//! may change something (any method but GET, HEAD and OPTIONS) is refused with 503 while the store
//! cannot write, and otherwise answered only once every op submitted by the time its handler
//! returned is durable: the same ticket wait an MQTT acknowledgement uses. A store that fails while
//! the answer waits turns it into a 503: the change is made in memory and will be written when the
//! store recovers, but it was not confirmed durable.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiState;
use crate::error::ApiError;

/// How often a waiting answer checks whether the store started failing.
const CHECK_EVERY: Duration = Duration::from_millis(50);

fn unavailable(why: Option<String>, done: bool) -> Response {
    let why = why.unwrap_or_else(|| "too many changes are waiting to be written".into());
    let reason = if done {
        format!(
            "the change was made but is not durable yet: the store cannot write ({why}); it is \
             written when the store recovers"
        )
    } else {
        format!("the store cannot write ({why}); nothing was changed, try again later")
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
}

/// The middleware: refuse changes while the store does not accept work, wait for durability
/// after them.
pub(crate) async fn durable(State(api): State<ApiState>, req: Request, next: Next) -> Response {
    let store = api.broker.store().clone();
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !changes || !store.enabled() {
        return next.run(req).await;
    }
    if !store.accepting() {
        store.note_refused();
        return unavailable(store.failure(), false);
    }
    let response = next.run(req).await;
    let ticket = store.submitted();
    loop {
        if tokio::time::timeout(CHECK_EVERY, store.wait(ticket))
            .await
            .is_ok()
        {
            return response;
        }
        if store.failing() {
            return unavailable(store.failure(), true);
        }
    }
}

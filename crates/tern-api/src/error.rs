//! The error envelope (docs/flespi.md#the-rest-api): an HTTP status and `{"errors": [{"code",
//! "reason"}]}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One error of the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorItem {
    /// The HTTP status this error stands for.
    pub code: u16,
    /// What went wrong, for a person.
    pub reason: String,
    /// The position of the item of a POST array this error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl ErrorItem {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> ErrorItem {
        ErrorItem {
            code: status.as_u16(),
            reason: reason.into(),
            index: None,
        }
    }

    /// The same error about item `index` of the request.
    pub fn at(mut self, index: usize) -> ErrorItem {
        self.index = Some(index);
        self
    }
}

/// A request that failed as a whole: nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub errors: Vec<ErrorItem>,
}

/// The JSON of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorEnvelope {
    pub errors: Vec<ErrorItem>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            errors: vec![ErrorItem::new(status, reason)],
        }
    }

    /// 400 listing every problem found in the input.
    pub fn invalid(errors: Vec<ErrorItem>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            errors,
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, reason)
    }

    pub fn unauthorized(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, reason)
    }

    pub fn forbidden(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, reason)
    }

    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, reason)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        for e in &self.errors {
            write!(f, "; {}", e.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(
            self.status,
            &ErrorEnvelope {
                errors: self.errors,
            },
        )
    }
}

/// A JSON answer with the given status.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(%err, "could not serialize a REST answer");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                INTERNAL_ERROR_BODY,
            )
                .into_response()
        }
    }
}

const INTERNAL_ERROR_BODY: &str = r#"{"errors":[{"code":500,"reason":"internal error"}]}"#;

/// The fallback for URIs the API does not serve.
pub(crate) async fn unknown_uri(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("unknown URI {}", uri.path()))
}

/// The fallback for a method a URI does not take.
pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

//! The gateway's bearer-token check (`--auth-token-file`, see [`crate::api::auth`]): a request
//! to a guarded route without `Authorization: Bearer <token>`, or with a token not loaded, gets
//! 401 with `WWW-Authenticate: Bearer` and the same one-line text as gRPC's UNAUTHENTICATED.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Failure;
use crate::api::auth::{Tokens, REFUSED};

/// Passes the request on when `tokens` admit its `Authorization` header, else answers 401.
pub(super) async fn require_bearer(
    State(tokens): State<Tokens>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if tokens.admits(authorization) {
        return next.run(request).await;
    }
    let mut refused = Failure::new(StatusCode::UNAUTHORIZED, REFUSED).into_response();
    refused.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"raftkv\""),
    );
    refused
}

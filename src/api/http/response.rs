//! Building responses: whole bodies, streams, and Kubernetes `Status`
//! objects for every error, as the API server answers them.

use std::convert::Infallible;

use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::route::RouteError;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn bytes(
    code: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    bytes(code, "text/plain; charset=utf-8", body)
}

pub fn json(value: &Value) -> Response<Body> {
    bytes(StatusCode::OK, "application/json", value.to_string())
}

/// Any serializable object as JSON, or a 500 if it cannot be serialized.
pub fn object(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => bytes(StatusCode::OK, "application/json", body),
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
        ),
    }
}

/// A body streamed from `rx`, chunk by chunk, until the sender is dropped.
/// The sender's side is bounded: a client that does not read makes only
/// its own producer wait.
pub fn stream(content_type: &'static str, rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let frames = ReceiverStream::new(rx).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A `Status` object with `code`.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let mut response = json(&status_object(code, reason, message));
    *response.status_mut() = code;
    response
}

pub fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

pub fn not_found(kind: &str, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
    )
}

pub fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

pub fn route_error(error: &RouteError) -> Response<Body> {
    let message = error.to_string();
    match error {
        RouteError::BadRequest(_) => bad_request(&message),
        RouteError::NotFound(_) => status(StatusCode::NOT_FOUND, "NotFound", &message),
        RouteError::ReadOnly => {
            status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &message)
        }
    }
}

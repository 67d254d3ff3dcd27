//! Who may send a request on which listener: the decision taken before a
//! request is routed, so no handler runs for a caller it is not for.

use std::sync::Arc;

use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, Method, Response, StatusCode};

use super::response::{self, Body};
use super::route::{self, Route};
use crate::api::auth::{self, Tokens, User};

/// What a listener requires of its callers.
#[derive(Clone)]
pub enum Access {
    /// The root-only unix socket: its peer is root; nothing to check.
    Root,
    /// The plain HTTP port: health checks (and `/metrics` when `metrics`)
    /// for anyone, a 401 saying where the API is for everything else.
    Public { metrics: bool, hint: Arc<str> },
    /// The HTTPS API: the connection's verified client certificate, or a
    /// bearer token of the request.
    Authenticated {
        tokens: Arc<Tokens>,
        certificate: Option<Arc<User>>,
    },
}

/// Why a request is turned away.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized(String),
    Forbidden(String),
}

impl Refusal {
    /// The metrics label (never the caller's name or the path).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
        }
    }

    /// The `Status` the API server would answer.
    pub fn response(&self) -> Response<Body> {
        match self {
            Refusal::Unauthorized(message) => {
                response::status(StatusCode::UNAUTHORIZED, "Unauthorized", message)
            }
            Refusal::Forbidden(message) => {
                response::status(StatusCode::FORBIDDEN, "Forbidden", message)
            }
        }
    }
}

impl Access {
    /// Whether a request for `path` with `headers` may go on.
    pub fn admit(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        match self {
            Access::Root => Ok(()),
            Access::Public { metrics, hint } => {
                let open = match route::route(path, None) {
                    Ok(Route::Healthz | Route::Readyz) => true,
                    Ok(Route::Metrics) => *metrics,
                    _ => false,
                };
                if open {
                    Ok(())
                } else {
                    Err(Refusal::Unauthorized(hint.to_string()))
                }
            }
            Access::Authenticated {
                tokens,
                certificate,
            } => {
                let token = headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(auth::bearer_token);
                let user = match (certificate, token) {
                    (Some(user), _) => user.clone(),
                    (None, Some(token)) => tokens
                        .lookup(token)
                        .ok_or_else(|| Refusal::Unauthorized("Unauthorized".into()))?,
                    (None, None) => return Err(Refusal::Unauthorized("Unauthorized".into())),
                };
                auth::authorize(&user, method, path).map_err(Refusal::Forbidden)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;
    use crate::api::auth::VIEWERS_GROUP;

    fn tokens() -> Arc<Tokens> {
        let mut tokens = Tokens::default();
        let user = |name: &str, groups: &[&str]| User {
            name: name.into(),
            uid: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        tokens.insert("admin-token", user("admin", &[]));
        tokens.insert("viewer-token", user("viewer", &[VIEWERS_GROUP]));
        Arc::new(tokens)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    #[test]
    fn the_public_port_serves_health_checks_only() {
        let public = |metrics| Access::Public {
            metrics,
            hint: "use https".into(),
        };
        let none = HeaderMap::new();
        for path in ["/healthz", "/livez", "/readyz"] {
            assert_eq!(public(false).admit(&Method::GET, path, &none), Ok(()));
        }
        for path in [
            "/pods",
            "/metrics",
            "/api/v1/pods",
            "/api/v1/namespaces/default/pods/web/log",
            "/describe/pods/default/web",
            "/api",
            "/version",
            "/nothing",
            "",
        ] {
            assert_eq!(
                public(false).admit(&Method::GET, path, &bearer("admin-token")),
                Err(Refusal::Unauthorized("use https".into())),
                "{path}"
            );
        }
        assert_eq!(public(true).admit(&Method::GET, "/metrics", &none), Ok(()));
    }

    #[test]
    fn the_https_port_needs_a_known_token_or_a_certificate() {
        let https = |certificate| Access::Authenticated {
            tokens: tokens(),
            certificate,
        };
        let path = "/api/v1/pods";
        let unauthorized = Err(Refusal::Unauthorized("Unauthorized".into()));
        assert_eq!(
            https(None).admit(&Method::GET, path, &HeaderMap::new()),
            unauthorized
        );
        assert_eq!(
            https(None).admit(&Method::GET, "/healthz", &HeaderMap::new()),
            unauthorized
        );
        assert_eq!(
            https(None).admit(&Method::GET, path, &bearer("wrong")),
            unauthorized
        );
        assert_eq!(
            https(None).admit(&Method::GET, path, &bearer("admin-token")),
            Ok(())
        );
        let cert = Arc::new(User {
            name: "node-admin".into(),
            uid: String::new(),
            groups: vec![],
        });
        assert_eq!(
            https(Some(cert)).admit(&Method::POST, path, &HeaderMap::new()),
            Ok(())
        );
    }

    #[test]
    fn viewers_are_forbidden_what_only_full_users_may_do() {
        let https = Access::Authenticated {
            tokens: tokens(),
            certificate: None,
        };
        let viewer = bearer("viewer-token");
        assert_eq!(https.admit(&Method::GET, "/api/v1/pods", &viewer), Ok(()));
        let exec = "/api/v1/namespaces/default/pods/web/exec";
        let refused = https.admit(&Method::GET, exec, &viewer).unwrap_err();
        assert_eq!(refused.label(), "forbidden");
        assert_eq!(refused.response().status(), StatusCode::FORBIDDEN);
        assert!(https.admit(&Method::POST, "/api/v1/pods", &viewer).is_err());
        assert_eq!(
            https.admit(&Method::GET, exec, &bearer("admin-token")),
            Ok(())
        );
    }
}

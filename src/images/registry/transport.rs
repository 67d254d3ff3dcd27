//! HTTP to registries, bounded. A registry is someone else's server: it may
//! answer a manifest request with gigabytes, trickle a token response one
//! byte a minute, or send an error page without end. Every body read here is
//! capped while it is read (the excess is never buffered), every request but
//! a blob transfer has a deadline for the whole exchange, and a blob transfer
//! must make progress within [`READ_TIMEOUT`].
//!
//! The `WWW-Authenticate` flow is the distribution spec's: Basic with the
//! configured credentials, or Bearer with a token from the realm the registry
//! names (scope `repository:<name>:pull`), cached per registry and repository.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use super::{chain, Attempt, RegistryError};

/// Largest manifest or index accepted, the limit Distribution and containerd
/// use; a larger body is not a manifest anyone meant to serve.
pub(super) const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest token response: a token is a few KiB of JWT.
pub(super) const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// Most of an error body read: enough for any error envelope, and the rest
/// is not worth reading.
pub(super) const MAX_ERROR_BYTES: u64 = 16 << 10;

/// Connecting to a registry that does not answer within this is "unreachable"
/// (and retried by the caller) rather than hanging a pull.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence between two reads of a response: a stalled blob transfer
/// ends, a slow but moving one does not (layers can be large).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-exchange deadline of a manifest, token or HEAD request, body
/// included, so that a body trickled a byte at a time still ends.
pub(super) const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

/// User-Agent sent to registries, so their logs say who pulled.
const USER_AGENT: &str = concat!("podkeeper/", env!("CARGO_PKG_VERSION"));

/// Where one request goes and as whom.
pub(super) struct Target<'a> {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// host[:port] to connect to.
    pub host: &'a str,
    pub repository: &'a str,
    pub credentials: Option<(&'a str, &'a str)>,
}

impl Target<'_> {
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://{}/v2/{}/{path}",
            self.scheme, self.host, self.repository
        )
    }

    fn cache_key(&self) -> String {
        format!("{}://{}/{}", self.scheme, self.host, self.repository)
    }
}

/// One HTTP client and the `Authorization` values that worked, shared by all pulls.
pub(super) struct Transport {
    client: reqwest::Client,
    /// `Authorization` header per registry and repository.
    authorizations: Mutex<HashMap<String, HeaderValue>>,
}

impl Transport {
    pub fn new() -> Transport {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            // Building only fails for bad certificates or proxies, and none
            // are configured here.
            .unwrap_or_default();
        Transport {
            client,
            authorizations: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `method` to `url` for `target`, answering one authentication
    /// challenge. A success is returned with its body unread; anything else
    /// becomes a [`RegistryError`] (the error body read up to
    /// [`MAX_ERROR_BYTES`]). No deadline of its own: the caller sets one.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &str,
        target: &Target<'_>,
        attempt: &Attempt,
    ) -> Result<Response, RegistryError> {
        let key = target.cache_key();
        // Credentials configured for a registry go with the first request,
        // as before a challenge they would cost every pull an extra 401;
        // a Bearer registry answers with its challenge all the same.
        let mut authorization = self.lock().get(&key).cloned().or_else(|| {
            target
                .credentials
                .map(|(user, password)| basic(user, password))
        });
        let mut challenged = false;
        loop {
            let mut request = self
                .client
                .request(method.clone(), url)
                .header(ACCEPT, accept);
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value.clone());
            }
            let response = request.send().await.map_err(|e| unreachable(attempt, &e))?;
            if response.status() == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let answer = self
                    .answer_challenge(response.headers(), target, attempt)
                    .await?;
                self.lock().insert(key.clone(), answer.clone());
                authorization = Some(answer);
                continue;
            }
            if response.status().is_success() {
                return Ok(response);
            }
            return Err(failure(response, url, attempt).await);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeaderValue>> {
        self.authorizations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The `Authorization` value answering a 401's challenge.
    async fn answer_challenge(
        &self,
        headers: &HeaderMap,
        target: &Target<'_>,
        attempt: &Attempt,
    ) -> Result<HeaderValue, RegistryError> {
        let host = &attempt.host;
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
            .ok_or_else(|| {
                attempt.unauthorized(&format!(
                    "registry {host} answered 401 without a usable WWW-Authenticate challenge"
                ))
            })?;
        match challenge {
            Challenge::Basic => match target.credentials {
                Some((user, password)) => Ok(basic(user, password)),
                None => Err(attempt.unauthorized(&format!("registry {host} answered 401"))),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope =
                    scope.unwrap_or_else(|| format!("repository:{}:pull", target.repository));
                let token = self
                    .fetch_token(&realm, service.as_deref(), &scope, target, attempt)
                    .await?;
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    attempt.unauthorized(&format!(
                        "the token service of registry {host} sent a token that is not a header value"
                    ))
                })
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        target: &Target<'_>,
        attempt: &Attempt,
    ) -> Result<String, RegistryError> {
        let host = &attempt.host;
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.client.get(realm).query(&query);
        if let Some((user, password)) = target.credentials {
            request = request.header(AUTHORIZATION, basic(user, password));
        }
        let exchange = async {
            let response = request.send().await.map_err(|e| unreachable(attempt, &e))?;
            let status = response.status();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(RegistryError::Unreachable(format!(
                    "{}: the token service of registry {host} answered HTTP {status}",
                    attempt.what
                )));
            }
            let success = status.is_success();
            let cap = if success {
                MAX_TOKEN_BYTES
            } else {
                MAX_ERROR_BYTES
            };
            let body = match read_capped(response, cap, "token response", attempt).await {
                Ok(body) => body,
                Err(e) if !success => {
                    return Err(attempt.unauthorized(&format!(
                        "the token service of registry {host} answered HTTP {status} ({e})"
                    )))
                }
                Err(e) => return Err(e),
            };
            if !success {
                return Err(attempt.unauthorized(&format!(
                    "the token service of registry {host} answered HTTP {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                )));
            }
            let token: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Invalid(format!(
                    "{}: the token service of registry {host} sent no token: {e}",
                    attempt.what
                ))
            })?;
            token.token.or(token.access_token).ok_or_else(|| {
                RegistryError::Invalid(format!(
                    "{}: the token service of registry {host} sent no token",
                    attempt.what
                ))
            })
        };
        within_deadline(exchange, "token request", attempt).await
    }
}

/// `future` (a whole request and its body), failing as unreachable after
/// [`REQUEST_DEADLINE`].
pub(super) async fn within_deadline<T>(
    future: impl std::future::Future<Output = Result<T, RegistryError>>,
    what: &str,
    attempt: &Attempt,
) -> Result<T, RegistryError> {
    tokio::time::timeout(REQUEST_DEADLINE, future)
        .await
        .unwrap_or_else(|_| {
            Err(RegistryError::Unreachable(format!(
                "{}: registry {} did not complete the {what} within {REQUEST_DEADLINE:?}",
                attempt.what, attempt.host
            )))
        })
}

/// The body of `response`, failing as soon as it exceeds `cap` bytes (or
/// announces more): the excess is never read into memory.
pub(super) async fn read_capped(
    response: Response,
    cap: u64,
    what: &str,
    attempt: &Attempt,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = |announced: String| {
        RegistryError::Invalid(format!(
            "{}: registry {} sent a {what} larger than the {cap} bytes allowed{announced}",
            attempt.what, attempt.host
        ))
    };
    if let Some(length) = response.content_length().filter(|&l| l > cap) {
        return Err(too_large(format!(" ({length} bytes announced)")));
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk: Bytes = chunk.map_err(|e| unreachable(attempt, &e))?;
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(too_large(String::new()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport failure: connection, TLS, DNS, timeout, a body cut short.
pub(super) fn unreachable(attempt: &Attempt, err: &reqwest::Error) -> RegistryError {
    RegistryError::Unreachable(format!(
        "{}: registry {} unreachable: {}",
        attempt.what,
        attempt.host,
        chain(err)
    ))
}

fn basic(user: &str, password: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A `WWW-Authenticate` challenge this client can answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`
    /// (parameter values quoted or not, quoted ones may hold commas).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let parameters = parameters(rest);
        let get = |name: &str| {
            parameters
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
        };
        let realm =
            get("realm").filter(|r| r.starts_with("https://") || r.starts_with("http://"))?;
        Some(Challenge::Bearer {
            realm,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `key=value` pairs of a challenge, separated by commas outside quotes.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return pairs;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        pairs.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// The error envelope of the distribution spec.
#[derive(serde::Deserialize)]
struct Envelope {
    errors: Vec<EnvelopeError>,
}

#[derive(serde::Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A response other than success, read up to [`MAX_ERROR_BYTES`], sorted by
/// what the caller can do about it.
async fn failure(response: Response, url: &str, attempt: &Attempt) -> RegistryError {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        let room = MAX_ERROR_BYTES as usize - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ERROR_BYTES as usize {
            break;
        }
    }
    classify(status, &body, url, attempt)
}

/// Sorts an error answer (status and at most [`MAX_ERROR_BYTES`] of body).
pub(super) fn classify(status: u16, body: &[u8], url: &str, attempt: &Attempt) -> RegistryError {
    let (what, host) = (&attempt.what, &attempt.host);
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(body) {
        if !envelope.errors.is_empty() {
            let messages: Vec<&str> = envelope
                .errors
                .iter()
                .map(|e| match e.message.trim() {
                    "" => e.code.as_str(),
                    message => message,
                })
                .collect();
            let detail = format!(
                "registry {host} answered {:?} for {url}",
                messages.join("; ")
            );
            let any = |wanted: &[&str]| envelope.errors.iter().any(|e| wanted.contains(&&*e.code));
            if any(&["UNAUTHORIZED", "DENIED"]) {
                return attempt.unauthorized(&detail);
            }
            if any(&[
                "MANIFEST_UNKNOWN",
                "BLOB_UNKNOWN",
                "NAME_UNKNOWN",
                "NOT_FOUND",
            ]) {
                return RegistryError::NotFound(format!("{what}: not found: {detail}"));
            }
            if any(&["TOOMANYREQUESTS"]) {
                return RegistryError::Unreachable(format!("{what}: rate limited: {detail}"));
            }
            if status < 500 && status != 401 && status != 403 {
                return RegistryError::Invalid(format!("{what}: {detail}"));
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let detail = format!(
        "registry {host} answered HTTP {status} for {url}: {}",
        text.trim()
    );
    match status {
        401 | 403 => attempt.unauthorized(&detail),
        404 => RegistryError::NotFound(format!("{what}: not found: {detail}")),
        408 | 429 | 500..=599 => RegistryError::Unreachable(format!("{what}: {detail}")),
        _ => RegistryError::Invalid(format!("{what}: {detail}")),
    }
}

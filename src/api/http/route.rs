//! Requests to routes, purely: the path, the query string and the `Accept`
//! header become a [`Route`] or a [`RouteError`] that answers 4xx. Nothing
//! here looks at pods, so every malformed request is turned away before a
//! handler runs (see the property test at the end).

use super::selector::{FieldSelector, LabelSelector, SelectorError};

/// Longest query string accepted; selectors and log options are far shorter.
const MAX_QUERY: usize = 4096;

/// The pod fields a field selector may use.
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "status.phase",
    "status.podIP",
];

/// The event fields a field selector may use (`kubectl describe` uses the
/// `involvedObject` ones).
pub const EVENT_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.fieldPath",
    "reason",
    "type",
    "source",
    "reportingComponent",
];

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    /// The kubelet read-only port's `/pods`.
    KubeletPods,
    Version,
    /// `/api`: the legacy group's versions.
    ApiVersions,
    /// `/api/v1`: the resources served.
    ApiResources,
    /// `/apis`: no groups besides the legacy one.
    ApiGroups,
    /// `/openapi/v2`, `/openapi/v3`: not served (kubectl copes).
    OpenApi,
    PodList(Scope, ListOptions),
    PodGet(String, String),
    PodLog(String, String, LogOptions),
    EventList(Scope, ListOptions),
    EventGet(String, String),
    /// `/describe/pods/{namespace}/{name}`, `json` for `?output=json`.
    Describe(String, String, bool),
}

impl Route {
    /// A short label of the route for metrics (never the raw path).
    pub fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::KubeletPods => "kubelet_pods",
            Route::Version => "version",
            Route::ApiVersions | Route::ApiResources | Route::ApiGroups => "discovery",
            Route::OpenApi => "openapi",
            Route::PodList(..) => "pod_list",
            Route::PodGet(..) => "pod_get",
            Route::PodLog(..) => "pod_log",
            Route::EventList(..) => "event_list",
            Route::EventGet(..) => "event_get",
            Route::Describe(..) => "describe",
        }
    }
}

/// All namespaces, or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    pub fn includes(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(n) => n == namespace,
        }
    }
}

/// The list options of the Kubernetes API that change an answer here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub watch: bool,
    /// Where a watch starts: empty or `0` sends the current objects first.
    pub resource_version: String,
    /// How long a watch lasts at most.
    pub timeout_seconds: Option<u64>,
}

/// The options of `GET .../pods/{name}/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub container: Option<String>,
    pub previous: bool,
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<jiff::Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

/// Why a request has no route; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the server could not find the requested resource ({0})")]
    NotFound(String),
    #[error(
        "the API is read-only: manifests in the manifest directory are the source of truth; \
         edit or remove the manifest file instead"
    )]
    ReadOnly,
}

impl From<SelectorError> for RouteError {
    fn from(e: SelectorError) -> Self {
        RouteError::BadRequest(e.to_string())
    }
}

/// Routes a GET (or HEAD) of `path` with query `query` (without the `?`).
pub fn route(path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    let query = Query::parse(query.unwrap_or(""))?;
    let not_found = || RouteError::NotFound(truncate(path));
    let raw: Vec<&str> = path
        .strip_prefix('/')
        .ok_or_else(not_found)?
        .trim_end_matches('/')
        .split('/')
        .collect();
    let segments = raw
        .iter()
        .map(|s| percent_decode(s))
        .collect::<Result<Vec<_>, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = match segments.as_slice() {
        ["healthz"] | ["livez"] => Route::Healthz,
        ["readyz"] => Route::Readyz,
        ["metrics"] => Route::Metrics,
        ["pods"] => Route::KubeletPods,
        ["version"] => Route::Version,
        ["api"] => Route::ApiVersions,
        ["api", "v1"] => Route::ApiResources,
        ["apis"] => Route::ApiGroups,
        ["openapi", "v2" | "v3", ..] => Route::OpenApi,
        ["api", "v1", "pods"] => Route::PodList(Scope::All, query.list(POD_FIELDS)?),
        ["api", "v1", "events"] => Route::EventList(Scope::All, query.list(EVENT_FIELDS)?),
        ["api", "v1", "namespaces", ns, rest @ ..] => {
            let ns = name(ns)?;
            match rest {
                ["pods"] => Route::PodList(Scope::Namespace(ns), query.list(POD_FIELDS)?),
                ["pods", pod] => Route::PodGet(ns, name(pod)?),
                ["pods", pod, "log"] => Route::PodLog(ns, name(pod)?, query.log()?),
                ["events"] => Route::EventList(Scope::Namespace(ns), query.list(EVENT_FIELDS)?),
                ["events", event] => Route::EventGet(ns, name(event)?),
                _ => return Err(not_found()),
            }
        }
        ["describe", "pods", ns, pod] => {
            let json = match query.get("output") {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(RouteError::BadRequest(format!(
                        "output {:?}: use text or json",
                        truncate(other)
                    )))
                }
            };
            Route::Describe(name(ns)?, name(pod)?, json)
        }
        _ => return Err(not_found()),
    };
    Ok(route)
}

/// Whether an `Accept` header asks for a `meta.k8s.io/v1` Table, as
/// `kubectl get` does (`application/json;as=Table;v=v1;g=meta.k8s.io,...`).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && !params.iter().any(|p| p.starts_with("v=") && *p != "v=v1")
    })
}

/// A name or namespace in a path: what Kubernetes object names can be,
/// checked loosely (lookups decide whether it exists).
fn name(segment: &str) -> Result<String, RouteError> {
    let valid = !segment.is_empty()
        && segment.len() <= 253
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if valid {
        Ok(segment.to_string())
    } else {
        Err(RouteError::BadRequest(format!(
            "{:?} is not a valid name",
            truncate(segment)
        )))
    }
}

/// A decoded query string: `key=value` pairs, the first of a repeated key
/// winning.
#[derive(Debug, Default)]
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: &str) -> Result<Query, RouteError> {
        if query.len() > MAX_QUERY {
            return Err(RouteError::BadRequest(format!(
                "the query string is longer than {MAX_QUERY} bytes"
            )));
        }
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((form_decode(key)?, form_decode(value)?))
            })
            .collect::<Result<_, RouteError>>()?;
        Ok(Query { pairs })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> Result<bool, RouteError> {
        match self.get(key) {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(invalid(key, other, "a boolean")),
        }
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, RouteError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| invalid(key, v, "a non-negative integer"))
            })
            .transpose()
    }

    fn list(&self, fields: &[&str]) -> Result<ListOptions, RouteError> {
        let selector = FieldSelector::parse(self.get("fieldSelector").unwrap_or(""))?;
        selector.check(fields)?;
        Ok(ListOptions {
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or(""))?,
            fields: selector,
            watch: self.flag("watch")?,
            resource_version: self.get("resourceVersion").unwrap_or("").to_string(),
            timeout_seconds: self.number("timeoutSeconds")?,
        })
    }

    fn log(&self) -> Result<LogOptions, RouteError> {
        let since_time = self
            .get("sinceTime")
            .map(|v| {
                v.parse()
                    .map_err(|_| invalid("sinceTime", v, "an RFC 3339 time"))
            })
            .transpose()?;
        Ok(LogOptions {
            container: self.get("container").map(name).transpose()?,
            previous: self.flag("previous")?,
            follow: self.flag("follow")?,
            tail_lines: self.number("tailLines")?,
            since_seconds: self.number("sinceSeconds")?,
            since_time,
            timestamps: self.flag("timestamps")?,
            limit_bytes: self.number("limitBytes")?,
        })
    }
}

fn invalid(key: &str, value: &str, what: &str) -> RouteError {
    RouteError::BadRequest(format!(
        "query parameter {key}={:?} is not {what}",
        truncate(value)
    ))
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space.
fn form_decode(text: &str) -> Result<String, RouteError> {
    percent_decode(&text.replace('+', " "))
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, RouteError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    RouteError::BadRequest(format!("bad percent-encoding in {:?}", truncate(text)))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| RouteError::BadRequest(format!("{:?} is not UTF-8", truncate(text))))
}

/// Client text quoted in an error, kept short.
pub fn truncate(text: &str) -> String {
    text.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str, query: Option<&str>) -> Route {
        route(path, query).unwrap_or_else(|e| panic!("{path}?{query:?}: {e}"))
    }

    #[test]
    fn kubernetes_paths_route_with_their_options() {
        assert_eq!(
            ok("/api/v1/namespaces/default/pods/web-node1", None),
            Route::PodGet("default".into(), "web-node1".into())
        );
        let Route::PodList(Scope::Namespace(ns), options) = ok(
            "/api/v1/namespaces/kube-system/pods",
            Some("labelSelector=app%3Dweb&watch=true&resourceVersion=12&limit=500"),
        ) else {
            panic!("not a list")
        };
        assert_eq!(ns, "kube-system");
        assert!(options.watch);
        assert_eq!(options.resource_version, "12");
        assert!(options
            .labels
            .matches(&[("app".into(), "web".into())].into_iter().collect()));
        let Route::PodLog(_, _, log) = ok(
            "/api/v1/namespaces/default/pods/web/log",
            Some("container=app&follow=true&tailLines=10&timestamps=true&sinceSeconds=5"),
        ) else {
            panic!("not a log")
        };
        assert_eq!(
            log,
            LogOptions {
                container: Some("app".into()),
                follow: true,
                tail_lines: Some(10),
                since_seconds: Some(5),
                timestamps: true,
                ..Default::default()
            }
        );
        assert_eq!(
            ok("/describe/pods/default/web", Some("output=json")),
            Route::Describe("default".into(), "web".into(), true)
        );
        assert_eq!(ok("/pods/", None), Route::KubeletPods);
        assert!(matches!(
            ok(
                "/api/v1/events",
                Some("fieldSelector=involvedObject.name%3Dweb")
            ),
            Route::EventList(Scope::All, _)
        ));
    }

    #[test]
    fn malformed_requests_are_client_errors() {
        let bad = |path: &str, query: Option<&str>| route(path, query).unwrap_err();
        assert!(matches!(bad("/nope", None), RouteError::NotFound(_)));
        assert!(matches!(bad("nope", None), RouteError::NotFound(_)));
        assert!(matches!(
            bad("/api/v1/namespaces/a%2Fb/pods", None),
            RouteError::BadRequest(_)
        ));
        assert!(matches!(
            bad("/api/v1/pods", Some("watch=maybe")),
            RouteError::BadRequest(_)
        ));
        assert!(matches!(
            bad("/api/v1/pods", Some("labelSelector=a%ZZ")),
            RouteError::BadRequest(_)
        ));
        assert!(matches!(
            bad("/api/v1/pods", Some("fieldSelector=spec.foo%3Dx")),
            RouteError::BadRequest(_)
        ));
        assert!(matches!(
            bad("/api/v1/namespaces/d/pods/p/log", Some("tailLines=-1")),
            RouteError::BadRequest(_)
        ));
        assert!(matches!(
            bad("/api/v1/pods/%FF", None),
            RouteError::BadRequest(_) | RouteError::NotFound(_)
        ));
    }

    #[test]
    fn table_is_recognized_in_kubectls_accept_header() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(
            "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
        ));
    }

    /// Random paths and queries, built from pieces of real ones so that
    /// many get deep into the parsers, never panic.
    #[test]
    fn random_requests_never_panic() {
        const PIECES: &[&str] = &[
            "/",
            "api",
            "v1",
            "namespaces",
            "default",
            "pods",
            "events",
            "log",
            "describe",
            "%",
            "%2",
            "%zz",
            "%FF",
            "%2F",
            "..",
            "",
            "=",
            "==",
            "!=",
            "!",
            "in",
            "notin",
            "(",
            ")",
            ",",
            "&",
            "?",
            "+",
            " ",
            "a",
            "b.c/d",
            "labelSelector",
            "fieldSelector",
            "watch",
            "tailLines",
            "follow",
            "container",
            "sinceTime",
            "metadata.name",
            "status.phase",
            "involvedObject.uid",
            "\\",
            "\u{e9}",
            "-1",
            "99999999999999999999",
        ];
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        for _ in 0..200_000 {
            let build = |rng: &mut fastrand::Rng| {
                let mut text = String::new();
                for _ in 0..rng.usize(..12) {
                    if rng.usize(..8) == 0 {
                        text.push(char::from(rng.usize(..128) as u8));
                    } else {
                        text.push_str(PIECES[rng.usize(..PIECES.len())]);
                    }
                }
                text
            };
            let path = build(&mut rng);
            let query = build(&mut rng);
            let _ = route(&path, Some(&query));
            let _ = wants_table(&query);
        }
    }
}

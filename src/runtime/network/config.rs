//! Finding and reading the CNI network configuration list, and the built-in
//! network used when the config directory has none.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::{NetworkError, NetworkSettings};

/// The built-in network's name: part of its IPAM directory, of its
/// result-cache files and of its plugins' iptables chain names.
pub(super) const BUILTIN_NAME: &str = "podkeeper";

/// CNI version of the built-in network. 0.4.0 rather than 1.0.0 because it
/// is the newest that plugins 0.8/0.9 (Debian 11, Ubuntu 22.04) speak,
/// while still having CHECK and prevResult; 1.x plugins speak it too.
const BUILTIN_CNI_VERSION: &str = "0.4.0";

/// Where a configuration list came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    File(PathBuf),
    BuiltIn { bridge: String, subnet: String },
}

/// A network configuration list: the plugins run in order on ADD.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NetConfList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// Each plugin's configuration, as in the file; every one has a valid
    /// string `type`.
    pub plugins: Vec<Map<String, Value>>,
    pub source: Source,
}

impl NetConfList {
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File(path) => format!("{} from {}", self.name, path.display()),
            Source::BuiltIn { bridge, subnet } => format!("built-in {bridge} {subnet}"),
        }
    }
}

/// The plugin's `type`, which [`parse`] checked is a plain file name.
pub(super) fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Loads the first configuration file by name, as libcni's `ConfFiles`
/// sorts them, or the built-in network when the directory is missing or has
/// none.
pub(super) fn load(settings: &NetworkSettings) -> Result<NetConfList, NetworkError> {
    match first_conf_file(&settings.conf_dir)? {
        Some(path) => {
            let bytes = std::fs::read(&path).map_err(|source| NetworkError::ConfRead {
                path: path.clone(),
                source,
            })?;
            parse(&path, &bytes)
        }
        None => builtin(settings),
    }
}

fn first_conf_file(dir: &Path) -> Result<Option<PathBuf>, NetworkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetworkError::ConfDir {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut names: Vec<OsString> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetworkError::ConfDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let wanted = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conflist" | "conf" | "json")
        );
        // Follows symlinks, as configuration management likes them.
        if wanted && path.is_file() {
            names.push(entry.file_name());
        }
    }
    names.sort();
    Ok(names.first().map(|name| dir.join(name)))
}

/// Parses a `.conflist`, or a single plugin's `.conf`/`.json` wrapped into a
/// list of one (the whole object becomes the plugin, as libcni does).
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<NetConfList, NetworkError> {
    let invalid = |reason: String| NetworkError::ConfInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(invalid("not a JSON object".into()));
    };
    let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist");
    let string_field = |name: &str| -> Result<String, NetworkError> {
        match top.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(invalid(format!("{name:?} must be a non-empty string"))),
            None => Err(invalid(format!("{name:?} is missing"))),
        }
    };
    let name = string_field("name")?;
    let cni_version = string_field("cniVersion")?;
    let disable_check = match top.get("disableCheck") {
        None => false,
        Some(Value::Bool(b)) => *b,
        // libcni also accepts the string form.
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(_) => return Err(invalid("\"disableCheck\" must be a boolean".into())),
    };
    let plugins = if is_list {
        let Some(Value::Array(list)) = top.get("plugins") else {
            return Err(invalid("\"plugins\" must be a list".into()));
        };
        if list.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        list.iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::Object(map) => Ok(map.clone()),
                _ => Err(invalid(format!("plugins[{i}] is not an object"))),
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![top.clone()]
    };
    for (i, plugin) in plugins.iter().enumerate() {
        check_plugin_type(plugin).map_err(|reason| invalid(format!("plugins[{i}]: {reason}")))?;
    }
    Ok(NetConfList {
        name,
        cni_version,
        disable_check,
        plugins,
        source: Source::File(path.to_path_buf()),
    })
}

/// A plugin type is looked up as a file in the bin dirs, so it must be a
/// plain file name: "../../bin/sh" must not run.
fn check_plugin_type(plugin: &Map<String, Value>) -> Result<(), String> {
    match plugin.get("type") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {
            Ok(())
        }
        Some(t) => Err(format!("\"type\" {t} is not a plugin name")),
        None => Err("\"type\" is missing".into()),
    }
}

/// The built-in network: a bridge with host-local addresses (kept in the
/// agent's state dir, so they are the agent's own), masquerading for
/// traffic leaving the subnet, hairpin mode so a pod reaches itself through
/// its own hostPort, `portmap` for hostPorts (with `snat`, which also makes
/// it set `route_localnet` on the bridge so 127.0.0.1:hostPort works), and
/// `firewall`, which accepts the pods' traffic in the FORWARD chain on
/// hosts whose policy is DROP.
pub(super) fn builtin(settings: &NetworkSettings) -> Result<NetConfList, NetworkError> {
    let bridge = &settings.default_bridge;
    check_interface_name(bridge)
        .map_err(|reason| NetworkError::Settings(format!("bridge name {bridge:?}: {reason}")))?;
    let subnet = &settings.default_subnet;
    let ipv4 = parse_cidr(subnet)
        .ok_or_else(|| NetworkError::Settings(format!("subnet {subnet:?} is not an IP/prefix")))?
        .is_ipv4();
    let default_route = if ipv4 { "0.0.0.0/0" } else { "::/0" };
    let ipam_dir = settings.cni_state_dir().join("networks");
    let plugins = json!([
        {
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": default_route}],
                "dataDir": ipam_dir,
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        {"type": "firewall"},
    ]);
    let plugins = match plugins {
        Value::Array(list) => list
            .into_iter()
            .filter_map(|p| match p {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(NetConfList {
        name: BUILTIN_NAME.to_string(),
        cni_version: BUILTIN_CNI_VERSION.to_string(),
        disable_check: false,
        plugins,
        source: Source::BuiltIn {
            bridge: bridge.clone(),
            subnet: subnet.clone(),
        },
    })
}

/// Checks that a bridge name is a Linux interface name that can also be
/// given to iptables as is, since it becomes an `-i` argument and part of a
/// chain name: 1-15 bytes of `[A-Za-z0-9_.-]`, starting with a letter, a
/// digit or '_'. Stricter than the kernel on purpose: a leading '-' or '!'
/// would read as an option or a negation, '+' is iptables' wildcard.
pub(super) fn check_interface_name(name: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if name.len() > 15 || !first_ok || !name.bytes().all(allowed) {
        return Err(
            "an interface name here is 1-15 characters of [A-Za-z0-9_.-], \
                    starting with a letter, a digit or '_'"
                .to_string(),
        );
    }
    Ok(())
}

/// Parses "10.85.0.0/16" or "fd00::/64" into its address, checking the
/// prefix length.
fn parse_cidr(cidr: &str) -> Option<IpAddr> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(addr)
}

/// Whether a CNI version string ("0.4.0", "1.0.0") is at least `min`.
/// Missing parts count as 0; an unparsable version is not.
pub(super) fn version_at_least(version: &str, min: (u64, u64, u64)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>());
    let mut next = || parts.next().unwrap_or(Ok(0));
    match (next(), next(), next()) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c) >= min,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(conf_dir: &Path) -> NetworkSettings {
        NetworkSettings {
            conf_dir: conf_dir.to_path_buf(),
            state_dir: PathBuf::from("/srv/pk"),
            ..NetworkSettings::default()
        }
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"net-b","plugins":[
        {"type":"bridge","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn the_first_file_by_name_is_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("20-b.conflist"), LIST).unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            LIST.replace("net-b", "net-a"),
        )
        .unwrap();
        std::fs::write(dir.path().join("05-ignored.txt"), "not json").unwrap();
        std::fs::create_dir(dir.path().join("00-dir.conflist")).unwrap();
        let list = load(&settings(dir.path())).unwrap();
        assert_eq!(list.name, "net-a");
        assert_eq!(list.cni_version, "1.0.0");
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(plugin_type(&list.plugins[1]), "portmap");
        assert_eq!(list.source, Source::File(dir.path().join("10-a.conflist")));
        assert!(
            list.describe().ends_with("10-a.conflist"),
            "{}",
            list.describe()
        );
    }

    #[test]
    fn a_single_conf_is_wrapped_into_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let conf =
            r#"{"cniVersion":"0.4.0","name":"single","type":"ptp","ipam":{"type":"host-local"}}"#;
        std::fs::write(dir.path().join("10-single.conf"), conf).unwrap();
        let list = load(&settings(dir.path())).unwrap();
        assert_eq!(list.name, "single");
        assert_eq!(list.cni_version, "0.4.0");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(plugin_type(&list.plugins[0]), "ptp");
        assert_eq!(list.plugins[0]["ipam"]["type"], "host-local");
    }

    #[test]
    fn invalid_json_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-bad.conflist"), "{\"name\": ").unwrap();
        std::fs::write(dir.path().join("20-good.conflist"), LIST).unwrap();
        let err = load(&settings(dir.path())).unwrap_err().to_string();
        assert!(err.contains("10-bad.conflist"), "{err}");
        assert!(err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn structural_errors_name_the_file_and_the_field() {
        let cases = [
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "\"name\" is missing",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"bridge"}]}"#,
                "\"cniVersion\" is missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "\"plugins\" is empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                "\"plugins\" must be a list",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
                "plugins[0]: \"type\" is missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                "is not a plugin name",
            ),
            (r#"[1]"#, "not a JSON object"),
        ];
        for (text, want) in cases {
            let err = parse(Path::new("/etc/cni/net.d/10-x.conflist"), text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains("/etc/cni/net.d/10-x.conflist"), "{err}");
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn disable_check_is_read() {
        let text = r#"{"cniVersion":"1.0.0","name":"n","disableCheck":true,"plugins":[{"type":"bridge"}]}"#;
        assert!(
            parse(Path::new("a.conflist"), text.as_bytes())
                .unwrap()
                .disable_check
        );
        assert!(
            !parse(Path::new("a.conflist"), LIST.as_bytes())
                .unwrap()
                .disable_check
        );
    }

    #[test]
    fn no_file_gives_the_built_in_network() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.default_bridge = "pktest7".into();
        s.default_subnet = "10.207.0.0/16".into();
        let list = load(&s).unwrap();
        assert_eq!(list.describe(), "built-in pktest7 10.207.0.0/16");
        assert_eq!(list.name, BUILTIN_NAME);
        let types: Vec<_> = list.plugins.iter().map(plugin_type).collect();
        assert_eq!(types, ["bridge", "portmap", "firewall"]);
        let bridge = &list.plugins[0];
        assert_eq!(bridge["bridge"], "pktest7");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["hairpinMode"], true);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.207.0.0/16");
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(bridge["ipam"]["dataDir"], "/srv/pk/cni/networks");
        assert_eq!(list.plugins[1]["capabilities"]["portMappings"], true);
        assert_eq!(list.plugins[1]["snat"], true);

        // A missing directory is the same as an empty one.
        s.conf_dir = dir.path().join("missing");
        assert_eq!(
            load(&s).unwrap().describe(),
            "built-in pktest7 10.207.0.0/16"
        );
    }

    #[test]
    fn the_built_in_settings_are_checked() {
        let s = NetworkSettings {
            default_bridge: "a-bridge-name-too-long".into(),
            ..NetworkSettings::default()
        };
        assert!(builtin(&s).is_err());
        let mut s = NetworkSettings {
            default_bridge: "-i".into(),
            ..NetworkSettings::default()
        };
        assert!(builtin(&s).is_err());
        s.default_bridge = "podkeeper0".into();
        s.default_subnet = "10.85.0.0".into();
        assert!(builtin(&s).is_err());
        s.default_subnet = "10.85.0.0/33".into();
        assert!(builtin(&s).is_err());
        s.default_subnet = "fd85::/64".into();
        assert_eq!(
            builtin(&s).unwrap().plugins[0]["ipam"]["routes"][0]["dst"],
            "::/0"
        );
        assert_eq!(
            builtin(&NetworkSettings::default()).unwrap().describe(),
            "built-in podkeeper0 10.85.0.0/16"
        );
    }

    #[test]
    fn interface_names_are_safe_iptables_arguments() {
        for good in ["podkeeper0", "cni0", "br-lan.10", "_x", "a23456789012345"] {
            assert_eq!(check_interface_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "a234567890123456",
            "-j",
            "!lo",
            ".x",
            "cni+",
            "a b",
            "a\nb",
            "a/b",
            "a:b",
            "brücke",
        ] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(version_at_least("0.10.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
        assert!(!version_at_least("", (0, 4, 0)));
        assert!(!version_at_least("x", (0, 4, 0)));
    }
}

//! Everything that touches containers: the pure OCI spec builder, labels and
//! IDs, the built-in pause image, and the one module that talks to
//! containerd.

pub mod cgroups;
pub mod containerd;
pub mod env;
pub mod labels;
pub mod network;
pub mod pause;
pub mod pod_files;
pub mod quantity;
pub mod resources;
pub mod spec;
pub mod stop_labels;

/// The parts of an image's config a container's process is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// The image's `StopSignal` (e.g. `SIGQUIT`), sent instead of SIGTERM
    /// to stop the container; empty for SIGTERM.
    pub stop_signal: String,
}

impl ImageConfig {
    /// The signal that asks a container of this image to stop, as
    /// containerd's CRI plugin reads `StopSignal`: a name with or without
    /// `SIG`, or a number; SIGTERM when unset or unknown.
    pub fn stop_signal(&self) -> i32 {
        parse_signal(&self.stop_signal).unwrap_or(libc::SIGTERM)
    }
}

fn parse_signal(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i32>() {
        return (1..=64).contains(&number).then_some(number);
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "ALRM" => libc::SIGALRM,
        _ => {
            let rt = name.strip_prefix("RTMIN+")?.parse::<i32>().ok()?;
            let signal = libc::SIGRTMIN() + rt;
            return (signal <= libc::SIGRTMAX()).then_some(signal);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_like_containerd() {
        let signal = |s: &str| {
            ImageConfig {
                stop_signal: s.into(),
                ..Default::default()
            }
            .stop_signal()
        };
        assert_eq!(signal(""), libc::SIGTERM);
        assert_eq!(signal("SIGQUIT"), libc::SIGQUIT);
        assert_eq!(signal("quit"), libc::SIGQUIT);
        assert_eq!(signal("9"), libc::SIGKILL);
        assert_eq!(signal("SIGRTMIN+3"), libc::SIGRTMIN() + 3);
        assert_eq!(signal("SIGBOGUS"), libc::SIGTERM);
        assert_eq!(signal("99"), libc::SIGTERM);
    }
}

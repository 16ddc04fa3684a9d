//! Connection settings: the optional TOML config file and how it combines with flags and
//! environment variables (clap already resolved flag > env; the file fills what is still unset).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::args::GlobalOpts;
use crate::client::normalize_endpoint;
use crate::error::CliError;

/// The config file, e.g.
///
/// ```toml
/// endpoints = ["10.0.0.1:7001", "10.0.0.2:7001"]
/// token = "…"
/// cacert = "ca.pem"   # relative paths are relative to the config file
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub endpoints: Option<Vec<String>>,
    pub token: Option<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A config file together with where it was read from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub file: ConfigFile,
}

/// TLS material; present only when a CA certificate is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cacert: PathBuf,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Checked connection settings: only a valid combination can exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Endpoint URIs with their scheme, in the order given.
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub tls: Option<TlsFiles>,
    pub timeout: Duration,
}

/// `$XDG_CONFIG_HOME/flotilla/config.toml`, else `$HOME/.config/flotilla/config.toml`.
pub fn default_config_path(
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let base = match xdg_config_home.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(base.join("flotilla").join("config.toml"))
}

/// Reads the config file: the explicit one (which must exist) or the default one if it exists.
pub fn load(
    explicit: Option<&Path>,
    default: Option<&Path>,
) -> Result<Option<LoadedConfig>, CliError> {
    let path = match (explicit, default) {
        (Some(p), _) => p,
        (None, Some(p)) if p.is_file() => p,
        _ => return Ok(None),
    };
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    let file = toml::from_str(&text).map_err(|source| CliError::ConfigParse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(LoadedConfig {
        path: path.to_path_buf(),
        file,
    }))
}

/// Combines flags/environment (`opts`) with the config file and validates the result.
/// `default_path` only serves the error message when no endpoints are configured at all.
pub fn resolve(
    opts: &GlobalOpts,
    config: Option<LoadedConfig>,
    default_path: Option<&Path>,
) -> Result<Settings, CliError> {
    let (file, base) = match config {
        Some(c) => {
            let base = c.path.parent().map(Path::to_path_buf).unwrap_or_default();
            (c.file, Some(base))
        }
        None => (ConfigFile::default(), None),
    };
    // Relative paths in the file are relative to the file.
    let from_file =
        |p: Option<PathBuf>| p.map(|p| base.as_deref().map_or(p.clone(), |b| b.join(&p)));

    let cacert = opts.cacert.clone().or_else(|| from_file(file.cacert));
    let cert = opts.cert.clone().or_else(|| from_file(file.cert));
    let key = opts.key.clone().or_else(|| from_file(file.key));
    let tls =
        match (cacert, cert, key) {
            (Some(cacert), Some(cert), Some(key)) => Some(TlsFiles {
                cacert,
                identity: Some((cert, key)),
            }),
            (Some(cacert), None, None) => Some(TlsFiles {
                cacert,
                identity: None,
            }),
            (_, Some(_), None) | (_, None, Some(_)) => return Err(CliError::Config(
                "a client certificate needs both --cert and --key (FLOTILLA_CERT / FLOTILLA_KEY)"
                    .into(),
            )),
            (None, Some(_), Some(_)) => {
                return Err(CliError::Config(
                    "a client certificate needs TLS: set the CA certificate with --cacert \
                 (FLOTILLA_CACERT)"
                        .into(),
                ))
            }
            (None, None, None) => None,
        };

    let raw: Vec<String> = match &opts.endpoints {
        Some(list) => list.split(',').map(str::to_string).collect(),
        None => file.endpoints.unwrap_or_default(),
    };
    let raw: Vec<&str> = raw
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if raw.is_empty() {
        let file_hint = default_path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.config/flotilla/config.toml".into());
        return Err(CliError::Config(format!(
            "no controller endpoints configured: pass --endpoints HOST:PORT[,HOST:PORT...], set \
             FLOTILLA_ENDPOINTS, or add `endpoints = [\"HOST:PORT\"]` to {file_hint} (or the \
             file named by --config / FLOTILLA_CONFIG)"
        )));
    }
    let endpoints = raw
        .into_iter()
        .map(|e| normalize_endpoint(e, tls.is_some()))
        .collect::<Result<Vec<_>, _>>()?;

    let token = opts
        .token
        .clone()
        .or(file.token)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());

    Ok(Settings {
        endpoints,
        token,
        tls,
        timeout: opts.timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    /// Parses flags only. (Environment variables are covered by the process tests in
    /// `tests/cli.rs`, which set them on the child process rather than on the test runner.)
    fn opts(args: &[&str]) -> GlobalOpts {
        let mut argv = vec!["flotilla"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["project", "list"]);
        Cli::try_parse_from(argv).expect("parses").global
    }

    fn file(text: &str) -> Option<LoadedConfig> {
        Some(LoadedConfig {
            path: PathBuf::from("/etc/flotilla/config.toml"),
            file: toml::from_str(text).expect("valid toml"),
        })
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let cfg = file(
            r#"endpoints = ["f1:1", "f2:2"]
token = "from-file""#,
        );
        let s = resolve(&opts(&["--endpoints", "a:1", "--token", "flag"]), cfg, None).unwrap();
        assert_eq!(s.endpoints, vec!["http://a:1"]);
        assert_eq!(s.token.as_deref(), Some("flag"));
    }

    #[test]
    fn the_config_file_fills_what_flags_leave_unset() {
        let cfg = file(
            r#"endpoints = ["f1:1", "https://f2:2"]
token = "from-file"
cacert = "ca.pem"
cert = "/abs/client.pem"
key = "client.key""#,
        );
        let s = resolve(&opts(&["--timeout", "3"]), cfg, None).unwrap();
        assert_eq!(s.endpoints, vec!["https://f1:1", "https://f2:2"]);
        assert_eq!(s.token.as_deref(), Some("from-file"));
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(
            s.tls,
            Some(TlsFiles {
                cacert: "/etc/flotilla/ca.pem".into(),
                identity: Some(("/abs/client.pem".into(), "/etc/flotilla/client.key".into())),
            })
        );
    }

    #[test]
    fn scheme_defaults_to_https_only_with_a_ca() {
        let s = resolve(&opts(&["--endpoints", "a:1, http://b:2 ,"]), None, None).unwrap();
        assert_eq!(s.endpoints, vec!["http://a:1", "http://b:2"]);
        let s = resolve(
            &opts(&["--endpoints", "a:1,http://b:2", "--cacert", "ca.pem"]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.endpoints, vec!["https://a:1", "http://b:2"]);
        let err = resolve(&opts(&["--endpoints", "https://a:1"]), None, None).unwrap_err();
        assert!(err.to_string().contains("--cacert"), "{err}");
    }

    #[test]
    fn missing_endpoints_explain_how_to_set_them() {
        let err = resolve(
            &opts(&[]),
            file("token = \"t\""),
            Some(Path::new("/h/.config/flotilla/config.toml")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--endpoints"), "{err}");
        assert!(err.contains("FLOTILLA_ENDPOINTS"), "{err}");
        assert!(err.contains("/h/.config/flotilla/config.toml"), "{err}");
    }

    #[test]
    fn client_certificate_needs_key_and_ca() {
        assert!(resolve(
            &opts(&["--endpoints", "a:1", "--cacert", "c", "--cert", "x"]),
            None,
            None
        )
        .is_err());
        assert!(resolve(
            &opts(&["--endpoints", "a:1", "--cert", "x", "--key", "y"]),
            None,
            None
        )
        .is_err());
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        assert!(toml::from_str::<ConfigFile>("endpoint = [\"a:1\"]").is_err());
    }

    #[test]
    fn default_path_prefers_xdg_config_home() {
        assert_eq!(
            default_config_path(Some("/x".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/flotilla/config.toml"))
        );
        assert_eq!(
            default_config_path(Some("relative".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/flotilla/config.toml"))
        );
        assert_eq!(
            default_config_path(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/flotilla/config.toml"))
        );
        assert_eq!(default_config_path(None, None), None);
    }

    #[test]
    fn explicit_config_must_exist_but_default_may_be_absent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        assert!(load(Some(&missing), None).is_err());
        assert!(load(None, Some(&missing)).unwrap().is_none());
        let present = dir.path().join("config.toml");
        std::fs::write(&present, "endpoints = [\"a:1\"]\n").unwrap();
        let loaded = load(None, Some(&present)).unwrap().unwrap();
        assert_eq!(loaded.file.endpoints, Some(vec!["a:1".to_string()]));
    }
}

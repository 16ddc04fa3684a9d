//! Typed controller configuration: a TOML file read into [`ControllerConfig`], checked once by
//! [`ControllerConfig::validate`], after which only a [`ValidConfig`] exists.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One controller as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    pub name: String,
    /// Address gRPC clients use, `host:port`.
    pub client_address: String,
    /// Address peers use for Raft, `host:port`.
    pub peer_address: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the cluster CA. Clients and peers are verified against it.
    pub ca: PathBuf,
    /// PEM certificate of this node (used both as server and as client certificate).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// Require a client certificate on the client listener too (peers always need one).
    #[serde(default)]
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Ticks without a heartbeat before a follower campaigns (randomized up to twice this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between snapshots (log compaction).
    pub snapshot_interval: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging peers need no snapshot.
    pub log_retention: u64,
    /// Upper bound of one append message, bytes.
    pub max_message_bytes: u64,
    /// Largest number of in-flight append messages per follower.
    pub max_inflight_messages: usize,
    /// How long a proposal may wait to be applied before the client is told to retry, ms.
    pub proposal_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_interval: 100_000,
            log_retention: 5_000,
            max_message_bytes: 1 << 20,
            max_inflight_messages: 256,
            proposal_timeout_ms: 5_000,
        }
    }
}

/// The file as written by an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// This controller's Raft id (non-zero, unique in the cluster, never reused).
    pub id: u64,
    pub name: String,
    pub data_dir: PathBuf,
    /// Where the public gRPC API listens.
    pub client_listen: SocketAddr,
    /// Where the peer (Raft) gRPC service listens.
    pub peer_listen: SocketAddr,
    /// The initial members of a new cluster, identical on every initial member. A node started
    /// with `join = true` lists the existing members here so it can find them.
    pub initial_members: Vec<MemberConfig>,
    /// Start with an empty membership and wait to be added with `cluster add-member`.
    #[serde(default)]
    pub join: bool,
    /// Token accepted as the cluster admin until identity exists.
    #[serde(default)]
    pub bootstrap_admin_token: Option<String>,
    /// File holding the bootstrap admin token (first line), instead of `bootstrap_admin_token`.
    #[serde(default)]
    pub bootstrap_admin_token_file: Option<PathBuf>,
    /// File holding the password (first line) of the `admin` user that the first leader of a
    /// new cluster creates. Optional; the environment variable
    /// `FLOTILLA_BOOTSTRAP_ADMIN_PASSWORD` is used when this is unset. Without either, no
    /// `admin` user is created (the bootstrap admin token still works).
    #[serde(default)]
    pub bootstrap_admin_password_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub raft: RaftTuning,
}

/// Environment variable with the bootstrap `admin` user's password.
pub const ADMIN_PASSWORD_ENV: &str = "FLOTILLA_BOOTSTRAP_ADMIN_PASSWORD";

/// A configuration that passed [`ControllerConfig::validate`].
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub id: u64,
    pub name: String,
    pub data_dir: PathBuf,
    pub client_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub initial_members: Vec<MemberConfig>,
    pub join: bool,
    pub admin_token: String,
    /// Password of the `admin` user created on a new cluster, when configured.
    pub admin_password: Option<String>,
    pub tls: Option<TlsConfig>,
    pub raft: RaftTuning,
}

/// The first line of a secret file (token, password), without its line ending.
fn first_line(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

impl ControllerConfig {
    pub fn load(path: &Path) -> Result<ControllerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.id == 0 {
            return bad("id must be a non-zero integer".into());
        }
        if self.name.trim().is_empty() {
            return bad("name must not be empty".into());
        }
        let mut ids = BTreeSet::new();
        for m in &self.initial_members {
            if m.id == 0 || !ids.insert(m.id) {
                return bad(format!("initial_members: id {} is zero or repeated", m.id));
            }
            if m.client_address.is_empty() || m.peer_address.is_empty() {
                return bad(format!(
                    "initial_members: member {} needs both addresses",
                    m.id
                ));
            }
        }
        if !self.join && !ids.contains(&self.id) {
            return bad(format!(
                "this controller (id {}) is not in initial_members; list it, or set join = true \
                 to join an existing cluster",
                self.id
            ));
        }
        if self.join && self.initial_members.iter().all(|m| m.id == self.id) {
            return bad("join = true needs at least one existing member in initial_members".into());
        }
        let r = &self.raft;
        if r.tick_ms == 0 || r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return bad("raft: need tick_ms > 0 and election_ticks > heartbeat_ticks > 0".into());
        }
        if r.snapshot_interval == 0 {
            return bad("raft: snapshot_interval must be positive".into());
        }
        let admin_token = match (
            &self.bootstrap_admin_token,
            &self.bootstrap_admin_token_file,
        ) {
            (Some(_), Some(_)) => {
                return bad(
                    "set bootstrap_admin_token or bootstrap_admin_token_file, not both".into(),
                )
            }
            (Some(t), None) => t.trim().to_owned(),
            (None, Some(p)) => first_line(p)?.trim().to_owned(),
            (None, None) => return bad("bootstrap_admin_token (or _file) is required".into()),
        };
        if admin_token.len() < 16 {
            return bad("the bootstrap admin token must be at least 16 characters".into());
        }
        let admin_password = match &self.bootstrap_admin_password_file {
            Some(p) => Some(first_line(p)?),
            None => std::env::var(ADMIN_PASSWORD_ENV).ok(),
        };
        if let Some(pw) = &admin_password {
            if pw.chars().count() < 8 {
                return bad(format!(
                    "the bootstrap admin password (bootstrap_admin_password_file or \
                     {ADMIN_PASSWORD_ENV}) must be at least 8 characters"
                ));
            }
        }
        if let Some(tls) = &self.tls {
            for (what, p) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if !p.is_file() {
                    return bad(format!(
                        "tls.{what}: {} is not a readable file",
                        p.display()
                    ));
                }
            }
        }
        Ok(ValidConfig {
            id: self.id,
            name: self.name,
            data_dir: self.data_dir,
            client_listen: self.client_listen,
            peer_listen: self.peer_listen,
            initial_members: self.initial_members,
            join: self.join,
            admin_token,
            admin_password,
            tls: self.tls,
            raft: self.raft,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ControllerConfig {
        toml::from_str(&format!(
            "id = 1\nname = \"c1\"\ndata_dir = \"/tmp/x\"\nclient_listen = \"127.0.0.1:1\"\n\
             peer_listen = \"127.0.0.1:2\"\nbootstrap_admin_token = \"0123456789abcdef\"\n{extra}\n\
             [[initial_members]]\nid = 1\nname = \"c1\"\nclient_address = \"a:1\"\n\
             peer_address = \"a:2\"\n"
        ))
        .expect("parses")
    }

    #[test]
    fn the_admin_password_is_optional_and_read_from_its_file() {
        let plain = config("").validate().expect("valid without a password");
        assert_eq!(plain.admin_token, "0123456789abcdef");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "long-enough-pw\nrest\n").unwrap();
        let line = format!(
            "bootstrap_admin_password_file = {:?}",
            file.display().to_string()
        );
        let with = config(&line).validate().expect("valid");
        assert_eq!(with.admin_password.as_deref(), Some("long-enough-pw"));
        std::fs::write(&file, "short\n").unwrap();
        let err = config(&line).validate().unwrap_err();
        assert!(err.to_string().contains("at least 8 characters"), "{err}");
    }
}

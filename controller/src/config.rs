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
    #[error(
        "config file {path}: `{key}` was removed: the cluster admin is now the `admin` user, \
         which the leader creates while the cluster has no user, with the password from \
         bootstrap_admin_password_file (or FLOTILLA_BOOTSTRAP_ADMIN_PASSWORD); delete `{key}` \
         and log in with `flotilla login --user admin`"
    )]
    Removed { path: PathBuf, key: &'static str },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Keys that older releases accepted and this one refuses with [`ConfigError::Removed`] (rather
/// than the generic unknown-key error), so an upgraded controller says what to do instead.
const REMOVED_KEYS: [&str; 2] = ["bootstrap_admin_token", "bootstrap_admin_token_file"];

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
    /// File holding the password (first line) of the `admin` user (cluster admin) that the
    /// first leader creates while the cluster has no user; the environment variable
    /// `FLOTILLA_BOOTSTRAP_ADMIN_PASSWORD` is used when this is unset. One of the two is
    /// required on the first start of an initial member (no `join`, no Raft data yet): without
    /// it nobody could ever act as admin. Once a user exists the password is not used again.
    #[serde(default)]
    pub bootstrap_admin_password_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub images: ImageSettings,
    #[serde(default)]
    pub compute: ComputeSettings,
    #[serde(default)]
    pub network: NetworkSettings,
}

/// Tenant networking.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSettings {
    /// The VXLAN VNIs tenant networks get (inclusive; the lowest free one is taken). Every
    /// controller should use the same range: the leader's applies to what it proposes.
    pub vni_min: u32,
    pub vni_max: u32,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        let (vni_min, vni_max) = crate::state::DEFAULT_VNI_RANGE;
        NetworkSettings { vni_min, vni_max }
    }
}

/// Hosts and scheduling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeSettings {
    /// An agent's lease lasts this long after its last heartbeat, ms.
    pub lease_ttl_ms: u64,
    /// How often agents send heartbeats, ms.
    pub heartbeat_interval_ms: u64,
    /// Added to the TTL before the leader declares a host down, ms.
    pub lease_grace_ms: u64,
    /// Overcommit of vCPUs, RAM and disk used when placing servers.
    pub allocation_ratios: crate::scheduler::AllocationRatios,
}

impl Default for ComputeSettings {
    fn default() -> Self {
        ComputeSettings {
            lease_ttl_ms: 6_000,
            heartbeat_interval_ms: 1_000,
            lease_grace_ms: 2_000,
            allocation_ratios: Default::default(),
        }
    }
}

/// The image service on this controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// Controllers (this one included) that must hold an upload's bytes before the image
    /// becomes active. 0 = a majority of the members; the others copy it afterwards.
    pub min_copies: usize,
    /// Largest image accepted, in GiB.
    pub max_image_gib: u64,
    /// Unreferenced blobs younger than this are never collected (must exceed the time between
    /// an upload finishing and its image being committed).
    pub gc_grace_secs: u64,
    /// How often unreferenced blobs are collected and missing ones fetched from peers.
    pub maintenance_interval_secs: u64,
    /// The qemu-img binary used to inspect uploads.
    pub qemu_img: PathBuf,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            min_copies: 0,
            max_image_gib: 64,
            gc_grace_secs: 3600,
            maintenance_interval_secs: 60,
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
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
    /// Password of the `admin` user created while the cluster has no user, when configured.
    pub admin_password: Option<String>,
    pub tls: Option<TlsConfig>,
    pub raft: RaftTuning,
    pub images: ImageSettings,
    pub compute: ComputeSettings,
    pub network: NetworkSettings,
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
        if let Ok(table) = text.parse::<toml::Table>() {
            if let Some(key) = REMOVED_KEYS.into_iter().find(|k| table.contains_key(*k)) {
                return Err(ConfigError::Removed {
                    path: path.to_owned(),
                    key,
                });
            }
        }
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks the file and reads the secrets it names; the bootstrap admin password falls back
    /// to the environment variable [`ADMIN_PASSWORD_ENV`].
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let env_password = std::env::var(ADMIN_PASSWORD_ENV).ok();
        self.validate_with(env_password)
    }

    /// [`ControllerConfig::validate`] with the environment's password given.
    fn validate_with(self, env_password: Option<String>) -> Result<ValidConfig, ConfigError> {
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
        let admin_password = match &self.bootstrap_admin_password_file {
            Some(p) => Some(first_line(p)?),
            None => env_password,
        };
        // The Raft store (`<data_dir>/raft`) is created on the first start: without it, this is
        // the first start of the node.
        let first_start = !self.data_dir.join("raft").exists();
        if admin_password.is_none() && first_start && !self.join {
            return bad(format!(
                "a new cluster needs the bootstrap admin password, or nobody could act as \
                 admin: set bootstrap_admin_password_file (or {ADMIN_PASSWORD_ENV}) on every \
                 initial member; the first leader creates the `admin` user with it"
            ));
        }
        if let Some(pw) = &admin_password {
            if pw.chars().count() < 8 {
                return bad(format!(
                    "the bootstrap admin password (bootstrap_admin_password_file or \
                     {ADMIN_PASSWORD_ENV}) must be at least 8 characters"
                ));
            }
        }
        let c = &self.compute;
        if c.heartbeat_interval_ms == 0 || c.lease_ttl_ms < 2 * c.heartbeat_interval_ms {
            return bad(
                "compute: need heartbeat_interval_ms > 0 and lease_ttl_ms at least twice it".into(),
            );
        }
        c.allocation_ratios
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("compute.allocation_ratios: {e}")))?;
        if self.images.max_image_gib == 0 || self.images.maintenance_interval_secs == 0 {
            return bad(
                "images: max_image_gib and maintenance_interval_secs must be positive".into(),
            );
        }
        let n = &self.network;
        if n.vni_min == 0 || n.vni_min > n.vni_max || n.vni_max > crate::state::MAX_VNI {
            return bad(format!(
                "network: need 1 <= vni_min <= vni_max <= {}",
                crate::state::MAX_VNI
            ));
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
            admin_password,
            tls: self.tls,
            raft: self.raft,
            images: self.images,
            compute: self.compute,
            network: self.network,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config of a one-member cluster with its data in `data_dir`.
    fn config(data_dir: &Path, extra: &str) -> ControllerConfig {
        toml::from_str(&format!(
            "id = 1\nname = \"c1\"\ndata_dir = {:?}\nclient_listen = \"127.0.0.1:1\"\n\
             peer_listen = \"127.0.0.1:2\"\n{extra}\n\
             [[initial_members]]\nid = 1\nname = \"c1\"\nclient_address = \"a:1\"\n\
             peer_address = \"a:2\"\n",
            data_dir.display().to_string()
        ))
        .expect("parses")
    }

    #[test]
    fn the_admin_password_comes_from_its_file_or_else_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "long-enough-pw\nrest\n").unwrap();
        let line = format!(
            "bootstrap_admin_password_file = {:?}",
            file.display().to_string()
        );
        let env = Some("from-the-environment".to_owned());
        let with = config(dir.path(), &line)
            .validate_with(env.clone())
            .expect("valid");
        assert_eq!(with.admin_password.as_deref(), Some("long-enough-pw"));
        let from_env = config(dir.path(), "").validate_with(env).expect("valid");
        assert_eq!(
            from_env.admin_password.as_deref(),
            Some("from-the-environment")
        );
        std::fs::write(&file, "short\n").unwrap();
        let err = config(dir.path(), &line).validate_with(None).unwrap_err();
        assert!(err.to_string().contains("at least 8 characters"), "{err}");
        std::fs::remove_file(&file).unwrap();
        let err = config(dir.path(), &line).validate_with(None).unwrap_err();
        assert!(
            matches!(err, ConfigError::Read { ref path, .. } if *path == file),
            "a named password file must be readable: {err}"
        );
    }

    #[test]
    fn the_vni_range_defaults_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let env = Some("long-enough-pw".to_owned());
        let c = config(dir.path(), "").validate_with(env.clone()).unwrap();
        assert_eq!(
            (c.network.vni_min, c.network.vni_max),
            crate::state::DEFAULT_VNI_RANGE
        );
        let c = config(dir.path(), "[network]\nvni_min = 1000\nvni_max = 1999")
            .validate_with(env.clone())
            .unwrap();
        assert_eq!((c.network.vni_min, c.network.vni_max), (1000, 1999));
        for bad in [
            "vni_min = 0",
            "vni_min = 10\nvni_max = 9",
            "vni_max = 16777216",
        ] {
            let err = config(dir.path(), &format!("[network]\n{bad}"))
                .validate_with(env.clone())
                .unwrap_err();
            assert!(err.to_string().contains("vni_min"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_new_cluster_needs_the_admin_password_but_a_restart_or_a_joining_node_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let err = config(dir.path(), "").validate_with(None).unwrap_err();
        assert!(
            err.to_string()
                .contains("a new cluster needs the bootstrap admin password"),
            "{err}"
        );
        let joining = config(dir.path(), "join = true")
            .validate_with(None)
            .expect_err("join needs another member")
            .to_string();
        assert!(joining.contains("join = true needs"), "{joining}");
        let mut join = config(dir.path(), "join = true");
        join.initial_members[0].id = 2;
        let joined = join.validate_with(None).expect("a joining node needs none");
        assert_eq!(joined.admin_password, None);
        std::fs::create_dir(dir.path().join("raft")).unwrap();
        let restarted = config(dir.path(), "")
            .validate_with(None)
            .expect("a node with Raft data needs none");
        assert_eq!(restarted.admin_password, None);
    }

    #[test]
    fn the_example_config_parses_and_names_the_admin_password_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/controller.toml");
        let example = ControllerConfig::load(&path).expect("the example parses");
        assert_eq!(
            example.bootstrap_admin_password_file.as_deref(),
            Some(Path::new("/etc/flotilla/admin.password"))
        );
    }

    #[test]
    fn the_removed_bootstrap_token_options_are_refused_with_what_to_do_instead() {
        let dir = tempfile::tempdir().unwrap();
        for key in REMOVED_KEYS {
            let path = dir.path().join("controller.toml");
            std::fs::write(
                &path,
                format!("id = 1\n{key} = \"/etc/flotilla/admin.token\"\n"),
            )
            .unwrap();
            let err = ControllerConfig::load(&path).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::Removed { .. }), "{msg}");
            assert!(
                msg.contains(&format!("`{key}` was removed"))
                    && msg.contains("bootstrap_admin_password_file")
                    && msg.contains("flotilla login --user admin"),
                "{msg}"
            );
        }
    }
}

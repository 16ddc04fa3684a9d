//! Reading `ip -j` and `nft -j` listings, and running a command with a deadline (for
//! [`super`]).
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::net::router::{
    Ipv4Cidr, NftChain, NftState, ObservedLink, RouteSpec, RULE_COMMENT_PREFIX,
};

/// `ip -d -j link show` / `ip -d -j addr show`: devices by name.
pub fn parse_links(v: &Value) -> Result<Vec<(String, ObservedLink)>, String> {
    let items = v.as_array().ok_or("not a JSON array")?;
    let mut out = Vec::new();
    for item in items {
        let name = item["ifname"].as_str().ok_or("a device without ifname")?;
        let flags = item["flags"].as_array().cloned().unwrap_or_default();
        let mut addresses = BTreeSet::new();
        for a in item["addr_info"].as_array().into_iter().flatten() {
            if a["family"].as_str() != Some("inet") {
                continue;
            }
            let local = a["local"].as_str().and_then(|l| l.parse().ok());
            let prefix = a["prefixlen"].as_u64().and_then(|p| u8::try_from(p).ok());
            match local.zip(prefix).and_then(|(l, p)| Ipv4Cidr::new(l, p)) {
                Some(c) => addresses.insert(c),
                None => return Err(format!("a bad address on {name}: {a}")),
            };
        }
        let link = ObservedLink {
            kind: item["linkinfo"]["info_kind"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            mac: item["address"].as_str().and_then(|m| m.parse().ok()),
            up: flags.iter().any(|f| f.as_str() == Some("UP")),
            addresses,
        };
        out.push((name.to_string(), link));
    }
    Ok(out)
}

/// `ip -j route show`: unicast routes with a device that the kernel did not add for an
/// address.
pub fn parse_routes(v: &Value) -> Result<BTreeSet<RouteSpec>, String> {
    let items = v.as_array().ok_or("not a JSON array")?;
    let mut out = BTreeSet::new();
    for r in items {
        let (Some(dst), Some(dev)) = (r["dst"].as_str(), r["dev"].as_str()) else {
            continue;
        };
        if r["protocol"].as_str() == Some("kernel")
            || r["type"].as_str().is_some_and(|t| t != "unicast")
        {
            continue;
        }
        let dst = match dst {
            "default" => None,
            d => Some(d.parse::<Ipv4Cidr>()?),
        };
        let via = match r["gateway"].as_str() {
            Some(g) => Some(g.parse().map_err(|_| format!("bad gateway {g:?}"))?),
            None => None,
        };
        out.insert(RouteSpec {
            dst,
            via,
            dev: dev.to_string(),
        });
    }
    Ok(out)
}

/// `nft -j list table ip flotilla`: chains with their rules' ids.
pub fn parse_nft(v: &Value) -> Result<NftState, String> {
    let items = v["nftables"].as_array().ok_or("no nftables array")?;
    let mut state = NftState::new();
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    for item in items {
        if let Some(c) = item.get("chain") {
            state.insert(
                text(&c["name"]),
                NftChain {
                    kind: text(&c["type"]),
                    hook: text(&c["hook"]),
                    policy: text(&c["policy"]),
                    rules: Vec::new(),
                },
            );
        } else if let Some(r) = item.get("rule") {
            let chain = text(&r["chain"]);
            let id = r["comment"]
                .as_str()
                .filter(|c| c.starts_with(RULE_COMMENT_PREFIX))
                .map(str::to_string);
            state
                .get_mut(&chain)
                .ok_or_else(|| format!("a rule of unknown chain {chain:?}"))?
                .rules
                .push(id);
        }
    }
    Ok(state)
}

pub(super) enum RunError {
    Spawn(io::Error),
    Timeout,
    Failed(String),
}

/// Runs `binary args…` ([`crate::driver::process::run`]: stdin closed, `LC_ALL=C`, killed at
/// the deadline); stdout on success, stderr (or the exit status) on failure.
pub(super) fn run_command(
    binary: &Path,
    args: &[OsString],
    timeout: Duration,
) -> Result<Vec<u8>, RunError> {
    use crate::driver::process::{run, RunError as E};
    run(binary, args, timeout).map_err(|e| match e {
        E::Spawn(e) => RunError::Spawn(e),
        E::Timeout => RunError::Timeout,
        E::Failed { status, stderr } => RunError::Failed(if stderr.is_empty() {
            status.to_string()
        } else {
            format!("{stderr} ({status})")
        }),
    })
}

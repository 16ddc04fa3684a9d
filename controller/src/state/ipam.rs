//! Address arithmetic for IPAM: CIDRs, allocation pools and the lowest free address. Pure.
//!
//! Addresses of both families are handled as `u128` (an IPv4 address is its `u32` value) next
//! to their [`Family`], so ranges and gaps are plain integer arithmetic.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn version(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// A parsed address.
pub fn parse_ip(s: &str) -> Result<(Family, u128), String> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok((Family::V4, u32::from(a) as u128)),
        Ok(IpAddr::V6(a)) => Ok((Family::V6, u128::from(a))),
        Err(_) => Err(format!("{s:?} is not an IP address")),
    }
}

pub fn format_ip(family: Family, value: u128) -> String {
    match family {
        Family::V4 => Ipv4Addr::from(value as u32).to_string(),
        Family::V6 => Ipv6Addr::from(value).to_string(),
    }
}

/// A network prefix: its first address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub family: Family,
    pub network: u128,
    pub prefix_len: u32,
}

impl Cidr {
    /// Parses `addr/len`; the address must be the network address (no host bits set), as
    /// Neutron requires.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("CIDR {s:?} has no prefix length (e.g. 10.0.0.0/24)"))?;
        let (family, network) = parse_ip(addr).map_err(|_| format!("{s:?} is not a CIDR"))?;
        let prefix_len: u32 = len
            .parse()
            .ok()
            .filter(|l| *l <= family.bits())
            .ok_or_else(|| format!("CIDR {s:?} has an invalid prefix length"))?;
        let cidr = Cidr {
            family,
            network,
            prefix_len,
        };
        if network & !cidr.mask() != 0 {
            return Err(format!(
                "CIDR {s:?} has host bits set; did you mean {}?",
                Cidr {
                    network: network & cidr.mask(),
                    ..cidr
                }
            ));
        }
        Ok(cidr)
    }

    fn host_bits(&self) -> u32 {
        self.family.bits() - self.prefix_len
    }

    fn mask(&self) -> u128 {
        let all: u128 = if self.family == Family::V4 {
            u32::MAX as u128
        } else {
            u128::MAX
        };
        if self.host_bits() >= 128 {
            0
        } else {
            all & !((1u128 << self.host_bits()) - 1)
        }
    }

    /// The last address of the prefix.
    pub fn last(&self) -> u128 {
        if self.host_bits() >= 128 {
            u128::MAX
        } else {
            self.network | ((1u128 << self.host_bits()) - 1)
        }
    }

    pub fn contains(&self, family: Family, addr: u128) -> bool {
        family == self.family && addr >= self.network && addr <= self.last()
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.family == other.family && self.network <= other.last() && other.network <= self.last()
    }

    /// The range hosts may use: without the network address and, for IPv4, the broadcast
    /// address (a /31 or /32 has no such reservations). None when nothing is left.
    pub fn usable(&self) -> Option<(u128, u128)> {
        let (first, last) = (self.network, self.last());
        match (self.family, self.host_bits()) {
            (Family::V4, 0 | 1) => Some((first, last)),
            (Family::V4, _) => Some((first + 1, last - 1)),
            (Family::V6, 0) => Some((first, last)),
            (Family::V6, _) => Some((first + 1, last)),
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            format_ip(self.family, self.network),
            self.prefix_len
        )
    }
}

/// An inclusive range of addresses IPAM hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub start: u128,
    pub end: u128,
}

/// The default pools of a subnet: its usable range without the gateway.
pub fn default_pools(cidr: &Cidr, gateway: Option<u128>) -> Vec<Pool> {
    let Some((first, last)) = cidr.usable() else {
        return Vec::new();
    };
    match gateway {
        Some(g) if g >= first && g <= last => {
            let mut pools = Vec::new();
            if g > first {
                pools.push(Pool {
                    start: first,
                    end: g - 1,
                });
            }
            if g < last {
                pools.push(Pool {
                    start: g + 1,
                    end: last,
                });
            }
            pools
        }
        _ => vec![Pool {
            start: first,
            end: last,
        }],
    }
}

/// Checks explicit pools against their subnet: each inside the CIDR, start ≤ end, none
/// overlapping another or containing the gateway. Returns them sorted.
pub fn check_pools(
    cidr: &Cidr,
    gateway: Option<u128>,
    pools: &[Pool],
) -> Result<Vec<Pool>, String> {
    let show = |v: u128| format_ip(cidr.family, v);
    let mut sorted = pools.to_vec();
    sorted.sort_by_key(|p| p.start);
    for p in &sorted {
        if p.start > p.end {
            return Err(format!(
                "allocation pool {}-{} starts after it ends",
                show(p.start),
                show(p.end)
            ));
        }
        if !cidr.contains(cidr.family, p.start) || !cidr.contains(cidr.family, p.end) {
            return Err(format!(
                "allocation pool {}-{} is not inside {cidr}",
                show(p.start),
                show(p.end)
            ));
        }
        if let Some(g) = gateway.filter(|g| *g >= p.start && *g <= p.end) {
            return Err(format!(
                "allocation pool {}-{} contains the gateway {}",
                show(p.start),
                show(p.end),
                show(g)
            ));
        }
    }
    for w in sorted.windows(2) {
        if w[1].start <= w[0].end {
            return Err(format!(
                "allocation pools {}-{} and {}-{} overlap",
                show(w[0].start),
                show(w[0].end),
                show(w[1].start),
                show(w[1].end)
            ));
        }
    }
    Ok(sorted)
}

/// The lowest address of `pools` (sorted, disjoint) not in `allocated`.
pub fn lowest_free<V>(pools: &[Pool], allocated: &BTreeMap<u128, V>) -> Option<u128> {
    for p in pools {
        let mut candidate = p.start;
        for (&taken, _) in allocated.range(p.start..=p.end) {
            if taken != candidate {
                break;
            }
            if candidate == p.end {
                break;
            }
            candidate += 1;
        }
        if !allocated.contains_key(&candidate) {
            return Some(candidate);
        }
    }
    None
}

pub fn in_pools(pools: &[Pool], addr: u128) -> bool {
    pools.iter().any(|p| addr >= p.start && addr <= p.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> u128 {
        parse_ip(s).unwrap().1
    }

    #[test]
    fn cidrs_are_parsed_and_host_bits_refused() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert_eq!(c.usable(), Some((v4("10.0.0.1"), v4("10.0.0.254"))));
        assert_eq!(c.to_string(), "10.0.0.0/24");
        let err = Cidr::parse("10.0.0.5/24").unwrap_err();
        assert!(err.contains("did you mean 10.0.0.0/24"), "{err}");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
        let v6 = Cidr::parse("fd00::/64").unwrap();
        assert_eq!(v6.family, Family::V6);
        assert!(v6.contains(Family::V6, parse_ip("fd00::1").unwrap().1));
    }

    #[test]
    fn default_pools_leave_out_the_gateway() {
        let c = Cidr::parse("10.0.0.0/29").unwrap();
        let pools = default_pools(&c, Some(v4("10.0.0.3")));
        assert_eq!(
            pools,
            vec![
                Pool {
                    start: v4("10.0.0.1"),
                    end: v4("10.0.0.2")
                },
                Pool {
                    start: v4("10.0.0.4"),
                    end: v4("10.0.0.6")
                }
            ]
        );
    }

    #[test]
    fn pools_outside_overlapping_or_holding_the_gateway_are_refused() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        let gw = Some(v4("10.0.0.1"));
        let pool = |a: &str, b: &str| Pool {
            start: v4(a),
            end: v4(b),
        };
        assert!(check_pools(&c, gw, &[pool("10.0.1.1", "10.0.1.5")]).is_err());
        assert!(check_pools(&c, gw, &[pool("10.0.0.1", "10.0.0.5")])
            .unwrap_err()
            .contains("gateway"));
        assert!(check_pools(
            &c,
            gw,
            &[
                pool("10.0.0.10", "10.0.0.20"),
                pool("10.0.0.20", "10.0.0.30")
            ]
        )
        .unwrap_err()
        .contains("overlap"));
        assert!(check_pools(&c, gw, &[pool("10.0.0.9", "10.0.0.2")]).is_err());
        let ok = check_pools(
            &c,
            gw,
            &[pool("10.0.0.50", "10.0.0.60"), pool("10.0.0.2", "10.0.0.9")],
        )
        .unwrap();
        assert_eq!(ok[0].start, v4("10.0.0.2"));
    }

    #[test]
    fn the_lowest_free_address_fills_gaps_first() {
        let pools = vec![Pool { start: 10, end: 12 }, Pool { start: 20, end: 21 }];
        let mut taken: BTreeMap<u128, ()> = BTreeMap::new();
        assert_eq!(lowest_free(&pools, &taken), Some(10));
        taken.insert(10, ());
        taken.insert(12, ());
        assert_eq!(lowest_free(&pools, &taken), Some(11));
        taken.insert(11, ());
        assert_eq!(lowest_free(&pools, &taken), Some(20));
        taken.insert(20, ());
        taken.insert(21, ());
        assert_eq!(lowest_free(&pools, &taken), None);
    }
}

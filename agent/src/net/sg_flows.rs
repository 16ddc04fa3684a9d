//! Security group rules as OpenFlow matches (pure), in the exact form `ovs-ofctl dump-flows`
//! prints them, so that a reconcile with nothing changed rewrites no flow.
//!
//! A rule becomes one match per (protocol, port-range piece): port ranges are split into
//! value/mask pieces (`tp_dst=0x1000/0xf000`); the remote prefix is the peer's address
//! (`nw_src` for ingress, `nw_dst` for egress); ICMP's "ports" are its type and code.
use std::net::IpAddr;

use flotilla_proto::v1 as pb;

/// Which side of the port a rule filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// The matches of one rule for the port whose OpenFlow number is in `reg` (`reg5` for egress,
/// `reg7` for ingress, as the pipeline loads them); each still needs `ct_state=+new+trk,`
/// prepended by the caller. Rules of the other direction give nothing; a malformed rule gives
/// an error naming it.
pub fn rule_matches(
    rule: &pb::SecurityGroupRule,
    direction: Direction,
    ofport: u32,
) -> Result<Vec<String>, String> {
    let dir = match pb::SecurityGroupRuleDirection::try_from(rule.direction) {
        Ok(pb::SecurityGroupRuleDirection::Ingress) => Direction::Ingress,
        Ok(pb::SecurityGroupRuleDirection::Egress) => Direction::Egress,
        _ => return Err(format!("rule {}: no direction", rule.id)),
    };
    if dir != direction {
        return Ok(Vec::new());
    }
    let v6 = matches!(
        pb::SecurityGroupRuleEthertype::try_from(rule.ethertype),
        Ok(pb::SecurityGroupRuleEthertype::Ipv6)
    );
    let reg = match direction {
        Direction::Egress => format!("reg5={ofport:#x}"),
        Direction::Ingress => format!("reg7={ofport:#x}"),
    };
    let proto = rule.protocol.to_ascii_lowercase();
    // (shorthand, nw_proto field when not implied, kind of "ports")
    let (shorthand, nw_proto, ports) = match (proto.as_str(), v6) {
        ("" | "any", false) => ("ip", None, Ports::None),
        ("" | "any", true) => ("ipv6", None, Ports::None),
        ("tcp" | "6", false) => ("tcp", None, Ports::Transport),
        ("tcp" | "6", true) => ("tcp6", None, Ports::Transport),
        ("udp" | "17", false) => ("udp", None, Ports::Transport),
        ("udp" | "17", true) => ("udp6", None, Ports::Transport),
        ("icmp" | "1", false) => ("icmp", None, Ports::Icmp),
        ("icmpv6" | "icmp" | "58", true) => ("icmp6", None, Ports::Icmp6),
        (n, _) => {
            let number: u8 = n
                .parse()
                .map_err(|_| format!("rule {}: unknown protocol {n:?}", rule.id))?;
            (if v6 { "ipv6" } else { "ip" }, Some(number), Ports::None)
        }
    };
    let mut base = format!("{shorthand},{reg}");
    if !rule.remote_ip_prefix.is_empty() {
        let field = match (direction, v6) {
            (Direction::Ingress, false) => "nw_src",
            (Direction::Egress, false) => "nw_dst",
            (Direction::Ingress, true) => "ipv6_src",
            (Direction::Egress, true) => "ipv6_dst",
        };
        if let Some(prefix) = canonical_prefix(&rule.remote_ip_prefix, v6)
            .map_err(|e| format!("rule {}: {e}", rule.id))?
        {
            base.push_str(&format!(",{field}={prefix}"));
        }
    }
    if let Some(n) = nw_proto {
        base.push_str(&format!(",nw_proto={n}"));
    }
    let out = match ports {
        Ports::None => vec![base],
        Ports::Transport => {
            let (lo, hi) = (
                rule.port_range_min.unwrap_or(1),
                rule.port_range_max.or(rule.port_range_min).unwrap_or(65535),
            );
            if lo > hi || hi > 65535 {
                return Err(format!("rule {}: bad port range {lo}-{hi}", rule.id));
            }
            if lo <= 1 && hi == 65535 {
                vec![base]
            } else {
                port_masks(lo as u16, hi as u16)
                    .into_iter()
                    .map(|m| format!("{base},tp_dst={m}"))
                    .collect()
            }
        }
        Ports::Icmp | Ports::Icmp6 => {
            let (t, c) = if ports == Ports::Icmp {
                ("icmp_type", "icmp_code")
            } else {
                ("icmpv6_type", "icmpv6_code")
            };
            let mut m = base;
            if let Some(ty) = rule.port_range_min {
                m.push_str(&format!(",{t}={ty}"));
                if let Some(code) = rule.port_range_max {
                    m.push_str(&format!(",{c}={code}"));
                }
            }
            vec![m]
        }
    };
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    None,
    Transport,
    Icmp,
    Icmp6,
}

/// `a.b.c.d/len` as OVS prints it: host bits cleared, `/32` (`/128`) dropped; `None` for a
/// prefix matching everything (no match field needed).
pub fn canonical_prefix(prefix: &str, v6: bool) -> Result<Option<String>, String> {
    let (addr, len) = match prefix.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .map_err(|_| format!("bad prefix {prefix:?}"))?,
        ),
        None => (prefix, if v6 { 128 } else { 32 }),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("bad prefix {prefix:?}"))?;
    match addr {
        IpAddr::V4(a) if !v6 => {
            if len > 32 {
                return Err(format!("bad prefix {prefix:?}"));
            }
            if len == 0 {
                return Ok(None);
            }
            let mask = u32::MAX << (32 - u32::from(len));
            let net = std::net::Ipv4Addr::from(u32::from(a) & mask);
            Ok(Some(if len == 32 {
                net.to_string()
            } else {
                format!("{net}/{len}")
            }))
        }
        IpAddr::V6(a) if v6 => {
            if len > 128 {
                return Err(format!("bad prefix {prefix:?}"));
            }
            if len == 0 {
                return Ok(None);
            }
            let mask = u128::MAX << (128 - u32::from(len));
            let net = std::net::Ipv6Addr::from(u128::from(a) & mask);
            Ok(Some(if len == 128 {
                net.to_string()
            } else {
                format!("{net}/{len}")
            }))
        }
        _ => Err(format!("prefix {prefix:?} is not of the rule's IP version")),
    }
}

/// The smallest set of value/mask pieces covering `lo..=hi`, in OVS's print form (`22` for a
/// single port, `0x1000/0xf000` for a masked piece).
pub fn port_masks(lo: u16, hi: u16) -> Vec<String> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(lo), u32::from(hi));
    while start <= end {
        // The largest aligned block starting at `start` that stays within `end`.
        let mut size = 1u32;
        while start % (size * 2) == 0 && start + size * 2 - 1 <= end && size < 0x10000 {
            size *= 2;
        }
        if size == 1 {
            out.push(start.to_string());
        } else {
            let mask = 0xffff & !(size - 1);
            out.push(format!("{start:#x}/{mask:#x}"));
        }
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        dir: i32,
        eth: i32,
        proto: &str,
        lo: Option<u32>,
        hi: Option<u32>,
        remote: &str,
    ) -> pb::SecurityGroupRule {
        pb::SecurityGroupRule {
            id: "r1".into(),
            direction: dir,
            ethertype: eth,
            protocol: proto.into(),
            port_range_min: lo,
            port_range_max: hi,
            remote_ip_prefix: remote.into(),
            ..Default::default()
        }
    }
    const IN: i32 = pb::SecurityGroupRuleDirection::Ingress as i32;
    const OUT: i32 = pb::SecurityGroupRuleDirection::Egress as i32;
    const V4: i32 = pb::SecurityGroupRuleEthertype::Ipv4 as i32;
    const V6: i32 = pb::SecurityGroupRuleEthertype::Ipv6 as i32;

    #[test]
    fn tcp_port_and_prefix() {
        let r = rule(IN, V4, "tcp", Some(22), Some(22), "10.0.0.7/24");
        assert_eq!(
            rule_matches(&r, Direction::Ingress, 7).unwrap(),
            vec!["tcp,reg7=0x7,nw_src=10.0.0.0/24,tp_dst=22"]
        );
        assert!(rule_matches(&r, Direction::Egress, 7).unwrap().is_empty());
    }

    #[test]
    fn egress_any_everywhere() {
        let r = rule(OUT, V4, "", None, None, "");
        assert_eq!(
            rule_matches(&r, Direction::Egress, 5).unwrap(),
            vec!["ip,reg5=0x5"]
        );
        let r6 = rule(OUT, V6, "any", None, None, "::/0");
        assert_eq!(
            rule_matches(&r6, Direction::Egress, 5).unwrap(),
            vec!["ipv6,reg5=0x5"]
        );
    }

    #[test]
    fn icmp_type_code_and_host_prefix() {
        let r = rule(IN, V4, "icmp", Some(8), Some(0), "192.0.2.1/32");
        assert_eq!(
            rule_matches(&r, Direction::Ingress, 3).unwrap(),
            vec!["icmp,reg7=0x3,nw_src=192.0.2.1,icmp_type=8,icmp_code=0"]
        );
    }

    #[test]
    fn port_ranges_split_into_masks() {
        assert_eq!(port_masks(22, 22), vec!["22"]);
        assert_eq!(port_masks(4096, 8191), vec!["0x1000/0xf000"]);
        assert_eq!(port_masks(80, 83), vec!["0x50/0xfffc"]);
        assert_eq!(port_masks(1, 3), vec!["1", "0x2/0xfffe"]);
        // Every port of a range is covered exactly once.
        for (lo, hi) in [(1u16, 1000u16), (1000, 1033), (65500, 65535), (0, 65535)] {
            let mut covered = 0u32;
            for p in 0..=65535u32 {
                let hits = port_masks(lo, hi)
                    .iter()
                    .filter(|m| {
                        let (v, mask) = match m.split_once('/') {
                            Some((v, mk)) => (
                                u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap(),
                                u32::from_str_radix(mk.trim_start_matches("0x"), 16).unwrap(),
                            ),
                            None => (m.parse().unwrap(), 0xffff),
                        };
                        p & mask == v
                    })
                    .count();
                assert!(hits <= 1, "port {p} covered twice");
                covered += hits as u32;
                assert_eq!(
                    hits == 1,
                    (u32::from(lo)..=u32::from(hi)).contains(&p),
                    "{lo}-{hi} port {p}"
                );
            }
            assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1);
        }
    }

    #[test]
    fn bad_rules_are_errors() {
        assert!(rule_matches(
            &rule(IN, V4, "gre-ish", None, None, ""),
            Direction::Ingress,
            1
        )
        .is_err());
        assert!(rule_matches(
            &rule(IN, V4, "tcp", Some(90), Some(80), ""),
            Direction::Ingress,
            1
        )
        .is_err());
        assert!(rule_matches(
            &rule(IN, V4, "tcp", None, None, "fd00::/8"),
            Direction::Ingress,
            1
        )
        .is_err());
        assert_eq!(
            rule_matches(&rule(IN, V4, "47", None, None, ""), Direction::Ingress, 1).unwrap(),
            vec!["ip,reg7=0x1,nw_proto=47"]
        );
    }
}

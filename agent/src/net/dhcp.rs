//! DHCPv4 for tenant ports, as values: frames in, frames out (pure — no I/O).
//!
//! Every port has one fixed IPv4 address, so the "server" has no pool and no lease database:
//! a client is known by its hardware address (`chaddr`) and always gets its port's address.
//! [`decide`] reads one Ethernet frame (IPv4/UDP/BOOTP, optionally 802.1Q-tagged; the tag is
//! echoed) and returns what to do: send a complete reply frame (OFFER, ACK or NAK; Ethernet to
//! the client's MAC, IP and UDP checksums filled in) or nothing, with the reason. The rules:
//!
//! - DISCOVER from a known MAC → OFFER of the port's address.
//! - REQUEST naming another server (option 54) → ignored (the client chose that server).
//! - REQUEST for the port's address (option 50, or `ciaddr` when renewing/rebinding) → ACK;
//!   for any other address, or for none → NAK (the client restarts with a DISCOVER).
//! - INFORM → ACK with the configuration but no address or lease times (RFC 2131 §4.3.5).
//! - RELEASE and DECLINE → nothing (the address is fixed; a DECLINE means a conflict).
//! - Unknown MAC, relayed requests (`giaddr` set), requests to another IP address → nothing.
//!
//! Incoming checksums are not checked: with checksum offload a frame seen on the host may carry
//! a partial checksum. Options in `sname`/`file` (option 52, overload) are not read.
//! [`dhcp_interface`] turns a network and its ports from the desired state into a lease table.

use std::net::Ipv4Addr;

use flotilla_proto::v1 as pb;

/// UDP port of DHCP servers.
pub const SERVER_PORT: u16 = 67;
/// UDP port of DHCP clients.
pub const CLIENT_PORT: u16 = 68;
/// Lease time given to every port (the address never changes; renewals only refresh options).
pub const DEFAULT_LEASE_SECS: u32 = 86_400;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTP_FIXED: usize = 236;
/// Replies are padded to the classic minimum BOOTP message size (RFC 1542 §2.1).
const MIN_BOOTP: usize = 300;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const FLAG_BROADCAST: u16 = 0x8000;

/// The configuration one port's guest gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpLease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// (destination, prefix length, next hop); next hop 0.0.0.0 = on-link.
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    pub mtu: Option<u16>,
    pub hostname: Option<String>,
    pub lease_secs: u32,
}

/// One responder: the address it answers from and the leases it hands out, keyed by MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpInterface {
    /// Server identifier (option 54) and source address of replies.
    pub server_ip: Ipv4Addr,
    /// Source MAC of replies.
    pub server_mac: [u8; 6],
    pub leases: Vec<DhcpLease>,
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(value: u8) -> Option<Self> {
        use MessageType::*;
        Some(match value {
            1 => Discover,
            2 => Offer,
            3 => Request,
            4 => Decline,
            5 => Ack,
            6 => Nak,
            7 => Release,
            8 => Inform,
            _ => return None,
        })
    }
}

/// Why a frame could not be read as a DHCP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the frame is truncated")]
    Truncated,
    #[error("the frame is not IPv4")]
    NotIpv4,
    #[error("the packet is an IP fragment")]
    Fragment,
    #[error("the packet is not UDP")]
    NotUdp,
    #[error("the payload is not a BOOTP message over Ethernet")]
    NotBootp,
    #[error("an option runs past the end of the message")]
    BadOptions,
}

/// A BOOTP/DHCP message and the headers it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpFrame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// The 802.1Q tag control information, when the frame was tagged.
    pub vlan_tci: Option<u16>,
    pub ip_src: Ipv4Addr,
    pub ip_dst: Ipv4Addr,
    pub udp_src: u16,
    pub udp_dst: u16,
    /// 1 = BOOTREQUEST, 2 = BOOTREPLY.
    pub op: u8,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    /// Options in order of appearance (pad and end left out).
    pub options: Vec<(u8, Vec<u8>)>,
}

impl DhcpFrame {
    /// The option's data; an option split into several instances is concatenated (RFC 3396).
    pub fn option(&self, code: u8) -> Option<Vec<u8>> {
        let mut parts = self.options.iter().filter(|(c, _)| *c == code).peekable();
        parts.peek()?;
        Some(parts.flat_map(|(_, data)| data.iter().copied()).collect())
    }

    pub fn message_type(&self) -> Option<MessageType> {
        match self.option(53)?.as_slice() {
            [value] => MessageType::from_u8(*value),
            _ => None,
        }
    }

    /// An option holding one IPv4 address.
    pub fn option_ip(&self, code: u8) -> Option<Ipv4Addr> {
        let data: [u8; 4] = self.option(code)?.try_into().ok()?;
        Some(Ipv4Addr::from(data))
    }

    pub fn broadcast_flag(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }
}

fn bytes<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], ParseError> {
    let end = at.checked_add(N).ok_or(ParseError::Truncated)?;
    data.get(at..end)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Truncated)
}

fn be16(data: &[u8], at: usize) -> Result<u16, ParseError> {
    bytes::<2>(data, at).map(u16::from_be_bytes)
}

fn ip4(data: &[u8], at: usize) -> Result<Ipv4Addr, ParseError> {
    bytes::<4>(data, at).map(Ipv4Addr::from)
}

/// Reads an Ethernet frame carrying IPv4/UDP/BOOTP. Never panics, whatever the bytes.
pub fn parse_frame(frame: &[u8]) -> Result<DhcpFrame, ParseError> {
    let eth_dst = bytes::<6>(frame, 0)?;
    let eth_src = bytes::<6>(frame, 6)?;
    let (mut ethertype, mut offset, mut vlan_tci) = (be16(frame, 12)?, 14, None);
    if ethertype == ETHERTYPE_VLAN {
        vlan_tci = Some(be16(frame, 14)?);
        ethertype = be16(frame, 16)?;
        offset = 18;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return Err(ParseError::NotIpv4);
    }
    let ip = &frame[offset..];
    let version_ihl = *ip.first().ok_or(ParseError::Truncated)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return Err(ParseError::NotIpv4);
    }
    let total_len = usize::from(be16(ip, 2)?);
    if total_len < header_len || total_len > ip.len() {
        return Err(ParseError::Truncated);
    }
    if be16(ip, 6)? & 0x3fff != 0 {
        return Err(ParseError::Fragment);
    }
    if ip[9] != 17 {
        return Err(ParseError::NotUdp);
    }
    let (ip_src, ip_dst) = (ip4(ip, 12)?, ip4(ip, 16)?);
    let udp = &ip[header_len..total_len];
    let (udp_src, udp_dst) = (be16(udp, 0)?, be16(udp, 2)?);
    let udp_len = usize::from(be16(udp, 4)?);
    if udp_len < 8 || udp_len > udp.len() {
        return Err(ParseError::Truncated);
    }
    let bootp = &udp[8..udp_len];
    if bootp.len() < BOOTP_FIXED + MAGIC_COOKIE.len() {
        return Err(ParseError::Truncated);
    }
    if bootp[1] != 1 || bootp[2] != 6 || bootp[BOOTP_FIXED..BOOTP_FIXED + 4] != MAGIC_COOKIE {
        return Err(ParseError::NotBootp);
    }
    Ok(DhcpFrame {
        eth_dst,
        eth_src,
        vlan_tci,
        ip_src,
        ip_dst,
        udp_src,
        udp_dst,
        op: bootp[0],
        xid: u32::from_be_bytes(bytes::<4>(bootp, 4)?),
        flags: be16(bootp, 10)?,
        ciaddr: ip4(bootp, 12)?,
        yiaddr: ip4(bootp, 16)?,
        siaddr: ip4(bootp, 20)?,
        giaddr: ip4(bootp, 24)?,
        chaddr: bytes::<6>(bootp, 28)?,
        options: parse_options(&bootp[BOOTP_FIXED + 4..])?,
    })
}

fn parse_options(mut data: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, ParseError> {
    let mut options = Vec::new();
    while let Some((&code, rest)) = data.split_first() {
        match code {
            0 => data = rest,
            255 => break,
            _ => {
                let (&len, rest) = rest.split_first().ok_or(ParseError::BadOptions)?;
                let value = rest.get(..usize::from(len)).ok_or(ParseError::BadOptions)?;
                options.push((code, value.to_vec()));
                data = &rest[usize::from(len)..];
            }
        }
    }
    Ok(options)
}

/// Why a frame got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not a DHCP message (or not one we can read): other traffic on the interface.
    NotDhcp,
    /// A DHCP message, but not a client's request to a server (e.g. a reply).
    NotRequest,
    /// Sent to a unicast IP address that is not ours.
    OtherAddress,
    /// Came through a relay agent; tenant networks have none.
    Relayed,
    /// No port has the client's MAC.
    UnknownClient,
    /// A REQUEST naming another server: the client chose that server's offer.
    OtherServer,
    Release,
    /// The client found its address in use by someone else.
    Decline,
}

/// What to do with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send `frame`, a reply of type `kind` to the client `mac` about the address `ip`
    /// (unspecified for an INFORM's ACK; the address refused for a NAK).
    Reply {
        kind: MessageType,
        mac: [u8; 6],
        ip: Ipv4Addr,
        frame: Vec<u8>,
    },
    Ignored(Ignored),
}

/// The reply frame to send for `frame`, if any.
pub fn answer(iface: &DhcpInterface, frame: &[u8]) -> Option<Vec<u8>> {
    match decide(iface, frame) {
        Outcome::Reply { frame, .. } => Some(frame),
        Outcome::Ignored(_) => None,
    }
}

/// What to do with `frame` (see the module doc for the rules).
pub fn decide(iface: &DhcpInterface, frame: &[u8]) -> Outcome {
    let Ok(req) = parse_frame(frame) else {
        return Outcome::Ignored(Ignored::NotDhcp);
    };
    if req.udp_dst != SERVER_PORT {
        return Outcome::Ignored(Ignored::NotDhcp);
    }
    let Some(kind) = req.message_type() else {
        return Outcome::Ignored(Ignored::NotDhcp);
    };
    if req.op != 1 {
        return Outcome::Ignored(Ignored::NotRequest);
    }
    if req.ip_dst != Ipv4Addr::BROADCAST && req.ip_dst != iface.server_ip {
        return Outcome::Ignored(Ignored::OtherAddress);
    }
    if !req.giaddr.is_unspecified() {
        return Outcome::Ignored(Ignored::Relayed);
    }
    let Some(lease) = iface.leases.iter().find(|l| l.mac == req.chaddr) else {
        return Outcome::Ignored(Ignored::UnknownClient);
    };
    let (reply, ip) = match kind {
        MessageType::Discover => (MessageType::Offer, lease.ip),
        MessageType::Request => {
            if req.option_ip(54).is_some_and(|id| id != iface.server_ip) {
                return Outcome::Ignored(Ignored::OtherServer);
            }
            let ciaddr = Some(req.ciaddr).filter(|ip| !ip.is_unspecified());
            match req.option_ip(50).or(ciaddr) {
                Some(ip) if ip == lease.ip => (MessageType::Ack, ip),
                wanted => (MessageType::Nak, wanted.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            }
        }
        MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
        MessageType::Release => return Outcome::Ignored(Ignored::Release),
        MessageType::Decline => return Outcome::Ignored(Ignored::Decline),
        _ => return Outcome::Ignored(Ignored::NotRequest),
    };
    let inform = kind == MessageType::Inform;
    Outcome::Reply {
        kind: reply,
        mac: req.chaddr,
        ip,
        frame: build_reply(iface, &req, lease, reply, inform),
    }
}

/// The subnet mask of a prefix length (lengths over 32 count as 32).
fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

/// Appends an option, split into several instances when longer than 255 bytes (RFC 3396).
fn push_option(out: &mut Vec<u8>, code: u8, data: &[u8]) {
    if data.is_empty() {
        out.extend([code, 0]);
    }
    for chunk in data.chunks(255) {
        out.extend([code, chunk.len() as u8]);
        out.extend_from_slice(chunk);
    }
}

/// Option 121 (RFC 3442): per route, the prefix length, the significant octets of the
/// destination, then the router.
pub fn classless_routes(routes: &[(Ipv4Addr, u8, Ipv4Addr)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(dest, prefix_len, router) in routes {
        let prefix_len = prefix_len.min(32);
        let dest = u32::from(dest) & mask(prefix_len);
        out.push(prefix_len);
        out.extend_from_slice(&dest.to_be_bytes()[..usize::from(prefix_len).div_ceil(8)]);
        out.extend_from_slice(&router.octets());
    }
    out
}

/// The configuration options of a lease (not 53/54), in a fixed order.
fn lease_options(lease: &DhcpLease, with_times: bool) -> Vec<(u8, Vec<u8>)> {
    let mut options = Vec::new();
    if with_times {
        let t1 = lease.lease_secs / 2;
        let t2 = (u64::from(lease.lease_secs) * 7 / 8) as u32;
        options.push((51, lease.lease_secs.to_be_bytes().to_vec()));
        options.push((58, t1.to_be_bytes().to_vec()));
        options.push((59, t2.to_be_bytes().to_vec()));
    }
    let mask = mask(lease.prefix_len);
    options.push((1, mask.to_be_bytes().to_vec()));
    let broadcast = u32::from(lease.ip) | !mask;
    options.push((28, broadcast.to_be_bytes().to_vec()));
    if let Some(gateway) = lease.gateway {
        options.push((3, gateway.octets().to_vec()));
    }
    if !lease.dns.is_empty() {
        options.push((6, lease.dns.iter().flat_map(|ip| ip.octets()).collect()));
    }
    if let Some(mtu) = lease.mtu.filter(|mtu| *mtu >= 68) {
        options.push((26, mtu.to_be_bytes().to_vec()));
    }
    if let Some(name) = lease.hostname.as_deref().filter(|n| !n.is_empty()) {
        options.push((12, name.as_bytes().to_vec()));
    }
    if !lease.routes.is_empty() {
        // A client that gets option 121 ignores option 3 (RFC 3442): repeat the default route.
        let mut routes = lease.routes.clone();
        if let Some(gateway) = lease.gateway {
            if !routes.iter().any(|&(_, len, _)| len == 0) {
                routes.push((Ipv4Addr::UNSPECIFIED, 0, gateway));
            }
        }
        options.push((121, classless_routes(&routes)));
    }
    options
}

fn build_reply(
    iface: &DhcpInterface,
    req: &DhcpFrame,
    lease: &DhcpLease,
    kind: MessageType,
    inform: bool,
) -> Vec<u8> {
    let nak = kind == MessageType::Nak;
    let yiaddr = if nak || inform {
        Ipv4Addr::UNSPECIFIED
    } else {
        lease.ip
    };
    // RFC 2131 table 3: ciaddr is echoed in an ACK, zero in an OFFER and a NAK.
    let ciaddr = if kind == MessageType::Ack {
        req.ciaddr
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let unicast_to = if inform { req.ciaddr } else { yiaddr };
    let ip_dst = if nak || req.broadcast_flag() || unicast_to.is_unspecified() {
        Ipv4Addr::BROADCAST
    } else {
        unicast_to
    };

    let mut bootp = vec![0u8; BOOTP_FIXED];
    bootp[..4].copy_from_slice(&[2, 1, 6, 0]);
    bootp[4..8].copy_from_slice(&req.xid.to_be_bytes());
    bootp[10..12].copy_from_slice(&req.flags.to_be_bytes());
    bootp[12..16].copy_from_slice(&ciaddr.octets());
    bootp[16..20].copy_from_slice(&yiaddr.octets());
    bootp[24..28].copy_from_slice(&req.giaddr.octets());
    bootp[28..34].copy_from_slice(&req.chaddr);
    bootp.extend_from_slice(&MAGIC_COOKIE);
    push_option(&mut bootp, 53, &[kind as u8]);
    push_option(&mut bootp, 54, &iface.server_ip.octets());
    if nak {
        push_option(&mut bootp, 56, b"not this port's address");
    } else {
        // Options the client asked for (55) first, in its order; then the others.
        let mut options = lease_options(lease, !inform);
        let asked = req.option(55).unwrap_or_default();
        options.sort_by_key(|(code, _)| asked.iter().position(|c| c == code).unwrap_or(256));
        for (code, data) in &options {
            push_option(&mut bootp, *code, data);
        }
    }
    bootp.push(255);
    if bootp.len() < MIN_BOOTP {
        bootp.resize(MIN_BOOTP, 0);
    }
    ethernet_ipv4_udp(
        (req.chaddr, iface.server_mac, req.vlan_tci),
        (iface.server_ip, ip_dst),
        (SERVER_PORT, CLIENT_PORT),
        &bootp,
    )
}

/// The 16-bit ones' complement sum of `data`, added to `sum` (not yet folded).
fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum of data summed with [`ones_sum`].
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A complete frame: Ethernet (with an 802.1Q tag when given), IPv4 and UDP headers with
/// their checksums, then `payload`.
fn ethernet_ipv4_udp(
    (eth_dst, eth_src, vlan_tci): ([u8; 6], [u8; 6], Option<u16>),
    (ip_src, ip_dst): (Ipv4Addr, Ipv4Addr),
    (udp_src, udp_dst): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let mut frame = Vec::with_capacity(46 + payload.len());
    frame.extend_from_slice(&eth_dst);
    frame.extend_from_slice(&eth_src);
    if let Some(tci) = vlan_tci {
        frame.extend(ETHERTYPE_VLAN.to_be_bytes());
        frame.extend(tci.to_be_bytes());
    }
    frame.extend(ETHERTYPE_IPV4.to_be_bytes());

    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&ip_src.octets());
    ip[16..20].copy_from_slice(&ip_dst.octets());
    let checksum = fold(ones_sum(&ip, 0));
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);

    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend(udp_src.to_be_bytes());
    udp.extend(udp_dst.to_be_bytes());
    udp.extend(udp_len.to_be_bytes());
    udp.extend([0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = ones_sum(&ip[12..20], 17 + u32::from(udp_len));
    let checksum = match fold(ones_sum(&udp, pseudo)) {
        0 => 0xffff, // zero means "no checksum" in UDP
        sum => sum,
    };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&udp);
    frame
}

// --- From the desired state ---------------------------------------------------------------

/// "10.0.0.0/24" → (10.0.0.0, 24); IPv4 only.
fn parse_cidr4(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = cidr.trim().split_once('/')?;
    let len: u8 = len.parse().ok().filter(|len| *len <= 32)?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    Some((Ipv4Addr::from(u32::from(addr) & mask(len)), len))
}

/// "52:54:00:ab:cd:ef" (or with dashes) → bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A server name made fit for option 12: letters, digits, '-' and '.' kept, anything else
/// becomes '-', at most 63 bytes; None when nothing is left.
fn hostname(name: &str) -> Option<String> {
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' => c,
            _ => '-',
        })
        .take(63)
        .collect();
    let cleaned = cleaned.trim_matches(|c| c == '-' || c == '.');
    (!cleaned.is_empty()).then(|| cleaned.to_string())
}

/// The responder of one network: its DHCP-enabled IPv4 subnets and the ports on them.
///
/// Each port's lease is its first fixed IPv4 address on such a subnet, with that subnet's
/// prefix, gateway (router), DNS servers and host routes; the MTU is the port's, else the
/// network's (none when both are 0); the hostname is the port's server name, cleaned up.
/// Ports without such an address, or with an unreadable MAC, get no lease; of two ports with
/// one MAC, the first wins.
///
/// The server identifier is the first DHCP subnet's gateway, else that subnet's first host
/// address. Guests renew by unicast to the server identifier, which OVS may not deliver to
/// the responder (it has no IP address); they then fall back to broadcast rebinding (at T2),
/// which we answer like any REQUEST for the port's address. Using the gateway keeps the
/// identifier an address the guest can reach and that no port holds.
///
/// None when the network has no DHCP-enabled IPv4 subnet.
pub fn dhcp_interface(
    network: &pb::DesiredNetwork,
    ports: &[(&pb::DesiredPort, Option<&str>)],
    server_mac: [u8; 6],
) -> Option<DhcpInterface> {
    let subnets: Vec<(&pb::Subnet, u8)> = network
        .subnets
        .iter()
        .filter(|s| s.enable_dhcp && s.ip_version != 6)
        .filter_map(|s| parse_cidr4(&s.cidr).map(|(_, len)| (s, len)))
        .collect();
    let &(first, first_len) = subnets.first()?;
    let server_ip = first.gateway_ip.parse().ok().unwrap_or_else(|| {
        let (net, _) = parse_cidr4(&first.cidr).unwrap_or((Ipv4Addr::UNSPECIFIED, 32));
        match first_len {
            31.. => net,
            _ => Ipv4Addr::from(u32::from(net) + 1),
        }
    });
    let mut leases: Vec<DhcpLease> = Vec::new();
    for &(port, name) in ports {
        let Some(mac) = parse_mac(&port.mac_address) else {
            continue;
        };
        if leases.iter().any(|l| l.mac == mac) {
            continue;
        }
        let found = port.fixed_ips.iter().find_map(|fixed| {
            let ip: Ipv4Addr = fixed.ip_address.parse().ok()?;
            let &(subnet, prefix_len) = subnets.iter().find(|(s, _)| s.id == fixed.subnet_id)?;
            Some((ip, subnet, prefix_len))
        });
        let Some((ip, subnet, prefix_len)) = found else {
            continue;
        };
        let routes = subnet
            .host_routes
            .iter()
            .filter_map(|r| {
                let (dest, len) = parse_cidr4(&r.destination)?;
                Some((dest, len, r.nexthop.parse().ok()?))
            })
            .collect();
        let mtu = [port.mtu, network.mtu]
            .into_iter()
            .find(|mtu| *mtu != 0)
            .map(|mtu| mtu.min(u32::from(u16::MAX)) as u16);
        leases.push(DhcpLease {
            mac,
            ip,
            prefix_len,
            gateway: subnet.gateway_ip.parse().ok(),
            dns: subnet
                .dns_nameservers
                .iter()
                .filter_map(|d| d.parse().ok())
                .collect(),
            routes,
            mtu,
            hostname: name.and_then(hostname),
            lease_secs: DEFAULT_LEASE_SECS,
        });
    }
    Some(DhcpInterface {
        server_ip,
        server_mac,
        leases,
    })
}

#[cfg(test)]
#[path = "dhcp_tests.rs"]
mod tests;

//! Unit tests of [`super`] (the pure DHCP module), by the frames it returns.

use super::*;

const CLIENT: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const STRANGER: [u8; 6] = [0x52, 0x54, 0x00, 0x99, 0x99, 0x99];
const SERVER_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PORT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 23);

fn iface() -> DhcpInterface {
    DhcpInterface {
        server_ip: SERVER,
        server_mac: SERVER_MAC,
        leases: vec![DhcpLease {
            mac: CLIENT,
            ip: PORT_IP,
            prefix_len: 24,
            gateway: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(9, 9, 9, 9)],
            routes: vec![(
                Ipv4Addr::new(10, 20, 0, 0),
                16,
                Ipv4Addr::new(10, 0, 0, 254),
            )],
            mtu: Some(1450),
            hostname: Some("web-1".into()),
            lease_secs: DEFAULT_LEASE_SECS,
        }],
    }
}

/// A client's message, built the way a client would.
struct Client {
    kind: MessageType,
    mac: [u8; 6],
    ciaddr: Ipv4Addr,
    ip_dst: Ipv4Addr,
    flags: u16,
    vlan: Option<u16>,
    options: Vec<(u8, Vec<u8>)>,
}

impl Client {
    fn new(kind: MessageType) -> Self {
        Client {
            kind,
            mac: CLIENT,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            ip_dst: Ipv4Addr::BROADCAST,
            flags: 0,
            vlan: None,
            options: Vec::new(),
        }
    }

    fn option(mut self, code: u8, data: &[u8]) -> Self {
        self.options.push((code, data.to_vec()));
        self
    }

    fn frame(&self) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[..4].copy_from_slice(&[1, 1, 6, 0]);
        bootp[4..8].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        bootp[10..12].copy_from_slice(&self.flags.to_be_bytes());
        bootp[12..16].copy_from_slice(&self.ciaddr.octets());
        bootp[28..34].copy_from_slice(&self.mac);
        bootp.extend_from_slice(&MAGIC_COOKIE);
        push_option(&mut bootp, 53, &[self.kind as u8]);
        for (code, data) in &self.options {
            push_option(&mut bootp, *code, data);
        }
        bootp.push(255);
        let src = if self.ciaddr.is_unspecified() {
            Ipv4Addr::UNSPECIFIED
        } else {
            self.ciaddr
        };
        ethernet_ipv4_udp(
            ([0xff; 6], self.mac, self.vlan),
            (src, self.ip_dst),
            (CLIENT_PORT, SERVER_PORT),
            &bootp,
        )
    }
}

/// Asserts the IP header and UDP checksums of a frame verify, and returns it parsed.
fn checked(frame: &[u8]) -> DhcpFrame {
    let parsed = parse_frame(frame).expect("the reply parses");
    let ip_at = if parsed.vlan_tci.is_some() { 18 } else { 14 };
    let ip = &frame[ip_at..];
    assert_eq!(fold(ones_sum(&ip[..20], 0)), 0, "IP header checksum");
    let udp = &ip[20..];
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        20 + udp.len()
    );
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    let pseudo = ones_sum(&ip[12..20], 17 + udp.len() as u32);
    assert_eq!(fold(ones_sum(udp, pseudo)), 0, "UDP checksum");
    assert!(
        udp.len() - 8 >= MIN_BOOTP,
        "BOOTP message padded to 300 bytes"
    );
    parsed
}

fn reply(iface: &DhcpInterface, client: &Client) -> DhcpFrame {
    checked(&answer(iface, &client.frame()).expect("a reply"))
}

fn ignored(iface: &DhcpInterface, client: &Client) -> Ignored {
    match decide(iface, &client.frame()) {
        Outcome::Ignored(why) => why,
        other => panic!("expected no reply, got {other:?}"),
    }
}

#[test]
fn discover_from_a_port_gets_an_offer_of_its_address_and_configuration() {
    let offer = reply(&iface(), &Client::new(MessageType::Discover));
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    assert_eq!(
        (offer.op, offer.xid, offer.chaddr),
        (2, 0xdead_beef, CLIENT)
    );
    assert_eq!(
        (offer.yiaddr, offer.ciaddr),
        (PORT_IP, Ipv4Addr::UNSPECIFIED)
    );
    assert_eq!((offer.eth_dst, offer.eth_src), (CLIENT, SERVER_MAC));
    assert_eq!((offer.ip_src, offer.ip_dst), (SERVER, PORT_IP));
    assert_eq!((offer.udp_src, offer.udp_dst), (67, 68));
    assert_eq!(offer.option_ip(54), Some(SERVER));
    assert_eq!(offer.option(51), Some(86_400u32.to_be_bytes().to_vec()));
    assert_eq!(offer.option(58), Some(43_200u32.to_be_bytes().to_vec()));
    assert_eq!(offer.option(59), Some(75_600u32.to_be_bytes().to_vec()));
    assert_eq!(offer.option_ip(1), Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(offer.option_ip(28), Some(Ipv4Addr::new(10, 0, 0, 255)));
    assert_eq!(offer.option_ip(3), Some(SERVER));
    assert_eq!(offer.option(6), Some(vec![10, 0, 0, 2, 9, 9, 9, 9]));
    assert_eq!(offer.option(26), Some(1450u16.to_be_bytes().to_vec()));
    assert_eq!(offer.option(12), Some(b"web-1".to_vec()));
    // The host route, then the default route (a client using 121 ignores option 3).
    let routes = [16, 10, 20, 10, 0, 0, 254, 0, 10, 0, 0, 1];
    assert_eq!(offer.option(121), Some(routes.to_vec()));
}

#[test]
fn request_for_the_offered_address_is_acked() {
    let request = Client::new(MessageType::Request)
        .option(50, &PORT_IP.octets())
        .option(54, &SERVER.octets());
    let ack = reply(&iface(), &request);
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(
        (ack.yiaddr, ack.ip_dst, ack.eth_dst),
        (PORT_IP, PORT_IP, CLIENT)
    );
    assert_eq!(ack.option(51), Some(86_400u32.to_be_bytes().to_vec()));
}

#[test]
fn init_reboot_request_for_the_ports_address_is_acked() {
    let request = Client::new(MessageType::Request).option(50, &PORT_IP.octets());
    assert_eq!(
        reply(&iface(), &request).message_type(),
        Some(MessageType::Ack)
    );
}

#[test]
fn request_for_another_address_is_naked_by_broadcast() {
    let other = Ipv4Addr::new(10, 0, 0, 99);
    let request = Client::new(MessageType::Request).option(50, &other.octets());
    let outcome = decide(&iface(), &request.frame());
    let Outcome::Reply {
        kind, ip, frame, ..
    } = outcome
    else {
        panic!("expected a NAK, got {outcome:?}");
    };
    assert_eq!((kind, ip), (MessageType::Nak, other));
    let nak = checked(&frame);
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert_eq!(
        (nak.yiaddr, nak.ip_dst),
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)
    );
    assert_eq!((nak.eth_dst, nak.option_ip(54)), (CLIENT, Some(SERVER)));
    assert_eq!(nak.option(51), None);
    // Renewing a stale address (ciaddr) is refused the same way.
    let mut renew = Client::new(MessageType::Request);
    (renew.ciaddr, renew.ip_dst) = (other, SERVER);
    assert_eq!(
        reply(&iface(), &renew).message_type(),
        Some(MessageType::Nak)
    );
}

#[test]
fn renewing_and_rebinding_are_acked_to_the_clients_address() {
    let mut renew = Client::new(MessageType::Request);
    (renew.ciaddr, renew.ip_dst) = (PORT_IP, SERVER);
    let ack = reply(&iface(), &renew);
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(
        (ack.ciaddr, ack.yiaddr, ack.ip_dst),
        (PORT_IP, PORT_IP, PORT_IP)
    );
    let mut rebind = Client::new(MessageType::Request);
    rebind.ciaddr = PORT_IP;
    assert_eq!(
        reply(&iface(), &rebind).message_type(),
        Some(MessageType::Ack)
    );
}

#[test]
fn request_naming_another_server_is_ignored() {
    let request = Client::new(MessageType::Request)
        .option(50, &PORT_IP.octets())
        .option(54, &[10, 0, 0, 77]);
    assert_eq!(ignored(&iface(), &request), Ignored::OtherServer);
}

#[test]
fn unknown_mac_gets_no_answer() {
    for kind in [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
    ] {
        let mut client = Client::new(kind).option(50, &PORT_IP.octets());
        client.mac = STRANGER;
        assert_eq!(ignored(&iface(), &client), Ignored::UnknownClient);
        assert_eq!(answer(&iface(), &client.frame()), None);
    }
}

#[test]
fn broadcast_flag_makes_the_reply_ip_broadcast_but_ethernet_unicast() {
    let mut discover = Client::new(MessageType::Discover);
    discover.flags = FLAG_BROADCAST;
    let offer = reply(&iface(), &discover);
    assert_eq!((offer.ip_dst, offer.eth_dst), (Ipv4Addr::BROADCAST, CLIENT));
    assert!(offer.broadcast_flag());
}

#[test]
fn inform_gets_configuration_without_address_or_lease_times() {
    let mut inform = Client::new(MessageType::Inform);
    (inform.ciaddr, inform.ip_dst) = (PORT_IP, SERVER);
    let ack = reply(&iface(), &inform);
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!((ack.yiaddr, ack.ip_dst), (Ipv4Addr::UNSPECIFIED, PORT_IP));
    assert_eq!(
        (ack.option(51), ack.option(58), ack.option(59)),
        (None, None, None)
    );
    assert_eq!(ack.option_ip(1), Some(Ipv4Addr::new(255, 255, 255, 0)));
}

#[test]
fn release_decline_replies_and_foreign_traffic_get_no_answer() {
    let iface = iface();
    assert_eq!(
        ignored(&iface, &Client::new(MessageType::Release)),
        Ignored::Release
    );
    assert_eq!(
        ignored(&iface, &Client::new(MessageType::Decline)),
        Ignored::Decline
    );
    // Another server's reply seen on the wire.
    let offer = answer(&iface, &Client::new(MessageType::Discover).frame()).unwrap();
    assert_eq!(decide(&iface, &offer), Outcome::Ignored(Ignored::NotDhcp));
    let mut elsewhere = Client::new(MessageType::Discover);
    elsewhere.ip_dst = Ipv4Addr::new(10, 0, 0, 77);
    assert_eq!(ignored(&iface, &elsewhere), Ignored::OtherAddress);
    let mut frame = Client::new(MessageType::Discover).frame();
    frame[14 + 20 + 8] = 2; // op = BOOTREPLY, to port 67
    assert_eq!(
        decide(&iface, &frame),
        Outcome::Ignored(Ignored::NotRequest)
    );
    frame[12] = 0x86; // IPv6 ethertype
    assert_eq!(decide(&iface, &frame), Outcome::Ignored(Ignored::NotDhcp));
}

#[test]
fn tagged_request_gets_a_reply_with_the_same_tag() {
    let mut discover = Client::new(MessageType::Discover);
    discover.vlan = Some(0x0064);
    let offer = reply(&iface(), &discover);
    assert_eq!((offer.vlan_tci, offer.yiaddr), (Some(0x0064), PORT_IP));
}

#[test]
fn options_follow_the_parameter_request_list_order() {
    let discover = Client::new(MessageType::Discover).option(55, &[121, 6, 3, 1]);
    let offer = reply(&iface(), &discover);
    let codes: Vec<u8> = offer.options.iter().map(|(code, _)| *code).collect();
    assert_eq!(&codes[..6], &[53, 54, 121, 6, 3, 1]);
    for code in [51, 58, 59, 28, 26, 12] {
        assert!(codes.contains(&code), "option {code} is sent unasked");
    }
}

#[test]
fn classless_routes_encode_as_in_rfc_3442() {
    let router = Ipv4Addr::new(10, 0, 0, 1);
    let routes = [
        (Ipv4Addr::new(0, 0, 0, 0), 0, router),
        (Ipv4Addr::new(10, 0, 0, 0), 8, router),
        (Ipv4Addr::new(10, 17, 0, 0), 16, router),
        (Ipv4Addr::new(10, 27, 129, 0), 24, router),
        (Ipv4Addr::new(10, 229, 0, 128), 25, router),
        (Ipv4Addr::new(10, 198, 122, 47), 32, router),
        // Host bits beyond the prefix are dropped.
        (Ipv4Addr::new(10, 17, 99, 99), 16, Ipv4Addr::UNSPECIFIED),
    ];
    let expected: Vec<u8> = [
        &[0, 10, 0, 0, 1][..],
        &[8, 10, 10, 0, 0, 1],
        &[16, 10, 17, 10, 0, 0, 1],
        &[24, 10, 27, 129, 10, 0, 0, 1],
        &[25, 10, 229, 0, 128, 10, 0, 0, 1],
        &[32, 10, 198, 122, 47, 10, 0, 0, 1],
        &[16, 10, 17, 0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(classless_routes(&routes), expected);
}

#[test]
fn options_longer_than_255_bytes_are_split_and_read_back_whole() {
    let mut iface = iface();
    iface.leases[0].dns = (1..=70).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
    let offer = reply(&iface, &Client::new(MessageType::Discover));
    assert_eq!(
        offer.options.iter().filter(|(code, _)| *code == 6).count(),
        2
    );
    assert_eq!(offer.option(6).map(|d| d.len()), Some(280));
}

#[test]
fn garbage_never_panics() {
    let iface = iface();
    let valid = Client::new(MessageType::Request)
        .option(50, &PORT_IP.octets())
        .frame();
    for len in 0..valid.len() {
        let _ = decide(&iface, &valid[..len]);
    }
    for at in 0..valid.len() {
        for value in [0u8, 1, 0x0f, 0x45, 0x7f, 0x80, 0xff] {
            let mut frame = valid.clone();
            frame[at] = value;
            let _ = decide(&iface, &frame);
        }
    }
    // xorshift: random frames, and random tails after a plausible header.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 600) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 && frame.len() > 60 {
            let keep = (next() % 300) as usize;
            frame[..keep.min(valid.len()).min(len)]
                .copy_from_slice(&valid[..keep.min(valid.len()).min(len)]);
        }
        let _ = decide(&iface, &frame);
    }
}

fn subnet(id: &str, cidr: &str, gateway: &str, dhcp: bool) -> pb::Subnet {
    pb::Subnet {
        id: id.into(),
        cidr: cidr.into(),
        ip_version: if cidr.contains(':') { 6 } else { 4 },
        gateway_ip: gateway.into(),
        enable_dhcp: dhcp,
        dns_nameservers: vec!["10.0.0.2".into(), "not an ip".into()],
        host_routes: vec![pb::SubnetHostRoute {
            destination: "10.20.0.0/16".into(),
            nexthop: "10.0.0.254".into(),
        }],
        ..Default::default()
    }
}

fn port(mac: &str, fixed: &[(&str, &str)]) -> pb::DesiredPort {
    pb::DesiredPort {
        port_id: format!("port-{mac}"),
        network_id: "net".into(),
        mac_address: mac.into(),
        fixed_ips: fixed
            .iter()
            .map(|(subnet_id, ip)| pb::PortFixedIp {
                subnet_id: (*subnet_id).into(),
                ip_address: (*ip).into(),
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn desired_network_becomes_a_lease_table() {
    let network = pb::DesiredNetwork {
        network_id: "net".into(),
        mtu: 1450,
        subnets: vec![
            subnet("v6", "fd00::/64", "fd00::1", true),
            subnet("off", "192.168.9.0/24", "192.168.9.1", false),
            subnet("v4", "10.0.0.0/24", "10.0.0.1", true),
        ],
        ..Default::default()
    };
    let web = port(
        "52:54:00:12:34:56",
        &[("v6", "fd00::5"), ("v4", "10.0.0.23")],
    );
    let mut db = port("52:54:00:12:34:57", &[("v4", "10.0.0.24")]);
    db.mtu = 1400;
    let dhcp_off = port("52:54:00:12:34:58", &[("off", "192.168.9.5")]);
    let bad_mac = port("nonsense", &[("v4", "10.0.0.25")]);
    let duplicate = port("52:54:00:12:34:56", &[("v4", "10.0.0.26")]);
    let ports = [
        (&web, Some("Web 1 (prod)")),
        (&db, None),
        (&dhcp_off, None),
        (&bad_mac, None),
        (&duplicate, None),
    ];
    let iface = dhcp_interface(&network, &ports, SERVER_MAC).expect("a DHCP subnet");
    assert_eq!((iface.server_ip, iface.server_mac), (SERVER, SERVER_MAC));
    assert_eq!(
        iface.leases,
        vec![
            DhcpLease {
                mac: CLIENT,
                ip: PORT_IP,
                prefix_len: 24,
                gateway: Some(SERVER),
                dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
                routes: vec![(
                    Ipv4Addr::new(10, 20, 0, 0),
                    16,
                    Ipv4Addr::new(10, 0, 0, 254)
                )],
                mtu: Some(1450),
                hostname: Some("Web-1--prod".into()),
                lease_secs: 86_400,
            },
            DhcpLease {
                mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x57],
                ip: Ipv4Addr::new(10, 0, 0, 24),
                mtu: Some(1400),
                hostname: None,
                ..iface.leases[0].clone()
            },
        ]
    );
}

#[test]
fn server_id_without_gateway_is_the_first_host_address() {
    let network = pb::DesiredNetwork {
        subnets: vec![subnet("v4", "10.9.8.0/22", "", true)],
        ..Default::default()
    };
    let vm = port("52:54:00:12:34:56", &[("v4", "10.9.8.7")]);
    let iface = dhcp_interface(&network, &[(&vm, None)], SERVER_MAC).unwrap();
    assert_eq!(iface.server_ip, Ipv4Addr::new(10, 9, 8, 1));
    assert_eq!((iface.leases[0].gateway, iface.leases[0].mtu), (None, None));
    assert_eq!(iface.leases[0].prefix_len, 22);
}

#[test]
fn network_without_a_dhcp_ipv4_subnet_has_no_responder() {
    let network = pb::DesiredNetwork {
        subnets: vec![
            subnet("v6", "fd00::/64", "fd00::1", true),
            subnet("off", "10.0.0.0/24", "10.0.0.1", false),
        ],
        ..Default::default()
    };
    assert_eq!(dhcp_interface(&network, &[], SERVER_MAC), None);
}

#[test]
fn macs_parse_with_colons_or_dashes_only_when_whole() {
    assert_eq!(parse_mac("52:54:00:12:34:56"), Some(CLIENT));
    assert_eq!(parse_mac("52-54-00-12-34-56"), Some(CLIENT));
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "5:54:00:12:34:56",
        "zz:54:00:12:34:56",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad}");
    }
}

//! One entry of `[http] allow`: the client addresses the local Events API endpoint takes
//! requests from. A config type (checked when the configuration is read) that the listener
//! matches each client against.

use std::net::{IpAddr, SocketAddr};

/// One entry of `http.allow`: an address and a prefix length (a single address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowEntry {
    net: IpAddr,
    prefix: u8,
}

impl AllowEntry {
    /// Parses `10.0.0.0/8`, `192.0.2.7`, `fd00::/8` or `::1`; `None` if it is none of these.
    ///
    /// An IPv4-mapped IPv6 entry (`::ffff:127.0.0.1`, `::ffff:10.0.0.0/104`) is normalised to the
    /// IPv4 address or block it maps, since clients are matched by their IPv4 address.
    pub fn parse(text: &str) -> Option<AllowEntry> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse::<u8>().ok()?,
            Some(_) => return None,
            None => max,
        };
        if prefix > max {
            return None;
        }
        match net {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Some(AllowEntry { net: IpAddr::V4(v4), prefix: prefix - 96 }),
                None => Some(AllowEntry { net, prefix }),
            },
            _ => Some(AllowEntry { net, prefix }),
        }
    }

    /// Why no client of a listener on `listen` (`None`: not known) could ever match this entry,
    /// or `None` if one could: the unspecified or broadcast address, a multicast block, or the
    /// other address family than the listener's. (A listener on loopback can have clients with
    /// any of the host's addresses, bound before they connect, so any unicast block may match.)
    pub fn never_matches(&self, listen: Option<SocketAddr>) -> Option<String> {
        let single = self.prefix == if self.net.is_ipv4() { 32 } else { 128 };
        if single && self.net.is_unspecified() {
            return Some(format!(
                "is the unspecified address, which no client has (for any client, use {}/0)",
                self.net
            ));
        }
        if single && self.net == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
            return Some("is the broadcast address, which no client has".to_owned());
        }
        let multicast = match self.net {
            IpAddr::V4(_) => self.prefix >= 4 && self.net.is_multicast(),
            IpAddr::V6(_) => self.prefix >= 8 && self.net.is_multicast(),
        };
        if multicast {
            return Some("is a multicast block, and no TCP client has such an address".to_owned());
        }
        // A listener on [::] also takes IPv4 clients (as mapped addresses); one on a single IPv6
        // address takes only IPv6 ones, and one on IPv4 only IPv4 ones.
        let listen = listen?.ip();
        let families = match (listen, self.net) {
            (IpAddr::V4(_), IpAddr::V6(_)) => Some(("IPv6", "IPv4")),
            (IpAddr::V6(l), IpAddr::V4(_)) if !l.is_unspecified() && l.to_ipv4_mapped().is_none() => {
                Some(("IPv4", "IPv6"))
            }
            _ => None,
        };
        families.map(|(entry, listener)| {
            format!("is {entry}, but http.listen {listen} is {listener}: only {listener} clients can connect")
        })
    }

    /// Whether `ip` is inside this block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix) == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit address.
fn masked(addr: u128, width: u32, prefix: u8) -> u128 {
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        0
    } else {
        addr >> (width - prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_and_match() {
        let net = AllowEntry::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()), "IPv4-mapped IPv6 counts as IPv4");
        let one = AllowEntry::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6 = AllowEntry::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let any = AllowEntry::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("203.0.113.5".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "web1", "10.0.0.0/", "10.0.0.0/+8", "", "10.0.0/8"] {
            assert_eq!(AllowEntry::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv4_mapped_entries_are_normalised_to_ipv4() {
        for (mapped, plain) in [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
        ] {
            assert_eq!(AllowEntry::parse(mapped), AllowEntry::parse(plain), "{mapped}");
        }
        let one = AllowEntry::parse("::ffff:127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()));
        // Below /96 the block holds more than mapped addresses: left as IPv6.
        assert!(AllowEntry::parse("::ffff:0:0/95").unwrap().net.is_ipv6());
    }

    #[test]
    fn entries_that_can_never_match_are_named() {
        let v4: SocketAddr = "192.0.2.1:8765".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:8765".parse().unwrap();
        let any6: SocketAddr = "[::]:8765".parse().unwrap();
        let lo4: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8765".parse().unwrap();
        let never = |entry: &str, listen: Option<SocketAddr>| AllowEntry::parse(entry).unwrap().never_matches(listen);
        for (entry, listen, why) in [
            ("0.0.0.0", None, "unspecified"),
            ("::", None, "unspecified"),
            ("255.255.255.255", None, "broadcast"),
            ("224.0.0.0/4", None, "multicast"),
            ("239.1.2.3", None, "multicast"),
            ("ff02::1", None, "multicast"),
            ("fd00::/8", Some(v4), "is IPv6"),
            ("::1", Some(lo4), "is IPv6"),
            ("10.0.0.0/8", Some(v6), "is IPv4"),
            ("127.0.0.1", Some(lo6), "is IPv4"),
        ] {
            let got = never(entry, listen).unwrap_or_else(|| panic!("{entry} on {listen:?} can never match"));
            assert!(got.contains(why), "{entry}: {got}");
        }
        for (entry, listen) in [
            ("0.0.0.0/0", Some(v4)),
            ("::/0", Some(v6)),
            ("10.0.0.0/8", Some(any6)),
            ("fd00::/8", Some(any6)),
            ("127.0.0.1", Some(lo4)),
            ("127.0.0.0/8", Some(lo4)),
            ("0.0.0.0/0", Some(lo4)),
            ("::ffff:127.0.0.1", Some(lo4)),
            ("::1", Some(lo6)),
            ("10.0.0.0/8", Some(lo4)),
            ("fd00::/8", Some(lo6)),
            ("10.0.0.0/8", None),
            ("223.255.255.255", None),
        ] {
            assert_eq!(never(entry, listen), None, "{entry} on {listen:?}");
        }
    }
}

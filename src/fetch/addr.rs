//! Which network addresses the URL fetcher may connect to.
//!
//! A service that fetches URLs for strangers must not become their way into the network it runs
//! in. Every address a URL leads to (IP literal, every DNS answer, every redirect hop) is
//! classified here; anything but ordinary public unicast is refused unless an operator put it on
//! the allow-list. IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4,
//! Teredo) are refused outright: what they reach depends on gateways we cannot see.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// An address block, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an address or CIDR block (like 10.0.0.0/8 or fd00::/8)");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(a, b, c, d), prefix)
}

/// IPv4 blocks that are not public unicast, with the reason given in refusals.
const V4_FORBIDDEN: &[((Ipv4Addr, u8), &str)] = &[
    (v4(0, 0, 0, 0, 8), "unspecified (\"this network\")"),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (
        v4(169, 254, 0, 0, 16),
        "link-local (cloud metadata lives here)",
    ),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(192, 0, 2, 0, 24), "documentation"),
    (v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation"),
    (v4(203, 0, 113, 0, 24), "documentation"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved (and broadcast)"),
];

/// IPv6 blocks that are not public unicast (or that embed IPv4), with the reason.
const V6_FORBIDDEN: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/96", "IPv4-compatible"),
    ("64:ff9b::/96", "NAT64 (embeds IPv4)"),
    ("64:ff9b:1::/48", "local NAT64 (embeds IPv4)"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo (embeds IPv4)"),
    ("2001:2::/48", "benchmarking"),
    ("2001:10::/28", "ORCHID"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 (embeds IPv4)"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

/// [`V6_FORBIDDEN`] parsed once (a unit test checks that every entry parses).
fn v6_forbidden() -> &'static [(Cidr, &'static str)] {
    static PARSED: std::sync::LazyLock<Vec<(Cidr, &'static str)>> =
        std::sync::LazyLock::new(|| {
            V6_FORBIDDEN
                .iter()
                .filter_map(|(net, why)| Some((net.parse().ok()?, *why)))
                .collect()
        });
    &PARSED
}

/// Why `ip` may not be fetched from, or `None` for public unicast.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => V4_FORBIDDEN
            .iter()
            .find(|((net, p), _)| {
                Cidr {
                    addr: IpAddr::V4(*net),
                    prefix: *p,
                }
                .contains(IpAddr::V4(ip))
            })
            .map(|(_, why)| *why),
        IpAddr::V6(ip) => v6_forbidden()
            .iter()
            .find(|(net, _)| net.contains(IpAddr::V6(ip)))
            .map(|(_, why)| *why),
    }
}

/// The fetcher's address policy: public unicast, plus what the operator allows.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allow: Vec<Cidr>,
}

impl AddressPolicy {
    /// `Err` with the reason when `ip` may not be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match forbidden_reason(ip) {
            Some(why) => Err(format!("{ip} is not a public unicast address ({why})")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forbidden_ipv6_block_parses() {
        assert_eq!(v6_forbidden().len(), V6_FORBIDDEN.len());
    }

    #[test]
    fn refusals_read_as_sentences_whatever_the_reason() {
        let policy = AddressPolicy::default();
        for (ip, reason) in [
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("::", "unspecified"),
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("fc00::1", "unique-local"),
        ] {
            let e = policy.check(ip.parse().unwrap()).unwrap_err();
            assert_eq!(
                e,
                format!("{ip} is not a public unicast address ({reason})")
            );
        }
    }

    fn refused(s: &str) -> bool {
        forbidden_reason(s.parse().unwrap()).is_some()
    }

    #[test]
    fn private_and_special_ipv4_are_refused() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refused(ip), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "11.0.0.1",
        ] {
            assert!(!refused(ip), "{ip}");
        }
    }

    #[test]
    fn ipv6_special_and_ipv4_carrying_forms_are_refused() {
        for ip in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2002:7f00:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(refused(ip), "{ip}");
        }
        for ip in ["2606:4700:4700::1111", "2a00:1450:4001:80b::200e"] {
            assert!(!refused(ip), "{ip}");
        }
    }

    #[test]
    fn allow_list_admits_what_the_operator_names() {
        let policy = AddressPolicy {
            allow: vec!["127.0.0.1/32".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("127.0.0.2".parse().unwrap()).is_err());
        assert!(policy.check("fd00::5".parse().unwrap()).is_ok());
        let err = policy
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(err.contains("link-local"), "{err}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("banana".parse::<Cidr>().is_err());
        assert!(
            "10.0.0.0/8"
                .parse::<Cidr>()
                .unwrap()
                .contains("10.200.0.1".parse().unwrap())
        );
    }
}

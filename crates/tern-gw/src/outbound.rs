//! Where tern may connect on a user's behalf (streams, webhooks, external MQTT brokers): the
//! `[gw] outbound_private_targets` switch.
//!
//! With the switch on (the default, so receivers on the same machine or network work) every
//! target is allowed. With it off, targets in non-public ranges are refused: loopback,
//! private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16, fe80::/10), shared
//! address space (CGNAT, 100.64/10), unspecified, "this network" (0/8), multicast, broadcast,
//! reserved and documentation ranges, and the same addresses written as IPv4-mapped,
//! IPv4-compatible, NAT64 (64:ff9b::/96) or 6to4 (2002::/16) IPv6.
//!
//! How a caller uses it:
//!
//! - at create/update of the target: [`check_literal`] on the URI's host. A literal IP in a
//!   refused range is an error whose text names the rule (answer it with a 400); a host name
//!   passes (it is checked when connecting).
//! - at connect time: [`resolve_allowed`] resolves the host (a literal IP is just checked) and
//!   returns only allowed addresses, or an error naming why none is. Connect to one of the
//!   returned addresses, never to the name again, so a DNS answer that changes between the
//!   check and the connect (rebinding) cannot reach a refused address. Log the error on the
//!   entity and retry with back-off.
//! - for hyper-util's `HttpConnector`: [`Resolver`] is a resolver that does the above
//!   (`HttpConnector::new_with_resolver(Resolver::new(policy))`). hyper-util skips the
//!   resolver for literal IPs: call [`check_literal`] on each request's host as well. A
//!   refusal comes back inside hyper's connect error; [`refusal_in`] finds it in the error's
//!   source chain.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The `[gw] outbound_private_targets` switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Whether targets in private, loopback, link-local and the other non-public ranges are
    /// allowed.
    pub private_targets: bool,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        OutboundPolicy {
            private_targets: true,
        }
    }
}

/// Why a target is refused or could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error(
        "`{host}` is {addr}, a {rule} address: outbound targets there are off ([gw] outbound_private_targets = false)"
    )]
    Refused {
        host: String,
        addr: IpAddr,
        rule: &'static str,
    },
    #[error("cannot resolve `{host}`: {reason}")]
    Resolve { host: String, reason: String },
    #[error("`{host}` resolves to no address")]
    NoAddress { host: String },
}

/// The rule `ip` falls under when it is not a public unicast address (none: public).
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified (0.0.0.0)",
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (127, _, _) => "loopback (127.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (100, 64..=127, _) => "shared address space (CGNAT, 100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation (TEST-NET)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast (224.0.0.0/4)",
        _ if ip.is_broadcast() => "broadcast (255.255.255.255)",
        (240..=255, _, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // IPv6 forms that carry an IPv4 address: the IPv4 address decides.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (::a.b.c.d, deprecated): no public use.
        return Some("IPv4-compatible (::/96)");
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return non_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return non_public_v4(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        0xfc00..=0xfdff => "unique local (fc00::/7)",
        0xfe80..=0xfebf => "link-local (fe80::/10)",
        0xfec0..=0xfeff => "site-local (fec0::/10)",
        0xff00..=0xffff => "multicast (ff00::/8)",
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        _ => return None,
    })
}

/// Whether `ip` may be connected to under `policy`.
pub fn check_ip(host: &str, ip: IpAddr, policy: OutboundPolicy) -> Result<(), OutboundError> {
    if policy.private_targets {
        return Ok(());
    }
    match non_public(ip) {
        None => Ok(()),
        Some(rule) => Err(OutboundError::Refused {
            host: host.to_string(),
            addr: ip,
            rule,
        }),
    }
}

/// The IP address `host` is written as (brackets of an IPv6 URI host allowed), if it is one.
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Checks a target's host when it is created or changed: a literal IP in a refused range is an
/// error (naming the rule); a host name passes (checked by [`resolve_allowed`] at connect time).
pub fn check_literal(host: &str, policy: OutboundPolicy) -> Result<(), OutboundError> {
    match literal_ip(host) {
        Some(ip) => check_ip(host, ip, policy),
        None => Ok(()),
    }
}

/// The addresses of `host:port` tern may connect to under `policy` (a literal IP is checked,
/// a name resolved and each address checked). Refused addresses are left out; when none is
/// left the error names the first refusal. Connect to a returned address, not to the name.
pub async fn resolve_allowed(
    host: &str,
    port: u16,
    policy: OutboundPolicy,
) -> Result<Vec<SocketAddr>, OutboundError> {
    if let Some(ip) = literal_ip(host) {
        check_ip(host, ip, policy)?;
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found =
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| OutboundError::Resolve {
                host: host.to_string(),
                reason: e.to_string(),
            })?;
    let mut allowed = Vec::new();
    let mut refused = None;
    for addr in found {
        match check_ip(host, addr.ip(), policy) {
            Ok(()) => allowed.push(addr),
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    match (allowed.is_empty(), refused) {
        (false, _) => Ok(allowed),
        (true, Some(e)) => Err(e),
        (true, None) => Err(OutboundError::NoAddress {
            host: host.to_string(),
        }),
    }
}

/// The [`OutboundError`] somewhere in `err`'s source chain (e.g. inside hyper's connect error
/// when [`Resolver`] refused), if any.
pub fn refusal_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a OutboundError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<OutboundError>() {
            return Some(found);
        }
        // An io::Error's `source` skips the error it wraps.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// A resolver for hyper-util's `HttpConnector` that returns only addresses allowed under its
/// policy ([`resolve_allowed`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolver {
    policy: OutboundPolicy,
}

impl Resolver {
    pub fn new(policy: OutboundPolicy) -> Self {
        Resolver { policy }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, OutboundError>> + Send>>;

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = OutboundError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let policy = self.policy;
        Box::pin(async move {
            // The connector sets the port of each address.
            resolve_allowed(name.as_str(), 0, policy)
                .await
                .map(Vec::into_iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: OutboundPolicy = OutboundPolicy {
        private_targets: false,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    #[test]
    fn non_public_ranges_are_named() {
        for (addr, rule) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::192.168.0.1", "private"),
            ("2002:7f00:1::", "loopback"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("2001:db8::1", "documentation"),
        ] {
            let found = non_public(ip(addr));
            assert!(
                found.is_some_and(|r| r.contains(rule)),
                "{addr}: {found:?}, expected {rule}"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "169.253.0.1",
            "223.255.255.255",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::",
        ] {
            assert_eq!(non_public(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn the_switch_decides() {
        let on = OutboundPolicy::default();
        assert!(on.private_targets);
        assert_eq!(check_literal("127.0.0.1", on), Ok(()));
        let err = check_literal("127.0.0.1", OFF).expect_err("refused");
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(
            err.to_string().contains("outbound_private_targets"),
            "{err}"
        );
        assert!(check_literal("[::1]", OFF).is_err());
        assert!(check_literal("[::ffff:192.168.0.1]", OFF).is_err());
        // Names are checked once resolved.
        assert_eq!(check_literal("localhost", OFF), Ok(()));
        assert_eq!(check_literal("8.8.8.8", OFF), Ok(()));
    }

    #[tokio::test]
    async fn names_are_checked_once_resolved() {
        let err = resolve_allowed("localhost", 80, OFF)
            .await
            .expect_err("localhost is loopback");
        assert!(
            matches!(err, OutboundError::Refused { .. }),
            "{err}: expected a refusal"
        );
        let on = OutboundPolicy::default();
        let addrs = resolve_allowed("localhost", 80, on)
            .await
            .expect("resolves");
        assert!(addrs.iter().all(|a| a.port() == 80 && a.ip().is_loopback()));
        assert_eq!(
            resolve_allowed("127.0.0.1", 9, on).await,
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], 9))])
        );
        let refused = OutboundError::Refused {
            host: "h".into(),
            addr: ip("10.0.0.1"),
            rule: "private",
        };
        let wrapped = std::io::Error::other(refused.clone());
        assert_eq!(refusal_in(&wrapped), Some(&refused));
    }
}

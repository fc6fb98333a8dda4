//! Client addresses: who is at the other end of a request, and how much
//! each address holds open.
//!
//! Owns: [`ClientAddr`], the one address a request or a Socket.IO
//! connection is attributed to — in refusal and audit rows and by the
//! per-address caps — resolved once at the edge from the TCP peer and, only
//! when that peer is a configured trusted proxy, from the forwarding header
//! the proxy sets (`server.trusted_proxies`, `server.client_ip_header`);
//! and [`AddressSlots`], a count per address of what it holds (connections,
//! sessions), released when the [`Slot`] is dropped.
//! Never: believe a forwarding header from a peer that is not a trusted
//! proxy (anyone can write one), read more of a header than the trusted
//! hops at its end, or do I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::config::ClientIpHeader;

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client: the TCP peer, or behind a trusted proxy the right-most
    /// address of the forwarding header that is not itself a trusted proxy.
    pub ip: IpAddr,
    /// The trusted proxy the request came through (the TCP peer), if any.
    pub proxy: Option<IpAddr>,
}

/// Whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    header: ClientIpHeader,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>, header: ClientIpHeader) -> Self {
        Self { networks, header }
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`. A peer that is not a trusted proxy is the
    /// client, whatever its headers say. A trusted one's header is read
    /// from its end (each proxy appends the address it received from):
    /// hops that are trusted proxies are skipped, the first that is not is
    /// the client. A hop that is not an address (`unknown`, an obfuscated
    /// `Forwarded` identifier, garbage) ends the walk at the proxy that
    /// wrote it; a header with only trusted hops names its left-most.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return ClientAddr {
                ip: peer,
                proxy: None,
            };
        }
        let lines: Vec<&str> = headers
            .get_all(self.header.name())
            .iter()
            .map(|value| value.to_str().unwrap_or("?"))
            .collect();
        let mut client = peer;
        'walk: for line in lines.iter().rev() {
            for hop in line.rsplit(',') {
                let address = match self.header {
                    ClientIpHeader::XForwardedFor => parse_hop(hop),
                    ClientIpHeader::Forwarded => forwarded_for(hop).and_then(parse_hop),
                };
                let Some(address) = address else { break 'walk };
                client = address.to_canonical();
                if !self.trusts(client) {
                    break 'walk;
                }
            }
        }
        ClientAddr {
            ip: client,
            proxy: Some(peer),
        }
    }
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`, optionally quoted.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239), e.g. of
/// `for=192.0.2.60;proto=https;by=203.0.113.43`.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then_some(value)
    })
}

/// How many of something each address holds; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AddressSlots {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One place held by an address, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: AddressSlots,
    ip: IpAddr,
}

impl AddressSlots {
    /// A place for `ip` if it holds fewer than `limit`.
    pub fn try_take(&self, ip: IpAddr, limit: usize) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(ip).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                held.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }

    /// How many places `ip` holds.
    #[cfg(test)]
    fn held_by(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// What an Engine.IO session holds of its address's caps, from its
/// handshake until it closes: its place among the address's sessions, and
/// until an authenticated Socket.IO CONNECT its place among those waiting.
/// Carried in the handshake request's extensions, which engineioxide keeps
/// with the session, so a session that ends (closed, timed out) gives its
/// places back when it is dropped.
#[derive(Debug)]
pub struct SessionPlaces {
    _session: Slot,
    unauthenticated: Mutex<Option<Slot>>,
}

impl SessionPlaces {
    pub fn new(session: Slot, unauthenticated: Slot) -> Self {
        Self {
            _session: session,
            unauthenticated: Mutex::new(Some(unauthenticated)),
        }
    }

    /// The session's client authenticated: it no longer waits.
    pub fn authenticated(&self) {
        self.unauthenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str], header: ClientIpHeader) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect(), header)
    }

    fn resolve(trusted: &TrustedProxies, peer: &str, headers: &[(&str, &str)]) -> String {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        trusted.resolve(peer.parse().unwrap(), &map).ip.to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let none = TrustedProxies::default();
        let xff = [("x-forwarded-for", "192.0.2.1")];
        assert_eq!(resolve(&none, "203.0.113.9", &xff), "203.0.113.9");
        let some = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        assert_eq!(resolve(&some, "203.0.113.9", &xff), "203.0.113.9");
        assert_eq!(resolve(&some, "::ffff:203.0.113.9", &xff), "203.0.113.9");
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = proxies(
            &["10.0.0.0/8", "127.0.0.1/32"],
            ClientIpHeader::XForwardedFor,
        );
        let header = |v| [("x-forwarded-for", v)];
        // The client forged the left part; the proxies appended the rest.
        assert_eq!(
            resolve(
                &trusted,
                "127.0.0.1",
                &header("6.6.6.6, 192.0.2.1, 10.1.1.1")
            ),
            "192.0.2.1"
        );
        assert_eq!(
            resolve(&trusted, "127.0.0.1", &header("[2001:db8::1]:4711")),
            "2001:db8::1"
        );
        assert_eq!(
            resolve(&trusted, "127.0.0.1", &header("192.0.2.1:80")),
            "192.0.2.1"
        );
        // Only proxies: the left-most. No header: the proxy itself.
        assert_eq!(
            resolve(&trusted, "127.0.0.1", &header("10.2.2.2, 10.1.1.1")),
            "10.2.2.2"
        );
        assert_eq!(resolve(&trusted, "127.0.0.1", &[]), "127.0.0.1");
        // Garbage stops the walk at the proxy that wrote it.
        assert_eq!(
            resolve(
                &trusted,
                "127.0.0.1",
                &header("192.0.2.1, unknown, 10.1.1.1")
            ),
            "10.1.1.1"
        );
        // Several header lines read as one list, in order.
        assert_eq!(
            resolve(
                &trusted,
                "127.0.0.1",
                &[
                    ("x-forwarded-for", "192.0.2.7"),
                    ("x-forwarded-for", "10.3.3.3")
                ]
            ),
            "192.0.2.7"
        );
        // The other header is not read.
        assert_eq!(
            resolve(&trusted, "127.0.0.1", &[("forwarded", "for=192.0.2.1")]),
            "127.0.0.1"
        );
    }

    #[test]
    fn forwarded_for_parameters_are_read_from_the_end() {
        let trusted = proxies(&["10.0.0.0/8"], ClientIpHeader::Forwarded);
        let header = |v| [("forwarded", v)];
        assert_eq!(
            resolve(
                &trusted,
                "10.0.0.1",
                &header(
                    "for=6.6.6.6, for=192.0.2.60;proto=https;by=203.0.113.43, For=\"10.9.9.9\""
                )
            ),
            "192.0.2.60"
        );
        assert_eq!(
            resolve(
                &trusted,
                "10.0.0.1",
                &header("for=\"[2001:db8:cafe::17]:4711\"")
            ),
            "2001:db8:cafe::17"
        );
        assert_eq!(
            resolve(&trusted, "10.0.0.1", &header("for=_hidden, for=10.4.4.4")),
            "10.4.4.4"
        );
        assert_eq!(
            resolve(&trusted, "10.0.0.1", &[("x-forwarded-for", "192.0.2.1")]),
            "10.0.0.1"
        );
    }

    #[test]
    fn slots_are_counted_per_address_and_given_back() {
        let slots = AddressSlots::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = slots.try_take(a, 2).unwrap();
        let _second = slots.try_take(a, 2).unwrap();
        assert!(slots.try_take(a, 2).is_none());
        let _other = slots.try_take(b, 2).unwrap();
        drop(first);
        assert_eq!(slots.held_by(a), 1);
        assert!(slots.try_take(a, 2).is_some());
        assert!(slots.try_take(a, 0).is_none());
        assert_eq!(slots.held.lock().unwrap().len(), 2);
    }
}

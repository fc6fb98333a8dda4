//! Transport security of readback's links: whether each connection the
//! daemon accepts (the HTTP listener) or makes (PostgreSQL, SMTP, Redis) is
//! encrypted, stays on this host, or would carry PHI and tokens in the clear
//! over the network; and the PostgreSQL URL with certificate verification
//! made strict.
//!
//! Owns: reading a URL's scheme, host and TLS parameters for that one
//! question. Never: connect anywhere, or decide what to do about a
//! plaintext link (`config` refuses it unless allowed, the composition root
//! warns).

use std::net::IpAddr;

/// How a link travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// TLS (with the peer's certificate verified where readback connects).
    Encrypted,
    /// Loopback or a Unix socket: never leaves this host.
    Local,
    /// Cleartext over the network.
    Plaintext,
}

/// `localhost`, a loopback address, or a Unix socket path.
pub fn host_is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP listener: `listen` is the resolved bind address.
pub fn listener(listen: Option<IpAddr>, tls: bool) -> Link {
    if tls {
        Link::Encrypted
    } else if listen.is_some_and(|ip| ip.is_loopback()) {
        Link::Local
    } else {
        Link::Plaintext
    }
}

/// An SMTP relay URL as lettre reads it: `smtps://` is implicit TLS,
/// `smtp://…?tls=required` STARTTLS that must succeed; `tls=opportunistic`
/// is plaintext to anyone who strips the STARTTLS offer.
pub fn smtp(url: &str) -> Link {
    let Ok(parsed) = url::Url::parse(url) else {
        return Link::Plaintext;
    };
    match parsed.scheme() {
        "smtps" => Link::Encrypted,
        "file" => Link::Local,
        _ if query(&parsed, "tls").as_deref() == Some("required") => Link::Encrypted,
        _ => host_link(&parsed),
    }
}

/// An HTTP URL readback fetches from (the JWKS).
pub fn https(url: &str) -> Link {
    let Ok(parsed) = url::Url::parse(url) else {
        return Link::Plaintext;
    };
    match parsed.scheme() {
        "https" => Link::Encrypted,
        _ => host_link(&parsed),
    }
}

/// A Redis URL: `rediss://` is TLS, `redis+unix://` / `unix://` a socket.
pub fn redis(url: &str) -> Link {
    let Ok(parsed) = url::Url::parse(url) else {
        return Link::Plaintext;
    };
    match parsed.scheme() {
        "rediss" => Link::Encrypted,
        "redis+unix" | "unix" => Link::Local,
        _ => host_link(&parsed),
    }
}

/// A PostgreSQL URL after [`postgres_verified_url`]: any `sslmode` that
/// asks for TLS is `verify-full`; `disable`, `allow`, `prefer` (the
/// default) may end up in cleartext.
pub fn postgres(url: &str) -> Link {
    let Ok(parsed) = url::Url::parse(url) else {
        return Link::Plaintext;
    };
    if matches!(
        query(&parsed, "sslmode").as_deref(),
        Some("require" | "verify-ca" | "verify-full")
    ) {
        return Link::Encrypted;
    }
    // `?host=/run/postgresql` names a socket directory.
    match query(&parsed, "host") {
        Some(host) if host_is_local(&host) => Link::Local,
        Some(_) => Link::Plaintext,
        None if parsed.host_str().is_none_or(str::is_empty) => Link::Local,
        None => host_link(&parsed),
    }
}

/// `database.url` with `sslmode=require` and `sslmode=verify-ca` raised to
/// `verify-full`: when TLS is asked for, the server must prove it is the
/// host the URL names with a certificate from a trusted CA (`sslrootcert`,
/// or the system's roots), or an attacker in the path could offer their own.
/// Other URLs are returned unchanged.
pub fn postgres_verified_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if !matches!(
        query(&parsed, "sslmode").as_deref(),
        Some("require" | "verify-ca")
    ) {
        return url.to_owned();
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(key, value)| {
            let value = if key == "sslmode" {
                "verify-full".to_owned()
            } else {
                value.into_owned()
            };
            (key.into_owned(), value)
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.into()
}

fn query(url: &url::Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn host_link(url: &url::Url) -> Link {
    match url.host_str() {
        Some(host) if !host_is_local(host) => Link::Plaintext,
        _ => Link::Local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for host in [
            "localhost",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
            "/run/postgresql",
        ] {
            assert!(host_is_local(host), "{host}");
        }
        for host in [
            "10.0.0.5",
            "db.hospital.example",
            "0.0.0.0",
            "[2001:db8::1]",
        ] {
            assert!(!host_is_local(host), "{host}");
        }
    }

    #[test]
    fn smtp_links() {
        assert_eq!(smtp("smtp://127.0.0.1:25"), Link::Local);
        assert_eq!(smtp("smtp://localhost"), Link::Local);
        assert_eq!(smtp("file://data/mail"), Link::Local);
        assert_eq!(smtp("smtp://relay.example:25"), Link::Plaintext);
        assert_eq!(
            smtp("smtp://relay.example:587?tls=opportunistic"),
            Link::Plaintext
        );
        assert_eq!(
            smtp("smtp://u:p@relay.example:587?tls=required"),
            Link::Encrypted
        );
        assert_eq!(smtp("smtps://relay.example"), Link::Encrypted);
    }

    #[test]
    fn https_links() {
        assert_eq!(https("https://idp.example/jwks.json"), Link::Encrypted);
        assert_eq!(https("http://127.0.0.1:8080/jwks.json"), Link::Local);
        assert_eq!(https("http://idp.example/jwks.json"), Link::Plaintext);
    }

    #[test]
    fn redis_links() {
        assert_eq!(redis("redis://127.0.0.1:6379"), Link::Local);
        assert_eq!(redis("redis://cache.example:6379"), Link::Plaintext);
        assert_eq!(redis("rediss://cache.example:6380"), Link::Encrypted);
        assert_eq!(redis("redis+unix:///run/redis.sock"), Link::Local);
    }

    #[test]
    fn postgres_links() {
        assert_eq!(postgres("postgres://u@127.0.0.1/db"), Link::Local);
        assert_eq!(postgres("postgres:///db?host=/run/postgresql"), Link::Local);
        assert_eq!(postgres("postgres://u@db.example/db"), Link::Plaintext);
        assert_eq!(
            postgres("postgres://u@db.example/db?sslmode=prefer"),
            Link::Plaintext
        );
        assert_eq!(
            postgres("postgres://u@localhost/db?host=db.example"),
            Link::Plaintext
        );
        assert_eq!(
            postgres("postgres://u@db.example/db?sslmode=verify-full"),
            Link::Encrypted
        );
        assert_eq!(
            postgres("postgresql://u@db.example/db?sslmode=require"),
            Link::Encrypted
        );
    }

    #[test]
    fn asking_for_tls_means_verifying_the_server() {
        assert_eq!(
            postgres_verified_url(
                "postgres://u:p@db.example:5432/rb?sslmode=require&sslrootcert=/etc/ca.pem"
            ),
            "postgres://u:p@db.example:5432/rb?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
        );
        assert_eq!(
            postgres_verified_url("postgres://u@db.example/rb?sslmode=verify-ca"),
            "postgres://u@db.example/rb?sslmode=verify-full"
        );
        for unchanged in [
            "postgres://u@db.example/rb",
            "postgres://u@db.example/rb?sslmode=disable",
            "postgres://u@db.example/rb?sslmode=verify-full",
        ] {
            assert_eq!(postgres_verified_url(unchanged), unchanged);
        }
    }

    #[test]
    fn listeners() {
        let loopback = "127.0.0.1".parse().ok();
        let any = "0.0.0.0".parse().ok();
        assert_eq!(listener(loopback, false), Link::Local);
        assert_eq!(listener(any, false), Link::Plaintext);
        assert_eq!(listener(any, true), Link::Encrypted);
    }
}

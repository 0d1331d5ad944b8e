//! The DNS resolver, built from the `[dns]` section: the one place that
//! turns `dns.nameservers` (or `/etc/resolv.conf`) into a hickory resolver,
//! for the verification pipeline (DNSBL, SPF, DKIM, DMARC) and the outbound
//! queue (MX) alike.

use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use postoffice_config::Dns;

/// Why no resolver could be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// No name servers configured and none usable in `/etc/resolv.conf`.
    #[error(
        "dns.nameservers is empty and /etc/resolv.conf cannot be used ({0}); set dns.nameservers = [\"address:port\", ...]"
    )]
    SystemConfig(String),
    /// The configuration names no server at all.
    #[error("no name servers: set dns.nameservers or add one to /etc/resolv.conf")]
    NoNameServers,
    /// hickory refused the configuration.
    #[error("cannot build the DNS resolver: {0}")]
    Build(String),
}

/// The resolver configuration for `[dns]`: each configured name server over
/// UDP and TCP on its port, or `/etc/resolv.conf` when none is given; never
/// the hosts file; `timeout_secs` per query, two attempts. `cache_size` is
/// the number of answers kept.
pub fn config(dns: &Dns, cache_size: u64) -> Result<(ResolverConfig, ResolverOpts), ResolverError> {
    let (config, mut opts) = if dns.nameservers.is_empty() {
        hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| ResolverError::SystemConfig(e.to_string()))?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    if config.name_servers().is_empty() {
        return Err(ResolverError::NoNameServers);
    }
    opts.timeout = Duration::from_secs(dns.timeout_secs.max(1));
    opts.attempts = 2;
    opts.cache_size = cache_size;
    opts.use_hosts_file = ResolveHosts::Never;
    // Both families, IPv4 first: many hosts have no IPv6 route.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Ok((config, opts))
}

/// A tokio resolver for `[dns]` (see [`config`]).
pub fn build(dns: &Dns, cache_size: u64) -> Result<TokioResolver, ResolverError> {
    let (config, opts) = config(dns, cache_size)?;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| ResolverError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_servers_keep_their_ports() {
        let dns = Dns {
            nameservers: vec!["127.0.0.1:5353".parse().unwrap()],
            timeout_secs: 0,
        };
        let (c, o) = config(&dns, 64).unwrap();
        assert!(!c.name_servers().is_empty());
        for ns in c.name_servers() {
            for conn in &ns.connections {
                assert_eq!(conn.port, 5353);
            }
        }
        assert_eq!(o.timeout, Duration::from_secs(1), "at least a second");
        assert_eq!(o.cache_size, 64);
        assert_eq!(o.use_hosts_file, ResolveHosts::Never);
    }
}

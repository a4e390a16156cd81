//! The address plan of a lab, as pure functions: which subnet a site has, which address its
//! gateway and its hosts get, and which site an address belongs to.
//!
//! Site `S` (numbered from 1 in the order sites are added) has `10.77.S.0/24`; the router's
//! bridge for it holds the gateway `10.77.S.1`; its hosts get `10.77.S.10`, `10.77.S.11`, … in
//! the order they are added. Labs are isolated from each other (each has its own router and
//! hosts), so every lab uses the same plan.

use std::net::Ipv4Addr;

/// First two octets of every lab address.
const NET_OCTETS: [u8; 2] = [10, 77];
/// Prefix length of a site's subnet.
pub const SITE_PREFIX_LEN: u8 = 24;
/// Most sites one lab can have (site numbers 1..=SITES_MAX).
pub const SITES_MAX: usize = 250;
/// Last octet of a site's first host.
const HOST_OCTET_FIRST: u8 = 10;
/// Most hosts one site can have (last octets 10..=249).
pub const HOSTS_PER_SITE_MAX: usize = 240;

/// The network address of site `site`'s subnet (`10.77.S.0`).
pub fn site_network(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(NET_OCTETS[0], NET_OCTETS[1], site, 0)
}

/// The site's subnet in CIDR notation, as nft and `ip` take it.
pub fn site_cidr(site: u8) -> String {
    format!("{}/{SITE_PREFIX_LEN}", site_network(site))
}

/// The router's address on site `site`'s bridge, every host's default gateway there.
pub fn gateway(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(NET_OCTETS[0], NET_OCTETS[1], site, 1)
}

/// The address of the `index`-th host (from 0) of site `site`.
pub fn host_addr(site: u8, index: usize) -> Option<Ipv4Addr> {
    if index >= HOSTS_PER_SITE_MAX {
        return None;
    }
    let octet = HOST_OCTET_FIRST as usize + index;
    Some(Ipv4Addr::new(
        NET_OCTETS[0],
        NET_OCTETS[1],
        site,
        u8::try_from(octet).ok()?,
    ))
}

/// The site an address belongs to, if it is a lab address.
pub fn site_of(addr: Ipv4Addr) -> Option<u8> {
    let o = addr.octets();
    if o[0] == NET_OCTETS[0] && o[1] == NET_OCTETS[1] && o[2] >= 1 && usize::from(o[2]) <= SITES_MAX {
        Some(o[2])
    } else {
        None
    }
}

/// Name of the router-side end of a host's link (`s{site}h{index}`, at most 8 characters, so
/// within the kernel's 15).
pub fn router_port_name(site: u8, index: usize) -> String {
    format!("s{site}h{index}")
}

/// Name of site `site`'s bridge in the router namespace.
pub fn bridge_name(site: u8) -> String {
    format!("br{site}")
}

/// Name of a host's end of its link, inside the host's namespace.
pub const HOST_LINK_NAME: &str = "eth0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(site_cidr(2), "10.77.2.0/24");
        assert_eq!(gateway(2), Ipv4Addr::new(10, 77, 2, 1));
        assert_eq!(host_addr(2, 0), Some(Ipv4Addr::new(10, 77, 2, 10)));
        assert_eq!(
            host_addr(2, HOSTS_PER_SITE_MAX - 1),
            Some(Ipv4Addr::new(10, 77, 2, 249))
        );
        assert_eq!(host_addr(2, HOSTS_PER_SITE_MAX), None);
        assert_eq!(site_of(Ipv4Addr::new(10, 77, 3, 11)), Some(3));
        assert_eq!(site_of(gateway(3)), Some(3));
        assert_eq!(site_of(Ipv4Addr::new(10, 78, 3, 11)), None);
        assert_eq!(site_of(Ipv4Addr::new(10, 77, 0, 11)), None);
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let longest = router_port_name(SITES_MAX as u8, HOSTS_PER_SITE_MAX - 1);
        assert!(longest.len() <= 15, "{longest}");
        assert!(bridge_name(SITES_MAX as u8).len() <= 15);
    }
}

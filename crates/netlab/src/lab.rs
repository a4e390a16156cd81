//! [`Lab`]: sites, hosts and a router, each in its own network namespace, and the faults of the
//! WAN between the sites.
//!
//! Topology: one router namespace with IPv4 forwarding on and one bridge per site (holding the
//! site's gateway address); one namespace per host, linked to its site's bridge by a veth pair,
//! with a default route through the gateway. Traffic within a site is bridged and never sees a
//! fault of the WAN; traffic between sites is routed by the router and so passes its rules
//! (see [`crate::rules`]) and, with a WAN delay, its relay (see [`crate::relay`]).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::layout::{self, HOST_LINK_NAME};
use crate::names::{remove_namespace, remove_namespaces_with_prefix, sweep_leftovers, LabId};
use crate::relay::{DelayTable, Relay};
use crate::rules::{self, Faults};
use crate::sys::{self, ip, ip_in, nft_in};
use crate::LabError;

/// Longest name of a lab label, a site or a host.
const NAME_LEN_MAX: usize = 32;

/// A site: a subnet behind one bridge of the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The name the lab was given for it.
    pub name: String,
    /// Its number (1, 2, … in the order sites were added): the third octet of its addresses.
    pub number: u8,
    /// The router's address on the site, every host's default gateway.
    pub gateway: Ipv4Addr,
    /// The site's subnet, `10.77.N.0/24`.
    pub subnet: String,
}

/// A host: one network namespace with one address in its site's subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The name the lab was given for it (unique within the lab).
    pub name: String,
    /// The name of its site.
    pub site: String,
    /// The network namespace it lives in (for `ip netns exec`).
    pub netns: String,
    /// Its address.
    pub addr: Ipv4Addr,
}

impl Host {
    /// A command that runs `program` inside this host's namespace (`ip netns exec NETNS
    /// program`; `ip` executes the program in place, so the child's process id is the
    /// program's). Add arguments, environment and redirections as usual.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let ip = sys::ip_program().unwrap_or_else(|_| "ip".into());
        let mut command = Command::new(ip);
        command.args(["netns", "exec", self.netns.as_str()]).arg(program);
        command
    }

    /// Runs `f` on a thread inside this host's namespace. Sockets `f` creates belong to the
    /// host for their whole life, wherever they are used afterwards.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        sys::in_netns(&self.netns, f)
    }

    /// Runs `future` to completion on a fresh single-threaded tokio runtime whose one thread
    /// lives in this host's namespace, so every socket the future opens — a client's
    /// connections, a server's listener — belongs to the host. This is how a test acts *from*
    /// a host (the test's own namespace has no route into the lab). Blocks the caller.
    pub fn block_on<F>(&self, future: F) -> Result<F::Output, LabError>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        block_on_in(&self.netns, future)
    }

    /// `addr:port` of this host.
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.addr, port))
    }

    /// A TCP listener on this host's address (port 0: one the kernel picks).
    pub fn tcp_listen(&self, port: u16) -> std::io::Result<TcpListener> {
        let addr = self.socket_addr(port);
        self.in_netns(|| TcpListener::bind(addr))
            .map_err(std::io::Error::other)?
    }

    /// A TCP connection from this host to `to`, given up after `timeout`.
    pub fn tcp_connect(&self, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        self.in_netns(|| TcpStream::connect_timeout(&to, timeout))
            .map_err(std::io::Error::other)?
    }

    /// A UDP socket on this host's address (port 0: one the kernel picks).
    pub fn udp_bind(&self, port: u16) -> std::io::Result<UdpSocket> {
        let addr = self.socket_addr(port);
        self.in_netns(|| UdpSocket::bind(addr)).map_err(std::io::Error::other)?
    }

    /// [`tcp_listen`](Self::tcp_listen) for tokio; call it inside a tokio runtime.
    pub fn tokio_tcp_listen(&self, port: u16) -> std::io::Result<tokio::net::TcpListener> {
        let listener = self.tcp_listen(port)?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A tokio TCP connection from this host to `to` (no time limit of its own: wrap it in
    /// `tokio::time::timeout`).
    pub async fn tokio_tcp_connect(&self, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let socket = self
            .in_netns(tokio::net::TcpSocket::new_v4)
            .map_err(std::io::Error::other)??;
        socket.connect(to).await
    }
}

impl AsRef<str> for Host {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

/// A host as the lab keeps it.
struct HostEntry {
    host: Host,
    /// Its site's number.
    site: u8,
    /// The router-side end of its link.
    router_port: String,
}

/// What may change after creation, under one lock.
struct State {
    sites: Vec<Site>,
    hosts: Vec<HostEntry>,
    /// Partitions and loss now in force.
    faults: Faults,
    /// Started with the first WAN delay.
    relay: Option<Relay>,
}

/// A network lab. Every namespace, rule, relay and process inside it is removed when it is
/// dropped (also while a panic unwinds), and creating a lab removes what earlier runs left.
///
/// Methods block for as long as their `ip`/`nft` commands take (milliseconds). Fault methods
/// take `&self`, so a lab can be shared (`Arc<Lab>`) between a test and its tasks.
pub struct Lab {
    /// This lab's identity; its namespaces are named `{id.prefix()}…`.
    id: LabId,
    /// A label for logs (the test's name, say).
    label: String,
    /// The router's namespace.
    router: String,
    /// One-way WAN delays, read by the relay for every chunk it relays.
    delays: Arc<DelayTable>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("label", &self.label)
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Creates a lab with its router and no sites. `label` names it in logs.
    pub fn new(label: &str) -> Result<Lab, LabError> {
        check_name("lab label", label)?;
        sys::ip_program()?;
        sys::nft_program()?;
        let swept = sweep_leftovers();
        if swept > 0 {
            tracing::info!(swept, "removed network namespaces left over by earlier runs");
        }
        let id = LabId::reserve();
        let router = format!("{}r", id.prefix());
        // From here on, dropping `lab` removes whatever was created.
        let lab = Lab {
            id,
            label: label.to_owned(),
            router,
            delays: Arc::new(DelayTable::default()),
            state: Mutex::new(State {
                sites: Vec::new(),
                hosts: Vec::new(),
                faults: Faults::default(),
                relay: None,
            }),
        };
        ip(["netns", "add", lab.router.as_str()])?;
        ip_in(&lab.router, ["link", "set", "lo", "up"])?;
        sys::in_netns(&lab.router, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?.map_err(|source| {
            LabError::Io {
                action: format!("turn on forwarding in {}", lab.router),
                source,
            }
        })?;
        {
            let state = lab.state();
            lab.apply_rules(&state.faults, &state)?;
        }
        tracing::info!(label, router = %lab.router, "network lab created");
        Ok(lab)
    }

    /// The label given at creation.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The start of every namespace name of this lab (`tdm{pid}x{n}-`).
    pub fn netns_prefix(&self) -> String {
        self.id.prefix()
    }

    /// The router's namespace.
    pub fn router_netns(&self) -> &str {
        &self.router
    }

    /// Runs `future` to completion on a runtime whose thread lives in the router's namespace:
    /// the lab's management network. From there every host of every site is one hop away, and
    /// since that traffic is the router's own (not forwarded), WAN partitions, loss and delay do
    /// not touch it — a cut host's link does. This is how an operator's tool reaches a lab.
    /// Blocks the caller.
    pub fn block_on_router<F>(&self, future: F) -> Result<F::Output, LabError>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        block_on_in(&self.router, future)
    }

    /// This lab's namespaces that exist now (router and hosts).
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = self.id.prefix();
        crate::names::list_namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change of the state happens after its commands succeeded, in one assignment or
        // push: a panic elsewhere cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a site: a bridge in the router with the site's gateway address.
    pub fn add_site(&self, name: &str) -> Result<Site, LabError> {
        check_name("site", name)?;
        let mut state = self.state();
        if state.sites.iter().any(|s| s.name == name) {
            return Err(LabError::Exists {
                kind: "site",
                name: name.to_owned(),
            });
        }
        if state.sites.len() >= layout::SITES_MAX {
            return Err(LabError::Limit {
                what: "sites",
                max: layout::SITES_MAX,
            });
        }
        let number = u8::try_from(state.sites.len() + 1).map_err(|_| LabError::Limit {
            what: "sites",
            max: layout::SITES_MAX,
        })?;
        let bridge = layout::bridge_name(number);
        let gateway = layout::gateway(number);
        ip_in(&self.router, ["link", "add", bridge.as_str(), "type", "bridge"])?;
        ip_in(
            &self.router,
            [
                "addr",
                "add",
                &format!("{gateway}/{}", layout::SITE_PREFIX_LEN),
                "dev",
                &bridge,
            ],
        )?;
        ip_in(&self.router, ["link", "set", bridge.as_str(), "up"])?;
        let site = Site {
            name: name.to_owned(),
            number,
            gateway,
            subnet: layout::site_cidr(number),
        };
        state.sites.push(site.clone());
        Ok(site)
    }

    /// Adds a host to `site`: its namespace, its link to the site's bridge, its address and
    /// default route, loopback up.
    pub fn add_host(&self, site: &str, name: &str) -> Result<Host, LabError> {
        check_name("host", name)?;
        let mut state = self.state();
        let number = site_number(&state, site)?;
        if state.hosts.iter().any(|h| h.host.name == name) {
            return Err(LabError::Exists {
                kind: "host",
                name: name.to_owned(),
            });
        }
        let index = state.hosts.iter().filter(|h| h.site == number).count();
        let addr = layout::host_addr(number, index).ok_or(LabError::Limit {
            what: "hosts in a site",
            max: layout::HOSTS_PER_SITE_MAX,
        })?;
        let host = Host {
            name: name.to_owned(),
            site: site.to_owned(),
            netns: format!("{}h-{name}", self.id.prefix()),
            addr,
        };
        let router_port = layout::router_port_name(number, index);
        if let Err(e) = self.create_host(&host, number, &router_port) {
            remove_namespace(&host.netns);
            let _ = ip_in(&self.router, ["link", "delete", router_port.as_str()]);
            return Err(e);
        }
        state.hosts.push(HostEntry {
            host: host.clone(),
            site: number,
            router_port,
        });
        Ok(host)
    }

    fn create_host(&self, host: &Host, site: u8, router_port: &str) -> Result<(), LabError> {
        let netns = host.netns.as_str();
        ip(["netns", "add", netns])?;
        ip_in(
            &self.router,
            [
                "link",
                "add",
                router_port,
                "type",
                "veth",
                "peer",
                "name",
                HOST_LINK_NAME,
                "netns",
                netns,
            ],
        )?;
        let bridge = layout::bridge_name(site);
        ip_in(
            &self.router,
            ["link", "set", router_port, "master", bridge.as_str(), "up"],
        )?;
        ip_in(netns, ["link", "set", "lo", "up"])?;
        ip_in(
            netns,
            [
                "addr",
                "add",
                &format!("{}/{}", host.addr, layout::SITE_PREFIX_LEN),
                "dev",
                HOST_LINK_NAME,
            ],
        )?;
        ip_in(netns, ["link", "set", HOST_LINK_NAME, "up"])?;
        ip_in(
            netns,
            ["route", "add", "default", "via", &layout::gateway(site).to_string()],
        )?;
        Ok(())
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Result<Host, LabError> {
        self.state()
            .hosts
            .iter()
            .find(|h| h.host.name == name)
            .map(|h| h.host.clone())
            .ok_or_else(|| LabError::NoSuchHost(name.to_owned()))
    }

    /// Every host, in the order added.
    pub fn hosts(&self) -> Vec<Host> {
        self.state().hosts.iter().map(|h| h.host.clone()).collect()
    }

    /// The site named `name`.
    pub fn site(&self, name: &str) -> Result<Site, LabError> {
        self.state()
            .sites
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| LabError::NoSuchSite(name.to_owned()))
    }

    /// Cuts the WAN between sites `a` and `b` both ways: packets between them are dropped at
    /// the router, relayed connections included.
    pub fn partition(&self, a: &str, b: &str) -> Result<(), LabError> {
        self.change_faults(a, b, |faults, a, b| {
            faults.partitions.insert((a, b));
            faults.partitions.insert((b, a));
        })
    }

    /// Drops packets from site `from` to site `to` only; packets the other way still arrive
    /// (new TCP connections fail both ways, as they would on a real network).
    pub fn partition_oneway(&self, from: &str, to: &str) -> Result<(), LabError> {
        self.change_faults(from, to, |faults, from, to| {
            faults.partitions.insert((from, to));
        })
    }

    /// Ends every partition and every loss. WAN delays and cut hosts stay as they are.
    pub fn heal(&self) -> Result<(), LabError> {
        let mut state = self.state();
        let healed = Faults::default();
        self.apply_rules(&healed, &state)?;
        state.faults = healed;
        tracing::info!(lab = %self.label, "WAN healed");
        Ok(())
    }

    /// Drops `percent` % of packets between sites `a` and `b`, both ways, at random (0 ends
    /// the loss; 100 drops everything).
    pub fn set_loss(&self, a: &str, b: &str, percent: u8) -> Result<(), LabError> {
        check_percent(percent)?;
        self.change_faults(a, b, |faults, a, b| {
            for pair in [(a, b), (b, a)] {
                set_or_remove_loss(faults, pair, percent);
            }
        })
    }

    /// Drops `percent` % of packets from site `from` to site `to` at random.
    pub fn set_loss_oneway(&self, from: &str, to: &str, percent: u8) -> Result<(), LabError> {
        check_percent(percent)?;
        self.change_faults(from, to, |faults, from, to| {
            set_or_remove_loss(faults, (from, to), percent);
        })
    }

    /// Delays every byte of TCP connections between sites `a` and `b` by `one_way` in each
    /// direction (so a round trip takes at least twice as long). Zero ends the delay for new
    /// connections; connections already relayed keep going through the relay, undelayed.
    ///
    /// Only TCP is delayed (by the relay); other traffic between the sites is routed as is.
    pub fn set_wan_delay(&self, a: &str, b: &str, one_way: Duration) -> Result<(), LabError> {
        self.change_delay(a, b, one_way, true)
    }

    /// Delays TCP bytes from site `from` to site `to` by `delay` (the other direction keeps
    /// its own delay).
    pub fn set_wan_delay_oneway(&self, from: &str, to: &str, delay: Duration) -> Result<(), LabError> {
        self.change_delay(from, to, delay, false)
    }

    fn change_delay(&self, a: &str, b: &str, delay: Duration, both_ways: bool) -> Result<(), LabError> {
        let mut state = self.state();
        let (a, b) = (site_number(&state, a)?, site_number(&state, b)?);
        if a == b {
            return Err(LabError::SameSite);
        }
        if !delay.is_zero() && state.relay.is_none() {
            state.relay = Some(Relay::start(&self.router, self.delays.clone())?);
        }
        self.delays.set(a, b, delay);
        if both_ways {
            self.delays.set(b, a, delay);
        }
        self.apply_rules(&state.faults, &state)?;
        tracing::info!(lab = %self.label, a, b, ?delay, both_ways, "WAN delay set");
        Ok(())
    }

    /// Pulls the cable of `host`: the router's end of its link goes down, so nothing reaches or
    /// leaves the host (its peers see silence; the host's own loopback still works).
    pub fn cut_host(&self, host: impl AsRef<str>) -> Result<(), LabError> {
        self.set_host_link(host.as_ref(), "down")
    }

    /// Plugs the cable of `host` back in.
    pub fn restore_host(&self, host: impl AsRef<str>) -> Result<(), LabError> {
        self.set_host_link(host.as_ref(), "up")
    }

    fn set_host_link(&self, name: &str, updown: &str) -> Result<(), LabError> {
        let state = self.state();
        let entry = state
            .hosts
            .iter()
            .find(|h| h.host.name == name)
            .ok_or_else(|| LabError::NoSuchHost(name.to_owned()))?;
        ip_in(&self.router, ["link", "set", entry.router_port.as_str(), updown])?;
        tracing::info!(lab = %self.label, host = name, link = updown, "host link changed");
        Ok(())
    }

    /// Applies `change` to a copy of the faults (with the two sites' numbers), installs the
    /// result, and keeps it only once installed.
    fn change_faults(&self, a: &str, b: &str, change: impl FnOnce(&mut Faults, u8, u8)) -> Result<(), LabError> {
        let mut state = self.state();
        let (na, nb) = (site_number(&state, a)?, site_number(&state, b)?);
        if na == nb {
            return Err(LabError::SameSite);
        }
        let mut faults = state.faults.clone();
        change(&mut faults, na, nb);
        self.apply_rules(&faults, &state)?;
        state.faults = faults;
        tracing::info!(lab = %self.label, a, b, faults = ?state.faults, "WAN faults changed");
        Ok(())
    }

    /// Replaces the router's table with one for `faults` and the current delays.
    fn apply_rules(&self, faults: &Faults, state: &State) -> Result<(), LabError> {
        let relayed: BTreeSet<(u8, u8)> = self
            .delays
            .pairs()
            .into_iter()
            .flat_map(|(a, b)| [(a, b), (b, a)])
            .collect();
        let port = state.relay.as_ref().map(Relay::port);
        nft_in(&self.router, &rules::render(faults, &relayed, port))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        // Stop the relay first: its thread lives in the router namespace.
        drop(state.relay.take());
        remove_namespaces_with_prefix(&self.id.prefix());
        self.id.release();
        tracing::info!(label = %self.label, "network lab removed");
    }
}

fn site_number(state: &State, name: &str) -> Result<u8, LabError> {
    state
        .sites
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.number)
        .ok_or_else(|| LabError::NoSuchSite(name.to_owned()))
}

fn set_or_remove_loss(faults: &mut Faults, pair: (u8, u8), percent: u8) {
    if percent == 0 {
        faults.loss_percent.remove(&pair);
    } else {
        faults.loss_percent.insert(pair, percent);
    }
}

fn check_percent(percent: u8) -> Result<(), LabError> {
    if percent > 100 {
        return Err(LabError::InvalidLoss(percent));
    }
    Ok(())
}

/// Names become parts of namespace names: letters, digits, `-` and `_`, at most 32.
fn check_name(kind: &'static str, name: &str) -> Result<(), LabError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(LabError::InvalidName {
            kind,
            name: name.to_owned(),
        })
    }
}

/// Runs `future` on a fresh single-threaded tokio runtime whose one thread lives in `netns`
/// (threads it starts, e.g. for blocking work, inherit the namespace). For a tool that knows a
/// lab's namespace by name only (e.g. from a file) and not the [`Lab`] itself.
pub fn block_on_in<F>(netns: &str, future: F) -> Result<F::Output, LabError>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    sys::in_netns(netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| LabError::Io {
                action: format!("build a runtime in namespace {netns}"),
                source,
            })?;
        Ok(runtime.block_on(future))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("host", "h1").is_ok());
        assert!(check_name("host", "site-2_db").is_ok());
        assert!(check_name("host", "").is_err());
        assert!(check_name("host", "a b").is_err());
        assert!(check_name("host", "a/b").is_err());
        assert!(check_name("host", &"x".repeat(NAME_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn loss_above_100_is_refused() {
        assert!(check_percent(100).is_ok());
        assert!(matches!(check_percent(101), Err(LabError::InvalidLoss(101))));
    }
}

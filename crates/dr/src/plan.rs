//! The plan of a running topology: every component (one role on one host) with its address, its
//! directory and, with `--netns`, its network namespace. `tandem up` makes it and writes it to
//! `plan.json` in the run directory; `tandem dr` reads it from there.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tandem_topology::{DbKind, Disaster, Masters, Role, Topology, Wan};

use crate::DrError;

/// The file a plan is kept in, inside the run directory.
pub const PLAN_FILE: &str = "plan.json";

/// One role on one host: a process `tandem up` or `tandem dr` starts and stops.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Component {
    /// `HOST/ROLE`, e.g. `s1-cs1/master`: unique in the plan.
    pub name: String,
    pub host: String,
    pub site: String,
    pub role: Role,
    /// HOST:PORT it serves on.
    pub addr: String,
    /// The replica id and kind, for a database replica.
    pub db: Option<DbMember>,
    /// Its network namespace (`--netns`), or none (loopback).
    pub netns: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DbMember {
    pub id: u64,
    pub kind: DbKind,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedSite {
    pub name: String,
    /// How its master pair started: live, dormant, or none at this site.
    pub masters: Option<Masters>,
}

/// A topology placed on this machine.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    /// The topology's name.
    pub topology: String,
    pub run_dir: PathBuf,
    pub sites: Vec<PlannedSite>,
    pub wan: Wan,
    pub disaster: Disaster,
    /// The router namespace joining the sites (`--netns`): `tandem dr` works from there.
    pub router_netns: Option<String>,
    /// The administrator the masters are bootstrapped with and the proxies log in as.
    pub admin_user: String,
    pub components: Vec<Component>,
}

impl Plan {
    /// Places `topology` on loopback: each host gets its own address 127.R.S.H (R chosen at
    /// random per run, so two runs on one machine do not meet), each component a free port.
    pub fn loopback(topology: &Topology, run_dir: &Path) -> Result<Plan, DrError> {
        let run_octet: u8 = rand::thread_rng().gen_range(100..=250);
        let mut components = Vec::new();
        for (site_index, site) in topology.sites.iter().enumerate() {
            let on_site = topology.hosts.iter().filter(|h| h.site == site.name);
            for (host_index, host) in on_site.enumerate() {
                let ip = host.address.unwrap_or(Ipv4Addr::new(
                    127,
                    run_octet,
                    site_index as u8 + 1,
                    host_index as u8 + 10,
                ));
                for role in &host.roles {
                    let port = free_port(ip)?;
                    components.push((host, *role, SocketAddr::from((ip, port)).to_string()));
                }
            }
        }
        Ok(Plan::with_addresses(topology, run_dir, None, components))
    }

    /// Places `topology` in network namespaces: `hosts` gives each host's namespace and
    /// address; ports are fixed per role (the namespaces are private to this run).
    pub fn in_namespaces(
        topology: &Topology,
        run_dir: &Path,
        router_netns: &str,
        hosts: &[(String, String, Ipv4Addr)],
    ) -> Result<Plan, DrError> {
        let mut components = Vec::new();
        let mut namespaces = Vec::new();
        for host in &topology.hosts {
            let Some((_, netns, ip)) = hosts.iter().find(|(name, _, _)| *name == host.name) else {
                return Err(DrError::Plan(format!("no namespace for host {}", host.name)));
            };
            for role in &host.roles {
                let port = match role {
                    Role::Db => 7100,
                    Role::Master => 7200,
                    Role::Proxy => 7300,
                };
                components.push((host, *role, SocketAddr::from((*ip, port)).to_string()));
                namespaces.push(netns.clone());
            }
        }
        let mut plan = Plan::with_addresses(topology, run_dir, Some(router_netns.to_owned()), components);
        for (component, netns) in plan.components.iter_mut().zip(namespaces) {
            component.netns = Some(netns);
        }
        Ok(plan)
    }

    fn with_addresses(
        topology: &Topology,
        run_dir: &Path,
        router_netns: Option<String>,
        placed: Vec<(&tandem_topology::Host, Role, String)>,
    ) -> Plan {
        let db_ids: Vec<(String, u64)> = topology.db_replicas().map(|(id, h)| (h.name.clone(), id)).collect();
        let components = placed
            .into_iter()
            .map(|(host, role, addr)| Component {
                name: format!("{}/{}", host.name, role.as_str()),
                host: host.name.clone(),
                site: host.site.clone(),
                role,
                addr,
                db: match (role, host.db_kind) {
                    (Role::Db, Some(kind)) => db_ids
                        .iter()
                        .find(|(name, _)| *name == host.name)
                        .map(|(_, id)| DbMember { id: *id, kind }),
                    _ => None,
                },
                netns: None,
            })
            .collect();
        Plan {
            topology: topology.name.clone(),
            run_dir: run_dir.to_owned(),
            sites: topology
                .sites
                .iter()
                .map(|s| PlannedSite {
                    name: s.name.clone(),
                    masters: s.masters,
                })
                .collect(),
            wan: topology.wan,
            disaster: topology.disaster,
            router_netns,
            admin_user: "admin".to_owned(),
            components,
        }
    }

    /// Reads the plan of the topology running from `run_dir`.
    pub fn load(run_dir: &Path) -> Result<Plan, DrError> {
        let path = run_dir.join(PLAN_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| DrError::NotRunning {
            run_dir: run_dir.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| DrError::Plan(format!("{} is not a plan: {e}", path.display())))
    }

    /// Writes the plan to the run directory (atomically: a reader never sees half of it).
    pub fn save(&self) -> Result<(), DrError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| DrError::Plan(e.to_string()))?;
        crate::write_atomically(&self.run_dir.join(PLAN_FILE), text.as_bytes())
    }

    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    /// Components with `role`, optionally only on `site`, in topology order.
    pub fn with_role<'a>(&'a self, role: Role, site: Option<&'a str>) -> impl Iterator<Item = &'a Component> + 'a {
        self.components
            .iter()
            .filter(move |c| c.role == role && site.is_none_or(|s| c.site == s))
    }

    pub fn site(&self, name: &str) -> Option<&PlannedSite> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The site whose masters were live at start.
    pub fn first_live_site(&self) -> Option<&str> {
        self.sites
            .iter()
            .find(|s| s.masters == Some(Masters::Live))
            .map(|s| s.name.as_str())
    }

    /// Every database replica's address.
    pub fn db_endpoints(&self) -> Vec<String> {
        self.with_role(Role::Db, None).map(|c| c.addr.clone()).collect()
    }

    /// Every master's address, all sites.
    pub fn master_endpoints(&self) -> Vec<String> {
        self.with_role(Role::Master, None).map(|c| c.addr.clone()).collect()
    }

    /// The file holding the administrator's password.
    pub fn admin_password_file(&self) -> PathBuf {
        self.run_dir.join("admin-password")
    }

    /// The directory of a component's data, log, pid and ready files.
    pub fn dir_of(&self, component: &Component) -> PathBuf {
        self.run_dir.join(&component.host).join(component.role.as_str())
    }
}

/// A port free on `ip` now (bound, read, released).
fn free_port(ip: Ipv4Addr) -> Result<u16, DrError> {
    let listener = TcpListener::bind((ip, 0)).map_err(|e| DrError::Plan(format!("cannot bind {ip}: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| DrError::Plan(format!("cannot read the port bound on {ip}: {e}")))
}

//! Tandem's topology file (TOML): the sites, the hosts on each site, and which roles run on which
//! host — the seed's deployment diagram as data. `tandem up` starts what it describes, `tandem dr`
//! operates it, `tandem drill` destroys a site of it.
//!
//! ```toml
//! name = "two-site"
//!
//! [wan]                      # between any two sites
//! delay_ms = 5               # one way
//! loss_percent = 0
//!
//! [disaster]
//! auto_activate = false      # site 2 activates by itself (off by default, as in the seed)
//! auto_activate_after_ms = 10000
//!
//! [[site]]
//! name = "site1"
//! masters = "live"           # this site's master Configuration Server pair serves
//!
//! [[site]]
//! name = "site2"
//! masters = "dormant"        # known, not started until `tandem dr activate site2`
//!
//! [[host]]
//! name = "s1-db"
//! site = "site1"
//! roles = ["db"]
//! db_kind = "sync"           # sync | async | witness
//!
//! [[host]]
//! name = "s1-cs1"
//! site = "site1"
//! roles = ["master", "proxy"]
//! ```
//!
//! [`Topology::parse`] checks everything it can without starting anything and reports each
//! mistake with its line and column. Invariants of a [`Topology`] it returns:
//! - names of sites and hosts are unique, non-empty and made of `[a-z0-9-]` (they become file
//!   and namespace names);
//! - every host is on a declared site and has at least one role, each role once;
//! - a host has a `db_kind` exactly when it runs `db`;
//! - exactly one site has `masters = "live"`; every site with master servers says `live` or
//!   `dormant`, and has one or two of them; no site has more than two proxies;
//! - there is at least one database replica that votes (`sync` or `witness`), and the live site
//!   has a data replica (`sync` or `async`) for the first primary.
//!
//! May depend on: serde, toml. Nothing of Tandem: this is the file, not what runs.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A mistake in a topology file, or a file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Where and what: `origin:line:column: message`.
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A database replica's kind (see `tandem db`): the same words as `--kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    /// Votes, and every acknowledged write is on it.
    Sync,
    /// Fully replicated, outside the acknowledgement set.
    Async,
    /// Votes at a third place; holds no data for clients.
    Witness,
}

impl DbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::Sync => "sync",
            DbKind::Async => "async",
            DbKind::Witness => "witness",
        }
    }

    /// Whether it serves client data (and so can become the primary clients write to).
    pub fn holds_data(self) -> bool {
        !matches!(self, DbKind::Witness)
    }
}

/// What a host runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A replica of the configuration database (`tandem db serve`).
    Db,
    /// One server of its site's master Configuration Server pair (`tandem confserv --mode master`).
    Master,
    /// One server of its site's proxy pair (`tandem confserv --mode proxy`).
    Proxy,
}

impl Role {
    const ALL: [(Role, &'static str); 3] = [(Role::Db, "db"), (Role::Master, "master"), (Role::Proxy, "proxy")];

    pub fn as_str(self) -> &'static str {
        Role::ALL
            .iter()
            .find(|(role, _)| *role == self)
            .map(|(_, name)| *name)
            .unwrap_or("?")
    }

    fn from_name(name: &str) -> Option<Role> {
        Role::ALL.iter().find(|(_, n)| *n == name).map(|(role, _)| *role)
    }
}

/// Whether a site's master pair serves at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Masters {
    /// Started by `tandem up`: the pair that writes the configuration.
    Live,
    /// Known but not started, until `tandem dr activate` (the seed's secondary pair).
    Dormant,
}

/// The link between sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Wan {
    /// One-way delay added between any two sites, in milliseconds (`--netns` only).
    pub delay_ms: u64,
    /// Packets lost between sites, in percent (`--netns` only).
    pub loss_percent: u8,
}

/// Disaster-recovery settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disaster {
    /// Let a dormant site activate by itself once the database primary has moved there (through
    /// the witness) and the live site's masters have been unreachable for
    /// [`Disaster::auto_activate_after_ms`].
    pub auto_activate: bool,
    pub auto_activate_after_ms: u64,
}

impl Default for Disaster {
    fn default() -> Self {
        Disaster {
            auto_activate: false,
            auto_activate_after_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    /// `None`: the site runs no master pair (e.g. a witness at a third place).
    pub masters: Option<Masters>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub site: String,
    /// In the order written, each once.
    pub roles: Vec<Role>,
    /// Set exactly when `roles` has [`Role::Db`].
    pub db_kind: Option<DbKind>,
    /// A fixed address for the host; `None`: `tandem up` chooses one.
    pub address: Option<Ipv4Addr>,
}

impl Host {
    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A checked topology (see the crate documentation for its invariants).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    pub wan: Wan,
    pub disaster: Disaster,
    pub sites: Vec<Site>,
    pub hosts: Vec<Host>,
}

impl Topology {
    /// Reads and checks a topology file.
    pub fn from_file(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Topology::parse(&text, &path.display().to_string())
    }

    /// Checks a topology given as text; `origin` names it in errors (usually the file's path).
    pub fn parse(text: &str, origin: &str) -> Result<Topology, TopologyError> {
        let at = |span: Range<usize>, message: String| {
            let (line, column) = line_column(text, span.start);
            TopologyError::Invalid {
                origin: origin.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_owned();
            at(e.span().unwrap_or(0..0), message)
        })?;
        check(raw).map_err(|Mistake { span, message }| at(span, message))
    }

    /// The site whose master pair is live.
    pub fn live_site(&self) -> &Site {
        // `check` guarantees exactly one.
        self.sites
            .iter()
            .find(|s| s.masters == Some(Masters::Live))
            .unwrap_or(&self.sites[0])
    }

    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Hosts running `role`, in file order, optionally only on `site`.
    pub fn hosts_with<'a>(&'a self, role: Role, site: Option<&'a str>) -> impl Iterator<Item = &'a Host> + 'a {
        self.hosts
            .iter()
            .filter(move |h| h.runs(role) && site.is_none_or(|s| h.site == s))
    }

    /// The database replicas with their ids in the replica set (1, 2, … in file order).
    pub fn db_replicas(&self) -> impl Iterator<Item = (u64, &Host)> {
        self.hosts_with(Role::Db, None).zip(1u64..).map(|(host, id)| (id, host))
    }
}

/// Line and column (both from 1) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

// ---- the file as written

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Spanned<String>,
    #[serde(default)]
    wan: RawWan,
    #[serde(default)]
    disaster: RawDisaster,
    #[serde(default, rename = "site")]
    sites: Vec<RawSite>,
    #[serde(default, rename = "host")]
    hosts: Vec<RawHost>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWan {
    #[serde(default)]
    delay_ms: u64,
    loss_percent: Option<Spanned<u8>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDisaster {
    #[serde(default)]
    auto_activate: bool,
    auto_activate_after_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: Spanned<String>,
    masters: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Spanned<String>,
    site: Spanned<String>,
    roles: Spanned<Vec<Spanned<String>>>,
    db_kind: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
}

/// A mistake found by [`check`], located in the text.
struct Mistake {
    span: Range<usize>,
    message: String,
}

fn mistake<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Mistake> {
    Err(Mistake {
        span,
        message: message.into(),
    })
}

fn check_name(what: &str, name: &Spanned<String>) -> Result<String, Mistake> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text.len() <= 32
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-');
    if !valid {
        return mistake(
            name.span(),
            format!("{what} name `{text}`: use 1 to 32 of a-z, 0-9 and `-`, not starting with `-`"),
        );
    }
    Ok(text.clone())
}

fn check(raw: RawFile) -> Result<Topology, Mistake> {
    let name = check_name("topology", &raw.name)?;

    let loss_percent = match &raw.wan.loss_percent {
        Some(loss) if *loss.get_ref() > 100 => {
            return mistake(loss.span(), format!("loss_percent {} is over 100", loss.get_ref()))
        }
        Some(loss) => *loss.get_ref(),
        None => 0,
    };
    let wan = Wan {
        delay_ms: raw.wan.delay_ms,
        loss_percent,
    };
    let disaster = Disaster {
        auto_activate: raw.disaster.auto_activate,
        auto_activate_after_ms: raw
            .disaster
            .auto_activate_after_ms
            .unwrap_or(Disaster::default().auto_activate_after_ms),
    };

    let mut sites = Vec::new();
    let mut live: Option<(String, usize)> = None;
    for site in &raw.sites {
        let site_name = check_name("site", &site.name)?;
        if sites.iter().any(|s: &Site| s.name == site_name) {
            return mistake(site.name.span(), format!("site `{site_name}` is declared twice"));
        }
        let masters = match &site.masters {
            None => None,
            Some(m) => match m.get_ref().as_str() {
                "live" => {
                    if let Some((other, _)) = &live {
                        return mistake(
                            m.span(),
                            format!(
                                "two live master pairs: `{other}` is live already; \
                                 only one site's masters may be live (the other is `dormant`)"
                            ),
                        );
                    }
                    live = Some((site_name.clone(), m.span().start));
                    Some(Masters::Live)
                }
                "dormant" => Some(Masters::Dormant),
                other => {
                    return mistake(
                        m.span(),
                        format!("masters = `{other}`: use `live` or `dormant` (or leave it out)"),
                    )
                }
            },
        };
        sites.push(Site {
            name: site_name,
            masters,
        });
    }
    if sites.is_empty() {
        return mistake(raw.name.span(), "no site: declare at least one [[site]]");
    }
    if live.is_none() {
        return mistake(
            raw.name.span(),
            "no site has `masters = \"live\"`: exactly one site's master pair must be live",
        );
    }

    let mut hosts: Vec<Host> = Vec::new();
    let mut addresses = BTreeSet::new();
    for host in &raw.hosts {
        let host_name = check_name("host", &host.name)?;
        if hosts.iter().any(|h| h.name == host_name) {
            return mistake(host.name.span(), format!("host `{host_name}` is declared twice"));
        }
        let site_name = host.site.get_ref();
        if !sites.iter().any(|s| &s.name == site_name) {
            let known: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
            return mistake(
                host.site.span(),
                format!(
                    "host `{host_name}` is on site `{site_name}`, which is not declared (sites: {})",
                    known.join(", ")
                ),
            );
        }
        let mut roles = Vec::new();
        for role in host.roles.get_ref() {
            let Some(parsed) = Role::from_name(role.get_ref()) else {
                return mistake(
                    role.span(),
                    format!("unknown role `{}` (roles: db, master, proxy)", role.get_ref()),
                );
            };
            if roles.contains(&parsed) {
                return mistake(role.span(), format!("role `{}` is listed twice", role.get_ref()));
            }
            roles.push(parsed);
        }
        if roles.is_empty() {
            return mistake(host.roles.span(), format!("host `{host_name}` has no role"));
        }
        let db_kind = match (&host.db_kind, roles.contains(&Role::Db)) {
            (None, false) => None,
            (None, true) => {
                return mistake(
                    host.roles.span(),
                    format!("host `{host_name}` runs `db` but has no db_kind (sync, async or witness)"),
                )
            }
            (Some(kind), false) => {
                return mistake(
                    kind.span(),
                    format!("host `{host_name}` has a db_kind but does not run `db`"),
                )
            }
            (Some(kind), true) => Some(match kind.get_ref().as_str() {
                "sync" => DbKind::Sync,
                "async" => DbKind::Async,
                "witness" => DbKind::Witness,
                other => return mistake(kind.span(), format!("db_kind `{other}`: use sync, async or witness")),
            }),
        };
        let address = match &host.address {
            None => None,
            Some(text) => {
                let Ok(address) = text.get_ref().parse::<Ipv4Addr>() else {
                    return mistake(
                        text.span(),
                        format!("address `{}` is not an IPv4 address", text.get_ref()),
                    );
                };
                if !addresses.insert(address) {
                    return mistake(text.span(), format!("address {address} is given to two hosts"));
                }
                Some(address)
            }
        };
        hosts.push(Host {
            name: host_name,
            site: site_name.clone(),
            roles,
            db_kind,
            address,
        });
    }

    // Per site: master pairs and proxy pairs.
    for (site, raw_site) in sites.iter().zip(&raw.sites) {
        let on_site = |role| hosts.iter().filter(|h| h.site == site.name && h.runs(role)).count();
        let (masters, proxies) = (on_site(Role::Master), on_site(Role::Proxy));
        match (site.masters, masters) {
            (None, 0) => {}
            (None, _) => {
                return mistake(
                    raw_site.name.span(),
                    format!(
                        "site `{}` has master servers but no `masters = \"live\"` or `\"dormant\"`",
                        site.name
                    ),
                )
            }
            (Some(_), 0) => {
                return mistake(
                    raw_site.name.span(),
                    format!("site `{}` declares masters but no host runs `master`", site.name),
                )
            }
            (Some(_), 1..=2) => {}
            (Some(_), n) => {
                return mistake(
                    raw_site.name.span(),
                    format!(
                        "site `{}` has {n} master servers: a pair is at most two (primary and backup)",
                        site.name
                    ),
                )
            }
        }
        if proxies > 2 {
            return mistake(
                raw_site.name.span(),
                format!(
                    "site `{}` has {proxies} proxies: a proxy pair is at most two",
                    site.name
                ),
            );
        }
    }

    let voters = hosts
        .iter()
        .filter(|h| matches!(h.db_kind, Some(DbKind::Sync | DbKind::Witness)))
        .count();
    if voters == 0 {
        return mistake(
            raw.name.span(),
            "no database replica votes: at least one host needs `db` with db_kind sync (or witness)",
        );
    }
    let (live_site, live_at) = live.unwrap_or_default();
    if !hosts
        .iter()
        .any(|h| h.site == live_site && h.db_kind.is_some_and(DbKind::holds_data))
    {
        return mistake(
            live_at..live_at,
            format!("the live site `{live_site}` has no data replica (a host with `db`, db_kind sync or async) for the first primary"),
        );
    }

    Ok(Topology {
        name,
        wan,
        disaster,
        sites,
        hosts,
    })
}

//! The router's nftables ruleset, rendered from the lab's fault state as one `nft -f` script
//! that replaces the lab's table in a single transaction (no moment without rules).
//!
//! Two chains, both on the router's *prerouting* hook, so they see every packet that arrives
//! at the router from a site — routed traffic and traffic to the WAN relay alike:
//!
//! - `faults` (priority `raw`, before connection tracking and NAT): partitions and loss. A
//!   packet is matched on its source site and its destination site *as sent*, so a connection
//!   the relay carries is cut exactly like a routed one: the relay's first leg is matched
//!   before it is redirected, and its second leg is answered to the client site's gateway
//!   address, which lies in the client's subnet (see [`crate::relay`]). Dropping on arrival is
//!   what a real network does — the sender sees silence, never an error.
//! - `wan_relay` (priority `dstnat`): new TCP connections between two sites with a WAN delay
//!   are redirected to the relay's port.
//!
//! A partition `from → to` also drops the first packet (SYN) of a new TCP connection from `to`
//! to `from`. On a real network that SYN would arrive and its answer be lost; the side that
//! connects sees the same time-out either way. The rule matters for relayed connections: the
//! relay would otherwise accept the connection and only then fail to reach its destination.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::layout::site_cidr;

/// The lab's table in the router namespace.
pub const TABLE: &str = "tandem_lab";

/// What the router must do, by ordered pair of site numbers `(from, to)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Packets from the first site to the second are dropped.
    pub partitions: BTreeSet<(u8, u8)>,
    /// Percentage (1..=100) of packets from the first site to the second dropped at random.
    pub loss_percent: BTreeMap<(u8, u8), u8>,
}

impl Faults {
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty() && self.loss_percent.is_empty()
    }
}

/// Renders the script that replaces the lab's table. `relayed` holds the ordered pairs whose
/// new TCP connections go through the relay listening on `relay_port`.
pub fn render(faults: &Faults, relayed: &BTreeSet<(u8, u8)>, relay_port: Option<u16>) -> String {
    let mut s = String::new();
    // Creating the table first makes the delete valid whether or not it exists; the whole
    // script is one transaction.
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    let _ = writeln!(s, "  chain faults {{");
    let _ = writeln!(s, "    type filter hook prerouting priority raw; policy accept;");
    for &(from, to) in &faults.partitions {
        let (f, t) = (site_cidr(from), site_cidr(to));
        let _ = writeln!(s, "    ip saddr {f} ip daddr {t} drop");
        let _ = writeln!(s, "    ip saddr {t} ip daddr {f} tcp flags & (syn | ack) == syn drop");
    }
    for (&(from, to), &percent) in &faults.loss_percent {
        if percent == 0 {
            continue;
        }
        let (f, t) = (site_cidr(from), site_cidr(to));
        if percent >= 100 {
            let _ = writeln!(s, "    ip saddr {f} ip daddr {t} drop");
        } else {
            let _ = writeln!(
                s,
                "    ip saddr {f} ip daddr {t} numgen random mod 100 < {percent} drop"
            );
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain wan_relay {{");
    let _ = writeln!(s, "    type nat hook prerouting priority dstnat; policy accept;");
    if let Some(port) = relay_port {
        for &(from, to) in relayed {
            let (f, t) = (site_cidr(from), site_cidr(to));
            let _ = writeln!(s, "    ip saddr {f} ip daddr {t} meta l4proto tcp redirect to :{port}");
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_state_renders_empty_chains() {
        let script = render(&Faults::default(), &BTreeSet::new(), None);
        assert!(script.starts_with("table inet tandem_lab {}\ndelete table inet tandem_lab\n"));
        assert!(!script.contains("drop"), "{script}");
        assert!(!script.contains("redirect"), "{script}");
    }

    #[test]
    fn a_one_way_partition_drops_one_direction_and_new_connections_back() {
        let mut faults = Faults::default();
        faults.partitions.insert((1, 2));
        let script = render(&faults, &BTreeSet::new(), None);
        assert!(
            script.contains("ip saddr 10.77.1.0/24 ip daddr 10.77.2.0/24 drop"),
            "{script}"
        );
        assert!(
            script.contains("ip saddr 10.77.2.0/24 ip daddr 10.77.1.0/24 tcp flags & (syn | ack) == syn drop"),
            "{script}"
        );
        assert!(
            !script.contains("ip saddr 10.77.2.0/24 ip daddr 10.77.1.0/24 drop"),
            "{script}"
        );
    }

    #[test]
    fn loss_renders_random_drops_and_zero_renders_nothing() {
        let mut faults = Faults::default();
        faults.loss_percent.insert((1, 2), 30);
        faults.loss_percent.insert((2, 1), 0);
        faults.loss_percent.insert((1, 3), 100);
        let script = render(&faults, &BTreeSet::new(), None);
        assert!(script.contains("ip saddr 10.77.1.0/24 ip daddr 10.77.2.0/24 numgen random mod 100 < 30 drop"));
        assert!(!script.contains("ip saddr 10.77.2.0/24"), "{script}");
        assert!(
            script.contains("ip saddr 10.77.1.0/24 ip daddr 10.77.3.0/24 drop"),
            "{script}"
        );
    }

    #[test]
    fn relayed_pairs_are_redirected_only_with_a_relay() {
        let relayed: BTreeSet<(u8, u8)> = [(1, 2), (2, 1)].into_iter().collect();
        let without = render(&Faults::default(), &relayed, None);
        assert!(!without.contains("redirect"), "{without}");
        let with = render(&Faults::default(), &relayed, Some(4321));
        assert!(with.contains("ip saddr 10.77.1.0/24 ip daddr 10.77.2.0/24 meta l4proto tcp redirect to :4321"));
        assert!(with.contains("ip saddr 10.77.2.0/24 ip daddr 10.77.1.0/24 meta l4proto tcp redirect to :4321"));
    }
}

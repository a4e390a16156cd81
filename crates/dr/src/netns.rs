//! A topology in network namespaces (`tandem up --netns`, `tandem drill`): one namespace per
//! host, one subnet per site, the sites joined by the lab's router with the WAN delay and loss
//! of the topology file. Everything that talks to the components does so from the router's
//! namespace, the lab's management network.

use std::time::Duration;

use tandem_netlab::Lab;
use tandem_topology::Topology;

use crate::plan::Plan;
use crate::DrError;

impl From<tandem_netlab::LabError> for DrError {
    fn from(e: tandem_netlab::LabError) -> Self {
        DrError::Lab(e.to_string())
    }
}

/// Builds the lab of `topology` and the plan of its components in it.
pub fn build(topology: &Topology, run_dir: &std::path::Path) -> Result<(Lab, Plan), DrError> {
    tandem_netlab::check_privileges().map_err(|e| DrError::Lab(e.to_string()))?;
    tandem_netlab::ensure_nft_installed()?;
    let lab = Lab::new(&topology.name)?;
    for site in &topology.sites {
        lab.add_site(&site.name)?;
    }
    let mut hosts = Vec::new();
    for host in &topology.hosts {
        let placed = lab.add_host(&host.site, &host.name)?;
        hosts.push((host.name.clone(), placed.netns, placed.addr));
    }
    for (i, a) in topology.sites.iter().enumerate() {
        for b in &topology.sites[i + 1..] {
            if topology.wan.delay_ms > 0 {
                lab.set_wan_delay(&a.name, &b.name, Duration::from_millis(topology.wan.delay_ms))?;
            }
            if topology.wan.loss_percent > 0 {
                lab.set_loss(&a.name, &b.name, topology.wan.loss_percent)?;
            }
        }
    }
    let plan = Plan::in_namespaces(topology, run_dir, lab.router_netns(), &hosts)?;
    Ok((lab, plan))
}

/// The drill's hands on the lab: a host's link cut and restored.
pub struct LabNetwork<'a>(pub &'a Lab);

impl crate::drill::Network for LabNetwork<'_> {
    fn cut_host(&self, host: &str) -> Result<(), DrError> {
        Ok(self.0.cut_host(host)?)
    }

    fn restore_host(&self, host: &str) -> Result<(), DrError> {
        Ok(self.0.restore_host(host)?)
    }
}

//! `kxgw serve` flags of cluster mode (a gateway beside one broker of a Kafka cluster) and
//! of the static cluster a standalone gateway can play one broker of (tests, demos).

use anyhow::{bail, Result};
use kxgw::kafka::upstream::{parse_peer, Broker, ClusterConfig};

fn peer(s: &str) -> Result<Broker, String> {
    parse_peer(s)
}

/// Cluster settings of the Kafka listener.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Cluster mode: the Kafka cluster's bootstrap servers (HOST:PORT, comma-separated).
    /// Fetch and ListOffsets of the partitions the local broker (--node-id) leads are served
    /// from --log-dir; everything else is forwarded to the cluster.
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// The broker this gateway stands beside (cluster mode), or plays (standalone with
    /// --peer) [default: 0].
    #[arg(long, value_name = "N")]
    pub node_id: Option<i32>,
    /// Gateway address of broker ID (repeatable). Cluster mode: clients are sent there
    /// instead of to the broker. Standalone: the other brokers of a static cluster in which
    /// partition p is led by the (p mod n)-th broker by id.
    #[arg(long, value_name = "ID=HOST:PORT", value_parser = peer)]
    pub peer: Vec<Broker>,
}

impl ClusterArgs {
    /// The cluster mode settings, None in standalone mode.
    pub fn config(&self) -> Result<Option<ClusterConfig>> {
        if self.upstream.is_empty() {
            return Ok(None);
        }
        let Some(node_id) = self.node_id else {
            bail!("--upstream needs --node-id: the id of the broker this gateway stands beside");
        };
        Ok(Some(ClusterConfig {
            upstream: self.upstream.clone(),
            node_id,
            peers: self.peer.clone(),
        }))
    }
}

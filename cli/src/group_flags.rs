//! `kxgw serve` flags of the group coordinator (clap types live with the CLI).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kxgw::kafka::group::GroupConfig;

/// Group coordinator settings of the Kafka listener.
#[derive(Debug, Clone, clap::Args)]
pub struct GroupArgs {
    /// Directory for the gateway's own state (committed offsets); never inside --log-dir
    /// [default: kxgw-state/ beside the --config file; without either, offsets are kept in
    /// memory only and lost at exit].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long the first rebalance of an empty group waits for more members
    /// (Kafka's group.initial.rebalance.delay.ms).
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub group_initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a member may ask for (group.min.session.timeout.ms).
    #[arg(long, value_name = "MS", default_value_t = 6000)]
    pub group_min_session_timeout_ms: u64,
    /// Largest session timeout a member may ask for (group.max.session.timeout.ms).
    #[arg(long, value_name = "MS", default_value_t = 1_800_000)]
    pub group_max_session_timeout_ms: u64,
    /// How long an empty group's committed offsets are kept (offsets.retention.minutes;
    /// 0: forever).
    #[arg(long, value_name = "MINUTES", default_value_t = 10080)]
    pub offsets_retention_minutes: u64,
}

impl GroupArgs {
    /// The coordinator settings.
    pub fn config(&self) -> GroupConfig {
        GroupConfig {
            min_session_timeout: Duration::from_millis(self.group_min_session_timeout_ms),
            max_session_timeout: Duration::from_millis(self.group_max_session_timeout_ms),
            initial_rebalance_delay: Duration::from_millis(self.group_initial_rebalance_delay_ms),
            empty_retention: (self.offsets_retention_minutes > 0)
                .then(|| Duration::from_secs(self.offsets_retention_minutes * 60)),
        }
    }

    /// The state directory: the flag, else beside the config file, else none.
    pub fn state_dir(&self, config_file: Option<&Path>) -> Option<PathBuf> {
        if let Some(d) = &self.state_dir {
            return Some(d.clone());
        }
        let parent = config_file?.parent()?;
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        Some(parent.join("kxgw-state"))
    }
}

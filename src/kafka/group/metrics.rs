//! Group state as `kxgw_group_*` metrics (served on /metrics and shown by `kxgw stats`).

use crate::log::LogDir;
use crate::metrics::MetricsWriter;

use super::Groups;

/// Writes one sample set per group: state, members, generation, rebalances, commits, and per
/// committed partition the committed offset, the high watermark and the lag between them.
pub fn write_metrics(groups: &Groups, log: &LogDir, w: &mut MetricsWriter) {
    let inner = groups.lock();
    let views = inner.coord.groups();
    w.gauge(
        "group_count",
        "Consumer groups known to the coordinator",
        &[],
        views.len() as f64,
    );
    for g in &views {
        let id = g.id.as_str();
        let state = g.state.as_str();
        w.gauge(
            "group_members",
            "Members of a consumer group",
            &[("group", id), ("state", state)],
            g.members.len() as f64,
        );
        w.gauge(
            "group_generation",
            "Generation of a consumer group",
            &[("group", id)],
            f64::from(g.generation),
        );
        w.counter(
            "group_rebalances_total",
            "Rebalances started (since the gateway started)",
            &[("group", id)],
            g.rebalances,
        );
        w.counter(
            "group_commits_total",
            "Offset commits accepted (since the gateway started)",
            &[("group", id)],
            g.commits,
        );
        let Some(offsets) = inner.coord.offsets(id) else {
            continue;
        };
        for ((topic, partition), c) in offsets {
            let p = partition.to_string();
            let labels = [("group", id), ("topic", topic.as_str()), ("partition", &p)];
            w.gauge(
                "group_committed_offset",
                "Committed offset of a group's partition",
                &labels,
                c.offset as f64,
            );
            let Some(part) = log.partition(topic, *partition) else {
                continue;
            };
            let hw = part.offsets().high_watermark;
            w.gauge(
                "group_lag",
                "High watermark minus committed offset",
                &labels,
                (hw - c.offset).max(0) as f64,
            );
        }
    }
}

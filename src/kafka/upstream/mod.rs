//! Cluster mode (`kxgw serve --upstream`): the gateway stands beside one broker of a real
//! Kafka cluster, serves the partitions that broker leads from its log dir, and forwards every
//! other request to the cluster.
//!
//! - [`ClusterView`]: what the gateway knows of the cluster (brokers, partition leaders, the
//!   gateways' addresses), shared by the listener and the watcher, plus the mode's counters.
//! - [`forward`]: per client connection, the sans-I/O forwarding state (correlation ids
//!   remapped, one request in flight so responses keep the request order).
//! - [`rewrite`]: responses rewritten on the way back (ApiVersions, Metadata,
//!   FindCoordinator, DescribeCluster): broker addresses become their gateways'.
//! - [`watch`]: the background thread learning leaders (Metadata) and the live high
//!   watermarks (a long-poll Fetch to the local broker), feeding them into the log.
//! - [`relay`], [`authz`]: on a SASL listener, the client's login relayed to the cluster and
//!   its topic reads authorized by the cluster (asked, cached); [`login`]: the watcher's own
//!   login where the cluster's listener wants SASL.
//!
//! Design choice: only partitions whose leader is the local broker are served; a Fetch or
//! ListOffsets for any other partition gets NOT_LEADER_OR_FOLLOWER with the current leader,
//! so what a consumer sees never goes past what the leader would serve.

pub mod authz;
pub mod forward;
pub mod login;
pub mod relay;
#[cfg(test)]
mod relay_tests;
pub mod rewrite;
#[cfg(test)]
mod session_tests;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{OnceLock, RwLock};

use crate::kafka::fetch_advert::{FetchAdvert, HostPort};

/// One broker's advertised endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// Node id.
    pub id: i32,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: i32,
}

/// Parses `ID=HOST:PORT` (a `--peer`).
pub fn parse_peer(s: &str) -> Result<Broker, String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT"))?;
    let id: i32 = id
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: broker id {id:?} is not a number"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number"))?;
    if host.is_empty() || id < 0 {
        return Err(format!("{s:?}: expected ID=HOST:PORT with ID >= 0"));
    }
    Ok(Broker {
        id,
        host: host.trim_matches(['[', ']']).to_string(),
        port: i32::from(port),
    })
}

/// Cluster mode settings.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The cluster's bootstrap servers (HOST:PORT).
    pub upstream: Vec<String>,
    /// The broker this gateway stands beside.
    pub node_id: i32,
    /// Gateway address per broker id (what clients are sent to instead of the broker).
    pub peers: Vec<Broker>,
}

/// Counters of cluster mode (printed by `kxgw stats`).
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Requests forwarded to the cluster.
    pub forwarded: AtomicU64,
    /// Upstream connections opened for client connections.
    pub forward_connects: AtomicU64,
    /// Client connections closed because their upstream connection failed.
    pub forward_failures: AtomicU64,
    /// Metadata refreshes of the watcher that succeeded.
    pub metadata_refreshes: AtomicU64,
    /// High-watermark updates applied to local partitions.
    pub hw_updates: AtomicU64,
    /// Watcher errors (cluster unreachable, bad answers); reads fall back meanwhile.
    pub watch_errors: AtomicU64,
    /// Times the live watermarks stopped (the start of each outage).
    pub outages: AtomicU64,
    /// Times the watcher (re)established live watermarks: at start and after each outage.
    pub live_sessions: AtomicU64,
    /// Log start offsets learnt from the cluster that changed a local partition's bound.
    pub log_start_updates: AtomicU64,
    /// Requests any broker can answer (ApiVersions, Metadata, FindCoordinator,
    /// DescribeCluster) sent to another broker while the local one is down.
    pub rerouted: AtomicU64,
}

#[derive(Debug, Default)]
struct ViewState {
    /// The cluster's brokers as the cluster advertises them.
    brokers: BTreeMap<i32, (String, i32)>,
    /// (topic, partition) -> (leader id, leader epoch).
    leaders: HashMap<(String, i32), (i32, i32)>,
}

/// What the gateway knows of the cluster.
#[derive(Debug)]
pub struct ClusterView {
    cfg: ClusterConfig,
    state: RwLock<ViewState>,
    /// The watcher's fetch session to the local broker is up (live high watermarks).
    live: AtomicBool,
    /// The gateway's own SASL login to the cluster (`--upstream-sasl-user`), if it needs one.
    login: std::sync::OnceLock<login::UpstreamLogin>,
    /// This gateway's fetch endpoint, advertised in the Metadata it rewrites.
    fetch: OnceLock<HostPort>,
    /// The local broker is known unreachable (the watcher or a forwarded request failed).
    local_down: AtomicBool,
    /// Rotates the brokers tried instead of a down local one.
    next_other: AtomicUsize,
    /// Counters.
    pub stats: UpstreamStats,
}

impl ClusterView {
    /// A view knowing nothing yet.
    pub fn new(cfg: ClusterConfig) -> Self {
        ClusterView {
            cfg,
            state: RwLock::new(ViewState::default()),
            live: AtomicBool::new(false),
            login: std::sync::OnceLock::new(),
            fetch: OnceLock::new(),
            local_down: AtomicBool::new(false),
            next_other: AtomicUsize::new(0),
            stats: UpstreamStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Sets the gateway's own SASL login to the cluster (before the watcher starts; a second
    /// call changes nothing).
    pub fn set_login(&self, l: login::UpstreamLogin) {
        let _ = self.login.set(l);
    }

    /// The gateway's own SASL login to the cluster, if any.
    pub fn login(&self) -> Option<&login::UpstreamLogin> {
        self.login.get()
    }

    /// Sets the fetch endpoint this gateway advertises (once; later calls change nothing).
    pub fn advertise_fetch(&self, endpoint: HostPort) {
        let _ = self.fetch.set(endpoint);
    }

    /// What this gateway advertises in Metadata: its node and fetch endpoint, if it has one.
    pub fn fetch_advert(&self) -> Option<FetchAdvert> {
        self.fetch.get().map(|ep| FetchAdvert {
            node_id: self.cfg.node_id,
            endpoint: ep.clone(),
        })
    }

    /// The gateway standing beside broker `id`, if the peer map has one.
    pub fn gateway(&self, id: i32) -> Option<&Broker> {
        self.cfg.peers.iter().find(|b| b.id == id)
    }

    /// Where clients should reach broker `id`: its gateway, else the broker itself.
    pub fn endpoint(&self, id: i32) -> Option<Broker> {
        if let Some(g) = self.gateway(id) {
            return Some(g.clone());
        }
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.brokers.get(&id).map(|(h, p)| Broker {
            id,
            host: h.clone(),
            port: *p,
        })
    }

    /// The local broker's own address (where forwarded requests go), once Metadata told us;
    /// before that the first bootstrap server.
    pub fn local_broker(&self) -> Option<String> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        match st.brokers.get(&self.cfg.node_id) {
            Some((h, p)) if h.contains(':') => Some(format!("[{h}]:{p}")),
            Some((h, p)) => Some(format!("{h}:{p}")),
            None => self.cfg.upstream.first().cloned(),
        }
    }

    /// The leader and leader epoch of a partition, if known.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<(i32, i32)> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.leaders.get(&(topic.to_string(), partition)).copied()
    }

    /// Records the brokers and partition leaders of one Metadata answer (a full one replaces
    /// the topics it lists).
    pub fn learn(&self, brokers: &[Broker], leaders: &[(String, i32, i32, i32)]) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if !brokers.is_empty() {
            st.brokers = brokers
                .iter()
                .map(|b| (b.id, (b.host.clone(), b.port)))
                .collect();
        }
        for (t, p, leader, epoch) in leaders {
            st.leaders.insert((t.clone(), *p), (*leader, *epoch));
        }
    }

    /// The partitions the local broker leads, among `candidates`.
    pub fn led_locally(&self, candidates: &[(String, i32)]) -> Vec<(String, i32)> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        candidates
            .iter()
            .filter(|(t, p)| {
                st.leaders
                    .get(&(t.clone(), *p))
                    .is_some_and(|(l, _)| *l == self.cfg.node_id)
            })
            .cloned()
            .collect()
    }

    /// Whether the live high watermarks are flowing.
    pub fn is_live(&self) -> bool {
        self.live.load(Relaxed)
    }

    pub(crate) fn set_live(&self, live: bool) {
        self.live.store(live, Relaxed);
        self.local_down.store(!live, Relaxed);
    }

    /// A forwarded request to the local broker failed: requests any broker can answer go
    /// elsewhere until the watcher reaches it again.
    pub fn note_local_down(&self) {
        if !self.local_down.swap(true, Relaxed) {
            log::warn!(
                "upstream: broker {} unreachable; Metadata, FindCoordinator, ApiVersions and \
                 DescribeCluster go to the other brokers until it is back",
                self.cfg.node_id
            );
        }
    }

    /// Where a forwarded request with api key `raw_key` goes: the local broker, or, while it
    /// is down and any broker can answer the request, another broker of the cluster (then
    /// `true`). Everything else waits for the local broker (the coordinator, leader or
    /// controller a client was sent to): a client whose request cannot reach it sees its
    /// connection close, as when that broker dies.
    pub fn forward_target(&self, raw_key: i16) -> Option<(String, bool)> {
        if self.local_down.load(Relaxed) && any_broker_answers(raw_key) {
            if let Some(addr) = self.other_broker() {
                return Some((addr, true));
            }
        }
        self.local_broker().map(|a| (a, false))
    }

    /// One of the other brokers (as Metadata advertised them, else the other bootstrap
    /// servers), rotating.
    fn other_broker(&self) -> Option<String> {
        let local = self.local_broker();
        let mut others: Vec<String> = {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            st.brokers
                .iter()
                .filter(|(id, _)| **id != self.cfg.node_id)
                .map(|(_, (h, p))| match h.contains(':') {
                    true => format!("[{h}]:{p}"),
                    false => format!("{h}:{p}"),
                })
                .collect()
        };
        if others.is_empty() {
            others = self
                .cfg
                .upstream
                .iter()
                .filter(|a| Some(*a) != local.as_ref())
                .cloned()
                .collect();
        }
        let n = others.len();
        (n > 0).then(|| others.swap_remove(self.next_other.fetch_add(1, Relaxed) % n))
    }

    fn rows(&self) -> [(&'static str, &'static str, u64); 11] {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let s = &self.stats;
        [
            (
                "upstream_forwarded_total",
                "requests forwarded to the cluster",
                g(&s.forwarded),
            ),
            (
                "upstream_connects_total",
                "upstream connections opened for clients",
                g(&s.forward_connects),
            ),
            (
                "upstream_forward_failures_total",
                "client connections closed because the upstream failed",
                g(&s.forward_failures),
            ),
            (
                "upstream_metadata_refreshes_total",
                "cluster metadata refreshes",
                g(&s.metadata_refreshes),
            ),
            (
                "upstream_hw_updates_total",
                "live high-watermark updates applied",
                g(&s.hw_updates),
            ),
            (
                "upstream_watch_errors_total",
                "watcher errors (cluster unreachable or bad answers)",
                g(&s.watch_errors),
            ),
            (
                "upstream_outages_total",
                "times the live high watermarks stopped (cluster or local broker unreachable)",
                g(&s.outages),
            ),
            (
                "upstream_live_sessions_total",
                "times the live high watermarks were (re)established",
                g(&s.live_sessions),
            ),
            (
                "upstream_log_start_updates_total",
                "log start offsets learnt from the cluster",
                g(&s.log_start_updates),
            ),
            (
                "upstream_rerouted_total",
                "requests sent to another broker while the local one was down",
                g(&s.rerouted),
            ),
            (
                "upstream_checkpoint_fallback",
                "1 while high watermarks are not live from the cluster (last known or checkpoint)",
                u64::from(!self.is_live()),
            ),
        ]
    }

    /// The counters, for `kxgw stats` and the metrics endpoint.
    pub fn write_metrics(&self, w: &mut crate::metrics::MetricsWriter) {
        for (name, help, v) in self.rows() {
            if name.ends_with("_total") {
                w.counter(name, help, &[], v);
            } else {
                w.gauge(name, help, &[], v as f64);
            }
        }
    }
}

impl std::fmt::Display for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, _, v)) in self.rows().iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}={v}", name.trim_start_matches("upstream_"))?;
        }
        Ok(())
    }
}

/// Requests every broker answers alike (cluster-wide metadata): while the local broker is
/// down they are sent to another one instead of failing.
pub fn any_broker_answers(raw_key: i16) -> bool {
    use kafka_protocol::messages::ApiKey;
    [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::FindCoordinator,
        ApiKey::DescribeCluster,
    ]
    .iter()
    .any(|k| *k as i16 == raw_key)
}

/// Standalone mode playing broker `node_id` of a static cluster (`--node-id` and `--peer`
/// without `--upstream`; how the tests build a cluster out of gateways): every broker holds a
/// replica of every partition, partition `p` is led by the `p mod n`-th broker by id and the
/// group coordinator is the lowest id.
pub fn static_brokers(me: &Broker, peers: &[Broker]) -> Vec<Broker> {
    let mut all: Vec<Broker> = peers.iter().filter(|b| b.id != me.id).cloned().collect();
    all.push(me.clone());
    all.sort_by_key(|b| b.id);
    all
}

/// The leader of partition `p` in a static cluster of `brokers` (sorted by id, non-empty).
pub fn static_leader(brokers: &[Broker], p: i32) -> i32 {
    let n = brokers.len().max(1);
    brokers
        .get(usize::try_from(p).unwrap_or(0) % n)
        .map_or(-1, |b| b.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_peer("2=198.18.0.3:9092").unwrap(),
            Broker {
                id: 2,
                host: "198.18.0.3".into(),
                port: 9092
            }
        );
        assert_eq!(parse_peer("1=[::1]:9").unwrap().host, "::1");
        for bad in ["x=h:1", "1=h", "1=h:p", "h:1", "-1=h:1"] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn static_layout_spreads_partitions_round_robin() {
        let me = Broker {
            id: 1,
            host: "b".into(),
            port: 2,
        };
        let peers = [0, 2].map(|id| Broker {
            id,
            host: format!("h{id}"),
            port: 9,
        });
        let all = static_brokers(&me, &peers);
        assert_eq!(all.iter().map(|b| b.id).collect::<Vec<_>>(), [0, 1, 2]);
        let leaders: Vec<i32> = (0..6).map(|p| static_leader(&all, p)).collect();
        assert_eq!(leaders, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn view_sends_clients_to_gateways_and_forwards_to_the_local_broker() {
        let v = ClusterView::new(ClusterConfig {
            upstream: vec!["boot:9092".into()],
            node_id: 1,
            peers: vec![parse_peer("0=gw0:19092").unwrap()],
        });
        assert_eq!(v.local_broker().as_deref(), Some("boot:9092"));
        let brokers = [0, 1].map(|id| Broker {
            id,
            host: format!("broker{id}"),
            port: 9092,
        });
        v.learn(&brokers, &[("t".into(), 0, 0, 5), ("t".into(), 1, 1, 7)]);
        assert_eq!(v.local_broker().as_deref(), Some("broker1:9092"));
        assert_eq!(v.endpoint(0).unwrap().host, "gw0");
        assert_eq!(
            v.endpoint(1).unwrap().host,
            "broker1",
            "no gateway: the broker"
        );
        assert_eq!(v.leader("t", 1), Some((1, 7)));
        let cands = [("t".to_string(), 0), ("t".to_string(), 1)];
        assert_eq!(v.led_locally(&cands), [("t".to_string(), 1)]);
    }

    #[test]
    fn while_the_local_broker_is_down_only_cluster_wide_requests_go_elsewhere() {
        use kafka_protocol::messages::ApiKey;
        let v = ClusterView::new(ClusterConfig {
            upstream: vec!["b1:9092".into(), "b0:9092".into()],
            node_id: 1,
            peers: vec![],
        });
        let md = ApiKey::Metadata as i16;
        let hb = ApiKey::Heartbeat as i16;
        assert_eq!(v.forward_target(md), Some(("b1:9092".into(), false)));
        v.note_local_down();
        assert_eq!(
            v.forward_target(md),
            Some(("b0:9092".into(), true)),
            "the other bootstrap server before Metadata named the brokers"
        );
        assert_eq!(v.forward_target(hb), Some(("b1:9092".into(), false)));
        let brokers = [0, 1, 2].map(|id| Broker {
            id,
            host: format!("broker{id}"),
            port: 9092,
        });
        v.learn(&brokers, &[]);
        let picked: std::collections::BTreeSet<String> = (0..4)
            .filter_map(|_| v.forward_target(md))
            .map(|t| t.0)
            .collect();
        assert_eq!(
            picked.into_iter().collect::<Vec<_>>(),
            ["broker0:9092", "broker2:9092"],
            "rotating over the other brokers"
        );
        for key in [
            ApiKey::ApiVersions,
            ApiKey::FindCoordinator,
            ApiKey::DescribeCluster,
        ] {
            assert!(v.forward_target(key as i16).unwrap().1, "{key:?}");
        }
        for key in [ApiKey::JoinGroup, ApiKey::OffsetCommit, ApiKey::Produce] {
            assert!(!v.forward_target(key as i16).unwrap().1, "{key:?}");
        }
        v.set_live(true);
        assert_eq!(v.forward_target(md), Some(("broker1:9092".into(), false)));
        assert_eq!(v.stats.outages.load(Relaxed), 0, "counted by the watcher");
    }
}

//! `kxgw serve`: opens a log directory, follows it, and starts the listeners asked for.
//! Each listener lives in its own module and is started by one function; this file only
//! wires them to the shared log, the signals (SIGINT/SIGTERM stop, SIGUSR1 prints counters)
//! and the periodic counter report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

use crate::flags::{FetchArgs, IoMode};
use kxgw::kafka::upstream::watch::{self, Watcher};
use kxgw::kafka::upstream::ClusterView;
use kxgw::kafka::{self, KafkaConfig, KafkaListener};
use kxgw::log::{Isolation, LogDir};
use kxgw::metrics::{self, Metrics};
use kxgw::privileges;
use kxgw::xdp::fetch_endpoint::FetchEndpoint;

/// Which offset bounds what consumers may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    /// Up to the high watermark (replication-offset-checkpoint), as a Kafka consumer sees it.
    Hw,
    /// Up to the end of the last complete batch.
    LogEnd,
}

impl From<IsolationArg> for Isolation {
    fn from(a: IsolationArg) -> Self {
        match a {
            IsolationArg::Hw => Isolation::HighWatermark,
            IsolationArg::LogEnd => Isolation::LogEnd,
        }
    }
}

impl Args {
    /// Whether every loop that serves this log busy-polls (and there is one): each checks
    /// the tails its parked reads wait on itself, so appends need no follower wake-up.
    fn every_reader_busy_polls(&self) -> bool {
        let tls = &self.security.tls;
        let kafka = self.kafka_listen.is_some()
            || self.security.kafka_listen_sasl.is_some()
            || tls.kafka_listen_ssl.is_some()
            || tls.kafka_listen_sasl_ssl.is_some();
        let fetch = self.fetch.fetch_listen.is_some();
        let fetch_busy = if self.xdp.iface.is_some() {
            self.xdp.busy_poll
        } else {
            self.fetch.fetch_busy_poll
        };
        (kafka || fetch) && (!kafka || self.kafka_busy_poll) && (!fetch || fetch_busy)
    }
}

/// Serve partition logs to consumers.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log directory to serve read-only (Kafka `log.dirs` layout: <topic>-<partition>/).
    #[arg(long)]
    pub log_dir: PathBuf,
    /// Kafka-protocol TCP listener, e.g. 198.18.0.1:9092.
    #[arg(long)]
    pub kafka_listen: Option<SocketAddr>,
    /// How the Kafka listener sends record bytes.
    #[arg(long, value_enum, default_value = "sendfile")]
    pub io: IoMode,
    /// Spin in the Kafka listener's loop instead of sleeping in epoll, checking the tails of
    /// the partitions waiting fetches read on every turn (lower tailing latency, a busy core).
    #[arg(long)]
    pub kafka_busy_poll: bool,
    /// Host advertised to Kafka clients in Metadata (default: the listen address, or the
    /// host name when listening on 0.0.0.0 / ::).
    #[arg(long)]
    pub advertised_host: Option<String>,
    /// Readable end of a partition (default: hw if replication-offset-checkpoint exists,
    /// else log-end).
    #[arg(long, value_enum)]
    pub isolation: Option<IsolationArg>,
    /// Print counters every SECS seconds (0: only on SIGUSR1 and at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,
    /// Rescan the log directory at least this often (appends are also seen sooner through
    /// the follower's file notifications, if it has them).
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub refresh_ms: u64,
    /// Kafka listener security (--kafka-listen-sasl, --sasl-users, --acl, the TLS flags).
    #[command(flatten)]
    pub security: crate::security_flags::SecurityArgs,
    /// The group coordinator of the Kafka listener (--state-dir and its options).
    #[command(flatten)]
    pub groups: crate::group_flags::GroupArgs,
    /// Cluster mode (--upstream, --node-id, --peer).
    #[command(flatten)]
    pub cluster: crate::cluster_flags::ClusterArgs,
    /// The kxgw UDP fetch endpoint (--fetch-listen and its options).
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// The AF_XDP fast path for the fetch endpoint (--xdp-iface and its options).
    #[command(flatten)]
    pub xdp: crate::flags::XdpArgs,
    /// TOML file with the same settings as these flags (keys are the flag names with
    /// underscores: log_dir, kafka_listen...); a flag on the command line wins over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unix socket serving the counters to `kxgw stats` [default: /run/kxgw/kxgw-<pid>.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Also serve the counters as Prometheus text on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Keep all capabilities after setup (by default they are dropped once XDP is attached
    /// and every socket is bound: the running gateway needs none).
    #[arg(long)]
    pub keep_caps: bool,
}

/// The listeners started by this process (one field per listener kind).
struct Running {
    kafka: Option<KafkaListener>,
    fetch: Option<FetchEndpoint>,
    /// Cluster mode: the view of the cluster and its watcher thread.
    cluster: Option<(Arc<ClusterView>, Watcher)>,
}

impl Running {
    fn report(&self) {
        if let Some(k) = &self.kafka {
            log::info!("kafka stats: {}", k.stats());
        }
        if let Some(f) = &self.fetch {
            log::info!("fetch stats: {}", f.report());
        }
        if let Some((v, _)) = &self.cluster {
            log::info!("upstream stats: {v}");
        }
    }

    fn register_metrics(&self, metrics: &Metrics) {
        if let Some(k) = &self.kafka {
            let stats = k.stats_handle();
            metrics.register(move |w| stats.write_metrics(w));
            let (groups, log) = (k.groups(), k.log());
            metrics.register(move |w| kxgw::kafka::group::metrics::write_metrics(&groups, &log, w));
        }
        if let Some(f) = &self.fetch {
            f.register_metrics(metrics);
        }
        if let Some((v, _)) = &self.cluster {
            let v = Arc::clone(v);
            metrics.register(move |w| v.write_metrics(w));
        }
    }

    fn shutdown(self) {
        if let Some(k) = self.kafka {
            k.shutdown();
        }
        if let Some(f) = self.fetch {
            f.shutdown();
        }
    }
}

/// Runs `kxgw serve` until SIGINT or SIGTERM.
pub fn run(args: Args) -> Result<ExitCode> {
    // Signals first, so a stop request during startup is not lost.
    let signals = SignalThread::spawn()?;

    let cluster = args.cluster.config()?;
    // Beside a broker, reads stop at the high watermark the cluster reports, whether or not
    // the checkpoint file exists yet.
    let isolation = match (&cluster, args.isolation) {
        (Some(_), None) => Some(Isolation::HighWatermark),
        (_, i) => i.map(Isolation::from),
    };
    let log = LogDir::open(&args.log_dir, isolation)
        .with_context(|| format!("opening log directory {}", args.log_dir.display()))?;
    let parts = log.partitions();
    log::info!(
        "serving {} partitions from {} (isolation {:?})",
        parts.len(),
        args.log_dir.display(),
        log.isolation()
    );
    let refresh = Duration::from_millis(args.refresh_ms.max(1));
    let _follower = if args.every_reader_busy_polls() {
        log::info!("every serving loop busy-polls: the log follower watches rolls and deletions only (the loops find appends)");
        log.spawn_structure_follower(refresh)
    } else {
        log.spawn_follower(refresh)
    }
    .context("starting the log follower")?;

    let cluster = match cluster {
        Some(cfg) => {
            let view = Arc::new(ClusterView::new(cfg));
            if let Some(l) = args.security.upstream_login()? {
                view.set_login(l);
            }
            let w = watch::spawn(Arc::clone(&view), Arc::clone(&log))
                .context("starting the upstream watcher")?;
            Some((view, w))
        }
        None => None,
    };
    let (kafka, fetch) = start_listeners(&args, &log, &cluster)?;
    let running = Running {
        kafka,
        cluster,
        fetch,
    };
    if running.kafka.is_none() && running.fetch.is_none() {
        bail!(
            "nothing to serve: give --kafka-listen ADDR:PORT (or --kafka-listen-sasl, -ssl, \
             -sasl-ssl) and/or --fetch-listen IP:PORT"
        );
    }

    let metrics = Metrics::new();
    let appends = Arc::clone(&log);
    metrics.register(move |w| appends.append_stats().write_metrics(w));
    running.register_metrics(&metrics);
    let hops = Arc::clone(&log);
    metrics.register(move |w| hops.tail_hops().write_metrics(w));
    let trace = Arc::clone(&log);
    metrics.register_dump(metrics::TAIL_TRACE_REQUEST, move || {
        trace.tail_trace().dump()
    });
    let socket = args
        .control_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/kxgw/kxgw-{}.sock", std::process::id())));
    let _control = metrics::serve_unix(&socket, Arc::clone(&metrics))?;
    log::info!("counters: kxgw stats --socket {}", socket.display());
    if let Some(addr) = &args.metrics_listen {
        crate::metrics_http::serve_http(addr, Arc::clone(&metrics))?;
    }
    if args.keep_caps {
        log::info!("keeping capabilities (--keep-caps)");
    } else {
        privileges::drop_all().context("dropping capabilities after setup")?;
    }

    let tick = (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval));
    signals.wait_for_stop(tick, &running);
    running.report();
    running.shutdown();
    signals.close();
    Ok(ExitCode::SUCCESS)
}

/// SIGINT, SIGTERM and SIGUSR1, caught by a thread and passed on a channel.
struct SignalThread {
    rx: crossbeam_channel::Receiver<i32>,
    handle: signal_hook::iterator::Handle,
    thread: std::thread::JoinHandle<()>,
}

impl SignalThread {
    fn spawn() -> Result<Self> {
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
            .context("installing signal handlers")?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            for s in signals.forever() {
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        Ok(SignalThread { rx, handle, thread })
    }

    /// Returns at SIGINT or SIGTERM; reports the counters on SIGUSR1 and every `tick`.
    fn wait_for_stop(&self, tick: Option<Duration>, running: &Running) {
        loop {
            let sig = match tick {
                Some(t) => match self.rx.recv_timeout(t) {
                    Ok(s) => Some(s),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(s) => Some(s),
                    Err(_) => break,
                },
            };
            match sig {
                None | Some(SIGUSR1) => running.report(),
                Some(s) => {
                    log::info!("signal {s}: shutting down");
                    break;
                }
            }
        }
    }

    fn close(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

/// The Kafka listener and the fetch endpoint, sharing one fetch ticket key set (the Kafka
/// listener issues tickets, every fetch transport checks them).
fn start_listeners(
    args: &Args,
    log: &Arc<LogDir>,
    cluster: &Option<(Arc<ClusterView>, Watcher)>,
) -> Result<(Option<KafkaListener>, Option<FetchEndpoint>)> {
    let tickets = args.security.ticket_keys(cluster.is_some());
    let view = cluster.as_ref().map(|(v, _)| Arc::clone(v));
    let kafka = start_kafka(args, log, view, tickets.clone())?;
    Ok((kafka, start_fetch(args, log, tickets)?))
}

/// The fetch endpoint (kernel UDP or AF_XDP), requiring tickets under `tickets` if given.
fn start_fetch(
    args: &Args,
    log: &Arc<LogDir>,
    tickets: Option<Arc<kxgw::fetch::ticket::TicketKeys>>,
) -> Result<Option<FetchEndpoint>> {
    let server = kxgw::fetch::ServerConfig {
        tickets,
        ..Default::default()
    };
    kxgw::xdp::fetch_endpoint::start_with(log, &(&args.fetch).into(), &(&args.xdp).into(), server)
}

fn start_kafka(
    args: &Args,
    log: &Arc<LogDir>,
    cluster: Option<Arc<ClusterView>>,
    tickets: Option<Arc<kxgw::fetch::ticket::TicketKeys>>,
) -> Result<Option<KafkaListener>> {
    let (mut plain, mut extra) = args.security.load(cluster.is_some())?;
    plain.tickets = tickets.clone();
    for (_, s) in &mut extra {
        s.tickets = tickets.clone();
    }
    // The first listener is the PLAINTEXT one if asked for, else the first other one.
    let (addr, security) = match args.kafka_listen {
        Some(a) => (a, plain),
        None if extra.is_empty() => return Ok(None),
        None => extra.remove(0),
    };
    // In cluster mode each connection's forwarded requests go to the local broker's one
    // listener (SASL: relayed logins, or not), and --peer names one address per gateway.
    if cluster.is_some() && !extra.is_empty() {
        bail!(
            "with --upstream the gateway has one Kafka listener: give one of --kafka-listen, \
             --kafka-listen-sasl, --kafka-listen-ssl, --kafka-listen-sasl-ssl (forwarded requests \
             go to the local broker's one listener, and --peer names one address per gateway)"
        );
    }
    if cluster.is_some() && security.relay.is_none() && args.security.upstream_sasl_user.is_some() {
        bail!(
            "--upstream-sasl-user with a listener without SASL: the cluster's listener wants \
             SASL, so clients must log in too: listen with --kafka-listen-sasl or \
             --kafka-listen-sasl-ssl instead"
        );
    }
    let mut cfg = KafkaConfig::new(addr, args.io.into());
    cfg.security = security;
    cfg.extra = extra;
    cfg.advertised_host = args.advertised_host.clone();
    cfg.groups = args.groups.config();
    cfg.state_dir = args.groups.state_dir(args.config.as_deref());
    cfg.node_id = args.cluster.node_id.unwrap_or(0);
    cfg.peers = args.cluster.peer.clone();
    cfg.busy_poll = args.kafka_busy_poll;
    cfg.fetch_advertise = args
        .fetch
        .advertised(args.advertised_host.as_deref(), Some(addr));
    if let Some(ep) = &cfg.fetch_advertise {
        log::info!("advertising fetch endpoint {ep} in Metadata (v9+)");
    }
    if let Some(v) = &cluster {
        log::info!(
            "cluster mode: node {} beside the cluster at {}; group, produce and admin \
             requests are forwarded",
            cfg.node_id,
            v.config().upstream.join(",")
        );
    } else if cfg.state_dir.is_none() {
        log::warn!("no --state-dir: committed offsets are kept in memory only");
    }
    cfg.cluster = cluster;
    kafka::start(cfg, Arc::clone(log))
        .with_context(|| format!("starting the kafka listener on {addr}"))
        .map(Some)
}

//! The TCP side: one mio (epoll) event loop thread owning the listening socket and every
//! connection. Sockets are non-blocking; each connection is a [`Session`] driven by readiness
//! events, by log appends (an append batch reaching a partition a waiting fetch reads wakes
//! the loop through a `mio::Waker`, once per batch) and by the deadline of its waiting fetch.
//! A slow or vanished consumer only ever stalls itself.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::apis::{Ctx, NodeInfo};
use super::auth::Security;
use super::group::{GroupConfig, Groups, WaiterId};
use super::outq::IoMode;
use super::session::Session;
use super::stats::{add, inc, Stats};
use super::tls::{HandshakeDeadlines, TlsConn};
use super::upstream::{Broker, ClusterView};
use crate::log::appends::Watch;
use crate::log::{LogDir, TopicPartition};

/// Listening sockets are tokens counted down from here (connections count up from 2).
const LISTENER: usize = usize::MAX;
const WAKER: Token = Token(1);
/// How long a stopping listener keeps sending responses it had already queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_CONN: usize = 2;
/// Set in the token of a connection's upstream socket (cluster mode): the client's token
/// with this bit.
const UPSTREAM_BIT: usize = 1 << (usize::BITS - 2);
/// Bytes read from a socket per step (then requests are processed before reading more).
const READ_STEP: usize = 64 * 1024;

/// How the Kafka listener is set up.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// How record bytes are sent.
    pub io: IoMode,
    /// Host advertised in Metadata (default: the listen address; the host name when
    /// listening on a wildcard address).
    pub advertised_host: Option<String>,
    /// Largest request accepted. Kafka's socket.request.max.bytes is 100 MiB, sized for
    /// produce requests; a consumer's requests are small (a fetch of 10,000 partitions is
    /// under 400 KiB), so 8 MiB bounds what one hostile connection can make us buffer.
    pub max_request_bytes: usize,
    /// Where committed offsets are kept (None: in memory only, lost at exit).
    pub state_dir: Option<PathBuf>,
    /// Group coordinator settings.
    pub groups: GroupConfig,
    /// Node id advertised (`--node-id`; 0 by default).
    pub node_id: i32,
    /// Standalone: the other brokers of a static cluster this gateway plays one broker of.
    pub peers: Vec<Broker>,
    /// Cluster mode (`--upstream`): requests not served locally are forwarded there.
    pub cluster: Option<Arc<ClusterView>>,
    /// The fetch endpoint advertised in Metadata, standalone and in cluster mode
    /// ([`super::fetch_advert`]); None: no advertisement.
    pub fetch_advertise: Option<super::fetch_advert::HostPort>,
    /// What clients of `listen` must do (default PLAINTEXT: nothing; an ACL still applies
    /// to them as `User:ANONYMOUS`).
    pub security: Security,
    /// Further listeners in the same loop, on the same log and group coordinator, with
    /// their own security (e.g. a SASL_PLAINTEXT one beside PLAINTEXT, as a broker's
    /// `listeners`). Each advertises its own port in Metadata.
    pub extra: Vec<(SocketAddr, Security)>,
    /// Spin instead of sleeping in epoll, checking the tails of the partitions waiting
    /// fetches read on every turn (`LogDir::poll_tail`): lower tailing latency, a busy core.
    pub busy_poll: bool,
}

impl KafkaConfig {
    /// Defaults for everything but the address and I/O mode.
    pub fn new(listen: SocketAddr, io: IoMode) -> Self {
        KafkaConfig {
            listen,
            io,
            advertised_host: None,
            max_request_bytes: 8 << 20,
            state_dir: None,
            groups: GroupConfig::default(),
            node_id: 0,
            peers: Vec::new(),
            cluster: None,
            fetch_advertise: None,
            security: Security::default(),
            extra: Vec::new(),
            busy_poll: false,
        }
    }
}

/// A running listener. Dropping it (or [`KafkaListener::shutdown`]) stops the loop and
/// closes every connection.
pub struct KafkaListener {
    local_addr: SocketAddr,
    extra_addrs: Vec<SocketAddr>,
    stats: Arc<Stats>,
    groups: Arc<Groups>,
    log: Arc<LogDir>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaListener {
    /// Binds, registers the log-append hook and starts the event loop thread.
    pub fn start(cfg: KafkaConfig, log: Arc<LogDir>) -> Result<KafkaListener> {
        raise_fd_limit();
        let groups = Arc::new(open_groups(&cfg, &log)?);
        let mut listeners = Vec::new();
        for (addr, sec) in
            std::iter::once((cfg.listen, cfg.security.clone())).chain(cfg.extra.clone())
        {
            let l = bind(addr)?;
            let local = l.local_addr()?;
            listeners.push((l, local, sec));
        }
        let local_addr = listeners[0].1;
        if let (Some(view), Some(ep)) = (&cfg.cluster, &cfg.fetch_advertise) {
            view.advertise_fetch(ep.clone());
        }
        let host = advertised_host(cfg.advertised_host.as_deref(), local_addr)?;
        let extra_addrs: Vec<SocketAddr> = listeners[1..].iter().map(|l| l.1).collect();
        let listeners: Vec<Listening> = listeners
            .into_iter()
            .map(|(socket, local, security)| Listening {
                socket,
                node: NodeInfo {
                    node_id: cfg.node_id,
                    peers: cfg.peers.clone(),
                    cluster: cfg.cluster.clone(),
                    fetch: cfg.fetch_advertise.clone(),
                    ..NodeInfo::gateway(host.clone(), i32::from(local.port()))
                },
                security,
            })
            .collect();
        let poll = Poll::new().context("creating epoll instance")?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating waker")?);
        let watch = watch_appends(&log, &waker);
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut el = EventLoop {
            poll,
            listeners,
            conns: HashMap::new(),
            parked: HashSet::new(),
            deadlines: BinaryHeap::new(),
            next_token: FIRST_CONN,
            groups: Arc::clone(&groups),
            group_waits: HashMap::new(),
            log: Arc::clone(&log),
            stats: Arc::clone(&stats),
            io: cfg.io,
            max_request: cfg.max_request_bytes,
            watch,
            stop: Arc::clone(&stop),
            scratch: vec![0u8; READ_STEP],
            handshakes: HandshakeDeadlines::default(),
            busy_poll: cfg.busy_poll,
        };
        for (i, l) in el.listeners.iter_mut().enumerate() {
            el.poll
                .registry()
                .register(&mut l.socket, Token(LISTENER - i), Interest::READABLE)?;
            let io = match &l.security.tls {
                Some(t) => t.record_path(),
                None => cfg.io.as_str().to_string(),
            };
            log::info!(
                "kafka listener on {} ({}, io {io}, advertised {}:{})",
                l.socket.local_addr()?,
                l.security.protocol(),
                l.node.host,
                l.node.port
            );
        }
        let thread = std::thread::Builder::new()
            .name("kafka-listener".into())
            .spawn(move || el.run())
            .context("spawning the kafka listener thread")?;
        Ok(KafkaListener {
            local_addr,
            extra_addrs,
            stats,
            groups,
            log,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound addresses of [`KafkaConfig::extra`], in order.
    pub fn extra_addrs(&self) -> &[SocketAddr] {
        &self.extra_addrs
    }

    /// The live counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The live counters, shareable (e.g. with a metrics provider:
    /// `metrics.register(move |w| stats.write_metrics(w))`).
    pub fn stats_handle(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The log directory served.
    pub fn log(&self) -> Arc<LogDir> {
        Arc::clone(&self.log)
    }

    /// The group coordinator (for stats and metrics readers).
    pub fn groups(&self) -> Arc<Groups> {
        Arc::clone(&self.groups)
    }

    /// Stops the loop, closes every connection and waits for the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("kafka listener thread panicked");
            }
        }
    }
}

/// The group coordinator. Cluster mode: the cluster coordinates groups; the embedded
/// coordinator stays off (group requests are forwarded before they could reach it), in memory.
fn open_groups(cfg: &KafkaConfig, log: &LogDir) -> Result<Groups> {
    Ok(
        match cfg.state_dir.as_ref().filter(|_| cfg.cluster.is_none()) {
            Some(dir) => {
                super::group::store::check_state_dir(dir, log.path())?;
                Groups::open(cfg.groups.clone(), dir)?
            }
            None => Groups::in_memory(cfg.groups.clone()),
        },
    )
}

/// The host advertised in Metadata: `--advertised-host`, else the listen address, else (on a
/// wildcard address, as a Kafka broker without advertised.listeners) the host name.
fn advertised_host(configured: Option<&str>, local_addr: SocketAddr) -> Result<String> {
    Ok(match configured {
        Some(h) => h.to_string(),
        None if local_addr.ip().is_unspecified() => {
            let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .with_context(|| {
                    format!(
                        "listening on {local_addr} with no host name to advertise: \
                         give --advertised-host"
                    )
                })?;
            log::warn!(
                "listening on {local_addr}: advertising host name {name:?} to clients \
                 (set --advertised-host if they cannot resolve it)"
            );
            name
        }
        None => local_addr.ip().to_string(),
    })
}

/// The loop's watch on the log: it keeps the partitions appended to since the loop last
/// looked, and wakes the loop (once per append batch) when one of them is read by a waiting
/// fetch.
fn watch_appends(log: &LogDir, waker: &Arc<Waker>) -> Arc<Watch> {
    let waker = Arc::clone(waker);
    // The loop may have ended; a failed wake then has nobody to tell.
    let watch = Watch::recording(move || {
        let _ = waker.wake();
    });
    log.watch(&watch);
    watch
}

/// The partitions a connection's waiting fetch reads (none without one).
fn waited(conn: &Conn) -> Vec<TopicPartition> {
    conn.session
        .waited()
        .map(|(t, p)| TopicPartition::new(t, p))
        .collect()
}

impl Drop for KafkaListener {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A non-blocking socket not yet connected or without room/data right now.
fn not_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

fn bind(addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())
        .with_context(|| format!("binding the kafka listener to {addr}"))?;
    sock.listen(4096)?;
    Ok(TcpListener::from_std(sock.into()))
}

/// Thousands of connections need more than the usual 1024 descriptors: raise the soft
/// limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("raising RLIMIT_NOFILE from {soft} to {hard}: {e}");
            }
        }
    }
}

/// A listening socket, what it advertises and what its clients must do.
struct Listening {
    socket: TcpListener,
    node: NodeInfo,
    security: Security,
}

struct Conn {
    token: Token,
    stream: TcpStream,
    peer: SocketAddr,
    /// Index of the listener it came in on.
    listener: usize,
    session: Session,
    read_eof: bool,
    /// Cluster mode: the connection to the local broker its forwarded requests go to,
    /// opened at the first one.
    upstream: Option<TcpStream>,
    /// That connection goes to another broker (the local one was down).
    upstream_other: bool,
    /// SSL / SASL_SSL listeners: the TLS layer between `stream` and `session`.
    tls: Option<Box<TlsConn>>,
}

impl Conn {
    /// Response bytes not yet on the wire (queued, or encrypted and waiting).
    fn unsent(&mut self) -> bool {
        !self.session.out().is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

struct EventLoop {
    poll: Poll,
    listeners: Vec<Listening>,
    conns: HashMap<Token, Conn>,
    /// Connections with a waiting fetch (checked for deadlines and appends).
    parked: HashSet<Token>,
    /// Deadlines of waiting fetches, earliest first; entries whose fetch was answered or
    /// replaced are skipped when they surface.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    next_token: usize,
    groups: Arc<Groups>,
    /// Connections with a parked JoinGroup / SyncGroup, by coordinator waiter.
    group_waits: HashMap<WaiterId, Token>,
    log: Arc<LogDir>,
    stats: Arc<Stats>,
    io: IoMode,
    max_request: usize,
    /// The loop's watch on the log: the partitions waiting fetches read (so that only
    /// appends to those wake it), and those appended to since [`EventLoop::on_appends`].
    watch: Arc<Watch>,
    stop: Arc<AtomicBool>,
    scratch: Vec<u8>,
    /// Handshake deadlines of TLS connections.
    handshakes: HandshakeDeadlines,
    /// Never sleep; look at the waited partitions' tails every turn.
    busy_poll: bool,
}

/// What one drive of a connection ended with.
enum Drive {
    Open,
    Close,
}

/// A step of [`EventLoop::drive_conn`] found the connection must close (already logged and
/// counted).
struct Closed;

impl EventLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut accept_warned = false;
        loop {
            let next = [
                self.next_deadline(),
                self.groups.lock().coord.next_deadline(),
                self.handshakes.next(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = if self.busy_poll {
                Some(Duration::ZERO)
            } else {
                next.map(|d| {
                    d.saturating_duration_since(Instant::now()) + Duration::from_micros(500)
                })
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("kafka listener: epoll failed, stopping: {e}");
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    Token(t) if LISTENER - t < self.listeners.len() => {
                        self.accept_all(LISTENER - t, &mut accept_warned)
                    }
                    // An append batch (taken below) or a stop request.
                    WAKER => {}
                    t if t.0 & UPSTREAM_BIT != 0 => self.drive(Token(t.0 & !UPSTREAM_BIT)),
                    t => {
                        if ev.is_read_closed() || ev.is_error() {
                            self.peer_closed(t);
                        }
                        self.drive(t)
                    }
                }
                self.deliver_group_replies();
            }
            if self.busy_poll && !self.poll_tails() && events.is_empty() {
                // Idle: let a thread woken on this core (the follower) run at once.
                let _ = nix::sched::sched_yield();
            }
            // Every turn, after the events: a fetch that parked in this turn finds the appends
            // announced before its interest was registered (no lost wake-up).
            self.on_appends();
            self.groups.lock().tick(Instant::now());
            self.deliver_group_replies();
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            self.expire();
        }
        self.drain(&mut events, DRAIN_TIMEOUT);
        let open = self.conns.len();
        for (_, mut c) in self.conns.drain() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            inc(&self.stats.conns_closed);
        }
        log::info!("kafka listener stopped ({open} connections closed)");
    }

    /// On shutdown: accept and read nothing more, but finish sending the responses already
    /// queued (a consumer mid-response gets its whole response), for at most `timeout`.
    fn drain(&mut self, events: &mut Events, timeout: Duration) {
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        for c in self.conns.values_mut() {
            c.read_eof = true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let pending: Vec<Token> = self
                .conns
                .iter_mut()
                .filter_map(|(t, c)| c.unsent().then_some(*t))
                .collect();
            if pending.is_empty() {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "kafka listener: {} connections still had unsent responses after {timeout:?}",
                    pending.len()
                );
                return;
            }
            for t in pending {
                self.drive(t);
            }
            let wait = deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(50));
            if let Err(e) = self.poll.poll(events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return;
                }
            }
        }
    }

    /// Whether a heap entry still is the deadline of a waiting fetch.
    fn is_current(&self, deadline: Instant, token: Token) -> bool {
        self.parked.contains(&token)
            && self
                .conns
                .get(&token)
                .is_some_and(|c| c.session.deadline() == Some(deadline))
    }

    /// The earliest deadline of a waiting fetch (stale heap entries are dropped on the way).
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((d, t))) = self.deadlines.peek() {
            if self.is_current(d, Token(t)) {
                return Some(d);
            }
            self.deadlines.pop();
        }
        None
    }

    fn accept_all(&mut self, index: usize, warned: &mut bool) {
        loop {
            match self.listeners[index].socket.accept() {
                Ok((mut stream, peer)) => {
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    let _ = stream.set_nodelay(true);
                    let tls = match self.listeners[index].security.tls.as_deref() {
                        Some(t) => match TlsConn::new(t, Instant::now()) {
                            Ok(c) => Some(Box::new(c)),
                            Err(e) => {
                                log::warn!("kafka {peer}: cannot start TLS: {e}");
                                continue;
                            }
                        },
                        None => None,
                    };
                    if let Some(d) = tls.as_ref().and_then(|t| t.deadline()) {
                        self.handshakes.push(d, token.0);
                    }
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("kafka {peer}: cannot register connection: {e}");
                        continue;
                    }
                    inc(&self.stats.conns_accepted);
                    log::debug!("kafka {peer}: connected");
                    let mut session = Session::with_groups(
                        self.max_request,
                        Arc::clone(&self.groups),
                        format!("/{}", peer.ip()),
                    );
                    session.secure(&self.listeners[index].security, Some(peer.ip()));
                    self.conns.insert(
                        token,
                        Conn {
                            token,
                            upstream: None,
                            upstream_other: false,
                            stream,
                            peer,
                            listener: index,
                            session,
                            read_eof: false,
                            tls,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the pending connection stays queued; say it once.
                    if !*warned {
                        log::warn!("kafka listener: accept failed: {e}");
                        *warned = true;
                    }
                    inc(&self.stats.err_io);
                    break;
                }
            }
        }
    }

    /// The peer hung up. A connection waiting on a long-poll fetch would not read (and so
    /// not notice) until the fetch ends: drop it now, nobody is left to answer.
    fn peer_closed(&mut self, token: Token) {
        let gone = self
            .conns
            .get(&token)
            .is_some_and(|c| c.session.is_parked());
        if gone {
            if let Some(mut c) = self.conns.remove(&token) {
                log::debug!("kafka {}: hung up during a waiting request", c.peer);
                self.parked.remove(&token);
                for tp in waited(&c) {
                    self.watch.done_with(&tp);
                }
                self.forget_group_wait(&c);
                self.deregister(&mut c);
                inc(&self.stats.conns_closed);
            }
        }
    }

    /// Busy polling: checks the tail of each partition a waiting fetch reads (one fstat; the
    /// new bytes validated on this thread when it grew) and answers the fetches that now have
    /// data. True if a tail advanced.
    fn poll_tails(&mut self) -> bool {
        let mut tails: Vec<Arc<crate::log::Partition>> = Vec::new();
        for c in self.parked.iter().filter_map(|t| self.conns.get(t)) {
            for (topic, p) in c.session.waited() {
                if tails
                    .iter()
                    .any(|x| x.partition() == p && x.topic() == topic)
                {
                    continue;
                }
                tails.extend(self.log.partition(topic, p));
            }
        }
        // One batch; this loop is its finder, so it is not woken by it (on_appends, right
        // after, answers the fetches).
        self.log.poll_tails(&tails, Some(self.watch.id()))
    }

    /// Drives the waiting fetches that read a partition appended to since the last call.
    fn on_appends(&mut self) {
        let touched = self.watch.take_advanced();
        if touched.is_empty() {
            return;
        }
        let ready: Vec<Token> = self
            .parked
            .iter()
            .copied()
            .filter(|t| {
                self.conns.get(t).is_some_and(|c| {
                    touched
                        .iter()
                        .any(|tp| c.session.waits_for(&tp.topic, tp.partition))
                })
            })
            .collect();
        for t in ready {
            self.drive(t);
        }
    }

    /// Drives the connections whose parked JoinGroup / SyncGroup got its reply (driving one
    /// may complete others' rebalance, hence the loop).
    fn deliver_group_replies(&mut self) {
        loop {
            let woken = self.groups.lock().coord.take_woken();
            if woken.is_empty() {
                return;
            }
            for w in woken {
                if let Some(t) = self.group_waits.remove(&w) {
                    self.drive(t);
                }
            }
        }
    }

    /// A closing connection's parked group request will never be answered.
    fn forget_group_wait(&mut self, conn: &Conn) {
        if let Some(w) = conn.session.group_waiter() {
            self.group_waits.remove(&w);
            self.groups.lock().coord.forget(w);
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((d, t))) = self.deadlines.peek() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if self.is_current(d, Token(t)) {
                self.drive(Token(t));
            }
        }
        self.expire_handshakes(now);
    }

    /// Closes TLS connections whose handshake is not done by its deadline.
    fn expire_handshakes(&mut self, now: Instant) {
        for t in self.handshakes.due(now) {
            let token = Token(t);
            let late = self
                .conns
                .get(&token)
                .and_then(|c| c.tls.as_ref()?.deadline())
                .is_some_and(|d| d <= now);
            if !late {
                continue;
            }
            if let Some(mut c) = self.conns.remove(&token) {
                log::debug!("kafka {}: TLS handshake timed out", c.peer);
                self.stats
                    .auth
                    .tls
                    .count(super::tls::stats::Outcome::Timeout);
                self.deregister(&mut c);
                inc(&self.stats.conns_closed);
            }
        }
    }

    fn drive(&mut self, token: Token) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let before = conn.session.deadline();
        let waited_before = waited(&conn);
        let drove = self.drive_conn(&mut conn);
        // The watch knows what waiting fetches read: what this connection's read before
        // goes, what it reads now (if it parked again, or still waits) comes.
        let waited_now = match drove {
            Drive::Open => waited(&conn),
            Drive::Close => Vec::new(),
        };
        if waited_now != waited_before {
            for tp in &waited_before {
                self.watch.done_with(tp);
            }
            for tp in &waited_now {
                self.watch.wait_on(tp);
            }
        }
        match drove {
            Drive::Open => {
                if let Some(w) = conn.session.group_waiter() {
                    self.group_waits.insert(w, token);
                }
                match conn.session.deadline() {
                    Some(d) => {
                        self.parked.insert(token);
                        if before != Some(d) {
                            self.deadlines.push(Reverse((d, token.0)));
                        }
                    }
                    None => {
                        self.parked.remove(&token);
                    }
                }
                self.conns.insert(token, conn);
            }
            Drive::Close => {
                self.parked.remove(&token);
                self.forget_group_wait(&conn);
                self.deregister(&mut conn);
                inc(&self.stats.conns_closed);
            }
        }
    }

    fn deregister(&self, conn: &mut Conn) {
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Some(u) = conn.upstream.as_mut() {
            let _ = self.poll.registry().deregister(u);
        }
    }

    /// Cluster mode: moves a connection's forwarded request to its upstream socket (opening
    /// it first) and the upstream's answer back into the session. An error means the
    /// upstream is gone: the client connection is closed, as when a broker dies.
    fn pump_upstream(
        poll: &Poll,
        scratch: &mut [u8],
        node: &NodeInfo,
        conn: &mut Conn,
    ) -> io::Result<bool> {
        let Some(view) = node.cluster.as_deref() else {
            return Ok(false);
        };
        if !conn.session.forwarder().used() {
            return Ok(false);
        }
        if let Some(key) = conn.session.forwarder().take_unrouted() {
            Self::route_upstream(poll, view, conn, key)?;
        }
        let Some(up) = conn.upstream.as_mut() else {
            return Ok(false);
        };
        let fw = conn.session.forwarder();
        let mut progressed = false;
        let out = fw.outbound();
        while !out.is_empty() {
            match up.write(out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    out.drain(..n);
                    progressed = true;
                }
                Err(e) if not_yet(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while fw.wants_input() {
            match up.read(scratch) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection",
                    ))
                }
                Ok(n) => {
                    fw.receive(&scratch[..n]);
                    progressed = true;
                }
                Err(e) if not_yet(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(progressed)
    }

    /// Picks the upstream connection for a request about to be written (nothing of it is
    /// sent yet, so nothing is lost by replacing the connection): an idle one the broker
    /// closed is dropped (a dead local broker is noted), one to the wrong broker is replaced
    /// (the local broker is back, or this request needs it), and a new one is opened.
    fn route_upstream(
        poll: &Poll,
        view: &ClusterView,
        conn: &mut Conn,
        key: i16,
    ) -> io::Result<()> {
        if let Some(u) = conn.upstream.as_ref() {
            let mut b = [0u8; 1];
            let alive = match u.peek(&mut b) {
                Ok(_) => false, // EOF, or bytes nobody asked for
                Err(e) => not_yet(&e),
            };
            if !alive {
                log::info!(
                    "kafka {}: idle upstream connection closed by the broker",
                    conn.peer
                );
                if !conn.upstream_other {
                    view.note_local_down();
                }
                Self::drop_upstream(poll, conn);
            }
        }
        let (addr, other) = view
            .forward_target(key)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no upstream address known"))?;
        if other {
            inc(&view.stats.rerouted);
        }
        if conn.upstream.is_some() && conn.upstream_other != other {
            Self::drop_upstream(poll, conn);
        }
        if conn.upstream.is_some() {
            return Ok(());
        }
        let sa = std::net::ToSocketAddrs::to_socket_addrs(&addr)?
            .next()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"))
            })?;
        let mut s = TcpStream::connect(sa)?;
        let _ = s.set_nodelay(true);
        poll.registry().register(
            &mut s,
            Token(conn.token.0 | UPSTREAM_BIT),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        inc(&view.stats.forward_connects);
        log::debug!("kafka {}: upstream connection to {addr}", conn.peer);
        conn.upstream = Some(s);
        conn.upstream_other = other;
        Ok(())
    }

    fn drop_upstream(poll: &Poll, conn: &mut Conn) {
        if let Some(mut u) = conn.upstream.take() {
            let _ = poll.registry().deregister(&mut u);
        }
    }

    /// A consumer that resets its connection (it exited, or stopped mid-response) is
    /// ordinary; anything else (a short segment file, ...) counts as an I/O error.
    fn io_failed(&self, conn: &Conn, what: &str, e: &io::Error) {
        if conn.tls.as_ref().is_some_and(|t| t.failed()) {
            // Counted by cause in the TLS stats.
            log::debug!("kafka {}: closing: {e}", conn.peer);
            return;
        }
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) {
            log::debug!("kafka {}: peer gone during {what}: {e}", conn.peer);
        } else {
            log::warn!("kafka {}: {what} failed, closing: {e}", conn.peer);
            inc(&self.stats.err_io);
        }
    }

    /// Reads, answers and writes until the connection can make no more progress now.
    fn drive_conn(&mut self, conn: &mut Conn) -> Drive {
        loop {
            match self.step(conn) {
                Ok(true) => {}
                Ok(false) => break,
                Err(Closed) => return Drive::Close,
            }
        }
        let unsent = conn.unsent();
        let idle = !unsent && !conn.session.is_parked();
        if conn.session.is_closing() && !unsent {
            // A failed authentication: its answer is sent, the connection ends (as Kafka).
            log::debug!("kafka {}: closed after a failed authentication", conn.peer);
            return Drive::Close;
        }
        if conn.read_eof && idle {
            log::debug!("kafka {}: disconnected", conn.peer);
            return Drive::Close;
        }
        Drive::Open
    }

    /// One round of read, advance, upstream and write; whether anything moved.
    fn step(&mut self, conn: &mut Conn) -> Result<bool, Closed> {
        let mut progressed = self.read_in(conn)?;
        self.advance(conn)?;
        progressed |= self.pump(conn)?;
        progressed |= self.write_out(conn)?;
        Ok(progressed)
    }

    /// Reads what the client sent (through TLS when the listener has it) into the session.
    fn read_in(&mut self, conn: &mut Conn) -> Result<bool, Closed> {
        if conn.read_eof || !conn.session.wants_input() {
            return Ok(false);
        }
        let read = match conn.tls.as_mut() {
            Some(t) => t.read_plain(&mut conn.stream, &mut self.scratch, &self.stats.auth.tls),
            None => conn.stream.read(&mut self.scratch),
        };
        if let Some(p) = conn.tls.as_mut().and_then(|t| t.take_principal()) {
            log::debug!("kafka {}: TLS client certificate of {p}", conn.peer);
            conn.session.set_principal(p);
        }
        match read {
            Ok(0) => conn.read_eof = true,
            Ok(n) => {
                conn.session.receive(&self.scratch[..n]);
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => {
                self.io_failed(conn, "read", &e);
                return Err(Closed);
            }
        }
        Ok(false)
    }

    /// Lets the session answer what it has; a session error closes the connection.
    fn advance(&self, conn: &mut Conn) -> Result<(), Closed> {
        let ctx = Ctx {
            log: &self.log,
            node: &self.listeners[conn.listener].node,
            stats: &self.stats,
            authz: &super::auth::ALLOW_ALL,
        };
        let Err(e) = conn.session.advance(&ctx, Instant::now()) else {
            return Ok(());
        };
        log::warn!("kafka {}: closing connection: {e}", conn.peer);
        match e {
            super::session::SessionError::Encode(_) => inc(&self.stats.err_encode),
            super::session::SessionError::Upstream(_) => {
                if let Some(v) = &self.listeners[conn.listener].node.cluster {
                    inc(&v.stats.forward_failures);
                }
            }
            _ => inc(&self.stats.err_bad_request),
        }
        Err(Closed)
    }

    /// Moves bytes to and from the upstream connection (cluster mode).
    fn pump(&mut self, conn: &mut Conn) -> Result<bool, Closed> {
        let node = &self.listeners[conn.listener].node;
        match Self::pump_upstream(&self.poll, &mut self.scratch, node, conn) {
            Ok(p) => Ok(p),
            Err(e) => {
                log::warn!("kafka {}: upstream failed, closing: {e}", conn.peer);
                if let Some(v) = &node.cluster {
                    inc(&v.stats.forward_failures);
                    if !conn.upstream_other {
                        v.note_local_down();
                    }
                }
                Err(Closed)
            }
        }
    }

    /// Writes the session's output (and pending TLS records), counting bytes by how they went.
    fn write_out(&self, conn: &mut Conn) -> Result<bool, Closed> {
        let tls_pending = conn.tls.as_ref().is_some_and(|t| t.wants_write());
        let out = conn.session.out();
        if out.is_empty() && !tls_pending {
            return Ok(false);
        }
        let written = match conn.tls.as_mut() {
            Some(t) => t.write_out(&mut conn.stream, out),
            None => out.write_to(&conn.stream, self.io),
        };
        match written {
            Ok(w) => {
                add(&self.stats.bytes_mem, w.mem);
                // Record bytes over TLS are always copied (see kafka::tls).
                add(
                    if conn.tls.is_some() || self.io == IoMode::Copy {
                        &self.stats.bytes_copy
                    } else {
                        &self.stats.bytes_sendfile
                    },
                    w.file,
                );
                Ok(w.mem + w.file > 0)
            }
            Err(e) => {
                self.io_failed(conn, "write", &e);
                Err(Closed)
            }
        }
    }
}

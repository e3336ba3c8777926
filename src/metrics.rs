//! Gateway counters in the Prometheus text format, for `kxgw stats` and scrapers.
//!
//! Each component (Kafka listener, UDP transport, AF_XDP engine, XDP program) registers a
//! provider that writes its current counters; nothing is sampled in the background, so a
//! scrape always sees live values. Two read-only endpoints serve the same text: a Unix socket
//! (default `/run/kxgw/kxgw-<pid>.sock`; reachable from any network namespace, which is what
//! `kxgw stats` uses) and, with `--metrics-listen`, HTTP `GET /metrics`.
//!
//! The control socket also answers named requests (one line, e.g. `tail-trace`) with the
//! text of a registered dump; a client that sends nothing gets the counters.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

/// Where gateways put their control sockets (`kxgw-<pid>.sock`) unless told otherwise.
pub const CONTROL_DIR: &str = "/run/kxgw";

type Provider = Box<dyn Fn(&mut MetricsWriter) + Send + Sync>;
type Dump = Box<dyn Fn() -> String + Send + Sync>;

/// The request that asks the control socket for the counters (also what no request means).
pub const METRICS_REQUEST: &str = "metrics";
/// The request for the log's tail trace ([`crate::log::tail_trace`], `kxgw stats --tail-trace`).
pub const TAIL_TRACE_REQUEST: &str = "tail-trace";
/// How long the control socket waits for a request line before it sends the counters (a
/// client that connects and only reads).
const REQUEST_WAIT: Duration = Duration::from_millis(200);
/// Longest request line read.
const MAX_REQUEST: usize = 128;

/// The set of providers of one gateway process.
#[derive(Default)]
pub struct Metrics {
    providers: Mutex<Vec<Provider>>,
    /// Named dumps the control socket serves on request.
    dumps: Mutex<Vec<(String, Dump)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Adds a provider; it is called on every scrape.
    pub fn register(&self, provider: impl Fn(&mut MetricsWriter) + Send + Sync + 'static) {
        self.providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(provider));
    }

    /// Adds a dump the control socket answers the request `name` with.
    pub fn register_dump(&self, name: &str, dump: impl Fn() -> String + Send + Sync + 'static) {
        self.dumps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), Box::new(dump)));
    }

    /// The control socket's answer to `request`: the counters for [`METRICS_REQUEST`] or no
    /// request, a registered dump by name, else an error line naming the known requests.
    pub fn answer(&self, request: &str) -> String {
        let request = request.trim();
        if request.is_empty() || request == METRICS_REQUEST {
            return self.render();
        }
        let dumps = self.dumps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, d)) = dumps.iter().find(|(n, _)| n == request) {
            return d();
        }
        let mut known = vec![METRICS_REQUEST.to_string()];
        known.extend(dumps.iter().map(|(n, _)| n.clone()));
        format!(
            "error: unknown control request {request:?} (known: {})\n",
            known.join(", ")
        )
    }

    /// The current counters of every provider, Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut w = MetricsWriter::default();
        for p in self
            .providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            p(&mut w);
        }
        w.out
    }
}

/// Accumulates samples; writes `# HELP`/`# TYPE` once per metric name.
#[derive(Default, Debug)]
pub struct MetricsWriter {
    out: String,
    described: std::collections::HashSet<String>,
}

impl MetricsWriter {
    /// A monotonically increasing count.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, "counter", help, labels, &value.to_string());
    }

    /// A value that goes up and down (connections open, bind mode as 0/1...).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, "gauge", help, labels, &value.to_string());
    }

    fn sample(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], v: &str) {
        let full = format!("kxgw_{name}");
        if self.described.insert(full.clone()) {
            let _ = writeln!(self.out, "# HELP {full} {help}");
            let _ = writeln!(self.out, "# TYPE {full} {kind}");
        }
        self.out.push_str(&full);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let escaped = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{escaped}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }
}

/// Serves the counters on a Unix socket: each connection gets the answer to its request line
/// (the current counters without one), then EOF. Removes a stale socket file first; the
/// returned guard removes the file on drop.
pub fn serve_unix(path: &Path, metrics: Arc<Metrics>) -> Result<SocketGuard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the control socket directory {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()))
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::thread::Builder::new()
        .name("kxgw-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(mut s) => {
                        let request = read_request(&mut s);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = s.write_all(metrics.answer(&request).as_bytes());
                    }
                    Err(e) => log::warn!("control socket: accept failed: {e}"),
                }
            }
        })
        .context("starting the control socket thread")?;
    Ok(SocketGuard(path.to_path_buf()))
}

/// The first line a control-socket client sent: up to a newline, EOF, [`MAX_REQUEST`] bytes
/// or [`REQUEST_WAIT`] of silence (then empty: the counters).
fn read_request(s: &mut std::os::unix::net::UnixStream) -> String {
    let _ = s.set_read_timeout(Some(REQUEST_WAIT));
    let mut got = Vec::new();
    let mut buf = [0u8; MAX_REQUEST];
    while got.len() < MAX_REQUEST && !got.contains(&b'\n') {
        match s.read(&mut buf[..MAX_REQUEST - got.len()]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let line = got.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

/// Removes the control socket file when the gateway stops.
#[derive(Debug)]
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads a running gateway's counters from its control socket.
pub fn fetch_unix(path: &Path) -> Result<String> {
    request_unix(path, METRICS_REQUEST)
}

/// Sends `request` to a running gateway's control socket and reads the answer.
pub fn request_unix(path: &Path, request: &str) -> Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the gateway's control socket {} (is `kxgw serve` running? \
             pass --socket for another path)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{request}\n").as_bytes())
        .with_context(|| format!("sending {request:?} to {}", path.display()))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading the answer to {request:?} from {}", path.display()))?;
    if let Some(e) = text.strip_prefix("error: ") {
        anyhow::bail!("{}: {}", path.display(), e.trim_end());
    }
    Ok(text)
}

/// One parsed sample of the text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the samples of a text-format page (comments skipped; malformed lines ignored).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
                None => (head, Vec::new()),
            };
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((k.trim_start_matches(',').to_string(), val));
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_then_parse_round_trips() {
        let m = Metrics::new();
        m.register(|w| {
            w.counter("requests_total", "Requests.", &[("api", "Fetch")], 7);
            w.counter("requests_total", "Requests.", &[("api", "Meta\"data")], 2);
            w.gauge("connections", "Open connections.", &[], 3.0);
        });
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE kxgw_requests_total counter").count(),
            1
        );
        let samples = parse(&text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "kxgw_requests_total");
        assert_eq!(
            samples[1].labels,
            vec![("api".to_string(), "Meta\"data".to_string())]
        );
        assert_eq!(samples[2].value, 3.0);
    }

    #[test]
    fn unix_socket_serves_live_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let m = Metrics::new();
        let n = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let n2 = n.clone();
        m.register(move |w| w.counter("x_total", "X.", &[], n2.load(Ordering::Relaxed)));
        let guard = serve_unix(&path, m).unwrap();
        assert!(fetch_unix(&path).unwrap().contains("kxgw_x_total 1"));
        n.store(5, Ordering::Relaxed);
        assert!(fetch_unix(&path).unwrap().contains("kxgw_x_total 5"));
        // Named requests: a registered dump, an unknown name refused, silence = counters.
        let m2 = Metrics::new();
        m2.register(|w| w.counter("y_total", "Y.", &[], 2));
        m2.register_dump("trace", || "line 1\nline 2\n".to_string());
        let path2 = dir.path().join("ctl2.sock");
        let guard2 = serve_unix(&path2, m2).unwrap();
        assert_eq!(request_unix(&path2, "trace").unwrap(), "line 1\nline 2\n");
        let e = request_unix(&path2, "nope").unwrap_err().to_string();
        assert!(
            e.contains("unknown control request") && e.contains("trace"),
            "{e}"
        );
        let mut silent = std::os::unix::net::UnixStream::connect(&path2).unwrap();
        let mut text = String::new();
        silent.read_to_string(&mut text).unwrap();
        assert!(text.contains("kxgw_y_total 2"), "{text}");
        drop(guard);
        drop(guard2);
        assert!(!path.exists());
    }

    use std::sync::atomic::Ordering;
}

//! `kxgw xdp-raw`: the AF_XDP engine with the raw echo/generator service (self-test and
//! ceiling generator, no log), and `kxgw xdp-raw-client`, its verifying client.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::flags::XdpArgs;
use kxgw::xdp::Engine;
use kxgw_testkit::raw_gen::{fetch_pattern, Pattern, RawService};

/// Flags of `kxgw xdp-raw`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// UDP endpoint to answer on (the address of --xdp-iface).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Fast-path flags (--xdp-iface is required).
    #[command(flatten)]
    pub xdp: XdpArgs,
}

/// Runs until SIGINT/SIGTERM, then prints the counters.
pub fn run(args: Args) -> Result<ExitCode> {
    // Handlers first: whoever read the banner below may signal at once.
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
    let iface = args.xdp.iface.clone().context("--xdp-iface is required")?;
    let cfg = kxgw::xdp::cli::XdpArgs::from(&args.xdp).engine_config(&iface, args.listen);
    let pattern = Pattern::new();
    let mut engine = Engine::start(&cfg, |ctx| RawService::new(pattern.clone(), &ctx))
        .with_context(|| format!("starting the AF_XDP engine on {iface}"))?;
    println!(
        "kxgw xdp-raw: serving {} on {iface}: bind mode {}, TX strategy {}, {} queue(s), MTU {}",
        args.listen,
        engine.bind_mode().name(),
        engine.tx_strategy().name(),
        engine.queues(),
        engine.mtu()
    );
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    engine.stop();
    println!("kxgw xdp-raw: engine {:?}", engine.stats());
    println!("kxgw xdp-raw: steering {:?}", engine.steering_counters()?);
    Ok(ExitCode::SUCCESS)
}

/// Flags of `kxgw xdp-raw-client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The generator's endpoint.
    #[arg(long, value_name = "IP:PORT")]
    pub server: SocketAddr,
    /// Bytes to fetch and verify.
    #[arg(long, default_value_t = 64 << 20)]
    pub bytes: u64,
    /// Datagram payload size (clamped by the server to its MTU).
    #[arg(long, default_value_t = 1400)]
    pub size: usize,
    /// Bytes requested per GEN window.
    #[arg(long, default_value_t = 1 << 20)]
    pub window: u64,
}

/// Fetches and verifies, prints throughput.
pub fn run_client(args: ClientArgs) -> Result<ExitCode> {
    let bind: SocketAddr = if args.server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    kxgw::fetch::udp::grow_recv_buffer(&sock, 64 << 20);
    let r = fetch_pattern(&sock, args.server, 0, args.bytes, args.size, args.window)?;
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    println!(
        "kxgw xdp-raw-client: {} bytes verified in {} datagrams, {} retries, {:.3} s, {:.2} Gbit/s",
        r.bytes,
        r.datagrams,
        r.retries,
        secs,
        r.bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(ExitCode::SUCCESS)
}

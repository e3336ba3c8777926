//! `kxgw stats`: a running gateway's counters, read from its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use kxgw::metrics;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's control socket (`kxgw serve --control-socket`) [default: the one live
    /// gateway socket under /run/kxgw].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Print the Prometheus text as served instead of the summary.
    #[arg(long)]
    pub raw: bool,
    /// Print the tail trace instead (tab-separated, CLOCK_MONOTONIC ns): the recent refreshes
    /// that made appended offsets readable and the replies that carried them (the bench joins
    /// it with its probe's records, `kxgw-bench tail-hops`).
    #[arg(long, conflicts_with = "raw")]
    pub tail_trace: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let socket = match args.socket {
        Some(s) => s,
        None => find_socket(Path::new(metrics::CONTROL_DIR))?,
    };
    if args.tail_trace {
        print!(
            "{}",
            metrics::request_unix(&socket, metrics::TAIL_TRACE_REQUEST)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let text = metrics::fetch_unix(&socket)?;
    if args.raw {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let samples = metrics::parse(&text);
    if samples.is_empty() {
        println!("(the gateway reports no counters yet)");
    }
    let mut last_group = String::new();
    for s in samples {
        let name = s.name.strip_prefix("kxgw_").unwrap_or(&s.name);
        // Group by the first word of the name (kafka_, udp_, xsk_, xdp_...).
        let group = name.split('_').next().unwrap_or(name).to_string();
        if group != last_group {
            println!("[{group}]");
            last_group = group;
        }
        let labels = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!("  {name:<40} {labels:<36} {}", s.value);
    }
    Ok(ExitCode::SUCCESS)
}

/// The single live gateway socket in `dir`; sockets left by killed gateways are skipped.
fn find_socket(dir: &Path) -> Result<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no gateway is running here ({} does not exist)",
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut live: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        .collect();
    live.sort();
    match live.len() {
        0 => bail!(
            "no running gateway has a control socket in {}",
            dir.display()
        ),
        1 => Ok(live.remove(0)),
        _ => bail!(
            "several gateways are running; pick one with --socket: {}",
            live.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

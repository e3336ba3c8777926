//! `kxgw stats`: a running gateway's counters, read from its control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::metrics;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's control socket (`kxgw serve --control-socket`).
    #[arg(long, default_value = metrics::DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Print the Prometheus text as served instead of the summary.
    #[arg(long)]
    pub raw: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let text = metrics::fetch_unix(&args.socket)?;
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

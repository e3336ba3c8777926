//! `kxgw serve-fetch` (hidden, temporary): the kernel-UDP fetch endpoint alone, until
//! `kxgw serve --fetch-listen` carries it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::fetch::gateway::{FetchArgs, FetchListener};
use crate::log::LogDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub log_dir: PathBuf,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let log = LogDir::open(&args.log_dir, None)
        .with_context(|| format!("opening log directory {}", args.log_dir.display()))?;
    let _follower = log
        .spawn_follower(Duration::from_millis(50))
        .context("starting the log follower")?;
    let Some(l) = FetchListener::start(&log, &args.fetch)? else {
        anyhow::bail!("give --fetch-listen IP:PORT");
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    log::info!("fetch stats: {}", l.stats());
    l.shutdown();
    Ok(ExitCode::SUCCESS)
}

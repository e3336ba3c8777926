mod cluster_flags;
mod cmd;
mod compact;
mod flags;
mod group_flags;
mod metrics_http;
mod security_flags;
mod tls_flags;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// kxgw: a kernel-bypass consumer gateway for Kafka partition logs.
#[derive(Debug, Parser)]
#[command(name = "kxgw", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write demo partition logs in a broker's on-disk format (optionally keep appending).
    Produce(cmd::produce::Args),
    /// List and verify the batches of a log dir, partition dir or segment file.
    Inspect(cmd::inspect::Args),
    /// Serve partition logs to consumers (Kafka protocol over TCP, kxgw fetch over UDP).
    // Boxed: its flags make it far larger than the other variants (clippy::large_enum_variant).
    Serve(Box<cmd::serve::Args>),
    /// Show a running gateway's counters (from its control socket).
    Stats(cmd::stats::Args),
    /// Consume a partition over the kxgw UDP fetch protocol (Kafka TCP fallback).
    Consume(cmd::consume::Args),
    /// Run the gateway end to end on a veth pair: demo log, AF_XDP + Kafka TCP, consumers.
    Demo(cmd::demo::Args),
    /// AF_XDP engine with the raw echo/generator service (self-test, ceiling generator).
    XdpRaw(cmd::xdp_raw::Args),
    /// Verifying client of `kxgw xdp-raw`.
    XdpRawClient(cmd::xdp_raw::ClientArgs),
    /// Manage the SASL users file of `kxgw serve --sasl-users`.
    Users(cmd::users::Args),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("kxgw: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = match cli.cmd {
        Cmd::Produce(args) => cmd::produce::run(args),
        Cmd::Inspect(args) => cmd::inspect::run(args),
        Cmd::Serve(args) => cmd::serve::run(*args),
        Cmd::Stats(args) => cmd::stats::run(args),
        Cmd::Consume(args) => cmd::consume::run(args),
        Cmd::Demo(args) => cmd::demo::run(args),
        Cmd::XdpRaw(args) => cmd::xdp_raw::run(args),
        Cmd::XdpRawClient(args) => cmd::xdp_raw::run_client(args),
        Cmd::Users(args) => cmd::users::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kxgw: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line, with `serve --config FILE` expanded into flags first.
fn parse_cli() -> anyhow::Result<Cli> {
    let cmd = Cli::command();
    let known: Vec<String> = cmd
        .find_subcommand("serve")
        .map(|serve| {
            serve
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let argv = kxgw::config::expand_serve_config(std::env::args_os().collect(), &known)?;
    Ok(Cli::parse_from(argv))
}

//! The `memray` command. Each subcommand lives in `commands/`; this file only wires clap.

mod commands;
mod payload_file;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "memray", version, about = "Memory profiler for Python (Memray-compatible)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Python program with every allocation tracked
    Run(commands::run::RunArgs),
    /// Print high-level statistics of a capture (or write them as JSON)
    Stats(commands::stats::StatsArgs),
    /// Print every record of a capture as text (stdout must not be a terminal)
    Parse(commands::parse::ParseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(commands::run::normalize_argv(std::env::args().collect()));
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Stats(args) => commands::stats::run(args),
        Command::Parse(args) => commands::parse::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memray: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

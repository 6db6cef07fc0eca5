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
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(commands::run::normalize_argv(std::env::args().collect()));
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memray: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

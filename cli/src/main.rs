//! The `memray` command. Each subcommand lives in `commands/`; this file only wires clap.

mod commands;
mod payload_file;
mod progress_bar;
mod usage_error;

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
    /// Start tracking a running Python process (ptrace; a capture with -o, else a live view)
    Attach(commands::attach::AttachArgs),
    /// Stop tracking a process that `memray attach` is tracking
    Detach(commands::attach::DetachArgs),
    /// Watch a process started with `memray run --live-remote` in a terminal view
    Live(commands::live::LiveArgs),
    /// Write an HTML flame graph of the memory at the peak (or leaked, or temporary)
    Flamegraph(commands::flamegraph::FlamegraphArgs),
    /// Write an HTML table of the allocation sites at the peak (or leaked, or temporary)
    Table(commands::table::TableArgs),
    /// Show the biggest allocation paths at the peak as a tree
    Tree(commands::tree::TreeArgs),
    /// Print a table of the functions that allocate the most memory
    Summary(commands::summary::SummaryArgs),
    /// Write the allocations as gprof2dot, CSV or speedscope files
    Transform(commands::transform::TransformArgs),
    /// Records of a capture as JSON lines (used by memray.FileReader)
    #[command(hide = true)]
    ExportRecords(commands::export::ExportArgs),
    /// A live stream's current snapshot on request (used by memray.SocketReader)
    #[command(hide = true)]
    SocketReader(commands::socket_reader::SocketReaderArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(commands::run::normalize_argv(std::env::args().collect()));
    let report = matches!(
        cli.command,
        Command::Stats(_)
            | Command::Parse(_)
            | Command::Flamegraph(_)
            | Command::Table(_)
            | Command::Tree(_)
            | Command::Summary(_)
            | Command::Transform(_)
    );
    if report {
        // As Memray's reporters do: a capture cut inside a record reads up to the cut.
        memray_capture::cut::read_cut_captures_to_the_end(|msg| eprintln!("memray: warning: {msg}"));
        // `parse` streams its records to stdout: no bar over them.
        if !matches!(cli.command, Command::Parse(_)) {
            progress_bar::install();
        }
    }
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Stats(args) => commands::stats::run(args),
        Command::Parse(args) => commands::parse::run(args),
        Command::Attach(args) => commands::attach::attach(args),
        Command::Detach(args) => commands::attach::detach(args),
        Command::Live(args) => commands::live::run(args),
        Command::Flamegraph(args) => commands::flamegraph::run(args),
        Command::Table(args) => commands::table::run(args),
        Command::Tree(args) => commands::tree::run(args),
        Command::Summary(args) => commands::summary::run(args),
        Command::Transform(args) => commands::transform::run(args),
        Command::ExportRecords(args) => commands::export::run(args),
        Command::SocketReader(args) => commands::socket_reader::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memray: error: {e:#}");
            if e.downcast_ref::<usage_error::UsageError>().is_some() {
                ExitCode::from(usage_error::EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

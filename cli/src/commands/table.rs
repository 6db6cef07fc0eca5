//! `memray table`: a self-contained HTML table of allocation sites.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use memray_reporter::render::html::{self, HtmlOptions};

use super::flamegraph::{write_report, KindArgs, OutputArgs};

#[derive(Args, Debug)]
pub struct TableArgs {
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    kind: KindArgs,
    /// Do not merge allocations across threads
    #[arg(long)]
    split_threads: bool,
}

pub fn run(args: TableArgs) -> Result<ExitCode> {
    let options = HtmlOptions { kind: args.kind.kind(), split_threads: args.split_threads, ..HtmlOptions::default() };
    write_report(&args.out, "table", |paths| match paths {
        [one] => html::table(one, &options),
        several => html::table_merged(several, &options),
    })
}

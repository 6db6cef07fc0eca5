//! `memray socket-reader PORT` (hidden): what `memray.SocketReader` asks of a tracked
//! process streaming to a `SocketDestination`, as JSON lines.
//!
//! It connects (retrying while nothing listens yet), prints the stream's header as
//! `{"header": {...}}`, then keeps folding the stream into the allocations live now. On
//! stdin, `snapshot` (or `snapshot split`, threads kept apart) prints those allocations
//! merged per location as `memray export-records` prints records (frames, stacks and
//! thread names sent once for the whole session), then `["END", active]`; `status` prints
//! `["STATUS", active]`. `active` turns false once the stream has ended. Requests are
//! answered between records: a tracked process writes one at least every memory interval.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use memray_capture::Reader;
use memray_reporter::engine::records::{CaptureCursor, Event, SnapshotAggregator};
use memray_reporter::render::transform::json_str;

use super::export::Sender;

#[derive(Args, Debug)]
pub struct SocketReaderArgs {
    /// Port the tracked process listens on
    port: u16,
    /// Its address
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Seconds to keep trying to connect
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

enum Request {
    Snapshot { merge_threads: bool },
    Status,
}

pub fn run(args: SocketReaderArgs) -> Result<ExitCode> {
    let addr = super::live::resolve(&args.address, args.port)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout.clamp(0.0, 1e6));
    let stream = super::live::connect(addr, deadline, || Ok(()))?;
    let reader = Reader::new(stream).with_context(|| format!("{addr} did not send a memray capture stream"))?;
    let mut cursor = CaptureCursor::new(reader, true);
    let h = cursor.header().clone();
    let stdout = std::io::stdout();
    {
        let mut out = stdout.lock();
        writeln!(
            out,
            "{{\"header\": {{\"pid\": {}, \"command_line\": {}, \"has_native_traces\": {}, \"main_thread_id\": {}, \
             \"skipped_frames_on_main_tid\": {}}}}}",
            h.pid,
            json_str(&h.command_line),
            h.native_traces,
            h.main_tid,
            h.skipped_frames_on_main_tid
        )?;
        out.flush()?;
    }

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let request = match line.trim() {
                "snapshot" => Request::Snapshot { merge_threads: true },
                "snapshot split" => Request::Snapshot { merge_threads: false },
                "status" => Request::Status,
                _ => continue,
            };
            if tx.send(request).is_err() {
                break;
            }
        }
        // stdin closed: the Python side is done with us.
        std::process::exit(0);
    });

    let mut live = SnapshotAggregator::new();
    let mut sender = Sender::new(stdout, h.native_traces);
    let mut active = true;
    loop {
        if active {
            match cursor.next_event() {
                Ok(Some(Event::Allocation(r))) => live.add(&r),
                Ok(Some(_)) => {}
                // The tracked process ended (or the stream broke): what was read stays.
                Ok(None) | Err(_) => active = false,
            }
        }
        let request = if active {
            match rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty) => continue,
                Err(TryRecvError::Disconnected) => return Ok(ExitCode::SUCCESS),
            }
        } else {
            match rx.recv() {
                Ok(r) => r,
                Err(_) => return Ok(ExitCode::SUCCESS),
            }
        };
        match request {
            Request::Status => writeln!(sender.out(), "[\"STATUS\",{active}]")?,
            Request::Snapshot { merge_threads } => {
                let records = live.records(merge_threads);
                if h.native_traces {
                    cursor.native.prepare(records.iter().map(|r| (r.native_frame_id, r.native_segment_generation)));
                }
                for r in &records {
                    sender.record((&cursor.stacks, &cursor.native, &cursor.thread_names), r)?;
                }
                writeln!(sender.out(), "[\"END\",{active}]")?;
            }
        }
        sender.out().flush()?;
    }
}

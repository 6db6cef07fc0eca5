//! Text dump in the exact format of `memray parse` (Memray 1.20), for diffing captures
//! against the reference implementation and for a `parse` subcommand.

use std::io::{Read, Write};

use crate::{CaptureError, FileFormat, PythonAllocator, Reader, Record};

/// glibc's `%p`.
fn ptr(v: u64) -> String {
    if v == 0 {
        "(nil)".to_string()
    } else {
        format!("{v:#x}")
    }
}

/// Writes the header line and one line per record, as `memray parse` prints them
/// (including its quirks: `malloc` as the Python allocator prints as "pymalloc"). On a
/// read error, everything before it has been written and the error is returned.
pub fn memray_parse_dump<R: Read>(reader: &mut Reader<R>, out: &mut impl Write) -> Result<(), CaptureError> {
    let h = reader.header().clone();
    let python_allocator = match h.python_allocator {
        PythonAllocator::Malloc => "pymalloc",
        PythonAllocator::PymallocDebug => "pymalloc debug",
        PythonAllocator::MimallocDebug => "mimalloc debug",
        other => other.name(),
    };
    writeln!(
        out,
        "HEADER magic=memray version={} python_version={:08x} native_traces={} file_format={} \
         n_allocations={} n_frames={} start_time={} end_time={} pid={} main_tid={} \
         skipped_frames_on_main_tid={} command_line={} python_allocator={} \
         trace_python_allocators={} track_object_lifetimes={} libdest={} site_packages=[{}] sys.path=[{}]",
        h.version,
        h.python_version,
        h.native_traces,
        h.file_format.name(),
        h.n_allocations,
        h.sampling_interval,
        h.start_time_ms,
        h.end_time_ms,
        h.pid,
        h.main_tid,
        h.skipped_frames_on_main_tid,
        h.command_line,
        python_allocator,
        h.trace_python_allocators,
        h.track_object_lifetimes,
        h.libdest,
        h.site_packages.join(", "),
        h.sys_path.join(", "),
    )?;
    let aggregated = h.file_format == FileFormat::AggregatedAllocations;
    while let Some(record) = reader.next_record()? {
        write_record(out, &record, aggregated)?;
    }
    if reader.reached_trailer() {
        writeln!(out, "{}", if aggregated { "AGGREGATED_TRAILER" } else { "TRAILER" })?;
    }
    Ok(())
}

fn write_record(out: &mut impl Write, record: &Record, aggregated: bool) -> std::io::Result<()> {
    match *record {
        Record::ContextSwitch { tid } => writeln!(out, "CONTEXT_SWITCH tid={tid}"),
        Record::FramePush { code_object_id, instruction_offset, is_entry, .. } => writeln!(
            out,
            "FRAME_PUSH code_object_id={code_object_id} instruction_offset={instruction_offset} \
             is_entry_frame={}",
            is_entry as u8
        ),
        Record::FramePop { count, .. } => writeln!(out, "FRAME_POP count={count}"),
        Record::Allocation { address, size, allocator, native_frame_id, .. } => writeln!(
            out,
            "ALLOCATION address={} size={size} allocator={} native_frame_id={native_frame_id}",
            ptr(address),
            allocator.name()
        ),
        Record::Object { address, native_frame_id, .. } => {
            writeln!(out, "OBJECT_RECORD address={} native_frame_id={native_frame_id}", ptr(address))
        }
        Record::Memory { rss, ms_since_epoch } => {
            writeln!(out, "MEMORY_RECORD time={ms_since_epoch} memory={rss}")
        }
        Record::Thread { ref name, .. } => {
            let label = if aggregated { "THREAD_RECORD" } else { "THREAD" };
            writeln!(out, "{label} {name}")
        }
        Record::CodeObject(ref c) => writeln!(
            out,
            "CODE_OBJECT code_id={} function_name={} filename={} firstlineno={} linetable_size={}",
            c.id,
            c.function,
            c.filename,
            c.firstlineno,
            c.linetable.len()
        ),
        Record::NativeFrame(f) => {
            let label = if aggregated { "NATIVE_TRACE_INDEX" } else { "NATIVE_FRAME_ID" };
            writeln!(out, "{label} ip={} index={}", ptr(f.ip), f.parent)
        }
        Record::MemoryMapStart => writeln!(out, "MEMORY_MAP_START"),
        Record::SegmentHeader { ref filename, num_segments, load_addr } => {
            writeln!(out, "SEGMENT_HEADER filename={filename} num_segments={num_segments} addr={}", ptr(load_addr))
        }
        Record::Segment(s) => writeln!(out, "SEGMENT {} {:x}", ptr(s.vaddr), s.memsz),
        Record::MemorySnapshot(m) => writeln!(out, "MEMORY_SNAPSHOT time={} rss={} heap={}", m.ms_since_epoch, m.rss, m.heap),
        Record::AggregatedAllocation(a) => writeln!(
            out,
            "AGGREGATED_ALLOCATION tid={} allocator={} native_frame_id={} python_frame_id={} \
             native_segment_generation={} n_allocations_in_high_water_mark={} \
             n_allocations_leaked={} bytes_in_high_water_mark={} bytes_leaked={}",
            a.tid,
            a.allocator.name(),
            a.native_frame_id,
            a.frame_index,
            a.native_segment_generation,
            a.n_allocations_in_high_water_mark,
            a.n_allocations_leaked,
            a.bytes_in_high_water_mark,
            a.bytes_leaked
        ),
        Record::PythonFrame { frame_id, frame } => writeln!(
            out,
            "PYTHON_FRAME_INDEX frame_id={frame_id} code_object_id={} instruction_offset={} \
             is_entry_frame={}",
            frame.code_object_id, frame.instruction_offset, frame.is_entry as u8
        ),
        Record::PythonTraceNode(n) => writeln!(out, "PYTHON_TRACE_INDEX frame_id={} parent_index={}", n.frame_id, n.parent_index),
        // Memray's format string has "0x%p", hence the doubled prefix.
        Record::SurvivingObject(o) => writeln!(out, "SURVIVING_OBJECT address=0x{} native_frame_id={}", ptr(o.address), o.native_frame_id),
    }
}

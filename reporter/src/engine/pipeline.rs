//! One reading pass split over two threads: this thread decodes records and keeps the
//! stacks and locations (the front); a second applies the resulting [`HeapEvent`]s to
//! the live-block tables (the back). Each side's tables stay in its own core's cache,
//! and the two halves of the per-record work overlap.
//!
//! Events travel in batches of [`BATCH`], and emptied batches come back for reuse, so
//! the pass allocates a handful of buffers whatever the capture's length and a thread
//! wakes at most once per batch.

use std::io::Read;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

use memray_capture::{Reader, Record};

use crate::engine::analysis::{HeapEvent, HeapSide};
use crate::error::ReportError;

/// Events per batch: 192 KB, small enough to stay in a core's L2 cache, large enough
/// that handing batches over costs little.
const BATCH: usize = 8192;
/// How many events ahead the back prefetches.
const AHEAD: usize = 12;
/// Full batches the front may run ahead of the back.
const DEPTH: usize = 4;

/// The front's end: collects events into batches and sends them to the back.
pub(crate) struct Batcher {
    batch: Vec<HeapEvent>,
    full: Option<SyncSender<Vec<HeapEvent>>>,
    empty: Receiver<Vec<HeapEvent>>,
}

impl HeapSide for Batcher {
    #[inline(always)]
    fn apply(&mut self, event: HeapEvent) {
        self.batch.push(event);
        if self.batch.len() == BATCH {
            self.send();
        }
    }
}

impl Batcher {
    #[cold]
    #[inline(never)]
    fn send(&mut self) {
        let next = self.empty.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let full = std::mem::replace(&mut self.batch, next);
        if let Some(tx) = &self.full {
            // Fails only if the back thread is gone (it panicked): joining it reports that.
            let _ = tx.send(full);
        }
    }

    /// Sends what is left and closes the channel, so that the back finishes.
    fn close(&mut self) {
        if !self.batch.is_empty() {
            self.send();
        }
        self.full = None;
    }
}

/// Runs `front` on every record of `reader` (as [`Reader::for_each_record`] does) and
/// `back` on the events it emits, on a second thread; returns `back` once it has seen
/// them all. `back` sees the events in the order they were emitted.
pub(crate) fn run<R: Read, B: HeapSide + Send>(
    reader: &mut Reader<R>,
    stop_at_truncation: bool,
    mut back: B,
    mut front: impl FnMut(Record, &mut Batcher) -> Result<(), ReportError>,
) -> Result<B, ReportError> {
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = sync_channel::<Vec<HeapEvent>>(DEPTH);
        let (empty_tx, empty_rx) = channel::<Vec<HeapEvent>>();
        let worker = std::thread::Builder::new()
            .name("capture-heap".into())
            .spawn_scoped(scope, move || {
                apply_batches(&mut back, full_rx, empty_tx);
                back
            })
            .map_err(|e| ReportError::Io(std::io::Error::new(e.kind(), format!("cannot start a thread: {e}"))))?;
        let mut batcher = Batcher { batch: Vec::with_capacity(BATCH), full: Some(full_tx), empty: empty_rx };
        let result = reader.for_each_record(
            stop_at_truncation,
            #[inline(always)]
            |record| front(record, &mut batcher).map(|()| true),
        );
        batcher.close();
        let back = worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        result.map(|()| back)
    })
}

fn apply_batches<B: HeapSide>(back: &mut B, full: Receiver<Vec<HeapEvent>>, empty: Sender<Vec<HeapEvent>>) {
    for mut batch in full {
        // The whole batch is known: warm the cache for the event `AHEAD` places on while
        // applying this one (the live-block table is too big for L1, and its accesses
        // are random).
        for i in 0..batch.len() {
            if let Some(later) = batch.get(i + AHEAD) {
                back.prefetch(later);
            }
            back.apply(batch[i]);
        }
        batch.clear();
        // The front may have finished and dropped its end: then the buffer just goes.
        let _ = empty.send(batch);
    }
}

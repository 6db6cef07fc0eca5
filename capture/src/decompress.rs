//! LZ4 decompression on its own thread, for files: the decoder then reads plain bytes
//! while the next ones are decompressed (decompression is a sizeable part of reading a
//! compressed capture).

use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::thread;

/// Decompressed bytes per hand-over.
const CHUNK: usize = 256 * 1024;
/// Chunks decompressed ahead of the reader.
const AHEAD: usize = 4;

/// The decompressed stream of an LZ4 frame, decompressed by a background thread. Reads
/// return exactly what the decoder would have returned, errors included, in order.
pub(crate) struct Decompressing {
    chunks: Receiver<io::Result<Vec<u8>>>,
    /// Read chunks go back for reuse: no zeroing, no fresh pages to fault in.
    recycle: Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Decompressing {
    /// Starts decompressing `frame` (an LZ4 frame from its first byte). `None` if no
    /// thread could be started: the caller then decompresses inline.
    pub(crate) fn start<R: Read + Send + 'static>(frame: R) -> Result<Self, R> {
        let (tx, rx) = sync_channel(AHEAD);
        let (recycle_tx, recycle_rx) = channel::<Vec<u8>>();
        let (handoff_tx, handoff_rx) = sync_channel::<R>(1);
        let spawned = thread::Builder::new().name("capture-lz4".into()).spawn(move || {
            let Ok(frame) = handoff_rx.recv() else { return };
            let mut decoder = lz4_flex::frame::FrameDecoder::new(frame);
            loop {
                let mut chunk = recycle_rx.try_recv().unwrap_or_default();
                chunk.resize(CHUNK, 0);
                let mut filled = 0;
                let result = loop {
                    match decoder.read(&mut chunk[filled..]) {
                        Ok(0) => break Ok(true),
                        Ok(n) => {
                            filled += n;
                            if filled == chunk.len() {
                                break Ok(false);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                chunk.truncate(filled);
                let (last, failure) = match result {
                    Ok(end) => (end, None),
                    Err(e) => (true, Some(e)),
                };
                // A reader that stopped early dropped the receiver: stop here.
                if !chunk.is_empty() && tx.send(Ok(chunk)).is_err() {
                    return;
                }
                if last {
                    let _ = tx.send(failure.map_or(Ok(Vec::new()), Err));
                    return;
                }
            }
        });
        match spawned {
            Ok(_) => {
                // The thread exists: hand it the frame (it only ends after receiving it).
                handoff_tx.send(frame).expect("the decompression thread waits for its input");
                Ok(Decompressing { chunks: rx, recycle: recycle_tx, chunk: Vec::new(), pos: 0, done: false })
            }
            Err(_) => Err(frame),
        }
    }
}

impl Read for Decompressing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.pos);
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    let used = std::mem::replace(&mut self.chunk, chunk);
                    // The thread may have finished: then the buffer just goes.
                    let _ = self.recycle.send(used);
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread ended without its end marker: only a panic does that (and
                // panics abort), so report it rather than a clean end.
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the decompression thread stopped unexpectedly"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    #[test]
    fn many_chunks_come_out_whole_and_in_order() {
        // Compressible but not trivial: 3 MB, about a dozen chunks, so buffers are
        // recycled several times.
        let mut data = Vec::with_capacity(3 << 20);
        let mut x = 1u32;
        while data.len() < 3 << 20 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.extend_from_slice(&[(x >> 24) as u8 & 0x0f; 3]);
        }
        let mut lz = crate::encoder::lz4_frame_encoder(Vec::new());
        lz.write_all(&data).unwrap();
        let frame = lz.finish().unwrap();

        let Ok(mut d) = Decompressing::start(Cursor::new(frame)) else { panic!("no thread") };
        let mut out = Vec::new();
        // Odd-sized reads that straddle chunk boundaries.
        let mut buf = vec![0u8; 70_001];
        loop {
            let n = d.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out.len(), data.len());
        assert!(out == data, "decompressed bytes differ");
    }
}

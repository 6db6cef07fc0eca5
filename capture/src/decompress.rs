//! LZ4 decompression on its own thread, for files: the decoder then reads plain bytes
//! while the next ones are decompressed (decompression is a sizeable part of reading a
//! compressed capture).

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

/// Decompressed bytes per hand-over.
const CHUNK: usize = 256 * 1024;
/// Chunks decompressed ahead of the reader.
const AHEAD: usize = 4;

/// The decompressed stream of an LZ4 frame, decompressed by a background thread. Reads
/// return exactly what the decoder would have returned, errors included, in order.
pub(crate) struct Decompressing {
    chunks: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Decompressing {
    /// Starts decompressing `frame` (an LZ4 frame from its first byte). `None` if no
    /// thread could be started: the caller then decompresses inline.
    pub(crate) fn start<R: Read + Send + 'static>(frame: R) -> Result<Self, R> {
        let (tx, rx) = sync_channel(AHEAD);
        let (handoff_tx, handoff_rx) = sync_channel::<R>(1);
        let spawned = thread::Builder::new().name("capture-lz4".into()).spawn(move || {
            let Ok(frame) = handoff_rx.recv() else { return };
            let mut decoder = lz4_flex::frame::FrameDecoder::new(frame);
            loop {
                let mut chunk = vec![0u8; CHUNK];
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
                Ok(Decompressing { chunks: rx, chunk: Vec::new(), pos: 0, done: false })
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
                    self.chunk = chunk;
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

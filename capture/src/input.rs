//! The reader's byte layer: its own buffer over any `Read` (a `BufReader` per byte was
//! the decoder's main cost), the stream offset, an optional end, and the record being
//! read, so that running out of data becomes a precise `Truncated`.

use std::io::{self, Read};

use crate::varint::{unzigzag, MAX_VARINT_LEN};
use crate::{CaptureError, MAX_STRING_LEN};

pub(crate) struct Input<S> {
    src: S,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Bytes past this offset are not data (Memray's zero padding).
    limit: u64,
    eof: bool,
    record_start: u64,
    pub(crate) record: &'static str,
}

/// An I/O error from the source: a short LZ4 frame is a truncation, a bad one is a
/// decompression error, anything else is passed on.
fn map_io_error(e: io::Error, record_start: u64, record: &'static str, offset: u64) -> CaptureError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return CaptureError::Truncated { offset: record_start, record };
    }
    if e.get_ref().is_some_and(|inner| inner.is::<lz4_flex::frame::Error>()) {
        return CaptureError::Decompression { offset, message: e.to_string() };
    }
    CaptureError::Io(e)
}

impl<S: Read> Input<S> {
    pub(crate) fn new(src: S, buf_size: usize) -> Self {
        Input {
            src,
            buf: vec![0; buf_size.max(16)].into_boxed_slice(),
            pos: 0,
            end: 0,
            base: 0,
            limit: u64::MAX,
            eof: false,
            record_start: 0,
            record: "header",
        }
    }

    /// Ends the data at stream offset `limit`, including bytes already buffered. A limit
    /// behind the current position ends the data here.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
        let allowed = limit.saturating_sub(self.base).min(self.end as u64) as usize;
        self.end = allowed.max(self.pos);
        if limit <= self.offset() {
            self.limit = self.offset();
        }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(crate) fn begin(&mut self, record: &'static str) {
        self.record_start = self.offset();
        self.record = record;
    }

    pub(crate) fn truncated(&self) -> CaptureError {
        CaptureError::Truncated { offset: self.record_start, record: self.record }
    }

    pub(crate) fn corrupt(&self, what: impl Into<String>) -> CaptureError {
        CaptureError::Corrupt { offset: self.record_start, what: what.into() }
    }

    /// The bytes buffered past the current position (all within the data's end).
    #[inline]
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Consumes `n` bytes of [`Input::buffered`].
    #[inline]
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(self.pos + n <= self.end);
        self.pos += n;
    }

    /// Makes bytes available after the buffer ran dry; `false` at the end of the data.
    #[cold]
    fn refill(&mut self) -> Result<bool, CaptureError> {
        debug_assert_eq!(self.pos, self.end);
        self.base += self.end as u64;
        self.pos = 0;
        self.end = 0;
        let room = self.limit.saturating_sub(self.base).min(self.buf.len() as u64) as usize;
        if self.eof || room == 0 {
            return Ok(false);
        }
        loop {
            match self.src.read(&mut self.buf[..room]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_io_error(e, self.record_start, self.record, self.base)),
            }
        }
    }

    /// The buffered bytes, refilling if empty; empty only at the end of the data.
    #[inline]
    fn available(&mut self) -> Result<&[u8], CaptureError> {
        if self.pos == self.end && !self.refill()? {
            return Ok(&[]);
        }
        Ok(&self.buf[self.pos..self.end])
    }

    #[inline]
    pub(crate) fn try_u8(&mut self) -> Result<Option<u8>, CaptureError> {
        if self.pos == self.end && !self.refill()? {
            return Ok(None);
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(Some(b))
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, CaptureError> {
        match self.try_u8()? {
            Some(b) => Ok(b),
            None => Err(self.truncated()),
        }
    }

    /// Reads into `out` as far as the data goes; returns how much was read.
    pub(crate) fn read_up_to(&mut self, out: &mut [u8]) -> Result<usize, CaptureError> {
        let mut done = 0;
        while done < out.len() {
            let avail = self.available()?;
            if avail.is_empty() {
                break;
            }
            let n = avail.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&avail[..n]);
            self.pos += n;
            done += n;
        }
        Ok(done)
    }

    #[inline]
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CaptureError> {
        let mut a = [0u8; N];
        if self.end - self.pos >= N {
            a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
            self.pos += N;
        } else if self.read_up_to(&mut a)? < N {
            return Err(self.truncated());
        }
        Ok(a)
    }

    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, CaptureError> {
        Ok(u64::from_ne_bytes(self.array()?))
    }

    /// LEB128, at most 10 bytes (as Memray's reader; bits past 64 are dropped).
    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64, CaptureError> {
        if self.end - self.pos >= MAX_VARINT_LEN {
            let mut v = 0u64;
            for i in 0..MAX_VARINT_LEN {
                let b = self.buf[self.pos + i];
                v |= ((b & 0x7f) as u64) << (7 * i);
                if b & 0x80 == 0 {
                    self.pos += i + 1;
                    return Ok(v);
                }
            }
            self.pos += MAX_VARINT_LEN;
            return Err(self.corrupt("varint longer than 10 bytes"));
        }
        self.varint_slow()
    }

    #[cold]
    fn varint_slow(&mut self) -> Result<u64, CaptureError> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("varint longer than 10 bytes"))
    }

    #[inline]
    pub(crate) fn svarint(&mut self) -> Result<i64, CaptureError> {
        Ok(unzigzag(self.varint()?))
    }

    /// A NUL-terminated string of at most `MAX_STRING_LEN` bytes (lossily made UTF-8).
    pub(crate) fn cstr(&mut self) -> Result<String, CaptureError> {
        let mut out = Vec::new();
        loop {
            let avail = self.available()?;
            if avail.is_empty() {
                return Err(self.truncated());
            }
            let (n, found) = match avail.iter().position(|&b| b == 0) {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            if out.len() + n > MAX_STRING_LEN {
                return Err(self.corrupt(format!("string longer than {MAX_STRING_LEN} bytes")));
            }
            out.extend_from_slice(&avail[..n]);
            self.pos += n + found as usize;
            if found {
                return Ok(match String::from_utf8(out) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                });
            }
        }
    }

    /// `len` raw bytes; the buffer grows with the data actually present.
    pub(crate) fn bytes(&mut self, len: u64) -> Result<Vec<u8>, CaptureError> {
        let mut out = Vec::with_capacity(len.min(4096) as usize);
        let mut left = len;
        while left > 0 {
            let avail = self.available()?;
            if avail.is_empty() {
                return Err(self.truncated());
            }
            let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            out.extend_from_slice(&avail[..n]);
            self.pos += n;
            left -= n as u64;
        }
        Ok(out)
    }

    /// Whether only zero bytes remain (consuming them).
    pub(crate) fn rest_is_zero(&mut self) -> Result<bool, CaptureError> {
        loop {
            let avail = self.available()?;
            if avail.is_empty() {
                return Ok(true);
            }
            if avail.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            self.pos = self.end;
        }
    }
}

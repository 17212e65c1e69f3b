//! A blob file written at offsets (ranged chunks, out of order) and read back in order: the
//! *contiguous prefix* `[0, frontier)` is what the writers declared complete, and the reader
//! (the layer pipeline's digest stage) takes it in big spans as it grows.
//!
//! Writers `write_at` anywhere in `[frontier, size)` (a chunk ahead of the prefix) and
//! `advance` the frontier once the bytes before it are all written; `append` is both at once
//! for a single stream. Bytes below the frontier are never written again (a late write of a
//! stopped range worker there is refused), so what the reader hashed is what the file keeps:
//! the file becomes the blob. The reader waits until at least `SPAN` bytes (or the rest, once
//! closed or at `size`) are ready, so small network pieces cost no per-piece work downstream.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::digest;
use crate::error::{Error, Result};

/// Smallest span the reader takes while more is still to come (and the largest it takes).
pub const SPAN: usize = 1 << 20;
/// Bytes `append` may run ahead of the reader before it waits (the single stream's
/// backpressure: the network read pauses while the pipeline is the limit). One span (never
/// less, or the reader could wait for a span the waiting writer never completes): with the
/// feeder's queue this keeps the slack of the old in-memory queue (~4 MiB), which the
/// fetcher's adaptive split relies on (a stream whose writes never wait looks link-bound).
pub const APPEND_AHEAD: u64 = SPAN as u64;

#[derive(Default)]
struct State {
    /// `[0, frontier)` is written.
    frontier: u64,
    /// `[0, read)` went to the reader.
    read: u64,
    /// No more bytes come: the reader drains to the frontier and ends.
    closed: bool,
    /// Stop at once: the reader and waiting writers fail.
    aborted: bool,
}

/// The shared file and its prefix; writers and the reader hold it through an `Arc`.
pub struct Prefix {
    file: File,
    shown: String,
    /// Writes past it are refused (the descriptor's size), if known.
    size: Option<u64>,
    state: Mutex<State>,
    /// Signalled when the frontier grows, the reader moves, or the prefix closes or aborts.
    changed: Condvar,
}

impl Prefix {
    /// `file` already holds `held` bytes of the blob in order (a resumed download, or the whole
    /// blob on disk): they are the initial prefix.
    pub fn new(file: File, shown: String, size: Option<u64>, held: u64) -> Result<Self> {
        if let Some(size) = size {
            if held > size {
                return Err(digest::size_mismatch(size, held));
            }
        }
        Ok(Self {
            file,
            shown,
            size,
            state: Mutex::new(State {
                frontier: held,
                ..State::default()
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The end of `[offset, offset + len)`, refused past `size` (checked arithmetic).
    fn end_of(&self, offset: u64, len: usize) -> Result<u64> {
        let end = u64::try_from(len)
            .ok()
            .and_then(|n| offset.checked_add(n))
            .ok_or_else(|| Error::State(format!("write at {offset} overflows")))?;
        if let Some(size) = self.size {
            if end > size {
                return Err(digest::size_mismatch(size, end));
            }
        }
        Ok(end)
    }

    fn usable(&self, st: &State) -> Result<()> {
        if st.aborted {
            return Err(Error::State("layer writer aborted".into()));
        }
        if st.closed {
            return Err(Error::State("layer writer is closed".into()));
        }
        Ok(())
    }

    fn pwrite(&self, data: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("write", self.shown.clone(), e))
    }

    /// Write `data` at `offset`, which must not lie below the frontier. Under the lock, so a
    /// refused late write can never land after the frontier passed it.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.end_of(offset, data.len())?;
        let st = self.lock();
        self.usable(&st)?;
        if offset < st.frontier {
            return Err(Error::State(format!(
                "write at {offset}, below the contiguous prefix ({})",
                st.frontier
            )));
        }
        self.pwrite(data, offset)
    }

    /// Declare `[0, to)` written; a smaller `to` than the frontier changes nothing.
    pub fn advance(&self, to: u64) -> Result<()> {
        self.end_of(to, 0)?;
        let mut st = self.lock();
        self.usable(&st)?;
        if to > st.frontier {
            st.frontier = to;
            self.notify(&st);
        }
        Ok(())
    }

    /// Write `data` at the frontier and move it past; waits (before writing) while the reader
    /// is more than `APPEND_AHEAD` behind.
    pub fn append(&self, data: &[u8]) -> Result<()> {
        let mut st = self.lock();
        loop {
            self.usable(&st)?;
            if st.frontier - st.read <= APPEND_AHEAD {
                break;
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let end = self.end_of(st.frontier, data.len())?;
        self.pwrite(data, st.frontier)?;
        st.frontier = end;
        self.notify(&st);
        Ok(())
    }

    fn notify(&self, st: &State) {
        let ready = st.frontier - st.read;
        if ready >= SPAN as u64 || Some(st.frontier) == self.size {
            self.changed.notify_all();
        }
    }

    /// The frontier: bytes accepted in order.
    pub fn frontier(&self) -> u64 {
        self.lock().frontier
    }

    /// No more bytes: the reader takes the rest up to the frontier and ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Stop the reader and any waiting writer.
    pub fn abort(&self) {
        self.lock().aborted = true;
        self.changed.notify_all();
    }

    /// Read the next span in order into `buf` (resized to it): waits until `SPAN` bytes are
    /// ready, or the rest once closed or at `size`. `Ok(false)` at the end.
    pub fn next_span(&self, buf: &mut Vec<u8>) -> Result<bool> {
        let (at, n) = {
            let mut st = self.lock();
            loop {
                if st.aborted {
                    return Err(Error::State("layer writer aborted".into()));
                }
                let ready = st.frontier - st.read;
                let rest = st.closed || Some(st.frontier) == self.size;
                if ready >= SPAN as u64 || (ready > 0 && rest) {
                    // ready.min(SPAN) fits in usize.
                    break (
                        st.read,
                        usize::try_from(ready.min(SPAN as u64)).unwrap_or(SPAN),
                    );
                }
                if st.closed {
                    return Ok(false);
                }
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        buf.resize(n, 0);
        // [at, at + n) lies below the frontier: no writer touches it any more.
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| Error::io("read", self.shown.clone(), e))?;
        let mut st = self.lock();
        st.read = at + n as u64;
        drop(st);
        self.changed.notify_all(); // an `append` may wait for room
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 / 7) as u8).collect()
    }

    fn prefix(size: Option<u64>, held: &[u8]) -> (tempfile::TempDir, Arc<Prefix>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, held).unwrap();
        let file = crate::safepath::open_rw(&path).unwrap();
        let p = Prefix::new(file, "data".into(), size, held.len() as u64).unwrap();
        (dir, Arc::new(p))
    }

    fn read_all(p: &Prefix) -> (Vec<u8>, Vec<usize>) {
        let (mut out, mut spans, mut buf) = (Vec::new(), Vec::new(), Vec::new());
        while p.next_span(&mut buf).unwrap() {
            spans.push(buf.len());
            out.extend_from_slice(&buf);
        }
        (out, spans)
    }

    #[test]
    fn chunks_written_out_of_order_are_read_in_order_in_big_spans() {
        let blob = data(5 * SPAN + 12_345);
        let (_dir, p) = prefix(Some(blob.len() as u64), &[]);
        let reader = {
            let p = Arc::clone(&p);
            thread::spawn(move || read_all(&p))
        };
        // Chunks of 300 000 bytes, last first, each in small pieces; the frontier moves only
        // when the chunks before it are all written.
        let chunk = 300_000;
        let starts: Vec<usize> = (0..blob.len()).step_by(chunk).collect();
        for &s in starts.iter().rev().skip(1) {
            let e = (s + chunk).min(blob.len());
            for piece in (s..e).step_by(7_000) {
                p.write_at(piece as u64, &blob[piece..(piece + 7_000).min(e)])
                    .unwrap();
            }
        }
        // The first chunk last, advancing as its pieces land (as the fetcher does for the
        // chunk the prefix waits for).
        for piece in (0..chunk).step_by(7_000) {
            p.write_at(piece as u64, &blob[piece..piece + 7_000])
                .unwrap();
            p.advance((piece + 7_000) as u64).unwrap();
        }
        let last = *starts.last().unwrap();
        p.write_at(last as u64, &blob[last..]).unwrap();
        p.advance(blob.len() as u64).unwrap();
        p.close();
        let (out, spans) = reader.join().unwrap();
        assert!(out == blob);
        let (last_span, full) = spans.split_last().unwrap();
        assert!(full.iter().all(|&n| n == SPAN), "{spans:?}");
        assert!(*last_span > 0 && *last_span <= SPAN);
    }

    #[test]
    fn a_held_prefix_is_read_first_and_appends_follow() {
        let blob = data(3 * SPAN + 5);
        let held = SPAN + 17;
        let (_dir, p) = prefix(None, &blob[..held]);
        assert_eq!(p.frontier(), held as u64);
        // Appends wait for the reader (more than `APPEND_AHEAD` is held already).
        let reader = {
            let p = Arc::clone(&p);
            thread::spawn(move || read_all(&p))
        };
        for piece in blob[held..].chunks(4096) {
            p.append(piece).unwrap();
        }
        p.close();
        assert!(reader.join().unwrap().0 == blob);
    }

    #[test]
    fn writes_below_the_frontier_or_past_the_size_are_refused() {
        let (_dir, p) = prefix(Some(100), b"");
        p.append(&[1; 40]).unwrap();
        assert!(matches!(p.write_at(39, &[9]), Err(Error::State(_))));
        assert!(matches!(
            p.write_at(90, &[0; 11]),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(matches!(
            p.write_at(u64::MAX, &[0; 2]),
            Err(Error::State(_))
        ));
        assert!(matches!(p.advance(101), Err(Error::SizeMismatch { .. })));
        p.write_at(40, &[2; 60]).unwrap();
        p.advance(100).unwrap();
        let mut buf = Vec::new();
        assert!(p.next_span(&mut buf).unwrap()); // at `size`: the rest without a close
        assert_eq!(buf.len(), 100);
        assert!(Prefix::new(p_file(), "x".into(), Some(1), 2).is_err());
    }

    fn p_file() -> File {
        tempfile::tempfile().unwrap()
    }

    #[test]
    fn abort_wakes_a_waiting_reader() {
        let (_dir, p) = prefix(None, b"");
        let reader = {
            let p = Arc::clone(&p);
            thread::spawn(move || p.next_span(&mut Vec::new()))
        };
        p.abort();
        assert!(reader.join().unwrap().is_err());
        assert!(p.append(b"x").is_err());
    }
}

//! The single streaming pass of one layer: compressed chunks → tee + sha256 (digest) →
//! decompress → sha256 (diff_id) → tar sink (the applier), with bounded memory (design.md §6).
//!
//! One thread per stage, so that both cores stay busy while decompression (the longest stage)
//! runs on one of them: the *producer* (the caller of `LayerWriter::send`, with the GIL
//! released, or a reader thread for a blob on disk) tees and hashes the compressed chunks and
//! queues them; the *worker* decompresses them into big buffers; the *hash* thread hashes the
//! tar (compressed layers only); the *apply* thread feeds the sink. Queues are bounded and
//! buffers are recycled, so the steady state neither allocates nor grows. No Python here.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::decompress::Decoder;
use crate::digest::{self, Sha256};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::prefix::Prefix;
use crate::safepath;

/// Largest chunk the writer queues; bigger writes are split so the queue stays bounded.
const WRITE_CHUNK: usize = 1 << 20;
/// Chunks queued between the writer and the worker (≤ 4 MiB).
const WRITE_QUEUE: usize = 4;
/// Spans (`prefix::SPAN`) queued between the feeder and the worker.
const FEED_QUEUE: usize = 2;
/// Decompressed buffer size and count queued between the worker and the apply thread.
const TAR_CHUNK: usize = 256 << 10;
const TAR_QUEUE: usize = 8;
/// Read size of a blob or resumed tee prefix on disk, and chunks queued from the blob reader.
const FILE_CHUNK: usize = 1 << 20;
const READ_QUEUE: usize = 4;

/// What to expect of one layer and how to bound it.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub media_type: String,
    pub expected_digest: Option<String>,
    pub expected_size: Option<u64>,
    pub expected_diff_id: Option<String>,
    pub limits: Limits,
}

impl LayerSpec {
    /// Validate the expected digests and the media type up front (before any byte flows).
    pub fn check(&self) -> Result<()> {
        crate::decompress::codec_for(&self.media_type)?;
        for d in [&self.expected_digest, &self.expected_diff_id]
            .into_iter()
            .flatten()
        {
            digest::parse_digest(d)?;
        }
        Ok(())
    }
}

/// The verified outcome of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOutcome {
    pub digest: String,
    pub diff_id: String,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub entries: u64,
}

/// Consumes the tar stream (normally `apply::apply_tar`); returns the number of entries.
pub trait TarSink: FnOnce(&mut TarStream) -> Result<u64> + Send + 'static {}
impl<F: FnOnce(&mut TarStream) -> Result<u64> + Send + 'static> TarSink for F {}

/// State shared by the writer, the worker and the compressed source.
#[derive(Default)]
struct Shared {
    aborted: AtomicBool,
    failed: AtomicBool,
    /// A failure of the source itself (tee write, read of the blob): it outranks the
    /// decoder's view of it, which only sees an I/O error.
    source_error: Mutex<Option<Error>>,
    /// The worker's own failure, for ranged writers (who cannot join it).
    failure: Mutex<Option<Error>>,
}

impl Shared {
    #[cold]
    fn set_source_error(&self, e: Error) -> io::Error {
        let err = io::Error::other(e.to_string());
        if let Ok(mut slot) = self.source_error.lock() {
            slot.get_or_insert(e);
        }
        err
    }

    fn take_source_error(&self) -> Option<Error> {
        self.source_error.lock().ok().and_then(|mut s| s.take())
    }

    #[cold]
    fn set_failure(&self, e: &Error) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert_with(|| e.duplicate());
        }
    }

    /// The worker's failure if it failed (what a ranged writer reports), else `e`.
    #[cold]
    fn failure_or(&self, e: Error) -> Error {
        match self.failure.lock() {
            Ok(slot) => slot.as_ref().map_or(e, Error::duplicate),
            Err(_) => e,
        }
    }
}

/// The compressed byte source of the worker: chunks from the producer, already teed and
/// hashed. Emptied buffers go back to the producer.
struct Source {
    rx: Option<Receiver<Vec<u8>>>,
    recycle: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    len: usize,
    pos: usize,
    shared: Arc<Shared>,
}

impl Source {
    fn new(rx: Receiver<Vec<u8>>, recycle: SyncSender<Vec<u8>>, shared: Arc<Shared>) -> Self {
        Self {
            rx: Some(rx),
            recycle,
            buf: Vec::new(),
            len: 0,
            pos: 0,
            shared,
        }
    }

    #[cold]
    fn stopped(&self) -> io::Error {
        self.shared
            .set_source_error(Error::State("layer writer aborted".into()))
    }

    /// The next non-empty chunk as it is (for a pass-through), or `None` at the end.
    fn take_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            self.load()?;
            if self.rx.is_none() {
                return Ok(None);
            }
            if self.len > 0 {
                let chunk = std::mem::take(&mut self.buf);
                (self.len, self.pos) = (0, 0);
                return Ok(Some(chunk));
            }
        }
    }

    fn load(&mut self) -> io::Result<()> {
        if self.shared.aborted.load(Ordering::Relaxed) {
            return Err(self.stopped());
        }
        let Some(rx) = &self.rx else {
            (self.len, self.pos) = (0, 0);
            return Ok(());
        };
        match rx.recv() {
            Ok(chunk) => {
                let old = std::mem::replace(&mut self.buf, chunk);
                if old.capacity() > 0 {
                    let _ = self.recycle.try_send(old);
                }
                (self.len, self.pos) = (self.buf.len(), 0);
            }
            // The producer closed the channel: end of the blob, unless it failed or aborted.
            Err(_) => {
                if self.shared.aborted.load(Ordering::Relaxed) {
                    return Err(self.stopped());
                }
                self.rx = None;
                (self.len, self.pos) = (0, 0);
            }
        }
        Ok(())
    }
}

/// `Read` for a chunk-fed `BufRead`: copy out of the current chunk.
fn read_buffered<B: BufRead>(b: &mut B, out: &mut [u8]) -> io::Result<usize> {
    let avail = b.fill_buf()?;
    let n = avail.len().min(out.len());
    out[..n].copy_from_slice(&avail[..n]);
    b.consume(n);
    Ok(n)
}

impl Read for Source {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, out)
    }
}

impl BufRead for Source {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Loop: a writer may send an empty chunk; only a real end returns empty.
        while self.pos >= self.len && self.rx.is_some() {
            self.load()?;
        }
        Ok(&self.buf[self.pos..self.len])
    }
    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.len);
    }
}

/// Decompressed tar bytes as the apply thread sees them (already hashed for the diff_id).
pub struct TarStream {
    rx: Receiver<Msg>,
    recycle: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    len: usize,
    pos: usize,
    ended: bool,
    bytes: u64,
}

enum Msg {
    Data(Vec<u8>, usize),
    End,
}

impl TarStream {
    fn next(&mut self) -> io::Result<()> {
        match self.rx.recv() {
            Ok(Msg::Data(buf, len)) => {
                self.bytes += len as u64;
                let old = std::mem::replace(&mut self.buf, buf);
                if !old.is_empty() {
                    let _ = self.recycle.try_send(old);
                }
                (self.len, self.pos) = (len, 0);
                Ok(())
            }
            Ok(Msg::End) => {
                self.ended = true;
                Ok(())
            }
            // The worker failed; its error is the one reported.
            Err(_) => Err(io::Error::other("layer decompression stopped")),
        }
    }

    /// Read to the end (trailing tar padding counts towards the diff_id).
    fn drain(&mut self) -> io::Result<()> {
        while !self.ended {
            self.next()?;
        }
        self.pos = self.len;
        Ok(())
    }
}

impl Read for TarStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, out)
    }
}

impl BufRead for TarStream {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos >= self.len && !self.ended {
            self.next()?;
        }
        Ok(&self.buf[self.pos..self.len])
    }
    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.len);
    }
}

/// Why the worker side stopped.
enum Stop {
    /// Its own failure (decode, limit, source I/O): the error to report.
    Own(Error),
    /// The apply thread went away: its error is the one to report.
    Downstream,
}

/// What the worker and the apply thread found (the producer holds the digest).
struct Decoded {
    /// `None` for an uncompressed layer: the diff_id is the digest.
    diff_id: Option<String>,
    uncompressed_size: u64,
    entries: u64,
}

/// Run the pass over `source` on this thread (decode) plus an apply thread (hash + sink).
fn run(source: Source, spec: &LayerSpec, sink: impl TarSink) -> Result<Decoded> {
    let shared = Arc::clone(&source.shared);
    let codec = crate::decompress::codec_for(&spec.media_type)?;
    let (tx, rx) = mpsc::sync_channel::<Msg>(TAR_QUEUE);
    let (recycle_tx, recycle_rx) = mpsc::sync_channel::<Vec<u8>>(2 * TAR_QUEUE + 2);
    // A compressed layer's tar is hashed on a stage of its own between the worker and the
    // apply thread; an uncompressed layer's diff_id is its digest (hashed by the producer).
    let (apply_rx, hasher) = if codec == crate::decompress::Codec::None {
        (rx, None)
    } else {
        let (htx, hrx) = mpsc::sync_channel::<Msg>(TAR_QUEUE);
        let hasher = thread::Builder::new()
            .name("fastdist-hash".into())
            .spawn(move || hash_stage(&rx, &htx))
            .map_err(|e| Error::io("spawn", "tar hash thread", e))?;
        (hrx, Some(hasher))
    };
    let apply = thread::Builder::new()
        .name("fastdist-apply".into())
        .spawn(move || {
            let mut reader = TarStream {
                rx: apply_rx,
                recycle: recycle_tx,
                buf: Vec::new(),
                len: 0,
                pos: 0,
                ended: false,
                bytes: 0,
            };
            let entries = sink(&mut reader)?;
            reader
                .drain()
                .map_err(|e| Error::corrupt(format!("reading layer: {e}"), None))?;
            Ok::<_, Error>((entries, reader.bytes))
        })
        .map_err(|e| Error::io("spawn", "apply thread", e))?;

    let decoded = if codec == crate::decompress::Codec::None {
        pass_through(source, spec, &tx, &recycle_rx)
    } else {
        decode(source, spec, &tx, &recycle_rx)
    };
    if decoded.is_err() {
        shared.failed.store(true, Ordering::Relaxed);
    }
    drop(tx);
    let applied = apply
        .join()
        .unwrap_or_else(|_| Err(Error::State("layer apply thread panicked".into())));
    let diff_id = hasher.map(|h| h.join().ok().flatten());
    let (entries, uncompressed_size) = match (decoded, applied) {
        (Ok(()), Ok(a)) => a,
        (Err(Stop::Own(e)), _) | (Err(Stop::Downstream) | Ok(()), Err(e)) => return Err(e),
        (Err(Stop::Downstream), Ok(_)) => {
            return Err(Error::State("layer applier stopped before the end".into()))
        }
    };
    let diff_id = match diff_id {
        None => None,
        Some(Some(d)) => Some(d),
        Some(None) => return Err(Error::State("tar hash thread stopped early".into())),
    };
    Ok(Decoded {
        diff_id,
        uncompressed_size,
        entries,
    })
}

/// The tar hash stage: hash each decompressed buffer (the diff_id) and pass it on. `None` if
/// either neighbour stopped early (their errors are the ones reported).
fn hash_stage(rx: &Receiver<Msg>, tx: &SyncSender<Msg>) -> Option<String> {
    let mut sha = Sha256::new();
    loop {
        match rx.recv().ok()? {
            Msg::Data(buf, len) => {
                sha.update(&buf[..len]);
                tx.send(Msg::Data(buf, len)).ok()?;
            }
            Msg::End => {
                tx.send(Msg::End).ok()?;
                return Some(sha.digest());
            }
        }
    }
}

/// Check the producer's (digest, size) and the decoded diff_id against the expectations.
fn outcome(
    spec: &LayerSpec,
    digest: String,
    compressed_size: u64,
    decoded: Decoded,
) -> Result<LayerOutcome> {
    let diff_id = decoded.diff_id.unwrap_or_else(|| digest.clone());
    digest::verify(
        "digest",
        &digest,
        compressed_size,
        spec.expected_digest.as_deref(),
        spec.expected_size,
    )?;
    digest::verify(
        "diff_id",
        &diff_id,
        decoded.uncompressed_size,
        spec.expected_diff_id.as_deref(),
        None,
    )?;
    Ok(LayerOutcome {
        digest,
        diff_id,
        compressed_size,
        uncompressed_size: decoded.uncompressed_size,
        entries: decoded.entries,
    })
}

/// The worker half: decode `source` into buffers for the apply thread.
fn decode(
    source: Source,
    spec: &LayerSpec,
    tx: &SyncSender<Msg>,
    recycled: &Receiver<Vec<u8>>,
) -> std::result::Result<(), Stop> {
    let shared = Arc::clone(&source.shared);
    let own = |e: Error| Stop::Own(shared.take_source_error().unwrap_or(e));
    let mut dec = Decoder::new(&spec.media_type, source, &spec.limits).map_err(own)?;
    loop {
        let mut buf = match recycled.try_recv() {
            Ok(b) => b,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => vec![0u8; TAR_CHUNK],
        };
        // Fill the buffer: decoders return small pieces, the apply side wants big ones.
        let mut len = 0;
        while len < buf.len() {
            let n = dec.read(&mut buf[len..]).map_err(own)?;
            if n == 0 {
                break;
            }
            len += n;
        }
        if len == 0 {
            break;
        }
        tx.send(Msg::Data(buf, len)).map_err(|_| Stop::Downstream)?;
    }
    dec.finish().map_err(own)?;
    tx.send(Msg::End).map_err(|_| Stop::Downstream)?;
    Ok(())
}

/// The worker half for an uncompressed layer: hand the producer's chunks to the apply thread
/// as they are (no copy), after the same magic and size checks as `Decoder`; emptied buffers
/// go back to the producer.
fn pass_through(
    mut source: Source,
    spec: &LayerSpec,
    tx: &SyncSender<Msg>,
    recycled: &Receiver<Vec<u8>>,
) -> std::result::Result<(), Stop> {
    use crate::decompress::{check_plain_head, check_plain_size, PLAIN_HEAD};
    let shared = Arc::clone(&source.shared);
    let own = |e: Error| Stop::Own(shared.take_source_error().unwrap_or(e));
    let read_err = |e: io::Error| Error::corrupt(format!("reading layer: {e}"), None);
    let mut head = Vec::with_capacity(PLAIN_HEAD);
    let mut total = 0u64;
    while let Some(chunk) = source.take_chunk().map_err(|e| own(read_err(e)))? {
        if head.len() < PLAIN_HEAD {
            let k = (PLAIN_HEAD - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..k]);
            if head.len() == PLAIN_HEAD {
                check_plain_head(&spec.media_type, &head).map_err(own)?;
            }
        }
        total += chunk.len() as u64;
        check_plain_size(&spec.limits, total).map_err(own)?;
        let len = chunk.len();
        tx.send(Msg::Data(chunk, len))
            .map_err(|_| Stop::Downstream)?;
        while let Ok(b) = recycled.try_recv() {
            let _ = source.recycle.try_send(b);
        }
    }
    if head.len() < PLAIN_HEAD {
        check_plain_head(&spec.media_type, &head).map_err(own)?;
    }
    tx.send(Msg::End).map_err(|_| Stop::Downstream)?;
    Ok(())
}

/// The blob reader: large reads, hashed here, queued for the worker. Returns (digest, size),
/// or `None` if it failed (the error is in `shared`) or the worker stopped taking chunks.
fn read_blob(
    mut file: File,
    shown: &str,
    tx: &SyncSender<Vec<u8>>,
    recycled: &Receiver<Vec<u8>>,
    shared: &Shared,
) -> Option<(String, u64)> {
    let mut sha = Sha256::new();
    loop {
        let mut buf = recycled.try_recv().unwrap_or_default();
        buf.resize(FILE_CHUNK, 0);
        let n = loop {
            match file.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    shared.set_source_error(Error::io("read", shown.to_owned(), e));
                    shared.aborted.store(true, Ordering::Relaxed);
                    return None;
                }
                Ok(n) => break n,
            }
        };
        if n == 0 {
            return Some((sha.digest(), sha.size()));
        }
        buf.truncate(n);
        sha.update(&buf);
        if tx.send(buf).is_err() {
            return None;
        }
    }
}

/// Apply a blob already on disk: a reader thread (read + digest), this thread (decompress)
/// and an apply thread (diff_id + sink).
pub fn apply_blob(blob: &Path, spec: &LayerSpec, sink: impl TarSink) -> Result<LayerOutcome> {
    spec.check()?;
    let shown = blob.display().to_string();
    let file = safepath::open_read(blob).map_err(|e| Error::io("open", shown.clone(), e))?;
    let shared = Arc::<Shared>::default();
    let (tx, rx) = mpsc::sync_channel(READ_QUEUE);
    let (recycle_tx, recycled) = mpsc::sync_channel(READ_QUEUE + 2);
    let reader = {
        let shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("fastdist-read".into())
            .spawn(move || read_blob(file, &shown, &tx, &recycled, &shared))
            .map_err(|e| Error::io("spawn", "blob reader thread", e))?
    };
    // `run` drops the source (and so the receiver) before it returns: the reader cannot stay
    // blocked on a full queue.
    let decoded = run(Source::new(rx, recycle_tx, shared), spec, sink);
    let read = reader.join().unwrap_or(None);
    let decoded = decoded?;
    let (digest, size) =
        read.ok_or_else(|| Error::State("blob reader stopped before the end".into()))?;
    outcome(spec, digest, size, decoded)
}

/// Decompress a blob on disk without applying it: digest and diff_id only (`entries` is 0).
pub fn hash_blob(blob: &Path, spec: &LayerSpec) -> Result<LayerOutcome> {
    apply_blob(blob, spec, |tar: &mut TarStream| loop {
        let n = tar
            .fill_buf()
            .map_err(|e| Error::corrupt(format!("reading layer: {e}"), None))?
            .len();
        if n == 0 {
            return Ok(0);
        }
        tar.consume(n);
    })
}

/// The streaming form: `write` compressed chunks as they arrive, then `finish`.
///
/// With a tee file (the ingest, which becomes the blob), `write` appends to it and ranged
/// fetchers `write_at` chunks at their offsets and `advance` the contiguous prefix (through
/// `RangedWriter` handles, from several threads); a *feeder* thread reads the prefix back in
/// big spans as it grows (`prefix::Prefix`), hashes it (the digest) and queues it, so the
/// size of the network's pieces costs nothing downstream. Without a tee, the caller's thread
/// hashes and queues each chunk.
pub struct LayerWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<Result<Decoded>>>,
    shared: Arc<Shared>,
    spec: LayerSpec,
    /// Without a tee: the digest of everything accepted so far (its size is `offset()`).
    sha: Sha256,
    /// With a tee: the file, its prefix and the thread that reads it in order.
    prefix: Option<Arc<Prefix>>,
    feeder: Option<JoinHandle<Option<(String, u64)>>>,
    failed: Option<Error>,
    done: bool,
}

/// A handle for ranged writers of a tee'd `LayerWriter` (any thread, no lock on the writer).
#[derive(Clone)]
pub struct RangedWriter {
    prefix: Arc<Prefix>,
    shared: Arc<Shared>,
}

impl RangedWriter {
    /// Write a chunk's bytes at their offset (at or past the contiguous prefix).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.prefix
            .write_at(offset, data)
            .map_err(|e| self.shared.failure_or(e))
    }

    /// Declare `[0, to)` written.
    pub fn advance(&self, to: u64) -> Result<()> {
        self.prefix
            .advance(to)
            .map_err(|e| self.shared.failure_or(e))
    }
}

/// The feeder: the prefix in order, hashed, queued for the worker. `None` if it failed (the
/// error is in `shared`) or the worker stopped taking chunks.
fn feed(
    prefix: &Prefix,
    tx: &SyncSender<Vec<u8>>,
    recycled: &Receiver<Vec<u8>>,
    shared: &Shared,
) -> Option<(String, u64)> {
    let mut sha = Sha256::new();
    loop {
        let mut buf = recycled.try_recv().unwrap_or_default();
        match prefix.next_span(&mut buf) {
            Ok(true) => {}
            Ok(false) => return Some((sha.digest(), sha.size())),
            Err(e) => {
                if !shared.aborted.load(Ordering::Relaxed) {
                    shared.set_source_error(e);
                    shared.aborted.store(true, Ordering::Relaxed);
                }
                return None;
            }
        }
        sha.update(&buf);
        if tx.send(buf).is_err() {
            return None;
        }
    }
}

impl LayerWriter {
    /// Start the worker. If `tee_path` already holds bytes (a resumed download: the caller
    /// made sure they are the blob's contiguous prefix), they are read through first (not
    /// re-written) and `offset()` starts at their length.
    pub fn new(spec: LayerSpec, tee_path: Option<&Path>, sink: impl TarSink) -> Result<Self> {
        spec.check()?;
        let mut prefix = None;
        if let Some(path) = tee_path {
            let shown = path.display().to_string();
            // No-follow, relative to its directory, and a regular file: a planted
            // `ingest/<hex>/data -> /host/file` is refused, never read as the resumed prefix
            // nor written to (as the Python ingest path opens it).
            let file =
                safepath::open_rw(path).map_err(|e| Error::io("open ingest", shown.clone(), e))?;
            let held = file
                .metadata()
                .map_err(|e| Error::io("stat", shown.clone(), e))?
                .len();
            prefix = Some(Prefix::new(file, shown, spec.expected_size, held)?);
        }
        Self::start(spec, prefix, sink)
    }

    fn start(spec: LayerSpec, prefix: Option<Prefix>, sink: impl TarSink) -> Result<Self> {
        let prefix = prefix.map(Arc::new);
        let shared = Arc::<Shared>::default();
        let depth = if prefix.is_some() {
            FEED_QUEUE
        } else {
            WRITE_QUEUE
        };
        let (tx, rx) = mpsc::sync_channel(depth);
        let (recycle_tx, recycled) = mpsc::sync_channel(depth + 2);
        let source = Source::new(rx, recycle_tx, Arc::clone(&shared));
        let worker_spec = spec.clone();
        let worker_prefix = prefix.clone();
        let worker = thread::Builder::new()
            .name("fastdist-layer".into())
            .spawn(move || {
                let shared = Arc::clone(&source.shared);
                let res = run(source, &worker_spec, sink);
                if let Err(e) = &res {
                    shared.set_failure(e);
                    if let Some(p) = &worker_prefix {
                        p.abort(); // ranged writers and the feeder stop with this error
                    }
                }
                res
            })
            .map_err(|e| Error::io("spawn", "layer worker", e))?;
        let mut writer = Self {
            tx: Some(tx),
            recycled,
            worker: Some(worker),
            shared,
            spec,
            sha: Sha256::new(),
            prefix: None,
            feeder: None,
            failed: None,
            done: false,
        };
        if let Some(p) = prefix {
            // The feeder owns the queue's sending end; emptied buffers come back to it.
            let Some(tx) = writer.tx.take() else {
                return Err(Error::State("layer writer is closed".into()));
            };
            let (feed_recycled, shared) = (
                std::mem::replace(&mut writer.recycled, mpsc::sync_channel(1).1),
                Arc::clone(&writer.shared),
            );
            let fp = Arc::clone(&p);
            let feeder = thread::Builder::new()
                .name("fastdist-feed".into())
                .spawn(move || feed(&fp, &tx, &feed_recycled, &shared))
                .map_err(|e| Error::io("spawn", "layer feeder", e))?;
            writer.prefix = Some(p);
            writer.feeder = Some(feeder);
        }
        Ok(writer)
    }

    /// A handle for ranged writes, if the writer has a tee.
    pub fn ranged(&self) -> Option<RangedWriter> {
        self.prefix.as_ref().map(|p| RangedWriter {
            prefix: Arc::clone(p),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Compressed bytes accepted so far, in order (including a resumed tee prefix).
    pub fn offset(&self) -> u64 {
        match &self.prefix {
            Some(p) => p.frontier(),
            None => self.sha.size(),
        }
    }

    /// Copy `data` into owned chunks ready for `send` (reusing returned buffers).
    pub fn copy_chunks(&self, data: &[u8]) -> Vec<Vec<u8>> {
        data.chunks(WRITE_CHUNK)
            .map(|piece| {
                let mut buf = self.recycled.try_recv().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(piece);
                buf
            })
            .collect()
    }

    fn check_size(&mut self, len: u64) -> Result<()> {
        if let Some(expected) = self.spec.expected_size {
            let total = self.offset().saturating_add(len);
            if total > expected {
                let err = digest::size_mismatch(expected, total);
                self.stop_worker();
                return Err(self.fail(err));
            }
        }
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(self.collect_failure());
        }
        Ok(())
    }

    /// Without a tee: hash and queue chunks for the worker; blocks while the queue is full.
    /// Fails as soon as the pipeline has failed, with the pipeline's error.
    pub fn send(&mut self, chunks: Vec<Vec<u8>>) -> Result<()> {
        self.check_usable()?;
        if self.prefix.is_some() {
            return Err(Error::State("a tee'd layer writer takes `write`".into()));
        }
        self.check_size(chunks.iter().map(|c| c.len() as u64).sum())?;
        for chunk in chunks {
            self.sha.update(&chunk);
            let Some(tx) = &self.tx else {
                return Err(Error::State("layer writer is closed".into()));
            };
            if tx.send(chunk).is_err() {
                return Err(self.collect_failure());
            }
        }
        Ok(())
    }

    /// Append `data`: to the tee (read back by the feeder in big spans; blocks while the
    /// pipeline is `prefix::APPEND_AHEAD` behind), or `copy_chunks` + `send` without one.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let Some(prefix) = self.prefix.clone() else {
            let chunks = self.copy_chunks(data);
            return self.send(chunks);
        };
        self.check_usable()?;
        self.check_size(data.len() as u64)?;
        if let Err(e) = prefix.append(data) {
            if self.shared.failed.load(Ordering::Relaxed) {
                return Err(self.collect_failure());
            }
            self.stop_worker();
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Close the stream, wait for the worker, verify and return the outcome.
    pub fn finish(&mut self) -> Result<LayerOutcome> {
        if let Some(e) = self.failed.take() {
            self.done = true;
            return Err(e);
        }
        self.check_usable()?;
        self.done = true;
        self.tx = None;
        if let Some(p) = &self.prefix {
            p.close();
        }
        let fed = self.feeder.take().map(|f| f.join().ok().flatten());
        let decoded = self.join()?;
        let (digest, size) = match fed {
            None => (self.sha.digest(), self.sha.size()),
            Some(Some(d)) => d,
            Some(None) => {
                return Err(self
                    .shared
                    .take_source_error()
                    .unwrap_or_else(|| Error::State("layer feeder stopped early".into())))
            }
        };
        outcome(&self.spec, digest, size, decoded)
    }

    /// Stop the worker and release files; idempotent.
    pub fn abort(&mut self) {
        if !self.done {
            self.stop_worker();
            self.done = true;
        }
    }

    fn check_usable(&self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.duplicate());
        }
        if self.done {
            return Err(Error::State(
                "layer writer already finished or aborted".into(),
            ));
        }
        Ok(())
    }

    fn join(&mut self) -> Result<Decoded> {
        match self.worker.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::State("layer worker panicked".into()))),
            None => Err(Error::State("layer worker already joined".into())),
        }
    }

    #[cold]
    fn stop_worker(&mut self) {
        self.shared.aborted.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(p) = &self.prefix {
            p.abort();
        }
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        let _ = self.join();
    }

    #[cold]
    fn collect_failure(&mut self) -> Error {
        self.tx = None;
        if let Some(p) = &self.prefix {
            p.abort();
        }
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        let err = match self.join() {
            Err(e) => e,
            Ok(_) => Error::State("layer worker ended early".into()),
        };
        self.fail(err)
    }

    #[cold]
    fn fail(&mut self, err: Error) -> Error {
        let copy = err.duplicate();
        self.failed = Some(err);
        copy
    }
}

impl Drop for LayerWriter {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.stop_worker();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn spec() -> LayerSpec {
        LayerSpec {
            media_type: TGZ.into(),
            expected_digest: None,
            expected_size: None,
            expected_diff_id: None,
            limits: Limits::default(),
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sha(data: &[u8]) -> String {
        let mut s = Sha256::new();
        s.update(data);
        s.digest()
    }

    fn drain_sink(r: &mut TarStream) -> Result<u64> {
        io::copy(r, &mut io::sink()).map_err(|e| Error::io("read", "tar", e))?;
        Ok(1)
    }

    fn payload() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i * 7 / 13) as u8).collect()
    }

    #[test]
    fn writer_hashes_both_sides() {
        let tar = payload();
        let blob = gz(&tar);
        let mut w = LayerWriter::new(spec(), None, drain_sink).unwrap();
        for c in blob.chunks(77_777) {
            w.write(c).unwrap();
        }
        let out = w.finish().unwrap();
        assert_eq!(out.digest, sha(&blob));
        assert_eq!(out.diff_id, sha(&tar));
        assert_eq!(out.compressed_size, blob.len() as u64);
        assert_eq!(out.uncompressed_size, tar.len() as u64);
        assert!(w.finish().is_err());
    }

    #[test]
    fn resume_feeds_tee_prefix_and_appends_rest() {
        let tar = payload();
        let blob = gz(&tar);
        let dir = tempfile::tempdir().unwrap();
        let tee = dir.path().join("ingest");
        std::fs::write(&tee, &blob[..blob.len() / 3]).unwrap();
        let mut s = spec();
        s.expected_digest = Some(sha(&blob));
        s.expected_size = Some(blob.len() as u64);
        let mut w = LayerWriter::new(s, Some(&tee), drain_sink).unwrap();
        let off = w.offset() as usize;
        assert_eq!(off, blob.len() / 3);
        w.write(&blob[off..]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.diff_id, sha(&tar));
        assert_eq!(std::fs::read(&tee).unwrap(), blob);
    }

    #[test]
    fn symlinked_tee_is_refused_and_its_target_neither_read_nor_written() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        let blob = gz(&payload());
        // The host file even starts like the blob: a resumed prefix it must not become.
        std::fs::write(&host, &blob[..100]).unwrap();
        let ingest = dir.path().join("ingest");
        std::fs::create_dir(&ingest).unwrap();
        let data = ingest.join("data");
        std::os::unix::fs::symlink(&host, &data).unwrap();
        let err = LayerWriter::new(spec(), Some(&data), drain_sink).err();
        assert!(
            matches!(
                &err,
                Some(Error::Io {
                    op: "open ingest",
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(err.unwrap().to_string().contains("symlink"));
        // A symlinked directory on the way, and a hard link to the host file, likewise.
        std::fs::remove_file(&data).unwrap();
        std::os::unix::fs::symlink(&ingest, dir.path().join("linked")).unwrap();
        let via = dir.path().join("linked").join("data");
        assert!(LayerWriter::new(spec(), Some(&via), drain_sink).is_err());
        assert!(!data.exists());
        std::fs::hard_link(&host, &data).unwrap();
        let err = LayerWriter::new(spec(), Some(&data), drain_sink).err();
        assert!(matches!(err, Some(Error::Io { .. })), "{err:?}");
        assert_eq!(std::fs::read(&host).unwrap(), &blob[..100]);
    }

    #[test]
    fn uncompressed_layer_passes_through_with_its_checks() {
        let tar = payload();
        let mut s = spec();
        s.media_type = "application/vnd.oci.image.layer.v1.tar".into();
        let mut w = LayerWriter::new(s.clone(), None, drain_sink).unwrap();
        w.write(&tar[..1]).unwrap();
        w.write(&tar[1..3]).unwrap();
        w.write(&tar[3..]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(
            (out.digest.as_str(), out.diff_id.as_str()),
            (sha(&tar).as_str(), sha(&tar).as_str())
        );
        assert_eq!(out.uncompressed_size, tar.len() as u64);
        // gzip data under a plain tar media type, split before the magic is complete.
        let blob = gz(&tar);
        let mut w = LayerWriter::new(s.clone(), None, drain_sink).unwrap();
        let _ = w.write(&blob[..1]);
        let _ = w.write(&blob[1..]);
        let err = w.finish().unwrap_err();
        assert!(err.to_string().contains("the data is gzip"), "{err}");
        s.limits.max_layer_bytes = 1000;
        let mut w = LayerWriter::new(s, None, drain_sink).unwrap();
        let _ = w.write(&tar);
        assert!(matches!(w.finish(), Err(Error::Limit { .. })));
    }

    #[test]
    fn tee_write_failure_is_an_io_error_from_write_and_finish() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        // A device is refused as a tee (not a regular file); so put it in by hand.
        let refused = LayerWriter::new(spec(), Some(full), drain_sink).err();
        assert!(matches!(refused, Some(Error::Io { .. })), "{refused:?}");
        let dev = std::fs::OpenOptions::new().write(true).open(full).unwrap();
        let tee = Prefix::new(dev, "/dev/full".into(), None, 0).unwrap();
        let mut w = LayerWriter::start(spec(), Some(tee), drain_sink).unwrap();
        let err = w.write(&gz(b"abc")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(matches!(w.finish(), Err(Error::Io { .. })));
    }

    #[test]
    fn writer_digest_and_size_are_verified_at_finish() {
        let blob = gz(&payload());
        let mut s = spec();
        s.expected_digest = Some(sha(b"other"));
        let mut w = LayerWriter::new(s, None, drain_sink).unwrap();
        w.write(&blob).unwrap();
        let err = w.finish().unwrap_err();
        assert!(
            matches!(err, Error::DigestMismatch { what: "digest", .. }),
            "{err}"
        );
        let mut s = spec();
        s.expected_size = Some(blob.len() as u64 + 1);
        let mut w = LayerWriter::new(s, None, drain_sink).unwrap();
        w.write(&blob).unwrap();
        assert!(matches!(w.finish(), Err(Error::SizeMismatch { .. })));
    }

    #[test]
    fn ranged_chunks_out_of_order_are_hashed_and_applied_in_order() {
        let tar = payload();
        let blob = gz(&tar);
        let dir = tempfile::tempdir().unwrap();
        let tee = dir.path().join("ingest");
        let mut s = spec();
        s.expected_digest = Some(sha(&blob));
        s.expected_size = Some(blob.len() as u64);
        s.expected_diff_id = Some(sha(&tar));
        let mut w = LayerWriter::new(s, Some(&tee), drain_sink).unwrap();
        w.write(&blob[..100]).unwrap();
        let r = w.ranged().unwrap();
        let chunk = 100_000;
        let starts: Vec<usize> = (100..blob.len()).step_by(chunk).collect();
        for &b in starts.iter().rev() {
            let e = (b + chunk).min(blob.len());
            r.write_at(b as u64, &blob[b..e]).unwrap();
        }
        assert_eq!(w.offset(), 100);
        r.advance(blob.len() as u64).unwrap();
        let out = w.finish().unwrap();
        assert_eq!((out.digest, out.diff_id), (sha(&blob), sha(&tar)));
        assert!(std::fs::read(&tee).unwrap() == blob);
    }

    #[test]
    fn a_failed_pipeline_stops_ranged_writers_with_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let tee = dir.path().join("ingest");
        let mut w = LayerWriter::new(spec(), Some(&tee), drain_sink).unwrap();
        let r = w.ranged().unwrap();
        let junk = vec![0x5a_u8; 3 << 20]; // not gzip: the decoder fails on its magic
        r.write_at(0, &junk).unwrap();
        r.advance(junk.len() as u64).unwrap();
        let fin = w.finish();
        assert!(matches!(fin, Err(Error::Corrupt { .. })), "{fin:?}");
        // Joined: the worker recorded its failure; a ranged writer still running reports that
        // error (not "closed"), so the fetch stops with the real cause.
        let err = r.write_at(junk.len() as u64, b"x").unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        let err = r.advance(junk.len() as u64 + 1).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn corrupt_stream_fails_write_promptly_and_finish() {
        let mut blob = gz(&payload());
        let mid = blob.len() / 2;
        blob[mid..mid + 64].fill(0xff);
        let mut w = LayerWriter::new(spec(), None, drain_sink).unwrap();
        let mut write_err = None;
        for c in blob.chunks(4096) {
            if let Err(e) = w.write(c) {
                write_err = Some(e);
                break;
            }
        }
        let fin = w.finish();
        if let Some(e) = write_err {
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        }
        assert!(matches!(fin, Err(Error::Corrupt { .. })), "{fin:?}");
    }

    #[test]
    fn oversize_write_is_a_size_mismatch() {
        let mut s = spec();
        s.expected_size = Some(10);
        let mut w = LayerWriter::new(s, None, drain_sink).unwrap();
        let err = w.write(&[0u8; 11]).unwrap_err();
        assert!(matches!(
            err,
            Error::SizeMismatch {
                expected: 10,
                actual: 11
            }
        ));
        assert!(matches!(w.finish(), Err(Error::SizeMismatch { .. })));
    }

    #[test]
    fn abort_is_idempotent_and_finish_after_abort_fails() {
        let mut w = LayerWriter::new(spec(), None, drain_sink).unwrap();
        w.write(&gz(b"abc")[..5]).unwrap();
        w.abort();
        w.abort();
        assert!(matches!(w.finish(), Err(Error::State(_))));
    }

    #[test]
    fn sink_error_is_reported() {
        let blob = gz(&payload());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, &blob).unwrap();
        let res = apply_blob(&path, &spec(), |_r: &mut TarStream| {
            Err(Error::unsafe_path("../x", "escapes the root"))
        });
        assert!(matches!(res, Err(Error::UnsafePath { .. })), "{res:?}");
        let ok = apply_blob(&path, &spec(), drain_sink).unwrap();
        assert_eq!(ok.digest, sha(&blob));
    }

    #[test]
    fn failing_sink_stops_the_blob_reader_of_a_big_blob() {
        // Incompressible, so the blob is many reader chunks: more than the queues hold.
        let mut x = 1u64;
        let tar: Vec<u8> = (0..12 << 20)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let blob = gz(&tar);
        assert!(blob.len() > (READ_QUEUE + 4) * FILE_CHUNK);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, &blob).unwrap();
        let res = apply_blob(&path, &spec(), |_r: &mut TarStream| {
            Err(Error::unsafe_path("x", "refused at once"))
        });
        assert!(matches!(res, Err(Error::UnsafePath { .. })), "{res:?}");
        let mut s = spec();
        s.expected_digest = Some(sha(&blob));
        s.expected_size = Some(blob.len() as u64);
        s.expected_diff_id = Some(sha(&tar));
        let ok = apply_blob(&path, &s, drain_sink).unwrap();
        assert_eq!(ok.uncompressed_size, tar.len() as u64);
    }

    #[test]
    fn blob_digest_mismatch_is_reported() {
        let blob = gz(b"tar bytes");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, &blob).unwrap();
        let mut s = spec();
        s.expected_digest = Some(sha(b"something else"));
        let res = apply_blob(&path, &s, drain_sink);
        assert!(
            matches!(res, Err(Error::DigestMismatch { what: "digest", .. })),
            "{res:?}"
        );
    }
}

//! gzip through Intel ISA-L's igzip (about twice as fast as zlib-rs on x86-64 and aarch64).
//!
//! Members are decoded one after the other as one stream. Each member's header is parsed here
//! (streamed, never buffered: names and extra fields can be any length; FHCRC is checked), its
//! deflate data and trailer by igzip in `ISAL_GZIP_NO_HDR_VER` mode, which checks CRC-32 and
//! ISIZE. (igzip's own header parser mis-reads a header with both FNAME and FCOMMENT.) Input is
//! handed to igzip straight from the source's buffer (no copy); igzip stops at the end of a
//! member, so anything after the last member is seen here and refused.
//!
//! The only FFI of the crate; `decompress` reads layers through `GzDecoder`.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::io::{self, BufRead};
use std::ptr;

use isal_sys::igzip_lib as ffi;

const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;
const FRESERVED: u8 = 0xe0;

/// One `inflate_state`, heap-allocated (it is ~90 KB) and freed on drop.
struct State(ptr::NonNull<ffi::inflate_state>);

impl State {
    fn new() -> Self {
        let layout = Layout::new::<ffi::inflate_state>();
        // SAFETY: `inflate_state` is plain C data (integers, byte arrays, raw pointers and
        // a union of integers), so all-zero bytes are a valid value; `isal_inflate_init`
        // then sets the fields it needs. The layout is not zero-sized.
        unsafe {
            let p = alloc_zeroed(layout).cast::<ffi::inflate_state>();
            let Some(p) = ptr::NonNull::new(p) else {
                handle_alloc_error(layout)
            };
            ffi::isal_inflate_init(p.as_ptr());
            (*p.as_ptr()).crc_flag = ffi::ISAL_GZIP_NO_HDR_VER;
            Self(p)
        }
    }

    fn get(&mut self) -> &mut ffi::inflate_state {
        // SAFETY: the pointer is valid, initialised and uniquely owned by `self`.
        unsafe { self.0.as_mut() }
    }

    /// Start a new member's deflate data (crc_flag and hist_bits are kept).
    fn reset(&mut self) {
        // SAFETY: a valid, initialised state.
        unsafe { ffi::isal_inflate_reset(self.0.as_ptr()) }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout; igzip holds no other resources.
        unsafe { dealloc(self.0.as_ptr().cast(), Layout::new::<ffi::inflate_state>()) }
    }
}

// SAFETY: the state's raw pointers only ever point into buffers lent for the duration of
// one `isal_inflate` call (they are cleared after it), so moving it between threads is fine.
unsafe impl Send for State {}

pub(crate) struct GzDecoder<R> {
    src: R,
    state: State,
    /// Inside a member's deflate data (its header has been read).
    in_member: bool,
    /// At least one member has been read.
    started: bool,
    /// The source ended right after a complete member.
    done: bool,
    /// igzip failed: its state is unusable.
    failed: bool,
}

#[cold]
fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cold]
fn eof() -> io::Error {
    io::ErrorKind::UnexpectedEof.into()
}

#[cold]
fn isal_error(code: i32) -> io::Error {
    let what = match code {
        ffi::ISAL_INVALID_BLOCK => "invalid deflate block",
        ffi::ISAL_INVALID_SYMBOL => "invalid deflate symbol",
        ffi::ISAL_INVALID_LOOKBACK => "invalid deflate distance (too far back)",
        ffi::ISAL_INCORRECT_CHECKSUM => "gzip member CRC-32 or length mismatch",
        _ => "igzip error",
    };
    invalid(&format!("{what} ({code})"))
}

impl<R: BufRead> GzDecoder<R> {
    pub(crate) fn new(src: R) -> Self {
        Self {
            src,
            state: State::new(),
            in_member: false,
            started: false,
            done: false,
            failed: false,
        }
    }

    pub(crate) fn get_ref(&self) -> &R {
        &self.src
    }

    pub(crate) fn into_inner(self) -> R {
        self.src
    }

    /// Read exactly `out.len()` header bytes.
    fn take(&mut self, out: &mut [u8], crc: &mut flate2::Crc) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            let buf = self.src.fill_buf()?;
            if buf.is_empty() {
                return Err(eof());
            }
            let n = buf.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&buf[..n]);
            crc.update(&buf[..n]);
            self.src.consume(n);
            done += n;
        }
        Ok(())
    }

    /// Skip `n` header bytes.
    fn skip(&mut self, mut n: usize, crc: &mut flate2::Crc) -> io::Result<()> {
        while n > 0 {
            let buf = self.src.fill_buf()?;
            if buf.is_empty() {
                return Err(eof());
            }
            let k = buf.len().min(n);
            crc.update(&buf[..k]);
            self.src.consume(k);
            n -= k;
        }
        Ok(())
    }

    /// Skip a zero-terminated header string, terminator included.
    fn skip_cstr(&mut self, crc: &mut flate2::Crc) -> io::Result<()> {
        loop {
            let buf = self.src.fill_buf()?;
            if buf.is_empty() {
                return Err(eof());
            }
            match buf.iter().position(|&b| b == 0) {
                Some(i) => {
                    crc.update(&buf[..=i]);
                    self.src.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let k = buf.len();
                    crc.update(buf);
                    self.src.consume(k);
                }
            }
        }
    }

    /// Parse one member header (RFC 1952 §2.3).
    fn header(&mut self) -> io::Result<()> {
        let mut crc = flate2::Crc::new();
        let mut fixed = [0u8; 10];
        self.take(&mut fixed, &mut crc)?;
        if fixed[..2] != [0x1f, 0x8b] {
            return Err(invalid("invalid gzip member header (bad magic)"));
        }
        if fixed[2] != 8 {
            return Err(invalid("unsupported gzip compression method"));
        }
        let flags = fixed[3];
        if flags & FRESERVED != 0 {
            return Err(invalid("gzip header has reserved flags set"));
        }
        if flags & FEXTRA != 0 {
            let mut xlen = [0u8; 2];
            self.take(&mut xlen, &mut crc)?;
            self.skip(usize::from(u16::from_le_bytes(xlen)), &mut crc)?;
        }
        if flags & FNAME != 0 {
            self.skip_cstr(&mut crc)?;
        }
        if flags & FCOMMENT != 0 {
            self.skip_cstr(&mut crc)?;
        }
        if flags & FHCRC != 0 {
            let want = crc.sum() as u16;
            let mut got = [0u8; 2];
            self.take(&mut got, &mut flate2::Crc::new())?;
            if u16::from_le_bytes(got) != want {
                return Err(invalid("gzip header CRC mismatch"));
            }
        }
        Ok(())
    }

    pub(crate) fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(invalid("gzip stream already failed"));
        }
        if out.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            if !self.in_member {
                if self.started {
                    // Another member, or the clean end of the stream.
                    match self.src.fill_buf()?.first() {
                        None => {
                            self.done = true;
                            return Ok(0);
                        }
                        Some(0x1f) => {}
                        Some(_) => {
                            return Err(invalid(
                                "trailing data after the end of the last gzip member",
                            ))
                        }
                    }
                }
                self.header()?;
                self.state.reset();
                self.in_member = true;
                self.started = true;
            }
            let input = self.src.fill_buf()?;
            let in_len = input.len().min(u32::MAX as usize);
            let out_len = out.len().min(u32::MAX as usize);
            let st = self.state.get();
            st.next_in = input.as_ptr().cast_mut();
            st.avail_in = in_len as u32;
            st.next_out = out.as_mut_ptr();
            st.avail_out = out_len as u32;
            // SAFETY: next_in/avail_in describe readable memory borrowed from the source
            // (igzip never writes through next_in), next_out/avail_out writable memory
            // borrowed from `out`; both outlive the call and are cleared right after it.
            let ret = unsafe { ffi::isal_inflate(st) };
            // On an error igzip may rewind next_in over bytes it took in earlier calls
            // (avail_in > in_len): never trust the counts of a failed call, and check them
            // on success too.
            let used = in_len.checked_sub(st.avail_in as usize);
            let produced = out_len.checked_sub(st.avail_out as usize);
            let finished = st.block_state == ffi::isal_block_state_ISAL_BLOCK_FINISH;
            st.next_in = ptr::null_mut();
            st.avail_in = 0;
            st.next_out = ptr::null_mut();
            st.avail_out = 0;
            if ret < 0 {
                self.failed = true;
                return Err(isal_error(ret));
            }
            let (Some(used), Some(produced)) = (used, produced) else {
                self.failed = true;
                return Err(invalid("igzip reported more bytes than it was given"));
            };
            self.src.consume(used);
            if finished {
                self.in_member = false;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if finished {
                continue;
            }
            if in_len == 0 {
                return Err(eof());
            }
            if used == 0 {
                return Err(invalid("igzip made no progress"));
            }
        }
    }
}

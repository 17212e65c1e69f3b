//! `fastdist._native`: the Python bindings of the core crate (rust/src), the only code that
//! touches pyo3. Conversions, GIL release, and `Error` → the classes of `fastdist.errors` with
//! the variant's fields as attributes (`errors.from_native`; python/fastdist/_native.pyi).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};

use fastdist_core::apply::{self, ApplyOptions, Mode};
use fastdist_core::decompress::LAYER_MEDIA_TYPES;
use fastdist_core::digest;
use fastdist_core::error::Error;
use fastdist_core::limits;
use fastdist_core::pipeline::{self, LayerOutcome, LayerSpec, TarStream};

/// Updates at least this big release the GIL (hashing 64 KiB takes ~30 µs with SHA-NI).
const DETACH_MIN: usize = 64 << 10;

/// The error's kind (the variant, as `fastdist.errors.from_native` knows it) and its fields as
/// keyword arguments of the Python class.
fn native_fields<'py>(
    py: Python<'py>,
    err: &Error,
) -> PyResult<(&'static str, Bound<'py, PyDict>)> {
    let f = PyDict::new(py);
    let kind = match err {
        Error::InvalidDigest(digest) => {
            f.set_item("digest", digest)?;
            "invalid_digest"
        }
        Error::UnsupportedAlgorithm(digest) => {
            f.set_item("digest", digest)?;
            "unsupported_algorithm"
        }
        Error::UnsupportedMediaType(media_type) => {
            f.set_item("media_type", media_type)?;
            "unsupported_media_type"
        }
        Error::DigestMismatch {
            what,
            expected,
            actual,
        } => {
            f.set_item("what", *what)?;
            f.set_item("expected", expected)?;
            f.set_item("actual", actual)?;
            "digest_mismatch"
        }
        Error::SizeMismatch { expected, actual } => {
            f.set_item("expected", *expected)?;
            f.set_item("actual", *actual)?;
            "size_mismatch"
        }
        Error::UnsafePath { path, reason } => {
            f.set_item("path", path)?;
            f.set_item("reason", reason)?;
            "unsafe_path"
        }
        Error::Corrupt { reason, entry } => {
            f.set_item("reason", reason)?;
            f.set_item("entry", entry.as_deref())?;
            "corrupt"
        }
        Error::Limit { limit, max, actual } => {
            f.set_item("limit", *limit)?;
            f.set_item("maximum", *max)?;
            f.set_item("actual", *actual)?;
            "limit"
        }
        Error::Io { op, path, source } => {
            f.set_item("op", *op)?;
            f.set_item("path", path)?;
            f.set_item("errno", source.raw_os_error())?;
            "io"
        }
        Error::State(_) => "state",
    };
    Ok((kind, f))
}

/// A core error as the `fastdist.errors` exception it stands for.
#[cold]
fn to_pyerr(err: Error) -> PyErr {
    let message = err.to_string();
    Python::attach(|py| {
        let made = native_fields(py, &err).and_then(|(kind, fields)| {
            py.import("fastdist.errors")?
                .getattr("from_native")?
                .call1((kind, message.as_str(), fields))
        });
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(failed) => failed,
        }
    })
}

/// `?` for core results in the bindings (the orphan rule rules out `From<Error> for PyErr`
/// outside pyo3 and the core).
trait OrRaise<T> {
    fn or_raise(self) -> PyResult<T>;
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self) -> PyResult<T> {
        self.map_err(to_pyerr)
    }
}

/// Run `f` on the bytes of a bytes-like object. `bytes` is borrowed (immutable, so safe to
/// read with the GIL released); a `bytearray` is copied (it could change under us); any other
/// buffer goes through `memoryview(...).tobytes()` because the buffer protocol is not in the
/// abi3-py310 limited API.
fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    if let Ok(ba) = data.cast::<PyByteArray>() {
        return Ok(f(&ba.to_vec()));
    }
    let view = PyMemoryView::from(data)?;
    let copy = view.call_method0("tobytes")?;
    let b = copy.cast::<PyBytes>()?;
    Ok(f(b.as_bytes()))
}

/// Lock a binding's inner state without ever waiting while holding the GIL (the holder may
/// be waiting for the GIL to return from a detached call).
fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> PyResult<MutexGuard<'a, T>> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(format!(
            "{what} is in use by another thread"
        ))),
        Err(TryLockError::Poisoned(_)) => Err(PyRuntimeError::new_err(format!(
            "{what} is unusable after a panic"
        ))),
    }
}

#[pyfunction]
fn validate_digest(digest: &str) -> PyResult<String> {
    digest::parse_digest(digest).or_raise()?;
    Ok(digest.to_owned())
}

#[pyfunction]
fn sha256_file(py: Python<'_>, path: PathBuf) -> PyResult<(String, u64)> {
    py.detach(|| digest::sha256_file(&path)).or_raise()
}

#[pyclass(module = "fastdist._native", name = "Sha256", frozen)]
struct PySha256 {
    inner: Mutex<digest::Sha256>,
}

#[pymethods]
impl PySha256 {
    #[new]
    fn new() -> Self {
        Self {
            inner: Mutex::new(digest::Sha256::new()),
        }
    }

    fn update(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut sha = lock(&self.inner, "Sha256")?;
        let sha: &mut digest::Sha256 = &mut sha;
        with_bytes(data, |bytes| {
            if bytes.len() >= DETACH_MIN {
                py.detach(|| sha.update(bytes));
            } else {
                sha.update(bytes);
            }
        })
    }

    fn digest(&self) -> PyResult<String> {
        Ok(lock(&self.inner, "Sha256")?.digest())
    }

    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(lock(&self.inner, "Sha256")?.size())
    }
}

#[pyclass(module = "fastdist._native", name = "Limits", get_all, set_all)]
#[derive(Clone)]
struct PyLimits {
    max_entries: u64,
    max_layer_bytes: u64,
    max_entry_bytes: u64,
    max_header_bytes: u64,
    max_path_len: u64,
    max_path_depth: u64,
    max_ratio: u64,
    ratio_grace_bytes: u64,
    zstd_window_log_max: u32,
    max_volumes: u64,
}

#[pymethods]
impl PyLimits {
    #[new]
    #[pyo3(signature = (
        *,
        max_entries = 1_000_000,
        max_layer_bytes = 64 << 30,
        max_entry_bytes = 32 << 30,
        max_header_bytes = 1 << 20,
        max_path_len = 4096,
        max_path_depth = 128,
        max_ratio = 1000,
        ratio_grace_bytes = 256 << 20,
        zstd_window_log_max = 27,
        max_volumes = 1024,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_entries: u64,
        max_layer_bytes: u64,
        max_entry_bytes: u64,
        max_header_bytes: u64,
        max_path_len: u64,
        max_path_depth: u64,
        max_ratio: u64,
        ratio_grace_bytes: u64,
        zstd_window_log_max: u32,
        max_volumes: u64,
    ) -> PyResult<Self> {
        if !(10..=31).contains(&zstd_window_log_max) {
            return Err(PyValueError::new_err(format!(
                "zstd_window_log_max must be within 10..=31, got {zstd_window_log_max}"
            )));
        }
        Ok(Self {
            max_entries,
            max_layer_bytes,
            max_entry_bytes,
            max_header_bytes,
            max_path_len,
            max_path_depth,
            max_ratio,
            ratio_grace_bytes,
            zstd_window_log_max,
            max_volumes,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Limits(max_entries={}, max_layer_bytes={}, max_entry_bytes={}, max_header_bytes={}, \
             max_path_len={}, max_path_depth={}, max_ratio={}, ratio_grace_bytes={}, \
             zstd_window_log_max={}, max_volumes={})",
            self.max_entries,
            self.max_layer_bytes,
            self.max_entry_bytes,
            self.max_header_bytes,
            self.max_path_len,
            self.max_path_depth,
            self.max_ratio,
            self.ratio_grace_bytes,
            self.zstd_window_log_max,
            self.max_volumes
        )
    }
}

impl PyLimits {
    fn to_limits(&self) -> limits::Limits {
        limits::Limits {
            max_entries: self.max_entries,
            max_layer_bytes: self.max_layer_bytes,
            max_entry_bytes: self.max_entry_bytes,
            max_header_bytes: self.max_header_bytes,
            max_path_len: self.max_path_len,
            max_path_depth: self.max_path_depth,
            max_ratio: self.max_ratio,
            ratio_grace_bytes: self.ratio_grace_bytes,
            zstd_window_log_max: self.zstd_window_log_max,
            max_volumes: self.max_volumes,
        }
    }
}

#[pyclass(module = "fastdist._native", name = "LayerResult", frozen, get_all)]
struct PyLayerResult {
    digest: String,
    diff_id: String,
    compressed_size: u64,
    uncompressed_size: u64,
    entries: u64,
    /// The layer's file manifest (text, see rust/src/manifest.rs); empty when nothing was
    /// applied (a diff_id-only pass).
    manifest: Py<PyBytes>,
}

#[pymethods]
impl PyLayerResult {
    fn __repr__(&self) -> String {
        format!(
            "LayerResult(digest={:?}, diff_id={:?}, compressed_size={}, uncompressed_size={}, \
             entries={})",
            self.digest, self.diff_id, self.compressed_size, self.uncompressed_size, self.entries
        )
    }
}

impl PyLayerResult {
    fn new(py: Python<'_>, o: LayerOutcome, manifest: &ManifestSlot) -> Self {
        let manifest = std::mem::take(&mut *manifest.lock().unwrap_or_else(|p| p.into_inner()));
        Self {
            digest: o.digest,
            diff_id: o.diff_id,
            compressed_size: o.compressed_size,
            uncompressed_size: o.uncompressed_size,
            entries: o.entries,
            manifest: PyBytes::new(py, &manifest).unbind(),
        }
    }
}

/// Where the applier leaves the layer's manifest for the result (it runs on the pipeline's
/// thread, which only returns the entry count).
type ManifestSlot = Arc<Mutex<Vec<u8>>>;

/// The arguments shared by `LayerWriter` and `apply_layer`.
struct LayerArgs {
    spec: LayerSpec,
    dest: PathBuf,
    opts: ApplyOptions,
}

#[allow(clippy::too_many_arguments)]
fn layer_args(
    media_type: String,
    dest: PathBuf,
    mode: &str,
    expected_digest: Option<String>,
    expected_size: Option<u64>,
    expected_diff_id: Option<String>,
    limits: Option<PyRef<'_, PyLimits>>,
    preserve_owner: Option<bool>,
) -> PyResult<LayerArgs> {
    let mode = match mode {
        "layer" => Mode::Layer,
        "flatten" => Mode::Flatten,
        other => {
            return Err(PyValueError::new_err(format!(
                "mode must be \"layer\" or \"flatten\", got {other:?}"
            )))
        }
    };
    let limits = limits.map(|l| l.to_limits()).unwrap_or_default();
    let preserve_owner = preserve_owner.unwrap_or_else(|| rustix::process::geteuid().is_root());
    let spec = LayerSpec {
        media_type,
        expected_digest,
        expected_size,
        expected_diff_id,
        limits,
    };
    spec.check().or_raise()?;
    Ok(LayerArgs {
        spec,
        dest,
        opts: ApplyOptions {
            mode,
            limits,
            preserve_owner,
        },
    })
}

/// The tar sink that applies under `dest`, leaving the manifest in `slot`.
fn applier(dest: PathBuf, opts: ApplyOptions, slot: ManifestSlot) -> impl pipeline::TarSink {
    move |tar: &mut TarStream| {
        let stats = apply::apply_tar(tar, &dest, &opts)?;
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = stats.manifest;
        Ok(stats.entries)
    }
}

#[pyclass(module = "fastdist._native", name = "LayerWriter", frozen)]
struct PyLayerWriter {
    inner: Mutex<pipeline::LayerWriter>,
    /// Ranged writes go here, from any thread, without the writer's lock.
    ranged: Option<pipeline::RangedWriter>,
    manifest: ManifestSlot,
}

#[pymethods]
impl PyLayerWriter {
    #[new]
    #[pyo3(signature = (
        media_type,
        dest,
        *,
        mode = "layer",
        expected_digest = None,
        expected_size = None,
        expected_diff_id = None,
        tee_path = None,
        limits = None,
        preserve_owner = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        media_type: String,
        dest: PathBuf,
        mode: &str,
        expected_digest: Option<String>,
        expected_size: Option<u64>,
        expected_diff_id: Option<String>,
        tee_path: Option<PathBuf>,
        limits: Option<PyRef<'_, PyLimits>>,
        preserve_owner: Option<bool>,
    ) -> PyResult<Self> {
        let a = layer_args(
            media_type,
            dest,
            mode,
            expected_digest,
            expected_size,
            expected_diff_id,
            limits,
            preserve_owner,
        )?;
        let manifest = ManifestSlot::default();
        let sink = applier(a.dest, a.opts, Arc::clone(&manifest));
        let spec = a.spec;
        let writer = py
            .detach(move || pipeline::LayerWriter::new(spec, tee_path.as_deref(), sink))
            .or_raise()?;
        Ok(Self {
            ranged: writer.ranged(),
            inner: Mutex::new(writer),
            manifest,
        })
    }

    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut w = lock(&self.inner, "LayerWriter")?;
        let w: &mut pipeline::LayerWriter = &mut w;
        if self.ranged.is_some() {
            // Appended to the tee straight from the caller's buffer, the GIL released.
            return with_bytes(data, |bytes| py.detach(|| w.write(bytes)))?.or_raise();
        }
        let chunks = with_bytes(data, |bytes| w.copy_chunks(bytes))?;
        py.detach(|| w.send(chunks)).or_raise()
    }

    fn write_at(&self, py: Python<'_>, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let r = self.ranged_writer()?;
        with_bytes(data, |bytes| py.detach(|| r.write_at(offset, bytes)))?.or_raise()
    }

    fn advance(&self, py: Python<'_>, to: u64) -> PyResult<()> {
        let r = self.ranged_writer()?;
        py.detach(|| r.advance(to)).or_raise()
    }

    #[getter]
    fn offset(&self) -> PyResult<u64> {
        Ok(lock(&self.inner, "LayerWriter")?.offset())
    }

    fn finish(&self, py: Python<'_>) -> PyResult<PyLayerResult> {
        let mut w = lock(&self.inner, "LayerWriter")?;
        let w: &mut pipeline::LayerWriter = &mut w;
        let outcome = py.detach(|| w.finish()).or_raise()?;
        Ok(PyLayerResult::new(py, outcome, &self.manifest))
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let mut w = lock(&self.inner, "LayerWriter")?;
        let w: &mut pipeline::LayerWriter = &mut w;
        py.detach(|| w.abort());
        Ok(())
    }
}

impl PyLayerWriter {
    fn ranged_writer(&self) -> PyResult<&pipeline::RangedWriter> {
        self.ranged.as_ref().ok_or_else(|| {
            PyRuntimeError::new_err("LayerWriter: write_at and advance need a tee_path")
        })
    }
}

#[pyfunction]
#[pyo3(signature = (
    blob_path,
    media_type,
    dest,
    *,
    mode = "layer",
    expected_digest = None,
    expected_size = None,
    expected_diff_id = None,
    limits = None,
    preserve_owner = None,
))]
#[allow(clippy::too_many_arguments)]
fn apply_layer(
    py: Python<'_>,
    blob_path: PathBuf,
    media_type: String,
    dest: PathBuf,
    mode: &str,
    expected_digest: Option<String>,
    expected_size: Option<u64>,
    expected_diff_id: Option<String>,
    limits: Option<PyRef<'_, PyLimits>>,
    preserve_owner: Option<bool>,
) -> PyResult<PyLayerResult> {
    let a = layer_args(
        media_type,
        dest,
        mode,
        expected_digest,
        expected_size,
        expected_diff_id,
        limits,
        preserve_owner,
    )?;
    let manifest = ManifestSlot::default();
    let sink = applier(a.dest, a.opts, Arc::clone(&manifest));
    let spec = a.spec;
    let outcome = py
        .detach(move || pipeline::apply_blob(&blob_path, &spec, sink))
        .or_raise()?;
    Ok(PyLayerResult::new(py, outcome, &manifest))
}

#[pyfunction]
#[pyo3(signature = (blob_path, media_type, *, expected_digest = None, limits = None))]
fn layer_diff_id(
    py: Python<'_>,
    blob_path: PathBuf,
    media_type: String,
    expected_digest: Option<String>,
    limits: Option<PyRef<'_, PyLimits>>,
) -> PyResult<(String, u64)> {
    let spec = LayerSpec {
        media_type,
        expected_digest,
        expected_size: None,
        expected_diff_id: None,
        limits: limits.map(|l| l.to_limits()).unwrap_or_default(),
    };
    let out = py
        .detach(move || pipeline::hash_blob(&blob_path, &spec))
        .or_raise()?;
    Ok((out.diff_id, out.uncompressed_size))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(validate_digest, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_file, m)?)?;
    m.add_function(wrap_pyfunction!(apply_layer, m)?)?;
    m.add_function(wrap_pyfunction!(layer_diff_id, m)?)?;
    m.add_class::<PySha256>()?;
    m.add_class::<PyLimits>()?;
    m.add_class::<PyLayerResult>()?;
    m.add_class::<PyLayerWriter>()?;
    let types: Vec<&str> = LAYER_MEDIA_TYPES.iter().map(|(t, _)| *t).collect();
    m.add("LAYER_MEDIA_TYPES", types)?;
    Ok(())
}

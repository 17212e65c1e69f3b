//! fastdist's native core, free of Python: verified layer streams (digest, decompress, tar,
//! apply) and the audited filesystem writes. The `fastdist._native` bindings are the crate in
//! rust/py/, the only code that knows pyo3.

pub mod apply;
pub mod decompress;
pub mod digest;
pub mod error;
#[cfg(feature = "isal")]
mod igzip;
pub mod limits;
pub mod manifest;
pub mod pipeline;
pub mod prefix;
pub mod safepath;
pub mod tar;

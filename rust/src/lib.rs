//! fastdist's native core. Module registration only; the bindings live in py.rs.

pub mod apply;
pub mod decompress;
pub mod digest;
pub mod error;
pub mod limits;
pub mod manifest;
pub mod pipeline;
mod py;
pub mod safepath;
pub mod tar;

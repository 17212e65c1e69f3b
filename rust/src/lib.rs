//! fastdist's native core. Module registration only; the bindings live in py.rs.

pub mod error;
pub mod limits;

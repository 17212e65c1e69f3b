//! Resource limits for one layer and one image config (design.md §7). Defaults are safe for
//! real images; every breach is `Error::Limit` (or Python's `LimitExceededError`) naming the
//! limit.

/// Limits applied while decompressing and applying one layer, and (`max_volumes`) while the
/// Python side parses an image config: the one place a user configures them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tar entries per layer.
    pub max_entries: u64,
    /// Uncompressed (tar stream) bytes per layer.
    pub max_layer_bytes: u64,
    /// Bytes of one regular file.
    pub max_entry_bytes: u64,
    /// Bytes of one PAX extended header or GNU long name/link record.
    pub max_header_bytes: u64,
    /// Bytes of one entry path or link target.
    pub max_path_len: u64,
    /// Components of one entry path.
    pub max_path_depth: u64,
    /// Uncompressed / compressed ratio, checked once `ratio_grace_bytes` are out.
    pub max_ratio: u64,
    /// Uncompressed bytes allowed before the ratio is enforced.
    pub ratio_grace_bytes: u64,
    /// zstd `window_log_max` (2^N bytes of decoder window).
    pub zstd_window_log_max: u32,
    /// Entries of an image config's `Volumes` (each becomes a mount of every container).
    pub max_volumes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_layer_bytes: 64 << 30,
            max_entry_bytes: 32 << 30,
            max_header_bytes: 1 << 20,
            max_path_len: 4096,
            max_path_depth: 128,
            max_ratio: 1000,
            ratio_grace_bytes: 256 << 20,
            zstd_window_log_max: 27,
            max_volumes: 1024,
        }
    }
}

//! Raw declarations of libthinstack's C API, written by hand from
//! `include/libthinstack/io.h`, `thin.h` and `version.h` (no bindgen). Each
//! item mirrors its C namesake; the headers' comments are the reference for
//! what every call does, its errors, thread safety and ownership. The safe
//! wrapper is the `thinstack` crate.
//!
//! Conventions carried over from C: calls return 0 (or a count) on success
//! and a negative errno on failure; control-path calls fill a `ts_error`;
//! data-path calls leave their reason in a per-thread record read with
//! `ts_last_error()`.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

/// `struct ts_stack`: an open stack (opaque).
#[repr(C)]
pub struct ts_stack {
    _private: [u8; 0],
}

/// `ts_dev` (`struct ts_node`): one node of a stack (opaque).
#[repr(C)]
pub struct ts_dev {
    _private: [u8; 0],
}

/// A control-path error: the negative errno also returned, and a message.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ts_error {
    pub code: c_int,
    pub msg: [c_char; 512],
}

impl Default for ts_error {
    fn default() -> Self {
        ts_error { code: 0, msg: [0; 512] }
    }
}

pub type ts_op = u32;
pub const TS_OP_READ: ts_op = 0;
pub const TS_OP_WRITE: ts_op = 1;
pub const TS_OP_FLUSH: ts_op = 2;
pub const TS_OP_DISCARD: ts_op = 3;
pub const TS_OP_WRITE_ZEROES: ts_op = 4;
pub const TS_OP_PROVISION: ts_op = 5;
pub const TS_OP_COUNT: ts_op = 6;

pub const TS_IO_FUA: u32 = 1 << 0;
pub const TS_IO_MAY_UNMAP: u32 = 1 << 1;
pub const TS_IO_NOFALLBACK: u32 = 1 << 2;
pub const TS_IO_MAY_ZERO: u32 = 1 << 3;
pub const TS_IO_ALL_FLAGS: u32 = TS_IO_FUA | TS_IO_MAY_UNMAP | TS_IO_NOFALLBACK | TS_IO_MAY_ZERO;

/// What a device accepts (see io.h for each field's stacking rule).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ts_limits {
    pub size: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub io_min: u32,
    pub io_opt: u32,
    pub max_io_bytes: u64,
    pub max_discard_bytes: u64,
    pub discard_granularity: u32,
    pub max_write_zeroes_bytes: u64,
    pub max_provision_bytes: u64,
    pub provision_granularity: u32,
    pub discard_zeroes: bool,
    pub write_zeroes_unmap: bool,
    pub fua: bool,
    pub read_only: bool,
}

pub const TS_EXTENT_HOLE: u32 = 1 << 0;
pub const TS_EXTENT_ZERO: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ts_extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

/// A growable list of extents: zero-initialise, free with ts_extent_list_free.
#[repr(C)]
pub struct ts_extent_list {
    pub v: *mut ts_extent,
    pub n: usize,
    pub cap: usize,
}

impl Default for ts_extent_list {
    fn default() -> Self {
        ts_extent_list { v: std::ptr::null_mut(), n: 0, cap: 0 }
    }
}

/// `struct iovec` of <sys/uio.h>.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct iovec {
    pub iov_base: *mut c_void,
    pub iov_len: usize,
}

/// One generic request (ts_submit).
#[repr(C)]
pub struct ts_io {
    pub op: u32,
    pub flags: u32,
    pub offset: u64,
    pub length: u64,
    pub iov: *const iovec,
    pub iovcnt: c_int,
}

pub type ts_event_fn = Option<
    unsafe extern "C" fn(
        stack: *mut ts_stack,
        node: *const c_char,
        event: *const c_char,
        detail: *const c_char,
        arg: *mut c_void,
    ),
>;

pub const TS_OPEN_VALIDATE_ONLY: u32 = 1 << 0;
pub const TS_OPEN_READ_ONLY: u32 = 1 << 1;
pub const TS_OPEN_FORCE_SHARE: u32 = 1 << 2;

#[repr(C)]
pub struct ts_open_opts {
    pub struct_size: u32,
    pub flags: u32,
    pub plugin_dir: *const c_char,
    pub event: ts_event_fn,
    pub event_arg: *mut c_void,
}

pub const TS_CONFIG_SECRETS: u32 = 1 << 0;
pub const TS_BLOCK_STATUS_BATCH: usize = 4096;
pub const TS_SIZE_MAX: u64 = i64::MAX as u64;

// thin.h
pub const TS_THIN_MAX_ID: u32 = (1 << 24) - 1;
pub const TS_VOLUME_ANY_ID: u32 = u32::MAX;
pub const TS_VOLUME_EXPORT: u32 = 1 << 0;
pub const TS_VOLUME_DISCARD_BEYOND: u32 = 1 << 1;
pub const TS_POOL_EXTEND_METADATA: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ts_thin_info {
    pub id: u32,
    pub mapped_blocks: u64,
    pub mapped_bytes: u64,
    pub transaction_id: u64,
    pub creation_time: u32,
    pub snapshotted_time: u32,
    pub open: bool,
    pub size: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ts_pool_status {
    pub block_size: u64,
    pub data_blocks: u64,
    pub data_used_blocks: u64,
    pub data_free_blocks: u64,
    pub metadata_blocks: u64,
    pub metadata_used_blocks: u64,
    pub transaction_id: u64,
    pub held_metadata_root: u64,
    pub low_water_mark: u64,
    pub low_water: bool,
    pub out_of_data_space: bool,
    pub queue_if_no_space: bool,
    pub discard_passdown: bool,
    pub zero_new_blocks: bool,
    pub read_only: bool,
    pub needs_check: bool,
    pub failed: bool,
    pub nr_thins: u32,
    pub commits: u64,
    pub out_of_metadata_space: bool,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ts_volume_info {
    pub name: [c_char; 256],
    pub pool: [c_char; 256],
    pub origin: [c_char; 256],
    pub id: u32,
    pub in_pool: bool,
    pub open: bool,
    pub size: u64,
    pub mapped_bytes: u64,
    pub provisioned_bytes: u64,
    pub highest_mapped: u64,
}

impl Default for ts_volume_info {
    fn default() -> Self {
        ts_volume_info {
            name: [0; 256],
            pool: [0; 256],
            origin: [0; 256],
            id: 0,
            in_pool: false,
            open: false,
            size: 0,
            mapped_bytes: 0,
            provisioned_bytes: 0,
            highest_mapped: 0,
        }
    }
}

extern "C" {
    // version.h
    pub fn ts_version() -> *const c_char;

    // io.h: errors
    pub fn ts_error_clear(err: *mut ts_error);
    pub fn ts_strerror(code: c_int) -> *const c_char;
    pub fn ts_err_name(code: c_int) -> *const c_char;
    pub fn ts_err_from_name(name: *const c_char) -> c_int;
    pub fn ts_last_error() -> *const c_char;
    pub fn ts_last_errno() -> c_int;
    pub fn ts_op_name(op: ts_op) -> *const c_char;

    // io.h: extents
    pub fn ts_extent_list_add(l: *mut ts_extent_list, offset: u64, length: u64, flags: u32) -> c_int;
    pub fn ts_extent_list_reset(l: *mut ts_extent_list);
    pub fn ts_extent_list_free(l: *mut ts_extent_list);

    // io.h: stacks and devices
    pub fn ts_stack_open_file(
        path: *const c_char,
        opts: *const ts_open_opts,
        out: *mut *mut ts_stack,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_stack_open_string(
        json: *const c_char,
        base_dir: *const c_char,
        opts: *const ts_open_opts,
        out: *mut *mut ts_stack,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_stack_config_json(stack: *mut ts_stack, flags: u32) -> *mut c_char;
    pub fn ts_stack_close(stack: *mut ts_stack, err: *mut ts_error) -> c_int;
    pub fn ts_stack_dev(stack: *mut ts_stack, name: *const c_char) -> *mut ts_dev;
    pub fn ts_stack_node(stack: *mut ts_stack, name: *const c_char) -> *mut ts_dev;
    pub fn ts_stack_ndevs(stack: *const ts_stack) -> usize;
    pub fn ts_stack_dev_at(stack: *mut ts_stack, i: usize) -> *mut ts_dev;
    pub fn ts_stack_nnodes(stack: *const ts_stack) -> usize;
    pub fn ts_stack_node_at(stack: *mut ts_stack, i: usize) -> *mut ts_dev;
    pub fn ts_dev_name(dev: *const ts_dev) -> *const c_char;
    pub fn ts_dev_type(dev: *const ts_dev) -> *const c_char;
    pub fn ts_dev_size(dev: *const ts_dev) -> u64;
    pub fn ts_dev_limits(dev: *const ts_dev) -> *const ts_limits;
    pub fn ts_dev_stack(dev: *const ts_dev) -> *mut ts_stack;
    pub fn ts_dev_grow(dev: *mut ts_dev, new_size: u64, err: *mut ts_error) -> c_int;
    pub fn ts_dev_message(dev: *mut ts_dev, message: *const c_char, err: *mut ts_error) -> c_int;
    pub fn ts_dev_status_json(dev: *mut ts_dev) -> *mut c_char;
    pub fn ts_dev_limits_json(dev: *const ts_dev) -> *mut c_char;

    // io.h: synchronous requests
    pub fn ts_pread(dev: *mut ts_dev, buf: *mut c_void, len: usize, offset: u64) -> c_int;
    pub fn ts_preadv(dev: *mut ts_dev, iov: *const iovec, iovcnt: c_int, offset: u64) -> c_int;
    pub fn ts_pwrite(dev: *mut ts_dev, buf: *const c_void, len: usize, offset: u64, flags: u32) -> c_int;
    pub fn ts_pwritev(dev: *mut ts_dev, iov: *const iovec, iovcnt: c_int, offset: u64, flags: u32) -> c_int;
    pub fn ts_flush(dev: *mut ts_dev) -> c_int;
    pub fn ts_discard(dev: *mut ts_dev, offset: u64, len: u64) -> c_int;
    pub fn ts_write_zeroes(dev: *mut ts_dev, offset: u64, len: u64, flags: u32) -> c_int;
    pub fn ts_provision(dev: *mut ts_dev, offset: u64, len: u64) -> c_int;
    pub fn ts_block_status(dev: *mut ts_dev, offset: u64, len: u64, out: *mut ts_extent_list) -> c_int;
    pub fn ts_block_status_bounded(
        dev: *mut ts_dev,
        offset: u64,
        len: u64,
        max_extents: usize,
        out: *mut ts_extent_list,
    ) -> c_int;
    pub fn ts_submit(dev: *mut ts_dev, io: *const ts_io) -> c_int;
    pub fn ts_parse_size(s: *const c_char, out: *mut u64) -> c_int;
    pub fn ts_format_size(bytes: u64, buf: *mut c_char, buflen: usize);

    // thin.h: pool messages
    pub fn ts_pool_create_thin(pool: *mut ts_dev, id: u32, err: *mut ts_error) -> c_int;
    pub fn ts_pool_create_snap(pool: *mut ts_dev, id: u32, origin_id: u32, err: *mut ts_error) -> c_int;
    pub fn ts_pool_delete_thin(pool: *mut ts_dev, id: u32, err: *mut ts_error) -> c_int;
    pub fn ts_pool_list_thins(
        pool: *mut ts_dev,
        out: *mut ts_thin_info,
        max: usize,
        count: *mut usize,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_pool_get_status(pool: *mut ts_dev, st: *mut ts_pool_status, err: *mut ts_error) -> c_int;
    pub fn ts_pool_extend(pool: *mut ts_dev, new_data_size: u64, err: *mut ts_error) -> c_int;
    pub fn ts_pool_extend_metadata(pool: *mut ts_dev, new_metadata_size: u64, err: *mut ts_error) -> c_int;
    pub fn ts_pool_set_transaction_id(
        pool: *mut ts_dev,
        current_id: u64,
        new_id: u64,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_pool_reserve_metadata_snap(pool: *mut ts_dev, err: *mut ts_error) -> c_int;
    pub fn ts_pool_release_metadata_snap(pool: *mut ts_dev, err: *mut ts_error) -> c_int;

    // thin.h: volumes kept with the configuration
    pub fn ts_stack_set_config_path(stack: *mut ts_stack, path: *const c_char, err: *mut ts_error) -> c_int;
    pub fn ts_stack_config_path(stack: *const ts_stack) -> *const c_char;
    pub fn ts_volume_create(
        stack: *mut ts_stack,
        pool: *const c_char,
        name: *const c_char,
        size: u64,
        id: u32,
        flags: u32,
        id_out: *mut u32,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_volume_snapshot(
        stack: *mut ts_stack,
        origin: *const c_char,
        name: *const c_char,
        flags: u32,
        id_out: *mut u32,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_volume_delete(stack: *mut ts_stack, name: *const c_char, err: *mut ts_error) -> c_int;
    pub fn ts_volume_delete_id(
        stack: *mut ts_stack,
        pool: *const c_char,
        id: u32,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_volume_resize(
        stack: *mut ts_stack,
        name: *const c_char,
        size: u64,
        flags: u32,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_stack_pool_extend(
        stack: *mut ts_stack,
        pool: *const c_char,
        new_size: u64,
        flags: u32,
        err: *mut ts_error,
    ) -> c_int;
    pub fn ts_volume_list(
        stack: *mut ts_stack,
        pool: *const c_char,
        out: *mut ts_volume_info,
        max: usize,
        count: *mut usize,
        err: *mut ts_error,
    ) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn links_and_reports_a_version() {
        let v = unsafe { CStr::from_ptr(ts_version()) }.to_str().unwrap();
        assert_eq!(v.split('.').count(), 3, "{}", v);
        assert_eq!(unsafe { ts_err_from_name(b"ENOSPC\0".as_ptr() as *const c_char) }, -28);
    }

    /// The layouts the C compiler gives, passed in by the ctest that runs
    /// `cargo test` (TS_C_LAYOUT="name=size,..."), must be these.
    #[test]
    fn struct_sizes_match_the_c_headers() {
        let ours = [
            ("ts_error", std::mem::size_of::<ts_error>()),
            ("ts_limits", std::mem::size_of::<ts_limits>()),
            ("ts_extent", std::mem::size_of::<ts_extent>()),
            ("ts_extent_list", std::mem::size_of::<ts_extent_list>()),
            ("ts_io", std::mem::size_of::<ts_io>()),
            ("ts_open_opts", std::mem::size_of::<ts_open_opts>()),
            ("ts_thin_info", std::mem::size_of::<ts_thin_info>()),
            ("ts_pool_status", std::mem::size_of::<ts_pool_status>()),
            ("ts_volume_info", std::mem::size_of::<ts_volume_info>()),
        ];
        let c = match std::env::var("TS_C_LAYOUT") {
            Ok(c) => c,
            Err(_) => return,
        };
        let mut seen = 0;
        for item in c.split(',').filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once('=').expect("name=value");
            let size: usize = value.parse().expect("a size");
            let ours = ours.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("unknown {}", name));
            assert_eq!(ours.1, size, "size of {} differs from C's", name);
            seen += 1;
        }
        assert_eq!(seen, ours.len(), "TS_C_LAYOUT does not name every struct");
    }
}

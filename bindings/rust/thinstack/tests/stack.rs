//! The safe bindings against the real library, on sparse files in a
//! temporary folder per test.
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use thinstack::{flags, Error, OpenOptions, Stack};

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

/// A folder removed when the test ends (no tempfile crate: no dependencies).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "thinstack-rs-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

/// A pool (64K blocks) on meta.img + data.img with thin volume "vm0".
fn write_pool_config(dir: &Path, vm_size: u64) -> PathBuf {
    let cfg = format!(
        r#"{{ "version": 1,
  "layers": {{
    "meta": {{ "type": "file", "path": "meta.img", "size": "16M", "create": true }},
    "data": {{ "type": "file", "path": "data.img", "size": "64M", "create": true }},
    "pool": {{ "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K", "create": true }},
    "vm0": {{ "type": "thin", "pool": "pool", "id": 0, "size": {}, "create": true }}
  }},
  "exports": ["vm0"] }}"#,
        vm_size
    );
    let p = dir.join("stack.json");
    fs::write(&p, cfg).unwrap();
    p
}

fn file_config(size: &str) -> String {
    format!(
        r#"{{ "version": 1, "layers": {{ "d": {{ "type": "file", "path": "d.img", "size": "{}", "create": true }} }}, "exports": ["d"] }}"#,
        size
    )
}

#[test]
fn write_read_and_reopen() {
    let t = TempDir::new("rw");
    let json = file_config("4M");
    let stack = Stack::from_json(&json, Some(t.path())).unwrap();
    let d = stack.device("d").expect("export d");
    assert_eq!(d.name(), "d");
    assert_eq!(d.layer_type(), "file");
    assert_eq!(d.size(), 4 * M);
    assert_eq!(d.limits().size, 4 * M);
    assert!(stack.device("nope").is_none());
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    d.write(64 * K, &data).unwrap();
    d.write_fua(M, &data[..4096]).unwrap();
    d.flush().unwrap();
    let mut back = vec![0u8; 8192];
    d.read(64 * K, &mut back).unwrap();
    assert_eq!(back, data);
    stack.close().unwrap();

    // What was written is in the file, and in the stack opened again.
    let raw = fs::read(t.path().join("d.img")).unwrap();
    assert_eq!(&raw[64 * 1024..64 * 1024 + 8192], &data[..]);
    let stack = Stack::from_json(&json, Some(t.path())).unwrap();
    let mut back = vec![0u8; 4096];
    stack.device("d").unwrap().read(M, &mut back).unwrap();
    assert_eq!(back, &data[..4096]);
}

#[test]
fn vectored_io_scatters_and_gathers() {
    let t = TempDir::new("iov");
    let stack = Stack::from_json(&file_config("1M"), Some(t.path())).unwrap();
    let d = stack.device("d").unwrap();
    let (a, b) = (vec![1u8; 512], vec![2u8; 1536]);
    d.write_vectored(4096, &[std::io::IoSlice::new(&a), std::io::IoSlice::new(&b)], false).unwrap();
    let mut whole = vec![0u8; 2048];
    d.read(4096, &mut whole).unwrap();
    assert!(whole[..512].iter().all(|&x| x == 1) && whole[512..].iter().all(|&x| x == 2));
    let (mut x, mut y) = (vec![0u8; 1024], vec![0u8; 1024]);
    d.read_vectored(4096, &mut [std::io::IoSliceMut::new(&mut x), std::io::IoSliceMut::new(&mut y)]).unwrap();
    assert_eq!([x, y].concat(), whole);
}

#[test]
fn data_path_errors_say_why() {
    let t = TempDir::new("err");
    let stack = Stack::from_json(&file_config("1M"), Some(t.path())).unwrap();
    let d = stack.device("d").unwrap();
    let mut buf = vec![0u8; 100];
    let e = d.read(0, &mut buf).unwrap_err();
    assert_eq!(e.errno(), 22);
    assert_eq!(e.name(), "EINVAL");
    assert!(e.message().contains("not a multiple of the logical block size"), "{}", e);
    assert!(e.message().contains(" d"), "names the device: {}", e);
    let mut buf = vec![0u8; 4096];
    let e = d.read(2 * M, &mut buf).unwrap_err();
    assert!(e.message().contains("past the end"), "{}", e);
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let io: std::io::Error = e.clone().into();
    assert!(io.to_string().contains("past the end"));
    assert!(format!("{}", e).ends_with("[EINVAL]"), "{}", e);
}

#[test]
fn open_errors_name_the_json_path() {
    let t = TempDir::new("open");
    let e = Stack::from_json(
        r#"{ "version": 1, "layers": { "a": { "type": "file", "path": "a.img", "sise": "1M" } } }"#,
        Some(t.path()),
    )
    .unwrap_err();
    assert_eq!(e.errno(), 22);
    assert!(e.message().starts_with("layers.a.sise: unknown key"), "{}", e);
    let e = Stack::open(t.path().join("missing.json")).unwrap_err();
    assert_eq!(e.errno(), 2, "{}", e);
    let e = OpenOptions::new().read_only(true).open_json(&file_config("1M"), Some(t.path())).unwrap_err();
    assert!(e.message().contains("read-only open creates nothing"), "{}", e);
    assert!(!t.path().join("d.img").exists(), "a failed open created its file");
    assert_eq!(Error::new(-28, "full").errno(), 28);
}

#[test]
fn thin_volume_provision_discard_zeroes_and_holes() {
    let t = TempDir::new("thin");
    let cfg = write_pool_config(t.path(), 32 * M);
    let stack = Stack::open(&cfg).unwrap();
    let vm = stack.device("vm0").unwrap();
    let data_img = t.path().join("data.img");
    let whole = vm.block_status(0, vm.size()).unwrap();
    assert_eq!(whole.len(), 1);
    assert!(whole[0].is_hole() && whole[0].length == 32 * M);

    vm.provision(M, M).unwrap();
    vm.write(4 * M, &vec![0xabu8; 128 * 1024]).unwrap();
    vm.write_zeroes(8 * M, 256 * K, 0).unwrap();
    let map = vm.block_status(0, vm.size()).unwrap();
    let find = |off: u64| *map.iter().find(|e| e.offset <= off && off < e.offset + e.length).unwrap();
    assert_eq!(find(M).describe(), "zero", "{:?}", map);
    assert_eq!(find(4 * M).describe(), "data", "{:?}", map);
    assert_eq!(find(8 * M).describe(), "zero", "{:?}", map);
    assert_eq!(find(16 * M).describe(), "hole", "{:?}", map);
    // The extents cover the device, in order, without gaps.
    let mut at = 0;
    for e in &map {
        assert_eq!(e.offset, at);
        at += e.length;
    }
    assert_eq!(at, vm.size());

    let mut buf = vec![1u8; 65536];
    vm.read(M, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "provisioned space reads as zeroes");

    vm.discard(4 * M, 128 * K).unwrap();
    vm.write_zeroes(8 * M, 256 * K, flags::MAY_UNMAP).unwrap();
    let map = vm.block_status(4 * M, 5 * M).unwrap();
    assert!(map.iter().filter(|e| e.offset < 4 * M + 128 * K).all(|e| e.is_hole()), "{:?}", map);
    assert!(map.iter().filter(|e| e.offset >= 8 * M && e.offset < 8 * M + 256 * K).all(|e| e.is_hole()));
    vm.flush().unwrap();
    // Only the pool's data blocks that hold something take room in the file.
    assert!(allocated(&data_img) <= 4 * M, "data.img allocates {}", allocated(&data_img));

    let pool = stack.pool("pool").unwrap();
    let st = pool.status().unwrap();
    assert_eq!(st.block_size, 64 * K);
    assert_eq!(st.data_used_blocks, 16, "1M provisioned = 16 blocks: {:?}", st);
    assert_eq!(pool.thins().unwrap().len(), 1);
    let e = stack.pool("vm0").unwrap_err();
    assert_eq!(e.errno(), 22);
    assert!(e.message().contains("not a thin-pool"), "{}", e);
}

#[test]
fn volumes_created_snapshotted_resized_listed_and_deleted() {
    let t = TempDir::new("vol");
    let cfg = write_pool_config(t.path(), 8 * M);
    {
        let stack = Stack::open(&cfg).unwrap();
        let vm = stack.device("vm0").unwrap();
        vm.write(0, &vec![7u8; 65536]).unwrap();
        let pool = stack.pool("pool").unwrap();
        let id = pool.create_volume("scratch", 4 * M, true).unwrap();
        assert_eq!(id, 1);
        let snap = pool.snapshot_volume("vm0", "vm0-snap", false).unwrap();
        assert_eq!(snap, 2);
        pool.resize_volume("scratch", 16 * M, false).unwrap();
        let vols = pool.volumes().unwrap();
        let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["vm0", "scratch", "vm0-snap"]);
        assert_eq!(vols[1].size, 16 * M);
        assert_eq!(vols[2].origin, "vm0");
        assert!(vols[0].open && !vols[1].open);
        assert_eq!(vols[0].mapped_bytes, 64 * K);
        assert_eq!(stack.volumes().unwrap(), vols);
        let e = pool.delete_volume("vm0").unwrap_err();
        assert_eq!(e.errno(), 16, "an open volume is busy: {}", e);
        assert_eq!(pool.create_volume("scratch", M, false).unwrap_err().errno(), 17);
        stack.close().unwrap();
    }
    // The configuration file was rewritten: the next open has the layers.
    let text = fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\"scratch\"") && text.contains("\"vm0-snap\""), "{}", text);
    let stack = Stack::open(&cfg).unwrap();
    let scratch = stack.device("scratch").expect("created with export");
    assert_eq!(scratch.size(), 16 * M);
    assert!(stack.device("vm0-snap").is_none(), "not exported");
    let snap = stack.node("vm0-snap").unwrap();
    let mut buf = vec![0u8; 65536];
    snap.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 7), "the snapshot shares vm0's data");
    drop(stack);
    let mut stack = Stack::open(&cfg).unwrap();
    assert_eq!(stack.config_path().unwrap(), fs::canonicalize(&cfg).unwrap());
    stack.set_config_path(None).unwrap();
    assert!(stack.config_path().is_none());
    stack.set_config_path(Some(&cfg)).unwrap();
    drop(stack);

    // Deleting needs the volume closed: open the pool and what lies below,
    // as the CLI does, standing for the whole file.
    let json = r#"{ "version": 1, "layers": {
        "meta": { "type": "file", "path": "meta.img", "size": "16M" },
        "data": { "type": "file", "path": "data.img", "size": "64M" },
        "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K" } } }"#;
    let mut stack = OpenOptions::new().open_json(json, Some(t.path())).unwrap();
    stack.set_config_path(Some(&cfg)).unwrap();
    let pool = stack.pool("pool").unwrap();
    let before = pool.status().unwrap().nr_thins;
    pool.delete_volume("vm0-snap").unwrap();
    assert_eq!(pool.status().unwrap().nr_thins, before - 1);
    drop(pool);
    stack.close().unwrap();
    assert!(!fs::read_to_string(&cfg).unwrap().contains("vm0-snap"));
}

#[test]
fn raw_pool_calls_and_extend() {
    let t = TempDir::new("raw");
    let cfg = write_pool_config(t.path(), 4 * M);
    let stack = Stack::open(&cfg).unwrap();
    let pool = stack.pool("pool").unwrap();
    pool.create_thin(9).unwrap();
    pool.create_snap(10, 9).unwrap();
    assert_eq!(pool.create_thin(9).unwrap_err().errno(), 17);
    let ids: Vec<u32> = pool.thins().unwrap().iter().map(|i| i.id).collect();
    assert_eq!(ids, [0, 9, 10]);
    pool.delete_thin(10).unwrap();
    pool.set_transaction_id(0, 5).unwrap();
    assert_eq!(pool.set_transaction_id(0, 6).unwrap_err().errno(), 22);
    assert_eq!(pool.status().unwrap().transaction_id, 5);
    pool.reserve_metadata_snap().unwrap();
    assert_ne!(pool.status().unwrap().held_metadata_root, 0);
    pool.release_metadata_snap().unwrap();
    // Volume 9 has no layer: it is listed with an empty name and can go.
    let orphan = pool.volumes().unwrap().into_iter().find(|v| v.id == 9).unwrap();
    assert_eq!(orphan.name, "");
    pool.delete_volume_id(9).unwrap();
    pool.extend(128 * M).unwrap();
    assert_eq!(pool.status().unwrap().data_blocks, 128 * M / (64 * K));
    assert_eq!(fs::metadata(t.path().join("data.img")).unwrap().len(), 128 * M);
    drop(pool);
    stack.close().unwrap();
    let text = fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\"size\": \"128M\""), "the file's new size is not in the config: {}", text);
}

#[test]
fn devices_are_shared_by_threads() {
    let t = TempDir::new("mt");
    let cfg = write_pool_config(t.path(), 16 * M);
    let stack = Stack::open(&cfg).unwrap();
    let vm = stack.device("vm0").unwrap();
    let pool = stack.pool("pool").unwrap();
    std::thread::scope(|s| {
        for w in 0..4u8 {
            s.spawn(move || {
                for i in 0..32u64 {
                    let off = (i * 4 + w as u64) * 64 * K;
                    vm.write(off, &vec![w + 1; 4096]).unwrap();
                }
            });
        }
        // Pool calls run beside the I/O.
        s.spawn(|| {
            for _ in 0..8 {
                pool.status().unwrap();
            }
        });
    });
    for i in 0..128u64 {
        let mut b = vec![0u8; 4096];
        vm.read(i * 64 * K, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == (i % 4) as u8 + 1), "block {}", i);
    }
    assert_eq!(pool.status().unwrap().data_used_blocks, 128);
}

#[test]
fn sizes_and_version() {
    assert_eq!(thinstack::parse_size("64K").unwrap(), 65536);
    assert_eq!(thinstack::parse_size("12Q").unwrap_err().errno(), 22);
    assert_eq!(thinstack::format_size(1 << 30), "1G");
    assert_eq!(thinstack::version().split('.').count(), 3);
}

#[test]
fn send_and_sync() {
    fn both<T: Send + Sync>() {}
    both::<Stack>();
    both::<thinstack::Device<'static>>();
    both::<thinstack::Pool<'static>>();
    both::<Error>();
}

#[test]
fn nodes_status_grow_and_messages() {
    let t = TempDir::new("nodes");
    let cfg = write_pool_config(t.path(), 4 * M);
    let stack = Stack::open(&cfg).unwrap();
    let names: Vec<&str> = stack.nodes().iter().map(|d| d.name()).collect();
    assert_eq!(names.len(), 4);
    assert_eq!(*names.last().unwrap(), "vm0", "children come first: {:?}", names);
    let exports: Vec<&str> = stack.devices().iter().map(|d| d.name()).collect();
    assert_eq!(exports, ["vm0"]);
    let vm = stack.device("vm0").unwrap();
    vm.write(0, &[1u8; 4096]).unwrap();
    let status = vm.status_json().unwrap();
    assert!(status.starts_with('{') && status.contains("write"), "{}", status);
    let limits = vm.limits_json().unwrap();
    assert!(limits.contains("\"logical_block_size\""), "{}", limits);
    assert_eq!(vm.limits().logical_block_size, 512);
    let e = vm.message("no-such-verb").unwrap_err();
    assert!(e.errno() == 95 || e.errno() == 22, "{}", e);
    assert!(!e.message().is_empty() && e.message() != "Operation not supported", "{}", e);

    // A file layer grows live, keeping its contents.
    let data = stack.node("data").unwrap();
    assert_eq!(data.size(), 64 * M);
    data.grow(80 * M).unwrap();
    assert_eq!(data.size(), 80 * M);
    assert_eq!(fs::metadata(t.path().join("data.img")).unwrap().len(), 80 * M);
    let e = data.grow(M).unwrap_err();
    assert_eq!(e.errno(), 22, "{}", e);
    assert!(!e.message().is_empty());
}

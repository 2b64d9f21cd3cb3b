//! A VMM-style block back end: the "guest" puts requests on a queue, a pool
//! of worker threads takes them, runs each on the device and posts a
//! completion with a virtio-blk-like status, and the guest reaps the
//! completions, as a virtio-blk device model's queue handlers do.
//!
//!   cargo run --example vmm_worker                  # a thin volume in a temp folder
//!   cargo run --example vmm_worker -- CONFIG DEV    # an export of your stack
//!
//! The device is shared by reference among the workers (`Device` is Copy,
//! Send and Sync); std::thread::scope keeps them inside the stack's lifetime,
//! so the stack cannot close while a request runs.
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use thinstack::{flags, Device, Error, Stack};

const SECTOR: u64 = 512;
const WORKERS: usize = 4;

/// One request of the queue (virtio-blk's IN, OUT, FLUSH, DISCARD,
/// WRITE_ZEROES, and GET_LBA_STATUS-like block status).
enum Req {
    Read { sector: u64, len: usize },
    Write { sector: u64, data: Vec<u8> },
    Flush,
    Discard { sector: u64, sectors: u64 },
    WriteZeroes { sector: u64, sectors: u64, unmap: bool },
    Status { sector: u64, sectors: u64 },
}

/// virtio-blk's status byte, and what came back.
#[derive(Debug)]
enum Done {
    Ok(Option<Vec<u8>>),
    IoErr(Error),
    Unsupp(Error),
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Ok(None) => write!(f, "OK"),
            Done::Ok(Some(d)) => write!(f, "OK, {} bytes", d.len()),
            Done::IoErr(e) => write!(f, "IOERR: {}", e),
            Done::Unsupp(e) => write!(f, "UNSUPP: {}", e),
        }
    }
}

fn run(dev: &Device<'_>, req: Req) -> Done {
    let r = match req {
        Req::Read { sector, len } => {
            let mut buf = vec![0u8; len];
            dev.read(sector * SECTOR, &mut buf).map(|_| Some(buf))
        }
        Req::Write { sector, data } => dev.write(sector * SECTOR, &data).map(|_| None),
        Req::Flush => dev.flush().map(|_| None),
        Req::Discard { sector, sectors } => dev.discard(sector * SECTOR, sectors * SECTOR).map(|_| None),
        Req::WriteZeroes { sector, sectors, unmap } => {
            let f = if unmap { flags::MAY_UNMAP } else { 0 };
            dev.write_zeroes(sector * SECTOR, sectors * SECTOR, f).map(|_| None)
        }
        Req::Status { sector, sectors } => dev.block_status(sector * SECTOR, sectors * SECTOR).map(|m| {
            let text: Vec<String> =
                m.iter().map(|e| format!("{}+{} {}", e.offset, e.length, e.describe())).collect();
            Some(text.join("\n").into_bytes())
        }),
    };
    match r {
        Ok(v) => Done::Ok(v),
        Err(e) if e.errno() == 95 => Done::Unsupp(e),
        Err(e) => Done::IoErr(e),
    }
}

fn temp_stack() -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("thinstack-vmm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("stack.json");
    std::fs::write(
        &cfg,
        r#"{ "version": 1,
  "layers": {
    "meta": { "type": "file", "path": "meta.img", "size": "16M", "create": true },
    "data": { "type": "file", "path": "data.img", "size": "256M", "create": true },
    "pool": { "type": "thin-pool", "metadata": "meta", "data": "data", "block_size": "64K", "create": true },
    "vm0":  { "type": "thin", "pool": "pool", "id": 0, "size": "1G", "create": true } },
  "exports": ["vm0"] }"#,
    )?;
    Ok((dir, cfg))
}

/// One completion against what was expected of it: a read's data, the block
/// status request `map` (printed), or nothing.
fn check(rid: u64, d: Done, expect: &mut HashMap<u64, Vec<u8>>, map: u64) -> bool {
    match (d, expect.remove(&rid)) {
        (Done::Ok(Some(got)), Some(want)) if got == want => true,
        (Done::Ok(Some(text)), None) if rid == map => {
            println!("block status of the first 256K after zeroing and discarding:");
            println!("{}", String::from_utf8_lossy(&text));
            true
        }
        (Done::Ok(None), None) => true,
        (d, _) => {
            eprintln!("request {}: unexpected {}", rid, d);
            false
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tmp, cfg, name) = match args.as_slice() {
        [cfg, dev] => (None, cfg.into(), dev.clone()),
        [] => {
            let (dir, cfg) = temp_stack()?;
            (Some(dir), cfg, "vm0".to_string())
        }
        _ => return Err("usage: vmm_worker [CONFIG DEVICE]".into()),
    };
    let stack = Stack::open(&cfg)?;
    let dev = stack.device(&name).ok_or_else(|| format!("{}: no export named {}", cfg.display(), name))?;
    println!("{}: {} bytes, {} workers", name, dev.size(), WORKERS);

    // The queue: (request id, request) in, (request id, completion) out.
    let (submit, queue) = mpsc::channel::<(u64, Req)>();
    let queue = Arc::new(Mutex::new(queue));
    let (complete, completions) = mpsc::channel::<(u64, Done)>();
    let mut expect: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut ok = true;
    let mut completed = 0;

    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            let (queue, complete, dev) = (Arc::clone(&queue), complete.clone(), dev);
            s.spawn(move || loop {
                let next = queue.lock().unwrap().recv();
                let (id, req) = match next {
                    Ok(x) => x,
                    Err(_) => return, // the guest closed the queue
                };
                if complete.send((id, run(&dev, req))).is_err() {
                    return;
                }
            });
        }
        drop(complete);

        // The guest: 256 writes of 4K, one per 64K block, then reads them
        // back; zero, discard and map some; flush.
        let mut id = 0;
        let mut send = |req: Req| {
            id += 1;
            submit.send((id, req)).unwrap();
            id
        };
        for i in 0..256u64 {
            send(Req::Write { sector: i * 128, data: vec![(i % 251) as u8 + 1; 4096] });
        }
        send(Req::Flush);
        let writes = 257;
        let mut done = 0;
        for (rid, d) in completions.iter() {
            if !matches!(d, Done::Ok(None)) {
                eprintln!("request {}: {}", rid, d);
                ok = false;
            }
            done += 1;
            completed += 1;
            if done == writes {
                break;
            }
        }
        for i in 0..256u64 {
            let rid = send(Req::Read { sector: i * 128, len: 4096 });
            expect.insert(rid, vec![(i % 251) as u8 + 1; 4096]);
        }
        // The workers run requests side by side in no set order, as a
        // device's queues do: the reads must end before their blocks are
        // zeroed and discarded, or a read may see the zeroes.
        for (rid, d) in completions.iter().take(256) {
            completed += 1;
            ok &= check(rid, d, &mut expect, 0);
        }
        send(Req::WriteZeroes { sector: 0, sectors: 128, unmap: true });
        send(Req::Discard { sector: 128, sectors: 128 });
        let map = send(Req::Status { sector: 0, sectors: 4 * 128 });
        drop(submit); // no more requests: the workers stop once the queue is empty
        for (rid, d) in completions.iter() {
            completed += 1;
            ok &= check(rid, d, &mut expect, map);
        }
    });
    if !expect.is_empty() {
        eprintln!("{} reads never completed", expect.len());
        ok = false;
    }
    let pool = stack.pool("pool").ok();
    if let Some(p) = &pool {
        let st = p.status()?;
        println!("pool: {} of {} data blocks used", st.data_used_blocks, st.data_blocks);
    }
    drop(pool);
    stack.close()?;
    if let Some(dir) = tmp {
        std::fs::remove_dir_all(dir)?;
    }
    if !ok {
        return Err("some requests failed".into());
    }
    println!("{} requests completed and verified", completed);
    Ok(())
}

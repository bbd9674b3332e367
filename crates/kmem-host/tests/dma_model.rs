//! Random map / device I/O / sync / CPU access / unmap sequences over random
//! buffers (kmalloc, pages, vmalloc through scatter-gather, coherent, pool;
//! below and above a 32-bit device's mask), checked against a byte-exact
//! shadow of every buffer: no byte is ever lost or corrupted, the debug
//! layer reports exactly the rule breaks the sequence makes, and every
//! bounce slot, debug entry and page comes back.

mod dma_common;
mod proptest_cases;

use dma_common::*;
use kmem::addr::{Pfn, PAGE_SIZE};
use kmem::dma::engine::{DESC_ERR_FAULT, DESC_READ, DESC_WRITE};
use kmem::dma::*;
use kmem::get_order;
use kmem::gfp::{GFP_DMA, GFP_DMA32, GFP_KERNEL};
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem_host::{vmap, HostPlatform};
use proptest::prelude::*;
use proptest::test_runner::Config;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Kmalloc,
    Pages,
    Vmalloc,
    Coherent,
    Pool,
}

#[derive(Clone, Debug)]
struct BufSpec {
    kind: Kind,
    size: usize,
    off: usize,
    low: bool,
    dev: usize,
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        buf: usize,
        dev: usize,
        dir: u8,
    },
    /// The device writes (`write`) or reads part of the buffer.
    DevIo {
        buf: usize,
        at: u16,
        len: u16,
        write: bool,
        seed: u8,
    },
    CpuWrite {
        buf: usize,
        at: u16,
        len: u16,
        seed: u8,
    },
    CpuRead {
        buf: usize,
    },
    CpuPeek {
        buf: usize,
    },
    SyncCpu {
        buf: usize,
    },
    SyncDev {
        buf: usize,
    },
    Unmap {
        buf: usize,
    },
    DoubleUnmap {
        buf: usize,
    },
}

fn spec() -> impl Strategy<Value = BufSpec> {
    (
        0..5u8,
        1..49_152usize,
        0..PAGE_SIZE,
        any::<bool>(),
        0..2usize,
    )
        .prop_map(|(k, size, off, low, dev)| {
            let kind = [
                Kind::Kmalloc,
                Kind::Pages,
                Kind::Vmalloc,
                Kind::Coherent,
                Kind::Pool,
            ][k as usize];
            let size = match kind {
                Kind::Kmalloc => 1 + size % 20_000,
                Kind::Pages => 1 + size % (12 * KIB),
                Kind::Vmalloc => size,
                Kind::Coherent => 1 + size % (16 * KIB),
                Kind::Pool => 1 + size % POOL_BLOCK,
            };
            BufSpec {
                kind,
                size,
                off,
                low,
                dev,
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    let b = 0..8usize;
    prop_oneof![
        4 => (b.clone(), 0..2usize, 0..3u8).prop_map(|(buf, dev, dir)| Op::Map { buf, dev, dir }),
        5 => (b.clone(), any::<u16>(), any::<u16>(), any::<bool>(), any::<u8>())
            .prop_map(|(buf, at, len, write, seed)| Op::DevIo { buf, at, len, write, seed }),
        2 => (b.clone(), any::<u16>(), any::<u16>(), any::<u8>())
            .prop_map(|(buf, at, len, seed)| Op::CpuWrite { buf, at, len, seed }),
        2 => b.clone().prop_map(|buf| Op::CpuRead { buf }),
        1 => b.clone().prop_map(|buf| Op::CpuPeek { buf }),
        2 => b.clone().prop_map(|buf| Op::SyncCpu { buf }),
        2 => b.clone().prop_map(|buf| Op::SyncDev { buf }),
        3 => b.clone().prop_map(|buf| Op::Unmap { buf }),
        1 => b.prop_map(|buf| Op::DoubleUnmap { buf }),
    ]
}

const POOL_BLOCK: usize = 256;

enum Mem {
    Kmalloc,
    Pages { pfn: Pfn, order: u32 },
    Vmalloc,
    Coherent { bus: DmaAddr },
    Pool { bus: DmaAddr },
}

enum How<'a> {
    Single(DmaAddr),
    Sg(SgTable<'a, HostPlatform>),
}

struct Mapping<'a> {
    dev: usize,
    dir: DmaDirection,
    cpu_owns: bool,
    segs: Vec<(DmaAddr, usize)>,
    how: How<'a>,
}

struct Buf<'a> {
    mem: Mem,
    cpu: *mut u8,
    len: usize,
    data: Vec<u8>,
    map: Option<Mapping<'a>>,
    /// Device of a coherent or pool buffer.
    owner: Option<usize>,
    /// The last single mapping undone: (device, bus, direction).
    last: Option<(usize, DmaAddr, DmaDirection)>,
}

/// A port that records what the device read.
#[derive(Default)]
struct Recorder(Vec<u8>);

impl DevicePort for Recorder {
    fn produce(&mut self, _: u64, _: usize, buf: &mut [u8]) {
        buf.fill(0);
    }
    fn consume(&mut self, _: u64, _: usize, data: &[u8]) {
        self.0.extend_from_slice(data);
    }
}

fn sub(len: usize, at: u16, l: u16) -> (usize, usize) {
    let s = at as usize % len;
    (s, 1 + l as usize % (len - s))
}

/// Posts the descriptors covering `[at, at + len)` of a buffer laid out in
/// `segs` and runs the engine.
fn device_io(
    eng: &DmaEngine<'_, HostPlatform>,
    segs: &[(DmaAddr, usize)],
    at: usize,
    len: usize,
    write: bool,
    port: &mut dyn DevicePort,
) -> (usize, EngineRun, Vec<u64>) {
    let mut o = 0;
    let mut seqs = Vec::new();
    for &(bus, l) in segs {
        let s = at.max(o);
        let e = (at + len).min(o + l);
        if s < e {
            let flag = if write { DESC_WRITE } else { DESC_READ };
            seqs.push(
                eng.post(bus.add((s - o) as u64), (e - s) as u32, flag)
                    .unwrap(),
            );
        }
        o += l;
    }
    (seqs.len(), eng.run(port), seqs)
}

/// Before unmapping a `DMA_BIDIRECTIONAL` buffer the CPU owns (and may
/// have written), a driver gives it back to the device: the unmap implies a
/// sync for the CPU, which for a bounced buffer copies the device's view
/// over the CPU's (as in Linux).
fn give_back(
    d: &Device<'_, HostPlatform>,
    mp: &Mapping<'_>,
    len: usize,
) -> Result<(), TestCaseError> {
    if mp.cpu_owns && mp.dir == DMA_BIDIRECTIONAL {
        let r = match &mp.how {
            How::Single(bus) => dma_sync_single_for_device(d, *bus, len, mp.dir),
            How::Sg(t) => dma_sync_sg_for_device(d, t.entries(), mp.dir),
        };
        prop_assert!(r.is_ok(), "{:?}", r);
    }
    Ok(())
}

/// What a run exercised.
#[derive(Debug, Default)]
struct Summary {
    bounced_maps: u64,
    rule_breaks: usize,
    device_bytes: u64,
}

fn run_model(specs: Vec<BufSpec>, ops: Vec<Op>) -> Result<Summary, TestCaseError> {
    let m = machine();
    let start_free = free_pages(&m);
    let summary;
    {
        let vm = vmap::vmalloc(&m).unwrap();
        let slab = SlabAllocator::new(m.pages(), SlabConfig::default()).unwrap();
        let range = (vm.config().start, vm.config().end);
        let dma = Dma::new(
            m.pages(),
            DmaConfig {
                swiotlb_bytes: 512 * KIB,
                vmalloc_range: Some(range),
                ..DmaConfig::default()
            },
        )
        .unwrap();
        let devs = [
            Device::new(&dma, "ahci", "0000:00:1f.2"),
            Device::new(&dma, "nvme", "0000:01:00.0"),
        ];
        dma_set_mask_and_coherent(&devs[1], DMA_BIT_MASK(64)).unwrap();
        let engs = [
            DmaEngine::new(&devs[0], 64).unwrap(),
            DmaEngine::new(&devs[1], 64).unwrap(),
        ];
        let pools = [
            dma_pool_create("model", &devs[0], POOL_BLOCK, 16, 1024).unwrap(),
            dma_pool_create("model", &devs[1], POOL_BLOCK, 16, 1024).unwrap(),
        ];
        let mut errors = 0usize;

        // The buffers, with their initial contents written by the CPU.
        let mut bufs: Vec<Buf<'_>> = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let (mem, cpu, len, owner) = match s.kind {
                Kind::Kmalloc => {
                    let gfp = if s.low {
                        GFP_KERNEL | GFP_DMA
                    } else {
                        GFP_KERNEL
                    };
                    (
                        Mem::Kmalloc,
                        slab.kmalloc(s.size, gfp).unwrap().as_ptr(),
                        s.size,
                        None,
                    )
                }
                Kind::Pages => {
                    let order = get_order(s.off + s.size);
                    let gfp = if s.low {
                        GFP_KERNEL | GFP_DMA32
                    } else {
                        GFP_KERNEL
                    };
                    let pfn = m.pages().alloc_pages(gfp, order).unwrap();
                    let cpu = m
                        .pages()
                        .page_address(pfn)
                        .as_ptr::<u8>()
                        .wrapping_add(s.off);
                    (Mem::Pages { pfn, order }, cpu, s.size, None)
                }
                Kind::Vmalloc => {
                    let p = if s.low {
                        vm.vmalloc_32(s.size)
                    } else {
                        vm.vmalloc(s.size)
                    };
                    (Mem::Vmalloc, p.unwrap().as_ptr(), s.size, None)
                }
                Kind::Coherent => {
                    let (p, bus) = dma_alloc_coherent(&devs[s.dev], s.size, GFP_KERNEL).unwrap();
                    (Mem::Coherent { bus }, p.as_ptr(), s.size, Some(s.dev))
                }
                Kind::Pool => {
                    let (p, bus) = dma_pool_alloc(&pools[s.dev], GFP_KERNEL).unwrap();
                    (
                        Mem::Pool { bus },
                        p.as_ptr(),
                        s.size.min(POOL_BLOCK),
                        Some(s.dev),
                    )
                }
            };
            let data = pattern(1000 + i as u64, len);
            // SAFETY: a fresh buffer of len bytes.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), cpu, len) };
            bufs.push(Buf {
                mem,
                cpu,
                len,
                data,
                map: None,
                owner,
                last: None,
            });
        }
        let nb = bufs.len();
        let cpu_check = |b: &Buf<'_>, dev: usize| match b.mem {
            Mem::Vmalloc => dma_cpu_access_vmalloc(&devs[dev], &vm, b.cpu, b.len),
            _ => dma_cpu_access(&devs[dev], b.cpu, b.len),
        };

        for op in &ops {
            match *op {
                Op::Map { buf, dev, dir } => {
                    let b = &mut bufs[buf % nb];
                    if b.map.is_some() || b.owner.is_some() {
                        continue;
                    }
                    let dir = [DMA_BIDIRECTIONAL, DMA_TO_DEVICE, DMA_FROM_DEVICE][dir as usize];
                    let used = dma.swiotlb().used_slots();
                    let r = match b.mem {
                        Mem::Kmalloc => dma_map_single(&devs[dev], b.cpu, b.len, dir)
                            .map(|bus| (vec![(bus, b.len)], How::Single(bus))),
                        Mem::Pages { pfn, .. } => {
                            let off = b.cpu as usize % PAGE_SIZE;
                            dma_map_page(&devs[dev], pfn, off, b.len, dir)
                                .map(|bus| (vec![(bus, b.len)], How::Single(bus)))
                        }
                        Mem::Vmalloc => {
                            let mut t =
                                sg_table_from_vmalloc(&vm, b.cpu, b.len, GFP_KERNEL).unwrap();
                            dma_map_sgtable(&devs[dev], &mut t, dir).map(|_| {
                                let segs = t.dma_segments().map(|(a, l)| (a, l as usize)).collect();
                                (segs, How::Sg(t))
                            })
                        }
                        _ => unreachable!(),
                    };
                    match r {
                        Ok((segs, how)) => {
                            prop_assert_eq!(segs.iter().map(|s| s.1).sum::<usize>(), b.len);
                            for &(bus, l) in &segs {
                                prop_assert!(bus.0 + l as u64 - 1 <= devs[dev].dma_mask());
                            }
                            b.map = Some(Mapping {
                                dev,
                                dir,
                                cpu_owns: false,
                                segs,
                                how,
                            });
                        }
                        Err(DmaError::SwiotlbFull { .. }) => {
                            prop_assert_eq!(dev, 0, "only the 32-bit device bounces");
                            prop_assert_eq!(
                                dma.swiotlb().used_slots(),
                                used,
                                "a failed map keeps nothing"
                            );
                        }
                        Err(e) => prop_assert!(false, "map failed: {}", e),
                    }
                }
                Op::DevIo {
                    buf,
                    at,
                    len,
                    write,
                    seed,
                } => {
                    let seed = seed as u64;
                    let b = &mut bufs[buf % nb];
                    let (dev, segs, allowed) = match (&b.map, b.owner, &b.mem) {
                        (_, Some(d), Mem::Coherent { bus } | Mem::Pool { bus }) => {
                            (d, vec![(*bus, b.len)], true)
                        }
                        (Some(mp), _, _) => {
                            let ok = !mp.cpu_owns
                                && if write {
                                    mp.dir.device_writes()
                                } else {
                                    mp.dir.device_reads()
                                };
                            (mp.dev, mp.segs.clone(), ok)
                        }
                        _ => continue,
                    };
                    let (s, l) = sub(b.len, at, len);
                    if write {
                        let mut port = PatternPort::new(seed);
                        let (n, run, seqs) = device_io(&engs[dev], &segs, s, l, true, &mut port);
                        if allowed {
                            prop_assert_eq!((run.completed, run.failed), (n, 0));
                            b.data[s..s + l].copy_from_slice(&pattern(seed, l));
                        } else {
                            prop_assert_eq!((run.completed, run.failed), (0, n));
                            for q in seqs {
                                prop_assert!(engs[dev].desc(q).flags & DESC_ERR_FAULT != 0);
                            }
                            errors += n;
                        }
                    } else {
                        let mut rec = Recorder::default();
                        let (n, run, _) = device_io(&engs[dev], &segs, s, l, false, &mut rec);
                        if allowed {
                            prop_assert_eq!((run.completed, run.failed), (n, 0));
                            prop_assert!(
                                rec.0 == b.data[s..s + l],
                                "the device read what the CPU wrote"
                            );
                        } else {
                            prop_assert_eq!((run.completed, run.failed), (0, n));
                            errors += n;
                        }
                    }
                }
                Op::CpuWrite { buf, at, len, seed } => {
                    let b = &mut bufs[buf % nb];
                    let dev = match (&b.map, b.owner) {
                        (_, Some(d)) => d,
                        (None, None) => 0,
                        (Some(mp), _) if mp.cpu_owns && mp.dir.device_reads() => mp.dev,
                        _ => continue,
                    };
                    prop_assert!(cpu_check(b, dev).is_ok());
                    let (s, l) = sub(b.len, at, len);
                    let bytes = pattern(5000 + seed as u64, l);
                    // SAFETY: inside the live buffer.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), b.cpu.add(s), l) };
                    b.data[s..s + l].copy_from_slice(&bytes);
                }
                Op::CpuRead { buf } => {
                    let b = &bufs[buf % nb];
                    let dev = match (&b.map, b.owner) {
                        (_, Some(d)) => d,
                        (None, None) => 0,
                        (Some(mp), _) if mp.cpu_owns => mp.dev,
                        _ => continue,
                    };
                    prop_assert!(cpu_check(b, dev).is_ok());
                    prop_assert!(read(b.cpu, b.len) == b.data, "buffer {} intact", buf % nb);
                }
                Op::CpuPeek { buf } => {
                    let b = &bufs[buf % nb];
                    if let Some(mp) = &b.map {
                        if !mp.cpu_owns {
                            let r = cpu_check(b, mp.dev);
                            prop_assert!(
                                matches!(
                                    r,
                                    Err(DmaError::Api(DebugReport {
                                        violation: Violation::CpuAccessDeviceOwned { .. },
                                        ..
                                    }))
                                ),
                                "{:?}",
                                r
                            );
                            errors += 1;
                        }
                    }
                }
                Op::SyncCpu { buf } | Op::SyncDev { buf } => {
                    let for_cpu = matches!(op, Op::SyncCpu { .. });
                    let b = &mut bufs[buf % nb];
                    let Some(mp) = &mut b.map else { continue };
                    // Ownership goes back and forth: a second sync in the same
                    // direction would copy over the other side's bytes (a
                    // bounced DMA_BIDIRECTIONAL buffer), which is the
                    // driver's bug, not the model's subject.
                    if mp.cpu_owns == for_cpu {
                        continue;
                    }
                    let d = &devs[mp.dev];
                    let r = match (&mp.how, for_cpu) {
                        (How::Single(bus), true) => dma_sync_single_for_cpu(d, *bus, b.len, mp.dir),
                        (How::Single(bus), false) => {
                            dma_sync_single_for_device(d, *bus, b.len, mp.dir)
                        }
                        (How::Sg(t), true) => dma_sync_sg_for_cpu(d, t.entries(), mp.dir),
                        (How::Sg(t), false) => dma_sync_sg_for_device(d, t.entries(), mp.dir),
                    };
                    prop_assert!(r.is_ok(), "{:?}", r);
                    mp.cpu_owns = for_cpu;
                }
                Op::Unmap { buf } => {
                    let b = &mut bufs[buf % nb];
                    let Some(mp) = b.map.take() else { continue };
                    let d = &devs[mp.dev];
                    give_back(d, &mp, b.len)?;
                    let r = match mp.how {
                        How::Single(bus) => {
                            b.last = Some((mp.dev, bus, mp.dir));
                            dma_unmap_single(d, bus, b.len, mp.dir)
                        }
                        How::Sg(mut t) => dma_unmap_sgtable(d, &mut t, mp.dir),
                    };
                    prop_assert!(r.is_ok(), "{:?}", r);
                    prop_assert!(cpu_check(b, mp.dev).is_ok());
                    prop_assert!(
                        read(b.cpu, b.len) == b.data,
                        "buffer {} intact after unmap",
                        buf % nb
                    );
                }
                Op::DoubleUnmap { buf } => {
                    let i = buf % nb;
                    let Some((dev, bus, dir)) = bufs[i].last else {
                        continue;
                    };
                    if bufs[i].map.is_some() {
                        continue;
                    }
                    // Only if no live mapping of the device starts there now
                    // (a bounce slot may have been reused).
                    let live = bufs.iter().any(|o| {
                        o.map
                            .as_ref()
                            .is_some_and(|mp| mp.dev == dev && mp.segs.iter().any(|s| s.0 == bus))
                    });
                    if live {
                        continue;
                    }
                    let len = bufs[i].len;
                    let r = dma_unmap_single(&devs[dev], bus, len, dir);
                    prop_assert!(
                        matches!(
                            r,
                            Err(DmaError::Api(DebugReport {
                                violation: Violation::NotMapped { .. },
                                ..
                            }))
                        ),
                        "{:?}",
                        r
                    );
                    errors += 1;
                }
            }
        }

        // Undo everything; every byte must be where the model says.
        for (i, b) in bufs.iter_mut().enumerate() {
            if let Some(mp) = b.map.take() {
                let d = &devs[mp.dev];
                give_back(d, &mp, b.len)?;
                let r = match mp.how {
                    How::Single(bus) => dma_unmap_single(d, bus, b.len, mp.dir),
                    How::Sg(mut t) => dma_unmap_sgtable(d, &mut t, mp.dir),
                };
                prop_assert!(r.is_ok(), "{:?}", r);
            }
            prop_assert!(
                read(b.cpu, b.len) == b.data,
                "buffer {} intact at the end",
                i
            );
        }
        prop_assert_eq!(
            dma.swiotlb().used_slots(),
            0,
            "every bounce slot back in the pool"
        );
        prop_assert_eq!(
            dma.debug().errors(),
            errors,
            "exactly the rule breaks made were reported"
        );
        for b in bufs {
            match b.mem {
                Mem::Kmalloc => slab.kfree(b.cpu).unwrap(),
                Mem::Pages { pfn, order } => m.pages().free_pages(pfn, order).unwrap(),
                Mem::Vmalloc => vm.vfree(b.cpu).unwrap(),
                Mem::Coherent { bus } => {
                    dma_free_coherent(&devs[b.owner.unwrap()], b.len, b.cpu, bus).unwrap()
                }
                Mem::Pool { bus } => dma_pool_free(&pools[b.owner.unwrap()], b.cpu, bus).unwrap(),
            }
        }
        for p in pools {
            dma_pool_destroy(p).unwrap();
        }
        let device_bytes: u64 = engs
            .iter()
            .map(|e| {
                let (w, r, _, _) = e.totals();
                w + r
            })
            .sum();
        drop(engs);
        prop_assert_eq!(dma.debug().live_entries(), 0);
        for d in devs {
            d.release().unwrap();
        }
        prop_assert_eq!(dma.debug().errors(), errors);
        summary = Summary {
            bounced_maps: dma.swiotlb().stats().maps,
            rule_breaks: errors,
            device_bytes,
        };
    }
    prop_assert_eq!(free_pages(&m), start_free, "every page back");
    Ok(summary)
}

proptest! {
    #![proptest_config(Config { cases: proptest_cases::cases(96), max_shrink_iters: 2000, ..Config::default() })]

    #[test]
    fn random_dma_sequences_never_lose_a_byte(
        specs in proptest::collection::vec(spec(), 1..8),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        run_model(specs, ops).map(|_| ())?;
    }
}

#[test]
fn a_long_fixed_sequence() {
    // Every kind of buffer, above and below the mask, on both devices.
    let specs = (0..8)
        .map(|i| BufSpec {
            kind: [
                Kind::Kmalloc,
                Kind::Pages,
                Kind::Vmalloc,
                Kind::Coherent,
                Kind::Pool,
            ][i % 5],
            size: 1000 + i * 3001,
            off: i * 97,
            low: i % 2 == 0,
            dev: i % 2,
        })
        .collect();
    let mut ops = Vec::new();
    for round in 0..6u8 {
        for buf in 0..8 {
            let dir = (buf as u8 + round) % 3;
            ops.push(Op::Map {
                buf,
                dev: (buf + round as usize) % 2,
                dir,
            });
            ops.push(Op::CpuPeek { buf });
            ops.push(Op::DevIo {
                buf,
                at: 17,
                len: 5000,
                write: true,
                seed: round,
            });
            ops.push(Op::DevIo {
                buf,
                at: 3,
                len: 700,
                write: false,
                seed: 0,
            });
            ops.push(Op::SyncCpu { buf });
            ops.push(Op::CpuRead { buf });
            ops.push(Op::CpuWrite {
                buf,
                at: 100,
                len: 300,
                seed: round,
            });
            ops.push(Op::SyncDev { buf });
            ops.push(Op::DevIo {
                buf,
                at: 0,
                len: u16::MAX,
                write: false,
                seed: 0,
            });
            ops.push(Op::DevIo {
                buf,
                at: 900,
                len: 20,
                write: true,
                seed: round + 50,
            });
            ops.push(Op::Unmap { buf });
            ops.push(Op::DoubleUnmap { buf });
        }
    }
    let s = run_model(specs, ops).unwrap();
    assert!(s.bounced_maps > 10, "{s:?}");
    assert!(s.rule_breaks > 10, "{s:?}");
    assert!(s.device_bytes > 100_000, "{s:?}");
}

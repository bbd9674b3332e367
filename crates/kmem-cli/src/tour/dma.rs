//! Tour section "why contiguous?": what a device does with a bus address.
//!
//! A simulated NIC (kmem's [`DmaEngine`]: a ring of `{bus address, length,
//! flags}` descriptors in coherent memory, memory reached by physical
//! address) receives the same 64 KiB "packet" into four buffers:
//!
//! 1. **kmalloc.** One physically contiguous run; `dma_map_single` gives
//!    its physical address; one descriptor; the packet lands intact.
//! 2. **vmalloc, treated as contiguous.** On the fresh machine vmalloc's
//!    pages happen to be one run (it takes large blocks first), which is why
//!    the mistake survives testing. `dma_map_single` refuses it anyway, with
//!    the rule and the fix. Then the machine is fragmented (every free block
//!    of two pages or more taken, every other page of it given back: the
//!    held pages stand for other users' data) and a new vmalloc buffer gets
//!    scattered frames. The driver's mistake — the first frame's address and
//!    the whole length in one descriptor — is refused by the engine's checks
//!    (what an IOMMU would do); with the checks off, the device writes the
//!    frames that follow the first one physically. The tour names each
//!    frame written, what it belonged to and how many of its bytes changed,
//!    shows one before and after, and then puts them back.
//! 3. **vmalloc through scatter-gather.** `sg_table_from_vmalloc`, then
//!    `dma_map_sgtable` (adjacent frames merged), one descriptor per
//!    segment: the packet lands intact and nothing else is touched.
//! 4. **Bounce.** A 32-bit SATA controller and a kmalloc buffer above
//!    4 GiB: the mapping goes through a swiotlb slot below 4 GiB, the bytes
//!    reach the buffer only at the unmap, and the copies are counted and
//!    timed against the same mapping on the 64-bit NIC.
//!
//! Every claim goes through [`Out::check`]; everything allocated is given
//! back (checked by the section and again by the tour).

use super::{fmt_ns, group, per_op, Out, Table, TourError};
use kmem::addr::{Pfn, PhysAddr, VirtAddr, MAX_PAGE_ORDER, PAGE_SIZE};
use kmem::dma::engine::{DESC_ERR_FAULT, DESC_WRITE};
use kmem::dma::{
    dma_map_sgtable, dma_map_single, dma_max_mapping_size, dma_set_mask_and_coherent,
    dma_unmap_sgtable, dma_unmap_single, pattern_byte, sg_table_from_vmalloc, Device, Dma,
    DmaConfig, DmaEngine, DmaError, PatternPort, Violation, DMA_BIT_MASK, DMA_FROM_DEVICE,
    DMA_TO_DEVICE,
};
use kmem::gfp::{__GFP_MEMALLOC, __GFP_NOWARN, GFP_KERNEL, GFP_NOWAIT};
use kmem::page::FrameState;
use kmem::slab::{SlabAllocator, SlabConfig};
use kmem_host::vmap::{self, HostVmalloc};
use kmem_host::{HostPlatform, Machine};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::time::Instant;

type Pages = kmem::page::PageAllocator<HostPlatform>;

const KIB: usize = 1 << 10;
const GIB: u64 = 1 << 30;
/// The packet: 64 KiB, 16 pages.
const BUF: usize = 64 * KIB;
const NPAGES: usize = BUF / PAGE_SIZE;
/// The bounced buffer of part 4.
const BOUNCE: usize = 64 * KIB;
/// Map+unmap pairs timed in part 4.
const ROUNDS: usize = 256;
/// Stream seeds of the packets.
const SEED: u64 = 0x6e69_6330;

/// Runs the section as number `n`, adding `dma` to `obj`.
pub fn run(
    m: &Machine,
    o: &mut Out,
    obj: &mut Map<String, Value>,
    n: u32,
) -> Result<(), TourError> {
    let pages = m.pages();
    pages.drain_all_pages();
    let start_free = pages.nr_free_pages();
    let v = {
        let slab = SlabAllocator::new(pages, SlabConfig::default())
            .map_err(|e| format!("SlabAllocator::new: {e}"))?;
        let vm = vmap::vmalloc(m).map_err(|e| format!("hosted vmalloc: {e}"))?;
        let config = DmaConfig {
            vmalloc_range: Some((vm.config().start, vm.config().end)),
            ..DmaConfig::default()
        };
        let dma = Dma::new(pages, config).map_err(|e| format!("Dma::new: {e}"))?;
        why_contiguous(m, o, n, &slab, &vm, &dma)?
    };
    obj.insert("dma".into(), v);
    pages.drain_all_pages();
    let end_free = pages.nr_free_pages();
    o.blank();
    say!(
        o,
        "The DMA section gave everything back: {} pages free ({} before it).",
        group(end_free as u64),
        group(start_free as u64)
    );
    o.check(
        end_free == start_free,
        format!("the DMA section returned every page ({end_free} free now, {start_free} before)"),
    );
    Ok(())
}

/// The packet's bytes `[from, from + len)`.
fn packet(seed: u64, from: usize, len: usize) -> Vec<u8> {
    (from..from + len)
        .map(|i| pattern_byte(seed, i as u64))
        .collect()
}

fn bytes(p: *const u8, len: usize) -> Vec<u8> {
    // SAFETY: callers pass live memory: their buffers or direct-map frames.
    unsafe { std::slice::from_raw_parts(p, len) }.to_vec()
}

fn frame_ptr(pages: &Pages, pfn: Pfn) -> *mut u8 {
    pages.page_address(pfn).as_ptr()
}

/// The frame behind each page of a vmalloc buffer.
fn vmalloc_frames(vm: &HostVmalloc<'_>, p: *const u8, len: usize) -> Vec<Pfn> {
    (0..len.div_ceil(PAGE_SIZE))
        .filter_map(|i| vm.vmalloc_to_page(p.wrapping_add(i * PAGE_SIZE)))
        .collect()
}

/// Runs of physically consecutive frames.
fn runs(frames: &[Pfn]) -> usize {
    1 + frames.windows(2).filter(|w| w[1] != w[0].add(1)).count()
}

/// What a frame holds, as the page allocator's records say.
fn describe(pages: &Pages, pfn: Pfn, held: &HashSet<u64>) -> String {
    if held.contains(&pfn.0) {
        return "another user's page (held by the tour)".into();
    }
    let Some(f) = pages.frame(pfn) else {
        return "no RAM".into();
    };
    match f.state() {
        FrameState::Allocated => owner(f.owner(), f.order()),
        FrameState::Buddy => format!("free (order-{} block)", f.order()),
        FrameState::Pcp => "free (on a per-CPU list)".into(),
        FrameState::Reserved => "reserved (frame records or firmware)".into(),
        FrameState::Hole => "a hole".into(),
        FrameState::Tail => {
            for k in 1..(1u64 << MAX_PAGE_ORDER) {
                let Some(h) = pfn.0.checked_sub(k) else { break };
                let Some(hf) = pages.frame(Pfn(h)) else { break };
                let covers = h + (1u64 << hf.order()) > pfn.0;
                match hf.state() {
                    FrameState::Allocated if covers => {
                        return format!("inside {} at pfn {:#x}", owner(hf.owner(), hf.order()), h)
                    }
                    FrameState::Buddy | FrameState::Pcp if covers => {
                        return format!(
                            "free (inside an order-{} block at pfn {:#x})",
                            hf.order(),
                            h
                        )
                    }
                    FrameState::Tail => continue,
                    _ => break,
                }
            }
            "part of a block".into()
        }
    }
}

fn owner(tag: u8, order: u32) -> String {
    match (tag, kmem::page::owner::describe(tag)) {
        (0, _) => format!("allocated (an order-{order} block of the page allocator)"),
        (_, Some(what)) => what.into(),
        (t, None) => format!("allocated (owner tag {t:#x})"),
    }
}

/// Takes every free block of order 1 or more and gives back every other
/// page of it: afterwards no two free pages are adjacent. Returns the pages
/// held.
fn fragment(pages: &Pages) -> Result<Vec<Pfn>, TourError> {
    let gfp = GFP_NOWAIT | __GFP_MEMALLOC | __GFP_NOWARN;
    let mut blocks = Vec::new();
    loop {
        let before = blocks.len();
        for order in (1..=MAX_PAGE_ORDER).rev() {
            while let Ok(p) = pages.alloc_pages(gfp, order) {
                blocks.push((p, order));
            }
        }
        // Blocks cached on per-CPU lists are free too: flush and go again.
        pages.drain_all_pages();
        if blocks.len() == before {
            break;
        }
    }
    let mut held = Vec::new();
    for (b, order) in blocks {
        pages
            .split_page(b, order)
            .map_err(|e| format!("split_page({b}): {e}"))?;
        for i in 0..1u64 << order {
            if i % 2 == 0 {
                free(pages, b.add(i))?;
            } else {
                held.push(b.add(i));
            }
        }
    }
    pages.drain_all_pages();
    Ok(held)
}

fn free(pages: &Pages, p: Pfn) -> Result<(), TourError> {
    pages
        .free_pages(p, 0)
        .map_err(|e| format!("the allocator refused to free pfn {p}: {e}"))
}

fn unfragment(pages: &Pages, held: Vec<Pfn>) -> Result<(), TourError> {
    for p in held {
        free(pages, p)?;
    }
    pages.drain_all_pages();
    Ok(())
}

fn err(what: &str) -> impl Fn(DmaError) -> TourError + '_ {
    move |e| format!("{what}: {e}")
}

fn why_contiguous(
    m: &Machine,
    o: &mut Out,
    n: u32,
    slab: &SlabAllocator<'_, HostPlatform>,
    vm: &HostVmalloc<'_>,
    dma: &Dma<'_, HostPlatform>,
) -> Result<Value, TourError> {
    o.heading(n, "Why contiguous? What a device does with an address");
    say!(
        o,
        "A device on a bus without an IOMMU is handed bus addresses, and a bus address is a \
         physical address: the device never sees the CPU's page tables. One descriptor \
         {{address, length}} covers one physically contiguous run. kmalloc memory is one run; \
         vmalloc memory is contiguous only in virtual addresses."
    );
    let nic = Device::new(dma, "e1000e", "0000:00:19.0");
    dma_set_mask_and_coherent(&nic, DMA_BIT_MASK(64)).map_err(err("dma_set_mask"))?;
    let eng = DmaEngine::new(&nic, 64).map_err(err("the NIC's ring"))?;
    say!(
        o,
        "The device: a simulated NIC ({} {}), 64-bit DMA mask, a receive ring of {} descriptors \
         {{bus address, length, flags}} in coherent memory at bus address {}. It fetches each \
         descriptor by bus address and writes the packet where the descriptor says, through \
         physical memory. The packet: {} KiB.",
        nic.driver(),
        nic.name(),
        eng.entries(),
        eng.ring_bus(),
        BUF / KIB
    );
    let r = (|| {
        let a = part_kmalloc(m, o, slab, &nic, &eng)?;
        let b = part_vmalloc(m, o, vm, &nic, &eng)?;
        let c = part_bounce(m, o, slab, dma, &nic)?;
        Ok::<_, TourError>(json!({ "kmalloc": a, "vmalloc": b, "bounce": c }))
    })();
    drop(eng);
    let released = nic.release();
    o.check(
        released.is_ok(),
        format!("the NIC had no mapping left at release ({released:?})"),
    );
    r
}

// ---------------------------------------------------------------------------
// 1. kmalloc

fn part_kmalloc(
    m: &Machine,
    o: &mut Out,
    slab: &SlabAllocator<'_, HostPlatform>,
    nic: &Device<'_, HostPlatform>,
    eng: &DmaEngine<'_, HostPlatform>,
) -> Result<Value, TourError> {
    let pages = m.pages();
    let p = slab
        .kzalloc(BUF, GFP_KERNEL)
        .map_err(|e| format!("kzalloc(64 KiB): {e}"))?
        .as_ptr();
    let pa = pages
        .virt_to_phys(VirtAddr(p as usize))
        .ok_or("a kmalloc pointer outside the direct map")?;
    let contiguous = (0..NPAGES).all(|i| {
        pages.virt_to_phys(VirtAddr(p as usize + i * PAGE_SIZE))
            == Some(PhysAddr(pa.0 + (i * PAGE_SIZE) as u64))
    });
    let bus =
        dma_map_single(nic, p, BUF, DMA_FROM_DEVICE).map_err(err("dma_map_single(kmalloc)"))?;
    eng.post(bus, BUF as u32, DESC_WRITE).map_err(err("post"))?;
    let t0 = Instant::now();
    let run = eng.run(&mut PatternPort::new(SEED));
    let dev_ns = per_op(t0.elapsed(), 1);
    dma_unmap_single(nic, bus, BUF, DMA_FROM_DEVICE).map_err(err("dma_unmap_single"))?;
    let intact = bytes(p, BUF) == packet(SEED, 0, BUF);
    o.blank();
    say!(o, "1. Into a kmalloc buffer");
    say!(
        o,
        "kmalloc(64 KiB) = {p:p}, physical {pa}, frames {}..{}: one run. dma_map_single gives bus \
         address {bus} (the physical address: the NIC reaches all of memory). One descriptor \
         {{{bus}, 65536, WRITE}}; the device wrote {} bytes in {}; after dma_unmap_single the \
         buffer holds the packet byte for byte: {}.",
        pa.pfn(),
        PhysAddr(pa.0 + BUF as u64 - 1).pfn(),
        group(run.bytes_written),
        fmt_ns(dev_ns),
        if intact { "yes" } else { "NO" }
    );
    o.check(
        contiguous,
        "a kmalloc buffer is one physically contiguous run",
    );
    o.check(bus.0 == pa.0, "its bus address is its physical address");
    o.check(
        run.completed == 1 && intact,
        "the device fills the kmalloc buffer correctly",
    );
    slab.kfree(p).map_err(|e| format!("kfree: {e}"))?;
    Ok(
        json!({ "phys": pa.0, "bus": bus.0, "contiguous": contiguous, "intact": intact,
               "device_ns": dev_ns }),
    )
}

// ---------------------------------------------------------------------------
// 2 and 3. vmalloc, wrongly and rightly

fn part_vmalloc(
    m: &Machine,
    o: &mut Out,
    vm: &HostVmalloc<'_>,
    nic: &Device<'_, HostPlatform>,
    eng: &DmaEngine<'_, HostPlatform>,
) -> Result<Value, TourError> {
    let pages = m.pages();
    o.blank();
    say!(
        o,
        "2. Into a vmalloc buffer treated as if it were contiguous"
    );

    // On the fresh machine.
    let fresh = vm
        .vmalloc(BUF)
        .map_err(|e| format!("vmalloc: {e}"))?
        .as_ptr();
    let fresh_frames = vmalloc_frames(vm, fresh, BUF);
    let fresh_runs = runs(&fresh_frames);
    m.platform().take_log();
    let refused = dma_map_single(nic, fresh, BUF, DMA_FROM_DEVICE);
    let refused_log = m.platform().take_log();
    say!(
        o,
        "On this fresh machine vmalloc(64 KiB) = {fresh:p} got its {NPAGES} pages in {fresh_runs} \
         physically contiguous run(s) (vmalloc takes the largest free blocks first): a driver \
         that treats it as contiguous would pass its tests here. dma_map_single refuses it \
         anyway:"
    );
    let refusal = match refused {
        Err(DmaError::Api(r)) => {
            o.quote(&r.to_string());
            let ok = matches!(r.violation, Violation::MapNotDirect { vmalloc: true, .. })
                && r.to_string().contains("dma_map_sg")
                && refused_log == [r.to_string()];
            o.check(
                ok,
                "dma_map_single of a vmalloc address is refused, naming the rule and the fix, and reported",
            );
            r.to_string()
        }
        Err(e) => {
            o.fail(format!(
                "dma_map_single of vmalloc memory is refused with a DMA-API report (got: {e})"
            ));
            e.to_string()
        }
        Ok(bus) => {
            dma_unmap_single(nic, bus, BUF, DMA_FROM_DEVICE).map_err(err("unmap"))?;
            o.fail("dma_map_single of vmalloc memory is refused".into());
            String::new()
        }
    };
    vm.vfree(fresh).map_err(|e| format!("vfree: {e}"))?;

    // After a while: fragmented.
    let held = fragment(pages)?;
    let held_set: HashSet<u64> = held.iter().map(|p| p.0).collect();
    let r = scattered(m, o, vm, nic, eng, &held_set);
    let free_held = unfragment(pages, held);
    let (wrong, sg) = r?;
    free_held?;
    Ok(
        json!({ "fresh_runs": fresh_runs, "refusal": refusal, "as_if_contiguous": wrong,
               "scatter_gather": sg }),
    )
}

fn scattered(
    m: &Machine,
    o: &mut Out,
    vm: &HostVmalloc<'_>,
    nic: &Device<'_, HostPlatform>,
    eng: &DmaEngine<'_, HostPlatform>,
    held: &HashSet<u64>,
) -> Result<(Value, Value), TourError> {
    let pages = m.pages();
    let buf = vm
        .vzalloc(BUF)
        .map_err(|e| format!("vzalloc: {e}"))?
        .as_ptr();
    let frames = vmalloc_frames(vm, buf, BUF);
    let nruns = runs(&frames);
    o.blank();
    say!(
        o,
        "After a while memory is fragmented. To get there now, the tour took every free block of \
         two pages or more and gave back every other page of it ({} pages held, {} free, none \
         adjacent to another). vzalloc(64 KiB) = {buf:p} now gets {NPAGES} frames in {nruns} runs:",
        group(held.len() as u64),
        group(pages.nr_free_pages() as u64)
    );
    say!(
        o,
        "    {}",
        frames
            .iter()
            .map(|f| format!("{:#x}", f.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    o.check(
        frames.len() == NPAGES && nruns > 1,
        "the vmalloc buffer's frames are not one physical run",
    );

    // The driver's mistake: the first frame's address, the whole length.
    let bus = kmem::dma::DmaAddr(frames[0].phys().0);
    say!(
        o,
        "The driver's mistake: the physical address of the first page ({bus}) and the whole \
         length, in one descriptor, as if the buffer were one run."
    );
    m.platform().take_log();
    let seq = eng.post(bus, BUF as u32, DESC_WRITE).map_err(err("post"))?;
    let refused = eng.run(&mut PatternPort::new(SEED));
    let fault_log = m.platform().take_log();
    let faulted = refused.failed == 1 && eng.desc(seq).flags & DESC_ERR_FAULT != 0;
    say!(
        o,
        "With the engine's checks on, the descriptor fails (no mapping of this device covers \
         that range; an IOMMU would fault the same way):"
    );
    o.quote(&fault_log.join("\n"));
    o.check(
        faulted && bytes(buf, BUF).iter().all(|&b| b == 0),
        "with checks on, the device refuses the unmapped range and writes nothing",
    );

    // Checks off: where the bytes go.
    let targets: Vec<Pfn> = (0..NPAGES as u64).map(|i| frames[0].add(i)).collect();
    let own: HashSet<u64> = frames.iter().map(|f| f.0).collect();
    let mut before = Vec::new();
    let mut owners = Vec::new();
    for (i, &t) in targets.iter().enumerate() {
        if held.contains(&t.0) {
            // Make the other user's data recognisable.
            let text = format!("pfn {:#x}: another driver's data, page {i} ", t.0);
            let fill: Vec<u8> = text.bytes().cycle().take(PAGE_SIZE).collect();
            // SAFETY: a page the tour holds.
            unsafe { std::ptr::copy_nonoverlapping(fill.as_ptr(), frame_ptr(pages, t), PAGE_SIZE) };
        }
        before.push(bytes(frame_ptr(pages, t), PAGE_SIZE));
        owners.push(if own.contains(&t.0) {
            let j = frames.iter().position(|f| *f == t).unwrap_or(0);
            format!("this buffer's page {j}")
        } else {
            describe(pages, t, held)
        });
    }
    eng.set_checks(false);
    let seq = eng.post(bus, BUF as u32, DESC_WRITE).map_err(err("post"))?;
    let wrote = eng.run(&mut PatternPort::new(SEED));
    eng.set_checks(true);
    let after: Vec<Vec<u8>> = targets
        .iter()
        .map(|&t| bytes(frame_ptr(pages, t), PAGE_SIZE))
        .collect();
    let got = bytes(buf, BUF);
    let want = packet(SEED, 0, BUF);
    let mut t = Table::new(&[
        "page",
        "its frame",
        "device wrote",
        "that frame is",
        "bytes changed",
    ]);
    let mut rows = Vec::new();
    let mut victims = 0;
    let mut first_victim = None;
    let mut free_hit = 0;
    let mut missing_pages = 0;
    for i in 0..NPAGES {
        let changed = before[i]
            .iter()
            .zip(&after[i])
            .filter(|(a, b)| a != b)
            .count();
        let right = targets[i] == frames[i];
        let page_ok =
            got[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] == want[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
        if !page_ok {
            missing_pages += 1;
        }
        if !own.contains(&targets[i].0) {
            victims += 1;
            if owners[i].starts_with("free") {
                free_hit += 1;
            } else {
                first_victim.get_or_insert(i);
            }
        }
        let what = if right {
            "its own frame".to_string()
        } else {
            owners[i].clone()
        };
        t.row(vec![
            i.to_string(),
            format!("{:#x}", frames[i].0),
            format!("{:#x}", targets[i].0),
            what.clone(),
            format!("{changed} of {PAGE_SIZE}"),
        ]);
        rows.push(
            json!({ "page": i, "frame": frames[i].0, "written": targets[i].0,
                          "written_is": what, "bytes_changed": changed, "page_received": page_ok }),
        );
    }
    o.blank();
    say!(
        o,
        "With the checks off the device does what it was told (descriptor {seq}: {} bytes \
         written). Page i of the packet went to frame {:#x} + i:",
        group(wrote.bytes_written),
        frames[0].0
    );
    o.table(&t);
    say!(
        o,
        "{victims} of the {NPAGES} frames written are not the buffer's: {} in use by someone \
         else (their data is gone), {free_hit} free (whoever is given them next finds a packet \
         there). {missing_pages} of the buffer's {NPAGES} pages did not receive their part of \
         the packet (they still hold zeros, or bytes meant for another page).",
        victims - free_hit
    );
    if let Some(i) = first_victim {
        let show = |v: &[u8]| -> String {
            v[..48]
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect()
        };
        say!(
            o,
            "Frame {:#x}, first 48 bytes, before and after:",
            targets[i].0
        );
        o.quote(&format!(
            "before: {}\nafter:  {}",
            show(&before[i]),
            show(&after[i])
        ));
    }
    o.check(
        wrote.completed == 1 && victims > free_hit && missing_pages > 0,
        "a transfer into a vmalloc buffer treated as contiguous lands in other frames",
    );
    // Undo the damage.
    for (i, &tf) in targets.iter().enumerate() {
        if !own.contains(&tf.0) {
            // SAFETY: restores the frame's own bytes, saved above; the tour
            // is the only thing running on this machine.
            unsafe {
                std::ptr::copy_nonoverlapping(before[i].as_ptr(), frame_ptr(pages, tf), PAGE_SIZE)
            };
        }
    }
    say!(o, "(The tour put those frames' bytes back.)");
    let wrong = json!({ "frames": frames.iter().map(|f| f.0).collect::<Vec<_>>(), "runs": nruns,
                        "refused_with_checks": faulted, "pages": rows, "foreign_frames": victims,
                        "foreign_free_frames": free_hit,
                        "pages_missed": missing_pages });

    // 3. The same buffer through scatter-gather.
    // SAFETY: the live buffer.
    unsafe { buf.write_bytes(0, BUF) };
    let mut sgt =
        sg_table_from_vmalloc(vm, buf, BUF, GFP_KERNEL).map_err(err("sg_table_from_vmalloc"))?;
    let nents = sgt.orig_nents();
    let nseg = dma_map_sgtable(nic, &mut sgt, DMA_FROM_DEVICE).map_err(err("dma_map_sgtable"))?;
    let segs: Vec<_> = sgt.dma_segments().collect();
    for &(b, l) in &segs {
        eng.post(b, l, DESC_WRITE).map_err(err("post"))?;
    }
    let t0 = Instant::now();
    let run = eng.run(&mut PatternPort::new(SEED));
    let dev_ns = per_op(t0.elapsed(), 1);
    dma_unmap_sgtable(nic, &mut sgt, DMA_FROM_DEVICE).map_err(err("dma_unmap_sgtable"))?;
    drop(sgt);
    let intact = bytes(buf, BUF) == want;
    let untouched = targets
        .iter()
        .enumerate()
        .filter(|(_, tf)| !own.contains(&tf.0))
        .all(|(i, &tf)| bytes(frame_ptr(pages, tf), PAGE_SIZE) == before[i]);
    o.blank();
    say!(o, "3. The same vmalloc buffer through scatter-gather");
    let merged = if nseg < nents {
        "entries whose frames are adjacent merged"
    } else {
        "no two frames adjacent, nothing to merge"
    };
    say!(
        o,
        "sg_table_from_vmalloc: {nents} entries, one per page, frames from the page tables \
         (vmalloc_to_page). dma_map_sgtable: {nseg} DMA segments ({merged}). One descriptor per \
         segment; the device wrote {} bytes in {}:",
        group(run.bytes_written),
        fmt_ns(dev_ns)
    );
    say!(
        o,
        "    {}",
        segs.iter()
            .map(|(b, l)| format!("{{{:#x}, {l}}}", b.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    say!(
        o,
        "After dma_unmap_sgtable the buffer holds the packet byte for byte: {}; the frames \
         written by mistake before are untouched this time: {}.",
        if intact { "yes" } else { "NO" },
        if untouched { "yes" } else { "NO" }
    );
    o.check(
        run.completed == nseg && run.failed == 0 && intact,
        "the scatter-gather mapping of the same vmalloc buffer receives the packet intact",
    );
    o.check(
        untouched,
        "the scatter-gather transfer touches no other frame",
    );
    vm.vfree(buf).map_err(|e| format!("vfree: {e}"))?;
    let sg = json!({ "entries": nents, "segments": nseg, "intact": intact,
                     "others_untouched": untouched, "device_ns": dev_ns });
    Ok((wrong, sg))
}

// ---------------------------------------------------------------------------
// 4. Bounce

fn part_bounce(
    m: &Machine,
    o: &mut Out,
    slab: &SlabAllocator<'_, HostPlatform>,
    dma: &Dma<'_, HostPlatform>,
    nic: &Device<'_, HostPlatform>,
) -> Result<Value, TourError> {
    let sata = Device::new(dma, "ahci", "0000:00:1f.2");
    let r = bounce_with(m, o, slab, dma, nic, &sata);
    let released = sata.release();
    o.check(
        released.is_ok(),
        format!("the SATA controller had no mapping left at release ({released:?})"),
    );
    r
}

fn bounce_with(
    m: &Machine,
    o: &mut Out,
    slab: &SlabAllocator<'_, HostPlatform>,
    dma: &Dma<'_, HostPlatform>,
    nic: &Device<'_, HostPlatform>,
    sata: &Device<'_, HostPlatform>,
) -> Result<Value, TourError> {
    let pages = m.pages();
    let sw = dma.swiotlb();
    let eng = DmaEngine::new(sata, 16).map_err(err("the controller's ring"))?;
    let p = slab
        .kzalloc(BOUNCE, GFP_KERNEL)
        .map_err(|e| format!("kzalloc(64 KiB): {e}"))?
        .as_ptr();
    let pa = pages
        .virt_to_phys(VirtAddr(p as usize))
        .ok_or("a kmalloc pointer outside the direct map")?;
    let pool_lo = sw.ranges().map(|r| r.0 .0).min().unwrap_or(0);
    let pool_hi = sw.end().0;
    o.blank();
    say!(o, "4. A 32-bit device and a buffer above 4 GiB: bounced");
    say!(
        o,
        "A SATA controller ({} {}) with the default 32-bit mask cannot drive an address above \
         4 GiB. kmalloc(64 KiB) = {p:p} lies at physical {pa}. dma_max_mapping_size = {} KiB: \
         the largest mapping swiotlb can bounce. The bounce pool: {} MiB in {} blocks between \
         {:#x} and {:#x}, {} slots of 2 KiB.",
        sata.driver(),
        sata.name(),
        dma_max_mapping_size(sata) / KIB,
        sw.stats().bytes >> 20,
        sw.ranges().count(),
        pool_lo,
        pool_hi,
        group(sw.total_slots() as u64)
    );
    o.check(pa.0 >= 4 * GIB, "the kmalloc buffer lies above 4 GiB");
    let s0 = sw.stats();
    let bus = dma_map_single(sata, p, BOUNCE, DMA_FROM_DEVICE).map_err(err("dma_map_single"))?;
    let slots = sw.used_slots();
    eng.post(bus, BOUNCE as u32, DESC_WRITE)
        .map_err(err("post"))?;
    let run = eng.run(&mut PatternPort::new(SEED + 4));
    let before_unmap = bytes(p, BOUNCE).iter().all(|&b| b == 0);
    dma_unmap_single(sata, bus, BOUNCE, DMA_FROM_DEVICE).map_err(err("dma_unmap_single"))?;
    let intact = bytes(p, BOUNCE) == packet(SEED + 4, 0, BOUNCE);
    let s1 = sw.stats();
    say!(
        o,
        "dma_map_single gives bus address {bus}: a bounce buffer of {slots} slots below 4 GiB \
         (the map copied the buffer in: {} bytes). The device wrote {} bytes there; before the \
         unmap the CPU's buffer still held zeros: {}; dma_unmap_single copied {} bytes back and \
         the buffer holds the packet byte for byte: {}. Slots in use after: {}.",
        group(s1.bytes_to_bounce - s0.bytes_to_bounce),
        group(run.bytes_written),
        if before_unmap { "yes" } else { "NO" },
        group(s1.bytes_from_bounce - s0.bytes_from_bounce),
        if intact { "yes" } else { "NO" },
        sw.used_slots()
    );
    o.check(
        bus.0 + BOUNCE as u64 <= 4 * GIB && sw.is_swiotlb_buffer(PhysAddr(bus.0)),
        "the 32-bit device is given a bounce buffer below 4 GiB",
    );
    o.check(
        run.completed == 1 && before_unmap && intact,
        "the bounced transfer reaches the buffer at the unmap, intact",
    );
    o.check(
        slots == BOUNCE / 2048 && sw.used_slots() == 0,
        format!(
            "the mapping took {} slots and gave them all back",
            BOUNCE / 2048
        ),
    );

    // What the bouncing costs: map+unmap pairs, bounced and direct.
    let mut t = Table::new(&[
        "mapping",
        "direction",
        "per map+unmap",
        "bytes copied",
        "copy rate",
    ]);
    let mut rows = Vec::new();
    let mut bounced_ns = 0.0;
    let mut direct_ns = f64::MAX;
    let mut copied_ok = true;
    // The pool's search index moves on after every mapping (as Linux's), so
    // timed rounds would land on slots never touched before, and the host
    // would fault the pool's pages in inside the timing (about 20x the
    // copy). One untimed pass over the whole pool first.
    for _ in 0..sw.total_slots() / (BOUNCE / 2048) + 1 {
        let b = dma_map_single(sata, p, BOUNCE, DMA_TO_DEVICE).map_err(err("dma_map_single"))?;
        dma_unmap_single(sata, b, BOUNCE, DMA_TO_DEVICE).map_err(err("dma_unmap_single"))?;
    }
    for (dev, label) in [(sata, "bounced (32-bit)"), (nic, "direct (64-bit)")] {
        for dir in [DMA_FROM_DEVICE, DMA_TO_DEVICE] {
            let s0 = sw.stats();
            let t0 = Instant::now();
            for _ in 0..ROUNDS {
                let b = dma_map_single(dev, p, BOUNCE, dir).map_err(err("dma_map_single"))?;
                dma_unmap_single(dev, b, BOUNCE, dir).map_err(err("dma_unmap_single"))?;
            }
            let ns = per_op(t0.elapsed(), ROUNDS);
            let s1 = sw.stats();
            let copied = ((s1.bytes_to_bounce - s0.bytes_to_bounce)
                + (s1.bytes_from_bounce - s0.bytes_from_bounce))
                / ROUNDS as u64;
            let bounced = std::ptr::eq(dev, sata);
            let expect = match (bounced, dir) {
                (false, _) => 0,
                (true, DMA_FROM_DEVICE) => 2 * BOUNCE as u64,
                (true, _) => BOUNCE as u64,
            };
            copied_ok &= copied == expect;
            if bounced && dir == DMA_FROM_DEVICE {
                bounced_ns = ns;
            }
            if !bounced {
                direct_ns = direct_ns.min(ns);
            }
            let rate = if copied > 0 {
                format!("{:.1} GB/s", copied as f64 / ns)
            } else {
                "-".into()
            };
            t.row(vec![
                label.into(),
                dir.name().into(),
                fmt_ns(ns),
                group(copied),
                rate.clone(),
            ]);
            rows.push(
                json!({ "mapping": label, "dir": dir.name(), "ns": ns, "bytes_copied": copied }),
            );
        }
    }
    say!(
        o,
        "What it costs: {ROUNDS} map+unmap pairs of the same 64 KiB buffer each, after one \
         untimed pass over the whole bounce pool (so the host's first touch of its pages is not \
         timed; the 64 KiB buffer is in cache, a cold one costs more):"
    );
    o.table(&t);
    say!(
        o,
        "A DMA_FROM_DEVICE bounce copies the buffer twice (in at the map, out at the unmap), \
         DMA_TO_DEVICE once; a device that reaches the buffer costs no copy at all ({} against {}).",
        fmt_ns(bounced_ns),
        fmt_ns(direct_ns)
    );
    o.check(
        copied_ok,
        "bounce copies are counted exactly: 2x the buffer for DMA_FROM_DEVICE, 1x for DMA_TO_DEVICE, none direct",
    );
    o.check(
        bounced_ns > direct_ns,
        format!("bouncing costs more than a direct mapping ({bounced_ns:.0} ns against {direct_ns:.0} ns)"),
    );
    slab.kfree(p).map_err(|e| format!("kfree: {e}"))?;
    drop(eng);
    Ok(
        json!({ "phys": pa.0, "bus": bus.0, "slots": slots, "intact": intact,
               "cost": rows, "pool_bytes": sw.stats().bytes }),
    )
}

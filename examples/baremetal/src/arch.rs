//! Thin wrappers over the x86-64 instructions the kernel needs.

use core::arch::asm;

/// RFLAGS.IF: maskable interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;

/// Writes a byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O has no memory effects; the callers own their devices.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes a double word to an I/O port.
#[inline(always)]
pub fn outl(port: u16, val: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags))
    }
}

/// A short delay for old devices (the PIC): a write to the POST port.
#[inline(always)]
pub fn io_wait() {
    outb(0x80, 0);
}

/// The RFLAGS register.
#[inline(always)]
pub fn rflags() -> u64 {
    let r: u64;
    // SAFETY: reads a register; pushes and pops one word on the stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) r, options(nomem, preserves_flags)) }
    r
}

/// True if maskable interrupts are enabled.
#[inline(always)]
pub fn interrupts_enabled() -> bool {
    rflags() & RFLAGS_IF != 0
}

/// Disables maskable interrupts.
#[inline(always)]
pub fn cli() {
    // SAFETY: only changes IF. Not `nomem`: it orders memory accesses around it.
    unsafe { asm!("cli", options(nostack)) }
}

/// Enables maskable interrupts.
#[inline(always)]
pub fn sti() {
    // SAFETY: as for `cli`.
    unsafe { asm!("sti", options(nostack)) }
}

/// Waits for the next interrupt.
#[inline(always)]
pub fn hlt() {
    // SAFETY: halts until an interrupt; no other effect.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) }
}

/// CR2: the linear address of the last page fault.
#[inline(always)]
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reads a control register.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// CR3: physical address of the top-level page table.
#[inline(always)]
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reads a control register.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Loads CR3, which also flushes every non-global TLB entry.
///
/// # Safety
/// `v` must point to a valid PML4 that maps the running code and stack.
#[inline(always)]
pub unsafe fn write_cr3(v: u64) {
    asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags));
}

/// Invalidates the TLB entry of one page.
#[inline(always)]
pub fn invlpg(va: usize) {
    // SAFETY: only drops a cached translation.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) }
}

/// Flushes the whole TLB, global entries included (toggling CR4.PGE).
#[inline]
pub fn flush_tlb_all() {
    // SAFETY: turning PGE off and on again changes no mapping; it only
    // drops every cached translation.
    unsafe {
        asm!(
            "mov {t}, cr4",
            "mov {u}, {t}",
            "and {u}, ~0x80",
            "mov cr4, {u}",
            "mov cr4, {t}",
            t = out(reg) _,
            u = out(reg) _,
            options(nostack, preserves_flags)
        );
    }
}

/// Reads a model-specific register.
#[inline(always)]
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the callers read architectural MSRs that exist on x86-64.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (hi as u64) << 32 | lo as u64
}

/// IA32_EFER.
pub const MSR_EFER: u32 = 0xc000_0080;
/// EFER.NXE: the no-execute bit in page-table entries is honoured.
pub const EFER_NXE: u64 = 1 << 11;

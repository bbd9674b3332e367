//! From QEMU's PVH entry to 64-bit Rust.
//!
//! QEMU's `-kernel` loads an ELF that carries a Xen `PHYS32_ENTRY` note (the
//! PVH boot ABI, the one Linux's `vmlinux` uses) and enters it in 32-bit
//! protected mode, paging off, interrupts off, with `%ebx` holding the
//! physical address of an `hvm_start_info` record whose version 1 fields point
//! at the firmware memory map (e820 entries).
//!
//! The trampoline below, linked and loaded at 1 MiB, then:
//!
//! 1. loads a three-entry GDT (null, 64-bit code 0x08, data 0x10);
//! 2. builds boot page tables: one page directory of 2 MiB pages mapping the
//!    first GiB, installed twice: identity (PML4[0], needed while the
//!    instruction pointer is still physical) and at `KERNEL_VMA`
//!    (PML4[511], PDPT[510]: the top 2 GiB, where the Rust code is linked);
//! 3. turns on PAE, global pages and SSE state saving (CR4), long mode and,
//!    if the CPU has it, no-execute (EFER), then paging and write protection
//!    (CR0);
//! 4. far-jumps into 64-bit code, zeroes `.bss`, switches to the boot stack
//!    (in the higher half) and calls [`crate::kernel_main`] with the
//!    start-info address.
//!
//! Rust then builds the real direct map and drops the identity mapping
//! ([`crate::paging`]).

use crate::paging::KERNEL_VMA;

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* name size: "Xen\0" */
    .long 8                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32       /* physical entry point (.boot: VMA = LMA) */
    .balign 4

    .section .boot.text, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi                     /* hvm_start_info, kept in %esi */
    lgdt boot_gdt_ptr
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss

    /* Zero the four boot tables. */
    movl $boot_pml4, %edi
    movl $4096, %ecx                    /* 4 pages of 4 KiB, in dwords */
    xorl %eax, %eax
    rep stosl

    /* Page directory: 512 x 2 MiB, present | writable | PS. */
    movl $boot_pd, %edi
    movl $0x83, %eax
    movl $512, %ecx
.Lfill_pd:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop .Lfill_pd

    movl $boot_pd, %eax
    orl $3, %eax
    movl %eax, boot_pdpt_low            /* PDPT_low[0]: phys 0..1 GiB */
    movl %eax, boot_pdpt_high + 510 * 8 /* PDPT_high[510]: -2 GiB */
    movl $boot_pdpt_low, %eax
    orl $3, %eax
    movl %eax, boot_pml4                /* PML4[0]: identity */
    movl $boot_pdpt_high, %eax
    orl $3, %eax
    movl %eax, boot_pml4 + 511 * 8      /* PML4[511]: kernel */

    /* CR4: PAE | PGE | OSFXSR | OSXMMEXCPT. */
    movl %cr4, %eax
    orl $0x6a0, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3

    /* EFER: LME, and NXE when CPUID says NX exists. */
    movl $0x80000001, %eax
    cpuid
    movl %edx, %edi
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    testl $0x100000, %edi
    jz .Lno_nx
    orl $0x800, %eax
.Lno_nx:
    wrmsr

    /* CR0: PG | WP | NE | MP | PE, EM clear (SSE usable). */
    movl %cr0, %eax
    andl $~0x4, %eax
    orl $0x80010023, %eax
    movl %eax, %cr0

    ljmp $0x08, $.Llong_mode

    .code64
.Llong_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs

    /* Zero .bss (higher half, mapped through PML4[511]). */
    movabsq $__bss_start, %rdi
    movabsq $__bss_end, %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb

    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl %esi, %edi                     /* kernel_main(start_info_phys) */
    movabsq $kernel_main, %rax
    callq *%rax
.Lhang:
    cli
    hlt
    jmp .Lhang

    .section .boot.data, "aw", @progbits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt_low:
    .skip 4096
boot_pdpt_high:
    .skip 4096
boot_pd:
    .skip 4096
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff            /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff            /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .skip 262144
    .global boot_stack_top
boot_stack_top:

    .text
"#,
    options(att_syntax)
);

/// `hvm_start_info.magic`.
const HVM_START_MAGIC: u32 = 0x336e_c578;

/// The PVH start-of-day record (Xen's `struct hvm_start_info`).
#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    // Version 1 and later:
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// One entry of the PVH memory map: an e820 entry.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// 1 RAM, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS, 5 unusable, ...
    pub kind: u32,
    reserved: u32,
}

impl E820Entry {
    /// The e820 type as Linux prints it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "usable",
            2 => "reserved",
            3 => "ACPI data",
            4 => "ACPI NVS",
            5 => "unusable",
            7 => "persistent (type 7)",
            _ => "unknown",
        }
    }
}

/// Most e820 entries kept.
pub const MAX_E820: usize = 128;

/// What the boot loader told us, copied out of its memory.
pub struct BootInfo {
    /// The firmware memory map.
    pub e820: [E820Entry; MAX_E820],
    /// Entries used in `e820`.
    pub nr_e820: usize,
    /// The kernel command line (`-append`).
    pub cmdline: [u8; 256],
    /// Bytes used in `cmdline`.
    pub cmdline_len: usize,
    /// `hvm_start_info.version`.
    pub version: u32,
}

impl BootInfo {
    /// The memory map entries.
    pub fn e820(&self) -> &[E820Entry] {
        &self.e820[..self.nr_e820]
    }
    /// The command line.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("<not UTF-8>")
    }
}

/// Reads low physical memory through the boot mapping of the first GiB.
fn low_phys<T>(pa: u64) -> *const T {
    assert!(
        pa < (1 << 30),
        "boot structure at {pa:#x}, above the first GiB"
    );
    (KERNEL_VMA + pa as usize) as *const T
}

/// Copies the start-info record and the memory map it points at.
pub fn read_start_info(pa: u32) -> BootInfo {
    // SAFETY: PVH hands over a valid record at `pa`, in low memory that the
    // boot tables map at KERNEL_VMA; the fields are read before anything
    // could reuse that memory.
    let si = unsafe { core::ptr::read_unaligned(low_phys::<HvmStartInfo>(pa as u64)) };
    assert!(
        si.magic == HVM_START_MAGIC,
        "no PVH start info at {pa:#x} (magic {:#x})",
        si.magic
    );
    assert!(
        si.version >= 1 && si.memmap_entries > 0,
        "PVH start info version {} carries no memory map",
        si.version
    );
    let mut info = BootInfo {
        e820: [E820Entry::default(); MAX_E820],
        nr_e820: 0,
        cmdline: [0; 256],
        cmdline_len: 0,
        version: si.version,
    };
    let n = (si.memmap_entries as usize).min(MAX_E820);
    let table = low_phys::<E820Entry>(si.memmap_paddr);
    for i in 0..n {
        // SAFETY: the table holds memmap_entries entries.
        info.e820[i] = unsafe { core::ptr::read_unaligned(table.add(i)) };
    }
    info.nr_e820 = n;
    if si.cmdline_paddr != 0 {
        let s = low_phys::<u8>(si.cmdline_paddr);
        while info.cmdline_len < info.cmdline.len() {
            // SAFETY: a NUL-terminated string; we stop at the NUL.
            let b = unsafe { *s.add(info.cmdline_len) };
            if b == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = b;
            info.cmdline_len += 1;
        }
    }
    let _ = (
        si.flags,
        si.nr_modules,
        si.modlist_paddr,
        si.rsdp_paddr,
        si.reserved,
    );
    info
}

extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_phys_end: u8;
}

/// The physical range of the kernel image, `.bss` and boot stack included.
pub fn kernel_image() -> (u64, u64) {
    // Linker-script symbols: only their addresses mean anything.
    (
        core::ptr::addr_of!(__kernel_phys_start) as u64,
        core::ptr::addr_of!(__kernel_phys_end) as u64,
    )
}

//! Descriptor tables, interrupt entry, the PIC and the PIT timer.
//!
//! - **GDT**: null, kernel code (0x08), kernel data (0x10) and a 64-bit TSS
//!   (0x18) whose only job is to name the interrupt stacks (IST).
//! - **IDT**: all 256 vectors are interrupt gates (IF cleared on entry) into
//!   16-byte stubs that push the vector (and a dummy error code where the CPU
//!   pushes none) and jump to one common path: save every general register
//!   and the SSE state (`fxsave`: kmem and `core` are compiled with SSE
//!   enabled, and a handler must not clobber the interrupted code's XMM
//!   registers), call [`trap_dispatch`] with the saved frame, restore,
//!   `iretq`.
//! - **IST stacks**: every vector runs on a stack of its own kind (external
//!   IRQs on IST1, exceptions on IST2, NMI/#DF/#MC on IST3). Besides making a
//!   stack overflow reportable, this protects the red zone: `core` from the
//!   sysroot is compiled for Linux userspace, where leaf functions may use the
//!   128 bytes below `%rsp`, which an interrupt frame pushed on the same stack
//!   would overwrite.
//! - **Timer**: the 8259 PICs remapped to vectors 32..47 with only IRQ 0
//!   unmasked, and the 8254 PIT channel 0 as a periodic rate generator.
//!   The IRQ path brackets the handler with `irq_enter`/`irq_exit`, so kmem
//!   sees hard-IRQ context there.
//! - **Page faults** are recoverable only at known instructions, Linux's
//!   exception-table idea: [`probe_read`] reads an address and reports a
//!   fault instead of dying; any other #PF is fatal and reported.

use crate::sync::BootCell;
use crate::{arch, percpu, qemu};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// First vector of the remapped master PIC.
pub const IRQ_BASE: u8 = 32;
/// The PIT's vector.
pub const TIMER_VECTOR: u8 = IRQ_BASE;

const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const TSS_SEL: u16 = 0x18;

/// Registers saved by the entry path, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    // Pushed by the CPU:
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

core::arch::global_asm!(
    r#"
    .text
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rbx
    pushq %rbp
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rbx              /* the TrapFrame; %rbx survives the call */
    subq $512, %rsp
    andq $-16, %rsp
    fxsaveq (%rsp)
    movq %rbx, %rdi
    cld
    callq trap_dispatch
    fxrstorq (%rsp)
    movq %rbx, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rbp
    popq %rbx
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp               /* vector, error code */
    iretq

    /* probe_read(addr: usize, out: *mut u64) -> u64: 0, or 1 if it faulted. */
    .balign 16
    .global probe_read
probe_read:
    xorl %eax, %eax
    .global probe_read_insn
probe_read_insn:
    movq (%rdi), %rdx
    movq %rdx, (%rsi)
    retq
    .global probe_read_fixup
probe_read_fixup:
    movl $1, %eax
    retq
"#,
    options(att_syntax)
);

extern "C" {
    static isr_stubs: u8;
    static probe_read_insn: u8;
    static probe_read_fixup: u8;
    #[link_name = "probe_read"]
    fn probe_read_raw(addr: usize, out: *mut u64) -> u64;
}

/// Reads the u64 at `addr`, or returns `None` if the access faulted (the
/// fault is recorded: see [`last_probe_fault`]).
pub fn probe_read(addr: usize) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: a fault at the read is caught by the #PF handler and turned
    // into a return value; a successful read touches only `addr`.
    (unsafe { probe_read_raw(addr, &mut v) } == 0).then_some(v)
}

static PROBE_CR2: AtomicU64 = AtomicU64::new(0);
static PROBE_ERROR: AtomicU64 = AtomicU64::new(0);
static PROBE_FAULTS: AtomicUsize = AtomicUsize::new(0);

/// The last fault caught by [`probe_read`]: (CR2, error code, count so far).
pub fn last_probe_fault() -> (u64, u64, usize) {
    (
        PROBE_CR2.load(Relaxed),
        PROBE_ERROR.load(Relaxed),
        PROBE_FAULTS.load(Relaxed),
    )
}

#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct Stack([u8; 16384]);

static TSS: BootCell<Tss> = BootCell::new(Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: core::mem::size_of::<Tss>() as u16,
});
static IST_STACKS: BootCell<[Stack; 3]> = BootCell::new([const { Stack([0; 16384]) }; 3]);
static GDT: BootCell<[u64; 5]> = BootCell::new([0; 5]);

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_lo: u16,
    selector: u16,
    ist: u8,
    attr: u8,
    offset_mid: u16,
    offset_hi: u32,
    reserved: u32,
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: BootCell<Idt> = BootCell::new(Idt([Gate {
    offset_lo: 0,
    selector: 0,
    ist: 0,
    attr: 0,
    offset_mid: 0,
    offset_hi: 0,
    reserved: 0,
}; 256]));

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Loads the GDT (with the TSS) and the IDT. Call once, before interrupts.
pub fn init_cpu_tables() {
    // SAFETY: single-threaded boot, interrupts off; the tables are statics
    // that live for ever, in the higher half.
    unsafe {
        let stacks = IST_STACKS.get();
        let tss = TSS.get();
        for i in 0..3 {
            let top = (*stacks)[i].0.as_ptr() as u64 + 16384;
            core::ptr::addr_of_mut!((*tss).ist[i]).write_unaligned(top);
        }
        let base = tss as u64;
        let limit = core::mem::size_of::<Tss>() as u64 - 1;
        let gdt = &mut *GDT.get();
        gdt[1] = 0x00af_9a00_0000_ffff; // 64-bit code, DPL 0
        gdt[2] = 0x00cf_9200_0000_ffff; // data
        gdt[3] = (limit & 0xffff)
            | (base & 0xff_ffff) << 16
            | 0x89 << 40 // present, 64-bit TSS (available)
            | ((limit >> 16) & 0xf) << 48
            | ((base >> 24) & 0xff) << 56;
        gdt[4] = base >> 32;
        let gdtr = DescriptorPointer {
            limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
            base: gdt.as_ptr() as u64,
        };
        core::arch::asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            gdtr = in(reg) &gdtr,
            cs = in(reg) KERNEL_CS as u64,
            ds = in(reg) KERNEL_DS as u64,
            tss = in(reg) TSS_SEL as u64,
            // Written before ds and tss are read: not a late output.
            tmp = out(reg) _,
        );

        let stubs = core::ptr::addr_of!(isr_stubs) as u64;
        let idt = &mut *IDT.get();
        for (v, gate) in idt.0.iter_mut().enumerate() {
            let addr = stubs + 16 * v as u64;
            let ist = match v {
                2 | 8 | 18 => 3, // NMI, #DF, #MC
                0..=31 => 2,     // other exceptions
                _ => 1,          // IRQs
            };
            *gate = Gate {
                offset_lo: addr as u16,
                selector: KERNEL_CS,
                ist,
                attr: 0x8e, // present, DPL 0, interrupt gate
                offset_mid: (addr >> 16) as u16,
                offset_hi: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        let idtr = DescriptorPointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: idt as *const Idt as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &idtr, options(nostack));
    }
}

/// Remaps the PICs to vectors 32..47 and masks every line.
pub fn init_pic() {
    use arch::{io_wait, outb};
    outb(0x20, 0x11); // ICW1: edge, cascade, ICW4 follows
    io_wait();
    outb(0xa0, 0x11);
    io_wait();
    outb(0x21, IRQ_BASE); // ICW2: vector bases
    io_wait();
    outb(0xa1, IRQ_BASE + 8);
    io_wait();
    outb(0x21, 0x04); // ICW3: slave on IRQ 2
    io_wait();
    outb(0xa1, 0x02);
    io_wait();
    outb(0x21, 0x01); // ICW4: 8086 mode
    io_wait();
    outb(0xa1, 0x01);
    io_wait();
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// PIT input clock, Hz.
const PIT_HZ: u32 = 1_193_182;

/// Starts the PIT at `hz` and unmasks IRQ 0.
pub fn start_timer(hz: u32) {
    let div = (PIT_HZ / hz).clamp(1, 65535) as u16;
    arch::outb(0x43, 0x34); // channel 0, low then high byte, mode 2
    arch::outb(0x40, div as u8);
    arch::outb(0x40, (div >> 8) as u8);
    arch::outb(0x21, 0xfe);
}

/// Masks IRQ 0 again.
pub fn stop_timer() {
    arch::outb(0x21, 0xff);
}

static TICKS: AtomicU64 = AtomicU64::new(0);
static SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// Timer interrupts taken so far.
pub fn ticks() -> u64 {
    TICKS.load(Relaxed)
}

/// Spurious IRQ 7s seen.
pub fn spurious() -> u64 {
    SPURIOUS.load(Relaxed)
}

const EXCEPTIONS: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved (15)",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved (31)",
];

/// The one Rust entry for every vector.
#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let v = frame.vector as u8;
    match v {
        14 => page_fault(frame),
        0..=31 => fatal(frame, EXCEPTIONS[v as usize]),
        TIMER_VECTOR => {
            percpu::irq_enter();
            let n = TICKS.fetch_add(1, Relaxed) + 1;
            crate::run::irq::on_timer_tick(n);
            percpu::irq_exit();
            arch::outb(0x20, 0x20); // EOI
        }
        // IRQ 7 with nothing in service: spurious, no EOI.
        39 => {
            SPURIOUS.fetch_add(1, Relaxed);
        }
        _ => fatal(frame, "unexpected interrupt"),
    }
}

fn page_fault(frame: &mut TrapFrame) {
    let cr2 = arch::read_cr2();
    let insn = core::ptr::addr_of!(probe_read_insn) as u64;
    if frame.rip == insn {
        PROBE_CR2.store(cr2, Relaxed);
        PROBE_ERROR.store(frame.error, Relaxed);
        PROBE_FAULTS.fetch_add(1, Relaxed);
        frame.rip = core::ptr::addr_of!(probe_read_fixup) as u64;
        return;
    }
    crate::kprintln!(
        "BUG: unable to handle page fault for address {:#x} (error {:#x}: {})",
        cr2,
        frame.error,
        pf_reason(frame.error)
    );
    fatal(frame, "#PF page fault");
}

/// The page-fault error code in words.
pub fn pf_reason(err: u64) -> &'static str {
    match (err & 1 != 0, err & 2 != 0, err & 16 != 0) {
        (false, false, false) => "not-present page, read",
        (false, true, _) => "not-present page, write",
        (false, false, true) => "not-present page, instruction fetch",
        (true, false, false) => "protection violation, read",
        (true, true, _) => "protection violation, write",
        (true, false, true) => "protection violation, instruction fetch",
    }
}

fn fatal(frame: &TrapFrame, what: &str) -> ! {
    crate::kprintln!(
        "FATAL: {} (vector {}, error {:#x}) at rip {:#x}, rsp {:#x}, rflags {:#x}, cr2 {:#x}",
        what,
        frame.vector,
        frame.error,
        frame.rip,
        frame.rsp,
        frame.rflags,
        arch::read_cr2()
    );
    crate::kprintln!("{:#x?}", frame);
    crate::kprintln!("kmem-baremetal: FAIL");
    qemu::exit(qemu::EXIT_FAILURE)
}

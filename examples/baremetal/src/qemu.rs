//! Leaving QEMU with a status, through the isa-debug-exit device
//! (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`). Writing `v` makes QEMU
//! exit with status `(v << 1) | 1`.

use crate::arch;

const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Written on success: QEMU exits with 33.
pub const EXIT_SUCCESS: u32 = 0x10;
/// Written on failure or panic: QEMU exits with 35.
pub const EXIT_FAILURE: u32 = 0x11;

/// Exits QEMU. Without the device (another machine, real hardware) the
/// write does nothing and the CPU halts for good.
pub fn exit(code: u32) -> ! {
    arch::outl(DEBUG_EXIT_PORT, code);
    loop {
        arch::cli();
        arch::hlt();
    }
}

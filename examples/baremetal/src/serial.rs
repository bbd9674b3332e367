//! The COM1 serial port (16550 UART at 0x3f8): the kernel's console.
//!
//! `kprintln!` formats straight to the port with interrupts disabled for the
//! length of the message, so lines from the timer handler never interleave
//! with lines from the main flow. QEMU's `-serial stdio` puts the terminal in
//! raw mode, so every `\n` goes out as `\r\n`.

use crate::arch::{inb, outb};
use crate::percpu;
use core::fmt;

const COM1: u16 = 0x3f8;

/// Programs COM1 for 115200 8N1, FIFOs on, no interrupts.
pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB: divisor follows
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8 bits, no parity, one stop bit
    outb(COM1 + 2, 0xc7); // FIFOs on, cleared, 14-byte threshold
    outb(COM1 + 4, 0x03); // DTR, RTS
}

fn put(b: u8) {
    while inb(COM1 + 5) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, b);
}

/// The serial port as a `fmt::Write` sink.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// Prints formatted text with interrupts off (used by `kprint!`).
pub fn print(args: fmt::Arguments<'_>) {
    percpu::irq_save();
    let _ = fmt::Write::write_fmt(&mut Serial, args);
    percpu::irq_restore();
}

/// Prints to the serial port.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::serial::print(format_args!($($arg)*)) };
}

/// Prints a line to the serial port.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::serial::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Passes `/proc/slabinfo` through, leaving out the rows of caches with no
/// objects (dozens of unused kmalloc variants).
pub struct SkipEmptySlabinfo<'w> {
    out: &'w mut Serial,
    line: [u8; 256],
    len: usize,
}

impl<'w> SkipEmptySlabinfo<'w> {
    /// Wraps the port.
    pub fn new(out: &'w mut Serial) -> Self {
        SkipEmptySlabinfo {
            out,
            line: [0; 256],
            len: 0,
        }
    }

    fn end_line(&mut self) -> fmt::Result {
        let line = core::str::from_utf8(&self.line[..self.len]).unwrap_or("");
        // Row: name active_objs num_objs ...; headers start with "slabinfo" or "#".
        let num_objs = line.split_whitespace().nth(2);
        let keep = line.starts_with("slabinfo") || line.starts_with('#') || num_objs != Some("0");
        let r = if keep {
            fmt::Write::write_str(self.out, line)
                .and_then(|_| fmt::Write::write_str(self.out, "\n"))
        } else {
            Ok(())
        };
        self.len = 0;
        r
    }
}

impl fmt::Write for SkipEmptySlabinfo<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.end_line()?;
            } else if self.len < self.line.len() {
                self.line[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Runs `f` on the serial port with interrupts off, for multi-line output
/// such as kmem's /proc renderings.
pub fn with<R>(f: impl FnOnce(&mut Serial) -> R) -> R {
    percpu::irq_save();
    let r = f(&mut Serial);
    percpu::irq_restore();
    r
}

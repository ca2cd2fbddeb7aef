//! A counting global allocator that attributes every allocation to the code that made it.
//!
//! The `protocol` target wants to bound the memory the room (the code under test) holds, not the
//! memory the harness spends on its own client replicas. Each allocation gets a small header
//! holding a tag: [`Owner::Room`] while [`in_room`] is running, [`Owner::Harness`] otherwise.
//! A block keeps its tag until it is freed, wherever that happens (a frame the room allocated
//! and the harness drops later is still the room's until then).
//!
//! [`room_live`] is the number of bytes currently held in room-tagged blocks and [`room_peak`]
//! the highest value it reached since [`reset_peak`].
//!
//! Single-threaded use is assumed for the tag (a global flag); the counters are atomics, so
//! other threads (libFuzzer's own are not Rust) cannot corrupt them, only be misattributed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Who an allocation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Owner {
    /// Made by the fuzz harness itself.
    Harness = 0,
    /// Made while the code under test was running.
    Room = 1,
}

static IN_ROOM: AtomicBool = AtomicBool::new(false);
static ROOM_LIVE: AtomicUsize = AtomicUsize::new(0);
static ROOM_PEAK: AtomicUsize = AtomicUsize::new(0);

/// The tagging allocator; install it with `#[global_allocator]`.
#[derive(Debug)]
pub struct TaggingAllocator;

/// Header size for a given alignment: at least 16 bytes, a multiple of the alignment, so the
/// block handed out keeps the alignment asked for.
fn header(align: usize) -> usize {
    align.max(16)
}

fn with_header(layout: Layout) -> Option<Layout> {
    let size = layout.size().checked_add(header(layout.align()))?;
    Layout::from_size_align(size, layout.align()).ok()
}

fn add(owner: u8, n: usize) {
    if owner == Owner::Room as u8 {
        let live = ROOM_LIVE.fetch_add(n, Ordering::Relaxed) + n;
        ROOM_PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

fn sub(owner: u8, n: usize) {
    if owner == Owner::Room as u8 {
        ROOM_LIVE.fetch_sub(n, Ordering::Relaxed);
    }
}

// SAFETY: every block handed out is `header(align)` bytes past the start of a System block of
// `size + header(align)` bytes with the same alignment; dealloc/realloc undo exactly that. The
// tag byte lives in the header, which the caller never touches.
unsafe impl GlobalAlloc for TaggingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(full) = with_header(layout) else {
            return std::ptr::null_mut();
        };
        let base = System.alloc(full);
        if base.is_null() {
            return base;
        }
        let owner = IN_ROOM.load(Ordering::Relaxed) as u8;
        *base = owner;
        add(owner, layout.size());
        base.add(header(layout.align()))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let h = header(layout.align());
        let base = ptr.sub(h);
        sub(*base, layout.size());
        // `with_header` succeeded when this block was allocated.
        let full = Layout::from_size_align_unchecked(layout.size() + h, layout.align());
        System.dealloc(base, full);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let h = header(layout.align());
        let base = ptr.sub(h);
        let owner = *base;
        let full = Layout::from_size_align_unchecked(layout.size() + h, layout.align());
        let Some(new_full) = new_size.checked_add(h) else {
            return std::ptr::null_mut();
        };
        let new_base = System.realloc(base, full, new_full);
        if new_base.is_null() {
            return new_base;
        }
        // The header moved with the data; the block keeps its owner.
        sub(owner, layout.size());
        add(owner, new_size);
        new_base.add(h)
    }
}

/// Runs `f` with its allocations tagged as the room's.
pub fn in_room<T>(f: impl FnOnce() -> T) -> T {
    let was = IN_ROOM.swap(true, Ordering::Relaxed);
    let out = f();
    IN_ROOM.store(was, Ordering::Relaxed);
    out
}

/// Bytes currently held in room-tagged blocks.
pub fn room_live() -> usize {
    ROOM_LIVE.load(Ordering::Relaxed)
}

/// Highest [`room_live`] since the last [`reset_peak`].
pub fn room_peak() -> usize {
    ROOM_PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from the current live count.
pub fn reset_peak() {
    ROOM_PEAK.store(room_live(), Ordering::Relaxed);
}

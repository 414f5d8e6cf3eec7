//! Counts and sizes read off the wire never size an allocation beyond what the bytes at hand
//! can hold: forged pgoutput messages and binary values that claim huge counts are errors,
//! and decoding them allocates no more than a few KiB. Measured with a counting allocator
//! (the largest single allocation on the test's own thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use godwit::pg::replication::pgoutput;
use godwit::pg::types::{ColumnBuilder, PgType};

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|m| m.set(0));
    f();
    LARGEST.with(|m| m.get())
}

const LIMIT: usize = 4096;

#[test]
fn forged_pgoutput_counts_allocate_nothing_large() {
    // Truncate claiming 2^31-1 relations, with two relation ids.
    let mut truncate = vec![b'T'];
    truncate.extend_from_slice(&i32::MAX.to_be_bytes());
    truncate.push(0);
    truncate.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    // Relation claiming 32767 columns, with one.
    let mut relation = vec![b'R'];
    relation.extend_from_slice(&1u32.to_be_bytes());
    relation.extend_from_slice(b"public\0t\0d");
    relation.extend_from_slice(&i16::MAX.to_be_bytes());
    relation.extend_from_slice(b"\x01id\0\0\0\0\x17\xff\xff\xff\xff");
    // Insert claiming 32767 values, with one.
    let mut insert = vec![b'I'];
    insert.extend_from_slice(&1u32.to_be_bytes());
    insert.push(b'N');
    insert.extend_from_slice(&i16::MAX.to_be_bytes());
    insert.push(b'n');
    for (name, msg) in [
        ("truncate", truncate),
        ("relation", relation),
        ("insert", insert),
    ] {
        let mut result = None;
        let largest = largest_allocation(|| result = Some(pgoutput::decode(&msg).is_err()));
        assert_eq!(result, Some(true), "{name}: a forged count is an error");
        assert!(
            largest <= LIMIT,
            "{name}: decoding a {}-byte message allocated {largest} bytes at once",
            msg.len()
        );
    }
}

#[test]
fn forged_array_sizes_allocate_nothing_large() {
    let t = PgType::Array {
        elem: Box::new(PgType::Int4),
        dims: 2,
    };
    let mut b = ColumnBuilder::new(&t, 1);
    for dims in [[i32::MAX, i32::MAX], [1 << 20, 1 << 10], [1 << 30, 0]] {
        let mut v = Vec::new();
        for x in [2, 0, 23, dims[0], 1, dims[1], 1, 4, 7] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        let largest = largest_allocation(|| {
            let _ = b.append(Some(&v));
        });
        assert!(
            largest <= LIMIT,
            "dims {dims:?}: appending a {}-byte array allocated {largest} bytes at once",
            v.len()
        );
    }
    b.append_text(&vec![b'{'; 1 << 16]).unwrap_err();
}

//! Output buffers of the normalization ops.

use crate::tensor::Element;

/// A zeroed output buffer of `n` elements. Large ones (≥ 4 MiB) come straight from `mmap`
/// and every first write to a 4 KiB page faults: for a (256, 64, 1024) f32 output that is
/// 16K faults, each clearing a page, which cost more than the normalization itself. Asking
/// for transparent huge pages (`MADV_HUGEPAGE`, the kernel default here is `madvise`) makes
/// it one fault per 2 MiB. Advice only: the memory stays the global allocator's.
pub(crate) fn output_buffer<T: Element>(n: usize) -> Vec<T> {
    let v = vec![T::zero(); n];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(v.as_slice());
        if bytes >= 2 * HUGE {
            let start = v.as_ptr() as usize;
            let (lo, hi) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
            if hi > lo {
                // SAFETY: `[lo, hi)` lies inside `v`'s live allocation; madvise only changes
                // how the kernel backs those pages (contents stay zero), and a failure
                // (e.g. THP disabled) just leaves 4 KiB pages.
                unsafe {
                    libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
    v
}

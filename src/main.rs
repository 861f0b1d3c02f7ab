// The allocator of the binary (the library leaves the choice to its user). glibc's malloc
// serves every block over 32 MiB with a fresh mmap and unmaps it on free, so a training step
// that allocates a 64 MiB activation page-faults and zeroes it again on every call; mimalloc
// keeps freed segments for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc returns freed memory to the OS 10 ms after it is freed (`purge_delay`); a training
/// loop frees its activations at the end of every step and allocates them again at the start of
/// the next, so every step page-faulted its buffers back in and the kernel zeroed them (18 % of
/// a GAT epoch in `clear_page_erms`, measured with perf; GAT epoch −18 %, ViT step −21 % without
/// it). The resident size stays at the run's peak instead, which the first step reaches anyway.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc.h (v2 and v3); libmimalloc-sys does not name it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads it on its next purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() {
    keep_freed_memory();
    std::process::exit(nabla::cli::main());
}

// The allocator of the binary (the library leaves the choice to its user). glibc's malloc
// serves every block over 32 MiB with a fresh mmap and unmaps it on free, so a training step
// that allocates a 64 MiB activation page-faults and zeroes it again on every call; mimalloc
// keeps freed segments for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(nabla::cli::main());
}

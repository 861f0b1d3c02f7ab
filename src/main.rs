fn main() {
    std::process::exit(nabla::cli::main());
}

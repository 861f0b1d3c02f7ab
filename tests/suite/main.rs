//! The integration tests as one test binary: one link of nabla and its dependencies instead of
//! one per file, which on CI's 2 cores saves minutes of linking and gigabytes of disk. Each file
//! is a module (`cargo test --test suite cli::` runs one). Tests that own process-wide state
//! (signal handlers, the stop flag, a pseudo-terminal: `stop_signals`, `train_sigint`,
//! `progress_tty`), the MPI tests (`--features mpi`) and the fuzz regressions stay binaries of
//! their own.

#[path = "../common/mod.rs"]
mod common;

mod analysis_norm;
mod attention;
mod char_rnn;
mod cli;
mod cnn_cli;
mod conv;
mod gnn_attention;
mod gnn_cli;
mod integrity;
mod limits;
mod norm;
mod ops_gradcheck;
mod optim;
mod reproduce;
mod resnet;
mod rnn;
mod rnn_char_gated;
mod rnn_gated;
mod train;
mod vit;
mod vit_cli;

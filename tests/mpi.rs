//! Data-parallel training under `mpirun` (cargo feature `mpi`): the same weights, bit for bit,
//! for 1, 2 and 3 ranks and a run without MPI; `--resume` with another rank count; a dead rank
//! ends the job with a message and leaves the checkpoint intact; mismatched flags and models
//! that cannot be split are refused. Without the feature: a binary launched as one of several
//! ranks refuses to train.
//!
//! Run with `cargo test --features mpi --test mpi` (Open MPI's `mpirun` on PATH; the tests run
//! as root in CI, hence `OMPI_ALLOW_RUN_AS_ROOT*`).

#[cfg(not(feature = "mpi"))]
#[test]
fn without_the_feature_a_rank_of_several_refuses_to_train() {
    let d = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["vit", "train", "--steps", "1", "--out"])
        .arg(d.path().join("run"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("built without MPI") && err.contains("--features mpi"),
        "{err}"
    );
    assert!(!d.path().join("run").exists(), "nothing may be written");
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    const BIN: &str = env!("CARGO_BIN_EXE_nabla");

    /// A tiny ViT on the built-in shapes: 96 images per step = 3 micro-batches of 32.
    const VIT: &[&str] = &[
        "vit",
        "train",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--mlp-dim",
        "32",
        "--batch",
        "96",
        "--train-limit",
        "384",
        "--eval-limit",
        "32",
        "--dropout",
        "0.1",
        "--schedule",
        "constant",
        "--warmup",
        "0",
        "--plot",
        "none",
        "--quiet",
    ];

    /// A tiny LSTM character model: 48 streams = 3 micro-batches of 16.
    const RNN: &[&str] = &[
        "rnn",
        "train",
        "--cell",
        "lstm",
        "--hidden",
        "16",
        "--batch",
        "48",
        "--k1",
        "5",
        "--k2",
        "8",
        "--eval-every",
        "100",
        "--schedule",
        "constant",
        "--plot",
        "none",
        "--quiet",
    ];

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    /// `mpirun -np n BIN args…` on loopback, as root if need be (`n = 0`: BIN alone, no MPI).
    fn launch(n: usize, args: &[&str], out: &Path, extra: &[&str]) -> Output {
        launch_env(n, args, out, extra, &[])
    }

    /// [`launch`] with extra environment variables.
    fn launch_env(
        n: usize,
        args: &[&str],
        out: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut c = if n == 0 {
            Command::new(BIN)
        } else {
            let mut c = Command::new("mpirun");
            c.args([
                "--oversubscribe",
                "--bind-to",
                "none",
                "-np",
                &n.to_string(),
                BIN,
            ]);
            c
        };
        c.args(args)
            .args(["--out", out.to_str().unwrap()])
            .args(extra)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            // Containers often forbid the cross-memory-attach copies of the shared-memory
            // transport; plain copies through shared memory work everywhere.
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .env("RAYON_NUM_THREADS", "1")
            .envs(env.iter().copied());
        c.output().expect("mpirun (Open MPI) on PATH")
    }

    fn ok(o: &Output, what: &str) {
        assert!(
            o.status.success(),
            "{what} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
    }

    /// The weights and optimizer state of a run's last checkpoint.
    fn ckpt(dir: &Path) -> (Vec<u8>, Vec<u8>) {
        let c = dir.join("checkpoint");
        (
            std::fs::read(c.join("model.safetensors")).expect("model.safetensors"),
            std::fs::read(c.join("optimizer.safetensors")).expect("optimizer.safetensors"),
        )
    }

    fn train_losses(dir: &Path) -> Vec<u64> {
        nabla::train::read_metrics_jsonl(dir.join("metrics.jsonl"))
            .expect("metrics.jsonl")
            .iter()
            .map(|r| r.train_loss.to_bits())
            .collect()
    }

    #[test]
    fn same_bits_for_any_rank_count_and_resume_with_another() {
        for (name, args) in [("vit", VIT), ("rnn", RNN)] {
            let d = tmp();
            let run = |n: usize, tag: &str, extra: &[&str]| -> PathBuf {
                let out = d.path().join(format!("{name}-{tag}"));
                ok(
                    &launch(n, args, &out, extra),
                    &format!("{name} on {n} ranks ({tag})"),
                );
                out
            };
            let base = run(0, "plain", &["--steps", "4"]);
            let reference = ckpt(&base);
            for n in [1, 2, 3] {
                let out = run(n, &format!("np{n}"), &["--steps", "4"]);
                assert!(
                    ckpt(&out) == reference,
                    "{name}: weights or optimizer state after 4 steps on {n} ranks differ from one process"
                );
                assert_eq!(
                    train_losses(&out),
                    train_losses(&base),
                    "{name} on {n} ranks"
                );
            }
            // 2 steps on 3 ranks, then resumed to 4 on 2 ranks: the uninterrupted run's bits.
            let out = run(3, "resumed", &["--steps", "2"]);
            let o = launch(
                2,
                &[
                    name,
                    "train",
                    "--resume",
                    out.to_str().unwrap(),
                    "--steps",
                    "4",
                ],
                &out,
                &[],
            );
            ok(&o, &format!("{name} resumed on 2 ranks"));
            assert!(
                ckpt(&out) == reference,
                "{name}: 2 steps on 3 ranks + 2 on 2 ranks differ from 4 steps in one process"
            );
        }
    }

    /// The reduction overlapped with the backward pass (the default) in many small buckets
    /// (so that buckets become ready one after the other during the last micro-batch's
    /// backward), and not overlapped: the one-process bits either way.
    #[test]
    fn overlap_and_bucket_size_do_not_change_the_bits() {
        let d = tmp();
        let steps = ["--steps", "2"];
        let base = d.path().join("plain");
        ok(&launch(0, VIT, &base, &steps), "vit in one process");
        for (tag, env) in [
            (
                "small buckets",
                [("NABLA_BUCKET_MB", "0.002"), ("NABLA_DIST_OVERLAP", "1")],
            ),
            (
                "no overlap",
                [("NABLA_BUCKET_MB", "25"), ("NABLA_DIST_OVERLAP", "0")],
            ),
        ] {
            let out = d.path().join(tag.replace(' ', "-"));
            ok(&launch_env(2, VIT, &out, &steps, &env), tag);
            assert!(
                ckpt(&out) == ckpt(&base),
                "vit on 2 ranks, {tag}: other bits"
            );
            assert_eq!(train_losses(&out), train_losses(&base), "{tag}");
        }
    }

    #[test]
    fn a_dead_rank_ends_the_job_with_a_message_and_the_checkpoint_stays() {
        let d = tmp();
        let out = d.path().join("run");
        // Rank 1 ends abruptly (SIGKILL from the injected fault) after 3 steps; one checkpoint
        // per step.
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "--bind-to", "none", "-np", "2", BIN])
            .args(RNN)
            .args(["--steps", "1000", "--checkpoint-every", "1"])
            .args(["--out", out.to_str().unwrap()])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .env("RAYON_NUM_THREADS", "1")
            .env("NABLA_DIST_TIMEOUT_S", "20")
            .env("NABLA_DIST_FAULT", "1:3");
        let t = std::time::Instant::now();
        let o = c.output().expect("mpirun");
        let secs = t.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "the job must fail when a rank dies");
        assert!(
            secs < 60.0,
            "the job took {secs:.0} s to end: a survivor hung"
        );
        assert!(
            err.contains("rank 1") || err.contains("exited on signal") || err.contains("rank 0/2"),
            "no message naming the failure: {err}"
        );
        // The checkpoint of the last completed step is whole: it loads and resumes on one rank.
        let st = nabla::train::load_checkpoint_state(out.join("checkpoint")).expect("state.json");
        assert!(st.step >= 1, "no checkpoint was written before the fault");
        let t = nabla::io::load_safetensors::<f32>(out.join("checkpoint/model.safetensors"))
            .expect("the checkpoint's weights load (checksums verified)");
        assert!(t.contains_key("head.weight"));
        let o = launch(
            0,
            &[
                "rnn",
                "train",
                "--resume",
                out.to_str().unwrap(),
                "--steps",
                &(st.step + 1).to_string(),
            ],
            &out,
            &[],
        );
        ok(&o, "resume after the fault");
    }

    #[test]
    fn mismatched_flags_and_unsplittable_models_are_refused() {
        let d = tmp();
        let out = d.path().join("mismatch");
        // Two ranks with different seeds (mpirun's MPMD form: one command per rank).
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "--bind-to", "none", "-np", "1", BIN])
            .args(VIT)
            .args([
                "--steps",
                "1",
                "--seed",
                "1",
                "--out",
                out.to_str().unwrap(),
            ])
            .args([":", "-np", "1", BIN])
            .args(VIT)
            .args([
                "--steps",
                "1",
                "--seed",
                "2",
                "--out",
                out.to_str().unwrap(),
            ])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .env("RAYON_NUM_THREADS", "1");
        let o = c.output().expect("mpirun");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("another configuration than rank 0"), "{err}");
        assert!(!out.join("checkpoint").exists(), "nothing may be trained");

        let o = launch(
            2,
            &["gnn", "train", "--epochs", "2", "--quiet", "--plot", "none"],
            &d.path().join("gnn"),
            &[],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("trains in one process only"), "{err}");
    }

    #[test]
    fn bench_vit_reports_the_communication() {
        let o = Command::new("mpirun")
            .args(["--oversubscribe", "--bind-to", "none", "-np", "2", BIN])
            .args([
                "bench", "vit", "--json", "--dim", "16", "--depth", "1", "--heads", "2",
            ])
            .args([
                "--mlp-dim",
                "32",
                "--batch",
                "64",
                "--min-time",
                "0",
                "--warmup",
                "1",
            ])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("mpirun");
        ok(&o, "bench vit on 2 ranks");
        let text = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "rank 0 alone reports: {text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
        assert_eq!(v["ranks"], 2);
        assert_eq!(v["micro_batches_per_rank"], 1);
        // The gradient: every parameter once per step, f32.
        let params = v["bytes_reduced_per_step"].as_f64().unwrap() / 4.0;
        assert!(params > 1000.0 && params.fract() == 0.0, "{v}");
        assert!(v["comm_s_per_step"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["median_s"].as_f64().unwrap() > 0.0, "{v}");
    }
}

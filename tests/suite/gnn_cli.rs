//! Bad input to `nabla gnn …`: a clear error naming the file and line, exit status ≠ 0, no panic;
//! the Planetoid loader on the real Cora files (../shared/data/cora).

use crate::common;

use std::path::Path;
use std::process::Command;

fn write_tsv(dir: &Path) {
    std::fs::write(dir.join("features.tsv"), "0\t0,2\n1\t1\n2\t0\n3\t2\n").unwrap();
    std::fs::write(dir.join("labels.tsv"), "0\t0\n1\t1\n2\t1\n3\t0\n").unwrap();
    std::fs::write(
        dir.join("edges.tsv"),
        "0\t1\n1\t0\n1\t2\n2\t1\n2\t3\n3\t2\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("split.tsv"),
        "0\ttrain\n1\ttrain\n2\tval\n3\ttest\n",
    )
    .unwrap();
}

fn nabla(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "panic: {err}");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn bad_graph_files_give_clear_errors() {
    let cases: [(&str, &str, &str); 5] = [
        (
            "edges.tsv",
            "0\t1\n1\tzero\n",
            "edges.tsv: line 2: \"zero\" is not a node id",
        ),
        (
            "edges.tsv",
            "0\t1\n1\t0\n3\t4\n",
            "edges.tsv: line 3: node id 4 out of range for 4 nodes",
        ),
        (
            "split.tsv",
            "0\ttrain\n9\ttest\n",
            "split.tsv: line 2: node id 9 out of range for 4 nodes",
        ),
        ("labels.tsv", "0\t0\n1\t1\n2\t1\n", "3 labels for 4 nodes"),
        (
            "features.tsv",
            "0\t0,2\n1\t2,1\n2\t0\n3\t2\n",
            "features.tsv: line 2: feature indices must ascend",
        ),
    ];
    for (file, text, want) in cases {
        let d = tempfile::tempdir().unwrap();
        write_tsv(d.path());
        std::fs::write(d.path().join(file), text).unwrap();
        let dir = d.path().to_str().unwrap();
        let (code, err) = nabla(&["gnn", "train", "--data", dir, "--epochs", "2"]);
        assert_ne!(code, 0, "{file}");
        assert!(err.contains(want), "{file}: got {err:?}, want {want:?}");
    }
}

#[test]
fn linqs_features_of_inconsistent_width_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("g.content"),
        "a\t1\t0\tX\nb\t0\t1\tY\nc\t1\tX\n",
    )
    .unwrap();
    std::fs::write(d.path().join("g.cites"), "a\tb\n").unwrap();
    let (code, err) = nabla(&["gnn", "train", "--data", d.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("g.content: line 3: 1 features, but the first line has 2"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_errors() {
    let (code, err) = nabla(&["gnn", "train", "--model", "gin", "--epochs", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown model \"gin\""), "{err}");
    let (code, err) = nabla(&["gnn", "train", "--data", "/nonexistent/graph"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/graph"), "{err}");
    let d = tempfile::tempdir().unwrap();
    write_tsv(d.path());
    let (code, err) = nabla(&[
        "gnn",
        "influence",
        "--data",
        d.path().to_str().unwrap(),
        "--node",
        "7",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--node 7 out of range for 4 nodes"), "{err}");
}

#[test]
fn influence_writes_json_and_plot_on_a_tiny_graph() {
    let d = tempfile::tempdir().unwrap();
    write_tsv(d.path());
    let out = d.path().join("out");
    let (code, err) = nabla(&[
        "gnn",
        "influence",
        "--data",
        d.path().to_str().unwrap(),
        "--layers",
        "2",
        "--node",
        "0",
        "--chain",
        "6",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("influence.json")).unwrap())
            .unwrap();
    assert_eq!(v["graph"]["reachable"], 3);
    assert_eq!(v["graph"]["max_influence_beyond_reach"], 0.0);
    assert_eq!(v["chain"]["reachable"], 3);
    assert!(std::fs::read_to_string(out.join("influence.svg"))
        .unwrap()
        .contains("<svg"));
}

fn lines_without_timing(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("wall_time_s");
            o.remove("items_per_s");
            v
        })
        .collect()
}

/// `nabla gnn train` runs on the shared trainer: metrics.jsonl (one line per epoch with the
/// validation metrics, then one test record of best/), checkpoint/, best/, config.json and the
/// plot; `--resume` continues the run, and 3 + 3 resumed epochs give the same metrics and
/// weights as 6 epochs.
#[test]
fn train_writes_a_run_folder_and_resume_continues_it() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_tsv(&data);
    let data = data.to_str().unwrap();
    let run = d.path().join("run");
    let full = d.path().join("full");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "gnn",
            "train",
            "--data",
            data,
            "--model",
            "gat",
            "--seed",
            "3",
            "--patience",
            "100",
            "--plain",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report: serde_json::Value =
            serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        (report, err)
    };
    let (r3, err) = train(&["--epochs", "3", "--out", run.to_str().unwrap()]);
    assert!(err.contains("eval step=3/3"), "{err}");
    assert_eq!(r3["epochs_run"], 3);
    let mut m3 = lines_without_timing(&run.join("metrics.jsonl"));
    assert_eq!(m3.len(), 4);
    // The test set is evaluated once, at the end, on the weights of best/.
    let t3 = m3.pop().unwrap();
    assert_eq!(t3["test"], true, "{t3}");
    assert_eq!(t3["weights"], "best");
    assert_eq!(t3["selected_by"], "val_acc");
    assert_eq!(t3["test_acc"], r3["test_acc"]);
    for (i, m) in m3.iter().enumerate() {
        assert_eq!(m["step"], i as u64 + 1);
        for k in ["val_acc", "val_loss", "train_acc", "train_loss"] {
            assert!(m[k].is_number(), "{k} missing in {m}");
        }
        assert!(
            m.get("test_acc").is_none(),
            "test metric during training: {m}"
        );
    }
    for f in [
        "config.json",
        "metrics.svg",
        "checkpoint/model.safetensors",
        "checkpoint/optimizer.safetensors",
        "checkpoint/state.json",
        "best/model.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // Without --resume an existing run folder is not overwritten.
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["gnn", "train", "--data", data, "--epochs", "1", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // The run's model and seed come back from the run; other values are refused by name.
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["gnn", "train", "--model", "gcn", "--seed", "4", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("--model: the run has gat, this command line gcn")
            && e.contains("--seed: the run has 3, this command line 4"),
        "{e}"
    );
    let (r6, err) = train(&["--epochs", "6", "--resume", run.to_str().unwrap()]);
    assert!(err.contains("resumed from"), "{err}");
    assert!(!err.contains("eval step=3/6"), "{err}");
    assert_eq!(r6["epochs_run"], 6);
    let m6 = lines_without_timing(&run.join("metrics.jsonl"));
    // The resumed run rewrites the log: 6 evaluations and one test record, not two.
    assert_eq!(m6.len(), 7);
    assert_eq!(m6[..3], m3[..]);
    assert_eq!(m6.iter().filter(|m| m.get("test").is_some()).count(), 1);

    let (rf, _) = train(&["--epochs", "6", "--out", full.to_str().unwrap()]);
    assert_eq!(lines_without_timing(&full.join("metrics.jsonl")), m6);
    assert_eq!(rf["test_acc"], r6["test_acc"]);
    // Bit-identical weights (the files' metadata order may differ, so compare the tensors).
    let load = |d: &Path| {
        nabla::io::load_safetensors::<f32>(d.join("checkpoint/model.safetensors")).unwrap()
    };
    let (a, b) = (load(&full), load(&run));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert!(t.data() == b[k].data(), "{k} differs after resume");
    }
}

/// Without `--out`, a second run does not replace the first: it goes to the next numbered
/// folder and says so on stderr; `--overwrite` replaces the default folder on purpose.
#[test]
fn default_run_folder_is_never_replaced_silently() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_tsv(&data);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
            .current_dir(d.path())
            .args([
                "gnn", "train", "--epochs", "2", "--plain", "--json", "--data",
            ])
            .arg(&data)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let r: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        (r["run_dir"].as_str().unwrap().to_string(), err)
    };
    let (first, err) = run(&[]);
    assert_eq!(first, "runs/gnn-gcn");
    assert!(!err.contains("holds an earlier run"), "{err}");
    let first_config = std::fs::read(d.path().join("runs/gnn-gcn/config.json")).unwrap();
    let (second, err) = run(&["--seed", "5"]);
    assert_eq!(second, "runs/gnn-gcn-2");
    assert!(
        err.contains("note runs/gnn-gcn holds an earlier run; this run goes to runs/gnn-gcn-2"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(d.path().join("runs/gnn-gcn/config.json")).unwrap(),
        first_config,
        "the first run was touched"
    );
    assert_eq!(run(&[]).0, "runs/gnn-gcn-3");
    // --overwrite reuses the default folder.
    let (again, err) = run(&["--overwrite", "--seed", "5"]);
    assert_eq!(again, "runs/gnn-gcn");
    assert!(!err.contains("holds an earlier run"), "{err}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("runs/gnn-gcn/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["train"]["seed"], 5);
}

/// `gnn train --aggr` reaches the model: each of the GCN's aggregations trains, is recorded in
/// config.json and gives its own numbers; a model that aggregates by attention refuses the
/// others, and an unknown name is an error naming the choices.
#[test]
fn aggr_flag_selects_the_aggregation() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_tsv(&data);
    let mut losses = Vec::new();
    for aggr in ["gcn", "add", "mean", "max"] {
        let out = d.path().join(aggr);
        let o = Command::new(env!("CARGO_BIN_EXE_nabla"))
            .args([
                "gnn", "train", "--epochs", "3", "--plain", "--json", "--aggr", aggr,
            ])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{aggr}: {err}");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let r: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["model"]["aggr"], aggr, "{cfg}");
        let loss = r["final_train_loss"].as_f64().unwrap();
        assert!(
            !losses.contains(&loss),
            "{aggr}: the same loss as another aggregation"
        );
        losses.push(loss);
    }
    let (code, err) = nabla(&[
        "gnn",
        "train",
        "--model",
        "gat",
        "--aggr",
        "max",
        "--epochs",
        "1",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--aggr max: the gat model aggregates by attention"),
        "{err}"
    );
    let (code, err) = nabla(&["gnn", "train", "--aggr", "median", "--epochs", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown aggregation \"median\""), "{err}");
}

/// The Planetoid TSV loader on Cora reproduces the counts of ../shared/data/README.md.
#[test]
fn cora_tsv_matches_the_readme_counts() {
    let Some(dir) = common::shared("data/cora") else {
        return;
    };
    let ds = nabla::data::planetoid::NodeDataset::load_tsv_dir(dir).unwrap();
    assert_eq!(ds.num_nodes(), 2708);
    assert_eq!(ds.graph.num_edges(), 10556);
    assert_eq!(ds.features.cols(), 1433);
    assert_eq!(ds.features.nnz(), 49216);
    assert_eq!(ds.num_classes, 7);
    assert_eq!(
        (ds.train.len(), ds.val.len(), ds.test.len()),
        (140, 500, 1000)
    );
    let first: Vec<usize> = ds.labels[..10].iter().map(|l| l.unwrap()).collect();
    assert_eq!(first, vec![3, 4, 4, 0, 3, 2, 0, 3, 3, 2]);
    assert_eq!(ds.graph.symmetric().num_edges(), 10556);
}

/// The resumed GNN run again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &["train_writes_a_run_folder_and_resume_continues_it"],
    );
}

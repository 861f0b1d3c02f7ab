//! Bad input to `nabla gnn …`: a clear error naming the file and line, exit status ≠ 0, no panic.

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

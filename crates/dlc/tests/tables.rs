//! The user's own tables: CSV files (sklearn's real data sets, and hand-made ones with
//! headers, string labels, a test file and broken rows) trained end to end.

mod common;
use std::path::{Path, PathBuf};

use common::*;

/// sklearn's CSV data sets, unpacked by scripts/setup.sh.
fn sklearn(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/sklearn")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it unpacks sklearn's CSV data sets)",
        p.display()
    );
    p
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn sklearn_breast_cancer_example_learns() {
    sklearn("breast_cancer.csv");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = ok(&[
        "train",
        &example("sklearn-breast-cancer.toml"),
        "--json",
        "-q",
        "--out",
        run.to_str().unwrap(),
    ]);
    let s = summary(&out);
    let acc = s["test_accuracy"].as_f64().unwrap();
    // 114 held-out rows; a linear model gets ~95 %.
    assert!(acc > 0.9, "breast cancer test accuracy {acc}");
    // dlc eval re-creates the same split and standardisation from the job file.
    let ev = ok(&[
        "eval",
        &example("sklearn-breast-cancer.toml"),
        "--model",
        run.join("model.safetensors").to_str().unwrap(),
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_str(ev.trim()).unwrap();
    assert!(
        (e["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9,
        "{e} vs {s}"
    );
}

#[test]
fn two_workers_on_a_table_end_with_one_workers_weights() {
    let wine = sklearn("wine_data.csv");
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "wine.toml",
        &format!(
            "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"{}\"\nheader = false\n\
             skip_rows = 1\nlabel = 13\n[train]\nepochs = 3\nbatch_size = 16\nseed = 4\n",
            wine.display()
        ),
    );
    let mut runs = Vec::new();
    for workers in ["1", "2"] {
        let run = dir.path().join(format!("w{workers}"));
        ok(&[
            "train",
            job.to_str().unwrap(),
            "--workers",
            workers,
            "-q",
            "--out",
            run.to_str().unwrap(),
        ]);
        runs.push(weights(&run.join("model.safetensors")));
    }
    let d = max_abs_diff(&runs[0], &runs[1]);
    assert!(d < 1e-5, "1 vs 2 workers: max |Δw| = {d}");
}

#[test]
fn header_names_string_labels_and_a_test_file() {
    let dir = tempfile::tempdir().unwrap();
    // Two separable classes named by strings; the test file lists them in another order.
    let mut train = String::from("x1;x2;note;kind\n");
    let mut test = String::from("x1;x2;note;kind\n");
    for i in 0..200 {
        let (a, b) = ((i % 17) as f32 / 17.0, (i % 13) as f32 / 13.0);
        let kind = if a + b > 1.0 { "big" } else { "small" };
        let row = format!("{a};{b};{i};{kind}\n");
        if i % 5 == 0 {
            test.push_str(&row);
        } else {
            train.push_str(&row);
        }
    }
    std::fs::write(dir.path().join("train.csv"), &train).unwrap();
    std::fs::write(dir.path().join("test.csv"), &test).unwrap();
    let job = job(
        dir.path(),
        "j.toml",
        "[model]\nlayers = [{ type = \"dense\", units = 16 }, { type = \"relu\" }, \
         { type = \"dense\", units = 2 }]\n[data]\npath = \"train.csv\"\n\
         test_path = \"test.csv\"\ndelimiter = \";\"\nlabel = \"kind\"\n\
         features = [\"x1\", \"x2\"]\n[train]\nepochs = 40\nbatch_size = 16\n\
         learning_rate = 0.01\n",
    );
    let run = dir.path().join("run");
    let s = train_to(&job, &run, &[]);
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.85, "string-labelled classes: test accuracy {acc}");

    // The run saves its class mapping and standardisation (data.json), and dlc eval
    // uses them: a job whose own training file holds one class only, at another
    // scale, scores the model on test.csv exactly as training did.
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("data.json")).unwrap()).unwrap();
    assert_eq!(
        info["class_names"],
        serde_json::json!(["big", "small"]),
        "{info}"
    );
    assert_eq!(
        info["standardizer"]["mean"].as_array().unwrap().len(),
        2,
        "{info}"
    );
    let mut small = String::from("x1;x2;note;kind\n");
    for line in train.lines().skip(1).filter(|l| l.ends_with(";small")) {
        let f: Vec<&str> = line.split(';').collect();
        let (a, b): (f32, f32) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        small.push_str(&format!("{};{};{};small\n", a * 10.0, b * 10.0 + 3.0, f[2]));
    }
    std::fs::write(dir.path().join("small.csv"), small).unwrap();
    let other = std::fs::read_to_string(&job)
        .unwrap()
        .replace("path = \"train.csv\"", "path = \"small.csv\"");
    let other = common::job(dir.path(), "other.toml", &other);
    let eval = || {
        ok(&[
            "eval",
            other.to_str().unwrap(),
            "--model",
            run.join("model.safetensors").to_str().unwrap(),
            "--json",
        ])
    };
    let e: serde_json::Value = serde_json::from_str(eval().trim()).unwrap();
    assert_eq!(e["accuracy"].as_f64().unwrap(), acc, "{e}");
    // Without data.json the other job's own (one-class) mapping cannot hold test.csv.
    std::fs::remove_file(run.join("data.json")).unwrap();
    let err = fails(&[
        "eval",
        other.to_str().unwrap(),
        "--model",
        run.join("model.safetensors").to_str().unwrap(),
    ]);
    assert!(err.contains("`big`"), "{err}");
}

#[test]
fn broken_tables_are_named_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.csv"), "a,b,y\n1,2,0\n3,oops,1\n").unwrap();
    std::fs::write(dir.path().join("short.csv"), "a,b,y\n1,2,0\n3,1\n").unwrap();
    let job_for = |file: &str, extra: &str| {
        job(
            dir.path(),
            &format!("{file}.toml"),
            &format!(
                "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"{file}\"\nlabel = \"y\"\n{extra}"
            ),
        )
    };
    let e = fails(&["train", job_for("bad.csv", "").to_str().unwrap()]);
    assert!(
        e.contains("bad.csv, line 3") && e.contains("`b`") && e.contains("`oops`"),
        "{e}"
    );
    let e = fails(&["train", job_for("short.csv", "").to_str().unwrap()]);
    assert!(
        e.contains("short.csv, line 3") && e.contains("2 fields"),
        "{e}"
    );
    let e = fails(&[
        "train",
        job_for("bad.csv", "features = [\"c\"]\n").to_str().unwrap(),
    ]);
    assert!(e.contains("no column `c`") && e.contains("a, b, y"), "{e}");
    let e = fails(&["train", job_for("missing.csv", "").to_str().unwrap()]);
    assert!(e.contains("missing.csv"), "{e}");
    // Job-file mistakes are caught before any data is read, with their line.
    let e = fails(&[
        "train",
        job_for("bad.csv", "test_fraction = 1.5\n")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        e.contains("data.test_fraction") && e.contains("line 6"),
        "{e}"
    );
    let j = job(
        dir.path(),
        "nolabel.toml",
        "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"bad.csv\"\n",
    );
    let e = fails(&["train", j.to_str().unwrap()]);
    assert!(e.contains("data.label"), "{e}");
    // A path without a table extension is an image folder, which has no columns.
    let j = job(
        dir.path(),
        "fmt.toml",
        "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"export.dat\"\nlabel = 0\n",
    );
    let e = fails(&["train", j.to_str().unwrap()]);
    assert!(
        e.contains("data.label") && e.contains("format = \"csv\""),
        "{e}"
    );
}

/// Mean and standard deviation of the Boston test split's target, from the file.
fn medv_spread() -> (f64, usize) {
    let text = std::fs::read_to_string(sklearn("boston_house_prices.csv")).unwrap();
    let v: Vec<f64> = text
        .lines()
        .skip(2)
        .filter_map(|l| l.rsplit(',').next()?.trim().parse().ok())
        .collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (var.sqrt(), v.len())
}

#[test]
fn sklearn_boston_regression_learns_and_two_workers_match_one() {
    let (sd, rows) = medv_spread();
    assert_eq!(rows, 506);
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str, epochs: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "train",
            &example("sklearn-boston.toml"),
            "--json",
            "-q",
            "--epochs",
            epochs,
            "--out",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.push(out.to_str().unwrap().into());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (summary(&ok(&args)), out)
    };
    let (s, one) = run("one", "40", &[]);
    let rmse = s["test_rmse"].as_f64().unwrap();
    let mae = s["test_mae"].as_f64().unwrap();
    // Predicting the mean scores RMSE ≈ the target's deviation (9.2); the MLP does
    // far better (a linear model gets ≈ 4.8).
    assert!(rmse < 0.6 * sd, "Boston RMSE {rmse} vs deviation {sd}");
    assert!(mae > 0.0 && mae < rmse, "MAE {mae} ≤ RMSE {rmse}");
    assert!(s["test_accuracy"].is_null(), "{s}");
    // metrics.jsonl's epoch lines carry RMSE and MAE instead of accuracy.
    let text = std::fs::read_to_string(one.join("metrics.jsonl")).unwrap();
    let epoch: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["kind"] == "epoch")
        .unwrap();
    assert!(
        (epoch["test_rmse"].as_f64().unwrap() - rmse).abs() < 1e-9,
        "{epoch}"
    );
    assert!(epoch.get("test_accuracy").is_none(), "{epoch}");
    // dlc eval reports the same errors in the target's units.
    let ev = ok(&[
        "eval",
        &example("sklearn-boston.toml"),
        "--model",
        one.join("model.safetensors").to_str().unwrap(),
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_str(ev.trim()).unwrap();
    assert!(
        (e["rmse"].as_f64().unwrap() - rmse).abs() < 1e-6,
        "{e} vs {s}"
    );
    // Two workers with the same global batch end with one worker's weights (over 5
    // epochs: |Δw| ≈ 4e-8; rounding differences of the all-reduce grow with Adam's
    // normalised steps once the gradients are tiny, to ≈ 6e-5 after 20 epochs).
    let (_, one) = run("one5", "5", &[]);
    let (_, two) = run("two5", "5", &["--workers", "2"]);
    let d = max_abs_diff(
        &weights(&one.join("model.safetensors")),
        &weights(&two.join("model.safetensors")),
    );
    assert!(d < 1e-4, "regression, 1 vs 2 workers: max |Δw| = {d}");
}

#[test]
fn regression_needs_numeric_labels_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("r.csv");
    std::fs::write(&csv, "a,b,y\n1,2,0.5\n3,4,1.5\n5,6,high\n7,8,2.5\n").unwrap();
    let j = job(
        dir.path(),
        "r.toml",
        &format!(
            "[model]\npreset = \"tabular-mlp\"\n[data]\npath = \"{}\"\nlabel = \"y\"\n\
             task = \"regression\"\n",
            csv.display()
        ),
    );
    let e = fails(&["train", j.to_str().unwrap()]);
    assert!(
        e.contains("r.csv") && e.contains("line 4") && e.contains("`high`"),
        "{e}"
    );
    let j = job(
        dir.path(),
        "i.toml",
        "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\ntask = \"regression\"\n",
    );
    let e = fails(&["train", j.to_str().unwrap()]);
    assert!(e.contains("data.task"), "{e}");
}

/// Rows of 6 token ids (0..20); the class says whether token 7 is among them.
fn token_csv(path: &Path, rows: usize, bad: Option<f32>) {
    let mut text = String::from("t0,t1,t2,t3,t4,t5,y\n");
    let mut x = 12345u64;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    for r in 0..rows {
        let mut ids: Vec<u64> = (0..6)
            .map(|_| {
                let t = next(19);
                t + u64::from(t >= 7) // never 7 by chance
            })
            .collect();
        let class = r % 2;
        if class == 1 {
            ids[next(6) as usize] = 7;
        }
        let mut line: Vec<String> = ids.iter().map(|t| t.to_string()).collect();
        if let (Some(v), true) = (bad, r == rows - 3) {
            line[2] = v.to_string();
        }
        text += &format!("{},{class}\n", line.join(","));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn token_columns_train_through_embedding_and_mean_pool() {
    let dir = tempfile::tempdir().unwrap();
    token_csv(&dir.path().join("tokens.csv"), 1200, None);
    let text = "[model]\nlayers = [\n\
                  { type = \"embedding\", vocab = 20, dim = 8 },\n\
                  { type = \"mean_pool\" },\n\
                  { type = \"dense\", units = 2 },\n]\n\
                [data]\npath = \"tokens.csv\"\nlabel = \"y\"\nstandardize = false\n\
                test_fraction = 0.25\n\
                [train]\nepochs = 4\nbatch_size = 32\noptimizer = \"adam\"\nlearning_rate = 0.02\n";
    let job = job(dir.path(), "tokens.toml", text);
    let run = dir.path().join("run");
    let s = train_to(&job, &run, &[]);
    // Token 7's learned vector shifts the mean: a linear read-out finds it.
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "token presence test accuracy {acc}: {s}");
    let w = weights(&run.join("model.safetensors"));
    let table = &w.iter().find(|(n, _)| n == "layers.0.weight").unwrap().1;
    assert_eq!(table.len(), 20 * 8);

    // Standardised token ids are refused before anything runs.
    let scaled = job.with_file_name("scaled.toml");
    std::fs::write(&scaled, text.replace("standardize = false\n", "")).unwrap();
    let e = fails(&["train", scaled.to_str().unwrap()]);
    assert!(
        e.contains("data.standardize") && e.contains("embedding"),
        "{e}"
    );

    // An id outside the vocabulary, or a fraction, is an error naming the value.
    for bad in [20.0, 3.5] {
        token_csv(&dir.path().join("tokens.csv"), 1200, Some(bad));
        let e = fails(&[
            "train",
            job.to_str().unwrap(),
            "--out",
            dir.path().join(format!("bad{bad}")).to_str().unwrap(),
        ]);
        assert!(
            e.contains(&format!("holds {bad}")) && e.contains("0 to 19"),
            "{e}"
        );
    }
}

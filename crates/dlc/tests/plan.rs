//! `dlc instances`, `dlc profile`, `dlc plan` end to end.

mod common;
use common::*;

const CNN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/fashion-mnist-cnn.toml"
);

#[test]
fn instances_lists_and_filters_the_catalog() {
    let all = ok(&["instances"]);
    for name in [
        "p2.xlarge",
        "p3.16xlarge",
        "g3.4xlarge",
        "p5.48xlarge",
        "c5.2xlarge",
    ] {
        assert!(all.contains(name), "{name} missing:\n{all}");
    }
    let v100 = ok(&["instances", "--gpu", "v100", "--json"]);
    let rows: Vec<serde_json::Value> = v100
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["p3.2xlarge", "p3.8xlarge", "p3.16xlarge"]);
    assert!(rows
        .iter()
        .all(|r| r["gpu_peak"]["fp32_tflops"].as_f64().unwrap() > 15.0));
    let e = fails(&["instances", "--gpu", "Z99"]);
    assert!(
        e.contains("no instance has GPU") && e.contains("V100"),
        "{e}"
    );
}

#[test]
fn a_bad_catalog_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cat = job(
        dir.path(),
        "cat.toml",
        "[[instances]]\nname = \"x\"\nprovider = \"p\"\ngpu = \"Q\"\ngpus = 1\nvcpus = 4\nmemory_gib = 16\n\
         network_gbps = 1.0\ngpu_link = \"none\"\ngpu_link_gbps = 0\nprice_per_hour = 1.0\n\
         price_date = \"2026-01\"\nregion = \"r\"\n",
    );
    let e = fails(&["instances", "--catalog", cat.to_str().unwrap()]);
    assert!(
        e.contains("cat.toml") && e.contains("`Q` is not in [gpus]"),
        "{e}"
    );
    let e = fails(&[
        "instances",
        "--catalog",
        dir.path().join("none.toml").to_str().unwrap(),
    ]);
    assert!(e.contains("cannot read catalog"), "{e}");
}

#[test]
fn plan_runs_from_a_fresh_profile_and_marks_the_frontier() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plan");
    let table = ok(&[
        "plan",
        CNN,
        "--out",
        out.to_str().unwrap(),
        "--max-nodes",
        "2",
        "--top",
        "200",
    ]);
    assert!(table.contains("Pareto-optimal"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with('*')),
        "a starred row:\n{table}"
    );
    // The profile it measured.
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("profile.json")).unwrap()).unwrap();
    assert!(p["samples_per_sec"].as_f64().unwrap() > 0.0);
    assert!(p["flops_per_sample"].as_f64().unwrap() > 1e6, "{p}");
    assert_eq!(
        p["grad_bytes"].as_u64().unwrap(),
        4 * p["params"].as_u64().unwrap()
    );
    // plan.csv: every candidate, Pareto rows not dominated by any other row.
    let csv = std::fs::read_to_string(out.join("plan.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert!(rows.len() > 40, "{} candidates", rows.len());
    let f = |r: &Vec<String>, i: usize| r[i].parse::<f64>().unwrap();
    let (time, cost, pareto) = (8, 9, 10);
    for r in rows.iter().filter(|r| r[pareto] == "true") {
        assert!(
            !rows
                .iter()
                .any(|o| f(o, cost) < f(r, cost) && f(o, time) < f(r, time)),
            "{r:?} is starred but dominated"
        );
    }
    // Sorted by cost.
    assert!(rows.windows(2).all(|w| f(&w[0], cost) <= f(&w[1], cost)));
    let png = std::fs::read(out.join("plan.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5000);
    let svg = std::fs::read_to_string(out.join("plan.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Pareto"));

    // Reusing the profile; a budget below the cheapest plan leaves nothing.
    let prof = out.join("profile.json");
    let cheapest = f(&rows[0], cost);
    let none = ok(&[
        "plan",
        CNN,
        "--profile",
        prof.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--budget",
        &format!("{}", cheapest / 2.0),
    ]);
    assert!(none.contains("no plan meets"), "{none}");
    let explained = ok(&[
        "plan",
        CNN,
        "--profile",
        prof.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--deadline",
        "10h",
        "--explain",
        "--top",
        "3",
    ]);
    assert!(
        explained.contains("compute =") && explained.contains("FLOP/s"),
        "{explained}"
    );
    let e = fails(&[
        "plan",
        CNN,
        "--profile",
        CNN,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("not a profile"), "{e}");
    let e = fails(&[
        "plan",
        CNN,
        "--profile",
        prof.to_str().unwrap(),
        "--deadline",
        "soon",
    ]);
    assert!(e.contains("not a duration"), "{e}");
}

#[test]
fn validate_predicts_and_measures_two_local_workers() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "v.toml", &quick_mlp(6000, 1, 128));
    let out = dir.path().join("v");
    let text = ok(&[
        "plan",
        job.to_str().unwrap(),
        "--validate",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        text.contains("predicted") && text.contains("measured"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("validate.json")).unwrap()).unwrap();
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k}: {v}"));
    for k in [
        "predicted_samples_per_sec",
        "measured_samples_per_sec",
        "compute_s",
        "allreduce_s",
    ] {
        assert!(f(k) > 0.0, "{k}: {v}");
    }
    // The prediction is the planner's own estimate: the profiled step's fixed part,
    // half the batch at the profiled per-sample cost, and the all-reduce measured
    // now, nothing else.
    let step = f("compute_s") + f("allreduce_s");
    assert!(
        (f("predicted_samples_per_sec") - 128.0 / step).abs() < 1e-6 * 128.0 / step,
        "{v}"
    );
    let (t0, full) = (
        f("step_overhead_s"),
        128.0 / f("one_worker_samples_per_sec"),
    );
    assert!(t0 >= 0.0 && t0 < full, "{v}");
    let half = t0 + (full - t0) / 2.0;
    assert!((f("compute_s") - half).abs() < 1e-3 * half, "{v}");
    let explain = v["explain"].as_str().unwrap();
    assert!(
        explain.contains("this machine × 1 (2 workers, local batch 64)"),
        "{v}"
    );
    // No bound on the error here: two workers on this machine's two cores share
    // them with the tests running beside this one. The model's accuracy is checked
    // where the network dominates (multi_host.rs, netns-scaling.sh).
    assert!(f("error").is_finite(), "{v}");
}

/// A measured job profile, written by hand so that the estimates are known exactly.
const JOB_PROFILE: &str = r#"{"job":"cnn","device":"cpu","cpu_model":"test","threads":1,"params":250000,
"grad_bytes":1000000,"flops_per_sample":1e7,"samples_per_sec":1000,"seconds_per_sample":0.001,
"achieved_flops":1e10,"data_bytes_per_sample":785,"batch_size":128,"train_samples":60000,"epochs":1,
"steps_measured":20}"#;

/// One CPU instance: 2 workers per node, 0.25 GB/s network.
const ONE_CPU: &str = "[[instances]]\nname = \"cpu4\"\nprovider = \"p\"\ngpus = 0\nvcpus = 4\n\
    memory_gib = 16\nnetwork_gbps = 0.25\ngpu_link = \"none\"\ngpu_link_gbps = 0\n\
    price_per_hour = 1.0\nprice_date = \"2026-12\"\nregion = \"r\"\n";

#[test]
fn measured_communication_profiles_replace_the_assumed_network_terms() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str, text: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (prof, cat) = (path("p.json", JOB_PROFILE), path("c.toml", ONE_CPU));
    let out = dir.path().join("plan");
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            CNN,
            "--profile",
            &prof,
            "--catalog",
            &cat,
            "--max-nodes",
            "2",
            "--explain",
            "--top",
            "10",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    // The ring row's explanation, for 1 or 2 nodes.
    let ring = |table: &str, nodes: usize| -> String {
        table
            .lines()
            .find(|l| l.contains(&format!("cpu4 × {nodes} (")) && l.contains("ring over"))
            .unwrap_or_else(|| panic!("no {nodes}-node ring row:\n{table}"))
            .to_string()
    };
    let assumed = plan(&[]);
    assert!(
        ring(&assumed, 1).contains("ring over 2.5000 GB/s"),
        "{assumed}"
    );
    assert!(
        ring(&assumed, 2).contains("ring over 0.2500 GB/s"),
        "{assumed}"
    );
    assert!(ring(&assumed, 2).contains("latency 0.00005s"), "{assumed}");
    assert!(
        assumed.contains("(assumed)") && assumed.contains("--comm-profile"),
        "{assumed}"
    );

    // Within a node 0.5 GB/s and 100 µs per hop; between nodes 300 µs and 80 % of
    // the link (0.02 of 0.025 GB/s): 2 nodes ring over 0.25 × 0.8 = 0.2 GB/s.
    let node = path(
        "node.json",
        r#"{"ranks":2,"hosts":1,"bandwidth_gbps":0.5,"latency_s":0.0001,"points":[],"fit_error":0.01}"#,
    );
    let net = path(
        "net.json",
        r#"{"ranks":3,"hosts":3,"bandwidth_gbps":0.02,"latency_s":0.0003,"link_gbps":0.025,"points":[],"fit_error":0.02}"#,
    );
    let measured = plan(&["--comm-profile", &node, "--comm-profile", &net]);
    let one = ring(&measured, 1);
    assert!(
        one.contains("ring over 0.5000 GB/s") && one.contains("latency 0.0001s"),
        "{one}"
    );
    let two = ring(&measured, 2);
    assert!(
        two.contains("ring over 0.2000 GB/s") && two.contains("latency 0.0003s"),
        "{two}"
    );
    // 4 workers: comm = 1.5 × 1 MB ÷ 0.2 GB/s + 6 × 300 µs = 9.3 ms.
    assert!(two.contains("comm = 0.0093s"), "{two}");
    assert!(
        measured.contains("within a node: measured")
            && measured.contains("between nodes: measured"),
        "{measured}"
    );
    assert!(!measured.contains("(assumed)"), "{measured}");

    let e = fails(&["plan", CNN, "--profile", &prof, "--comm-profile", &prof]);
    assert!(e.contains("not a communication profile"), "{e}");
}

#[test]
fn a_gpu_profile_prices_only_gpu_instances_at_the_efficiency_it_measured() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plan");
    // Measured on a V100 (15.7 TFLOP/s f32 in the built-in catalog): 1e7 FLOP per
    // sample at 1.57e12 FLOP/s = efficiency 0.1; no cpu_model, as a GPU profile may be.
    let gpu_profile = JOB_PROFILE
        .replace(
            r#""device":"cpu","cpu_model":"test""#,
            r#""device":"cuda:0","gpu":"Tesla V100-SXM2-16GB""#,
        )
        .replace(
            r#""samples_per_sec":1000,"seconds_per_sample":0.001"#,
            r#""samples_per_sec":157000,"seconds_per_sample":6.369426751592357e-6"#,
        );
    assert!(gpu_profile.contains("cuda:0"));
    let prof = dir.path().join("gpu.json");
    std::fs::write(&prof, gpu_profile).unwrap();
    let table = ok(&[
        "plan",
        CNN,
        "--profile",
        prof.to_str().unwrap(),
        "--max-nodes",
        "1",
        "--explain",
        "--top",
        "500",
        "--out",
        out.to_str().unwrap(),
    ]);
    let csv = std::fs::read_to_string(out.join("plan.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(!rows.is_empty());
    for r in &rows {
        assert!(
            !r.starts_with("c5.") && !r.starts_with("c6i."),
            "a CPU row: {r}"
        );
    }
    // Every GPU is priced at the V100's measured efficiency, not the assumed 0.2.
    let p3 = table
        .lines()
        .find(|l| l.contains("p3.2xlarge × 1 (") && l.contains("ring over"))
        .unwrap_or_else(|| panic!("no p3.2xlarge row:\n{table}"));
    assert!(p3.contains("efficiency 0.100 (measured on V100)"), "{p3}");
    // Multi-GPU rows all-reduce on the host and copy over PCIe, not over NVLink.
    let p3x8 = table
        .lines()
        .find(|l| l.contains("p3.16xlarge × 1 (") && l.contains("ring over"))
        .unwrap_or_else(|| panic!("no p3.16xlarge row:\n{table}"));
    assert!(
        p3x8.contains("ring over 2.5000 GB/s") && p3x8.contains("GPU↔host copies"),
        "{p3x8}"
    );
    assert!(
        table.contains("efficiency measured on Tesla V100-SXM2-16GB (V100)"),
        "{table}"
    );
}

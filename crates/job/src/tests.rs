use super::*;

const GOOD: &str = r#"
name = "t"
[model]
preset = "mlp"
[data]
dataset = "fashion-mnist"
limit = 1000
[train]
epochs = 2
optimizer = "sgd"
learning_rate = 0.05
"#;

fn err(text: &str) -> String {
    JobSpec::from_toml_str(text, "job.toml")
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn parses_good_job_with_defaults() {
    let job = JobSpec::from_toml_str(GOOD, "job.toml").unwrap();
    assert_eq!(job.model.preset, Some(Preset::Mlp));
    assert_eq!(job.train.epochs, 2);
    assert_eq!(job.train.batch_size, 128);
    assert_eq!(job.train.optimizer, OptimizerKind::Sgd);
    assert_eq!(job.data.limit, Some(1000));
    // Round trip through the serialised form.
    let again = JobSpec::from_toml_str(&job.to_toml(), "again").unwrap();
    assert_eq!(again, job);
}

#[test]
fn parses_layer_lists() {
    let job = JobSpec::from_toml_str(
        r#"
[model]
layers = [
  { type = "conv2d", filters = 8, kernel = 3, padding = "same" },
  { type = "batchnorm" },
  { type = "relu" },
  { type = "maxpool2d" },
  { type = "flatten" },
  { type = "dropout", rate = 0.25 },
  { type = "dense", units = 10 },
]
[data]
dataset = "fashion-mnist"
"#,
        "j",
    )
    .unwrap();
    let layers = job.model.layers.unwrap();
    assert_eq!(layers.len(), 7);
    assert_eq!(
        layers[0],
        LayerSpec::Conv2d {
            filters: 8,
            kernel: 3,
            stride: 1,
            padding: Padding::Same
        }
    );
    assert_eq!(
        layers[3],
        LayerSpec::Maxpool2d {
            size: 2,
            stride: None
        }
    );
}

#[test]
fn residual_blocks_parse_from_arrays_of_tables_and_empty_ones_are_refused() {
    let text = r#"
[model]
[[model.layers]]
type = "conv2d"
filters = 8
kernel = 3
[[model.layers]]
type = "residual"
[[model.layers.layers]]
type = "conv2d"
filters = 16
kernel = 3
stride = 2
padding = "same"
[[model.layers.layers]]
type = "relu"
[[model.layers]]
type = "global_avgpool"
[[model.layers]]
type = "dense"
units = 10
[data]
dataset = "fashion-mnist"
"#;
    let job = JobSpec::from_toml_str(text, "j").unwrap();
    let layers = job.model.layers.unwrap();
    assert_eq!(layers.len(), 4);
    let LayerSpec::Residual { layers: block } = &layers[1] else {
        panic!("{:?}", layers[1]);
    };
    assert_eq!(block.len(), 2);
    assert_eq!(block[1], LayerSpec::Relu);
    let e = err(&text.replace("stride = 2", "stride = 0"));
    assert!(
        e.contains("model.layers[1].layers[0]") && e.contains("stride"),
        "{e}"
    );
    let e = err(r#"
[model]
layers = [{ type = "residual", layers = [] }, { type = "dense", units = 10 }]
[data]
dataset = "fashion-mnist"
"#);
    assert!(
        e.contains("model.layers[0]") && e.contains("residual `layers` is empty"),
        "{e}"
    );
}

#[test]
fn unknown_key_names_key_line_and_allowed() {
    let e = err(&GOOD.replace("epochs = 2", "epochs = 2\nepoch = 3"));
    assert!(e.contains("epoch"), "{e}");
    assert!(e.contains("line 10"), "{e}");
    assert!(e.contains("learning_rate"), "lists allowed keys: {e}");
}

#[test]
fn unknown_section_is_rejected() {
    let e = err(&format!("{GOOD}\n[trian]\nx = 1\n"));
    assert!(e.contains("trian"), "{e}");
}

#[test]
fn bad_enum_value_lists_choices() {
    let e = err(&GOOD.replace("\"sgd\"", "\"rmsprop\""));
    assert!(e.contains("rmsprop") && e.contains("adamw"), "{e}");
    assert!(e.contains("line 10"), "{e}");
}

#[test]
fn wrong_type_is_rejected() {
    let e = err(&GOOD.replace("epochs = 2", "epochs = \"two\""));
    assert!(e.contains("line 9"), "{e}");
}

#[test]
fn out_of_range_values_give_key_and_line() {
    let e = err(&GOOD.replace("learning_rate = 0.05", "learning_rate = -1.0"));
    assert!(
        e.contains("train.learning_rate") && e.contains("line 11"),
        "{e}"
    );
    assert!(e.contains("> 0"), "{e}");
    let e = err(&GOOD.replace("epochs = 2", "epochs = 0"));
    assert!(e.contains("train.epochs") && e.contains("line 9"), "{e}");
}

#[test]
fn bad_layer_and_model_choices() {
    let e = err(&GOOD.replace(
        "preset = \"mlp\"",
        "layers = [{ type = \"dense\", units = 10 },\n  { type = \"dropout\", rate = 1.5 }]",
    ));
    assert!(e.contains("model.layers[1]") && e.contains("line 5"), "{e}");
    let e = err(&GOOD.replace(
        "preset = \"mlp\"",
        "layers = [{ type = \"dense\", unitz = 10 }]",
    ));
    assert!(e.contains("unitz"), "{e}");
    let e = err(&GOOD.replace("preset = \"mlp\"", "layers = [{ type = \"lstm\" }]"));
    assert!(e.contains("lstm") && e.contains("conv2d"), "{e}");
    let e = err(&GOOD.replace("preset = \"mlp\"", ""));
    assert!(e.contains("preset"), "{e}");
}

#[test]
fn data_section_must_be_consistent() {
    let e = err(&GOOD.replace("fashion-mnist", "cifar"));
    assert!(e.contains("cifar") && e.contains("fashion-mnist"), "{e}");
    let e = err(&GOOD.replace("dataset = \"fashion-mnist\"", "train_images = \"x\""));
    assert!(e.contains("all four"), "{e}");
}

#[test]
fn malformed_toml_is_rejected() {
    let e = err("[model\npreset=");
    assert!(e.contains("job.toml"), "{e}");
}

#[test]
fn from_file_resolves_paths_and_name() {
    let dir = std::env::temp_dir().join(format!("dlc-job-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("my-job.toml");
    std::fs::write(
        &path,
        "[model]\npreset = \"lenet\"\n[data]\ntrain_images = \"a\"\ntrain_labels = \"b\"\n\
         test_images = \"/abs/c\"\ntest_labels = \"d\"\n",
    )
    .unwrap();
    let job = JobSpec::from_file(&path).unwrap();
    assert_eq!(job.display_name(), "my-job");
    assert_eq!(
        job.data.train_images.as_deref(),
        Some(dir.join("a").as_path())
    );
    assert_eq!(
        job.data.test_images.as_deref(),
        Some(std::path::Path::new("/abs/c"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(
        JobSpec::from_file(dir.join("missing.toml")),
        Err(JobError::Io { .. })
    ));
}

#[test]
fn learning_rate_schedules() {
    assert_eq!(LrSchedule::Constant.rate(0.1, 50, 100, 0), 0.1);
    assert!((LrSchedule::Cosine.rate(0.1, 0, 100, 0) - 0.1).abs() < 1e-12);
    assert!((LrSchedule::Cosine.rate(0.1, 50, 100, 0) - 0.05).abs() < 1e-12);
    assert!(LrSchedule::Cosine.rate(0.1, 100, 100, 0).abs() < 1e-12);
    assert!((LrSchedule::Cosine.rate(0.1, 0, 100, 10) - 0.01).abs() < 1e-12);
    assert!((LrSchedule::Cosine.rate(0.1, 10, 100, 10) - 0.1).abs() < 1e-12);
}

#[test]
fn device_choices() {
    let job = JobSpec::from_toml_str(
        &GOOD.replace("epochs = 2", "epochs = 2\ndevice = \"cuda:1\""),
        "j",
    )
    .unwrap();
    assert_eq!(job.train.device, DeviceSpec::Cuda(Some(1)));
    assert_eq!(
        JobSpec::from_toml_str(GOOD, "j").unwrap().train.device,
        DeviceSpec::Auto
    );
    let e = err(&GOOD.replace("epochs = 2", "epochs = 2\ndevice = \"tpu\""));
    assert!(
        e.contains("tpu") && e.contains("cuda:N") && e.contains("line 10"),
        "{e}"
    );
    assert_eq!("cpu".parse::<DeviceSpec>().unwrap().to_string(), "cpu");
    assert_eq!(
        "cuda".parse::<DeviceSpec>().unwrap(),
        DeviceSpec::Cuda(None)
    );
}

#[test]
fn durations() {
    use crate::parse_duration;
    assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
    assert_eq!(parse_duration("45m").unwrap().as_secs(), 2700);
    assert_eq!(parse_duration("1.5h").unwrap().as_secs(), 5400);
    assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("-1h").is_err());
    assert!(parse_duration("0s").is_err());
}

#[test]
fn resources_section() {
    let base = "[model]\npreset = \"mlp\"\n[data]\ndataset = \"fashion-mnist\"\n";
    let job = JobSpec::from_toml_str(
        &format!("{base}[resources]\nmanager = \"slurm\"\nnodes = 2\nworkers_per_node = 4\ntime_limit = \"2h\"\npartition = \"gpu\"\n"),
        "j.toml",
    )
    .unwrap();
    assert_eq!(job.resources.manager, crate::Manager::Slurm);
    assert_eq!(
        (job.resources.nodes, job.resources.workers_per_node),
        (2, Some(4))
    );
    let e = JobSpec::from_toml_str(
        &format!("{base}[resources]\nmanager = \"mesos\"\n"),
        "j.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("mesos") && e.contains("slurm"), "{e}");
    let e = JobSpec::from_toml_str(
        &format!("{base}[resources]\ntime_limit = \"soon\"\n"),
        "j.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("resources.time_limit") && e.contains("line 6"),
        "{e}"
    );
    let e = JobSpec::from_toml_str(&format!("{base}[resources]\nnodes = 0\n"), "j.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("resources.nodes"), "{e}");
}

#[test]
fn command_jobs_carry_argv_framework_env_and_restarts() {
    let text = r#"
name = "ddp"
[command]
argv = ["python", "train.py", "--lr", "0.1"]
framework = "torch"
env = { NCCL_DEBUG = "INFO" }
max_restarts = 2
[distributed]
workers = 4
[resources]
manager = "slurm"
"#;
    let job = JobSpec::from_toml_str(text, "job.toml").unwrap();
    let c = job.command.as_ref().unwrap();
    assert_eq!(c.argv, ["python", "train.py", "--lr", "0.1"]);
    assert_eq!(c.framework, Framework::Torch);
    assert_eq!(c.env["NCCL_DEBUG"], "INFO");
    assert_eq!((c.max_restarts, c.join_timeout_s), (2, 60));
    assert!(job.model.is_empty() && job.data.is_empty());
    let again = JobSpec::from_toml_str(&job.to_toml(), "again").unwrap();
    assert_eq!(again, job);
    // Defaults: framework auto.
    let job = JobSpec::from_toml_str("[command]\nargv = [\"./run.sh\"]\n", "j").unwrap();
    assert_eq!(job.command.unwrap().framework, Framework::Auto);
}

#[test]
fn command_jobs_reject_bad_tables() {
    let e = err("[command]\nargv = []\n");
    assert!(e.contains("command.argv") && e.contains("line 2"), "{e}");
    let e = err("[command]\nargv = [\"x\"]\nframework = \"caffe\"\n");
    assert!(e.contains("unknown framework `caffe`"), "{e}");
    let e = err("[command]\nargv = [\"x\"]\nflavour = 1\n");
    assert!(e.contains("flavour"), "{e}");
    let e = err("[command]\nargv = [\"x\"]\nenv = { \"\" = \"v\" }\n");
    assert!(e.contains("command.env"), "{e}");
    let e = err("[command]\nargv = [\"x\"]\njoin_timeout_s = 0\n");
    assert!(e.contains("command.join_timeout_s"), "{e}");
    let e = err(&format!("{GOOD}\n[command]\nargv = [\"x\"]\n"));
    assert!(e.contains("remove [model] and [data]"), "{e}");
    // Neither [model] nor [command]: the model error, as before.
    let e = err("[data]\ndataset = \"fashion-mnist\"\n");
    assert!(e.contains("preset"), "{e}");
}

#[test]
fn command_workdir_is_relative_to_the_job_file() {
    let dir = std::env::temp_dir().join(format!("dlc-job-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("j.toml");
    std::fs::write(&p, "[command]\nargv = [\"python\", \"t.py\"]\n").unwrap();
    let job = JobSpec::from_file(&p).unwrap();
    assert_eq!(job.command.unwrap().workdir.as_deref(), Some(dir.as_path()));
    std::fs::write(&p, "[command]\nargv = [\"x\"]\nworkdir = \"sub\"\n").unwrap();
    let job = JobSpec::from_file(&p).unwrap();
    assert_eq!(job.command.unwrap().workdir, Some(dir.join("sub")));
    assert_eq!(JobSpec::from_file(&p).unwrap().name.as_deref(), Some("j"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn embeddings_need_unscaled_ids_from_tables_only() {
    let model = "[model]\nlayers = [{ type = \"embedding\", vocab = 9, dim = 2 }, \
                 { type = \"mean_pool\" }, { type = \"dense\", units = 2 }]\n";
    let e = err(&format!("{model}[data]\npath = \"t.csv\"\nlabel = \"y\"\n"));
    assert!(
        e.contains("data.standardize") && e.contains("embedding"),
        "{e}"
    );
    let ok = format!("{model}[data]\npath = \"t.csv\"\nlabel = \"y\"\nstandardize = false\n");
    JobSpec::from_toml_str(&ok, "j").unwrap();
    // Images are not standardised at all: the shape check explains the misfit instead.
    JobSpec::from_toml_str(
        &format!("{model}[data]\ndataset = \"fashion-mnist\"\n"),
        "j",
    )
    .unwrap();
}

#[test]
fn join_and_op_timeouts_default_to_timeout_s_and_are_bounded() {
    let j = JobSpec::from_toml_str(
        &format!("{GOOD}[distributed]\nworkers = 2\ntimeout_s = 45\nop_timeout_s = 5\n"),
        "job.toml",
    )
    .unwrap();
    let d = &j.distributed;
    assert_eq!(d.join_timeout(), std::time::Duration::from_secs(45));
    assert_eq!(d.op_timeout(), std::time::Duration::from_secs(5));
    for key in ["timeout_s", "join_timeout_s", "op_timeout_s"] {
        // A huge value would overflow `Instant + Duration`; it is refused instead.
        let e = err(&format!(
            "{GOOD}[distributed]\n{key} = 9223372036854775807\n"
        ));
        assert!(e.contains(&format!("distributed.{key}")), "{e}");
        let e = err(&format!("{GOOD}[distributed]\n{key} = 0\n"));
        assert!(e.contains("1 to 86400"), "{e}");
    }
}

#[test]
fn checkpoint_every_takes_steps_or_a_period_and_restarts_check_their_bounds() {
    let with = |extra: &str| JobSpec::from_toml_str(&format!("{GOOD}{extra}"), "job.toml");
    for (text, want) in [
        ("\"500 steps\"", CheckpointEvery::Steps(500)),
        ("\"1 step\"", CheckpointEvery::Steps(1)),
        ("200", CheckpointEvery::Steps(200)),
        (
            "\"10m\"",
            CheckpointEvery::Period(std::time::Duration::from_secs(600)),
        ),
        (
            "\"90s\"",
            CheckpointEvery::Period(std::time::Duration::from_secs(90)),
        ),
    ] {
        let job = with(&format!("checkpoint_every = {text}\n")).unwrap();
        assert_eq!(job.train.checkpoint_every, Some(want), "{text}");
        // Written into run directories and read back the same.
        let again = JobSpec::from_toml_str(&job.to_toml(), "again").unwrap();
        assert_eq!(again.train.checkpoint_every, Some(want), "{text}");
    }
    for bad in ["\"0 steps\"", "\"often\"", "-3", "true"] {
        let e = with(&format!("checkpoint_every = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("checkpoint_every"), "{bad}: {e}");
    }
    let d = "[distributed]\nworkers = 3\n";
    let job = with(&format!("{d}max_restarts = 2\nmin_workers = 2\n")).unwrap();
    assert_eq!(
        (job.distributed.max_restarts, job.distributed.min_workers),
        (2, Some(2))
    );
    let e = with(&format!("{d}max_restarts = 2\nmin_workers = 4\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("distributed.min_workers") && e.contains("1 to distributed.workers (3)"),
        "{e}"
    );
    let e = with(&format!("{d}min_workers = 2\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs distributed.max_restarts"), "{e}");
}

#[test]
fn the_link_transport_is_auto_or_tcp() {
    let d = format!("{GOOD}[distributed]\nworkers = 2\n");
    let job = JobSpec::from_toml_str(&d, "t.toml").unwrap();
    assert_eq!(job.distributed.transport, crate::Transport::Auto);
    let job = JobSpec::from_toml_str(&format!("{d}transport = \"tcp\"\n"), "t.toml").unwrap();
    assert_eq!(job.distributed.transport, crate::Transport::Tcp);
    let e = JobSpec::from_toml_str(&format!("{d}transport = \"rdma\"\n"), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("transport") && e.contains("tcp"), "{e}");
}

#[test]
fn tcp_streams_default_to_one_and_go_up_to_16() {
    let d = format!("{GOOD}[distributed]\nworkers = 2\n");
    let job = JobSpec::from_toml_str(&d, "t.toml").unwrap();
    assert_eq!(job.distributed.tcp_streams, 1);
    assert!(
        !job.to_toml().contains("tcp_streams"),
        "default not written"
    );
    let job = JobSpec::from_toml_str(&format!("{d}tcp_streams = 4\n"), "t.toml").unwrap();
    assert_eq!(job.distributed.tcp_streams, 4);
    let again = JobSpec::from_toml_str(&job.to_toml(), "t.toml").unwrap();
    assert_eq!(again.distributed.tcp_streams, 4);
    for bad in ["0", "17"] {
        let e = JobSpec::from_toml_str(&format!("{d}tcp_streams = {bad}\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("distributed.tcp_streams"), "{bad}: {e}");
    }
}

#[test]
fn gradient_buckets_default_to_4_mib_and_must_be_positive() {
    let d = format!("{GOOD}[distributed]\nworkers = 2\n");
    let job = JobSpec::from_toml_str(&d, "t.toml").unwrap();
    assert_eq!(job.distributed.bucket_bytes(), 4 << 20);
    assert!(!job.to_toml().contains("bucket_mib"), "default not written");
    let job = JobSpec::from_toml_str(&format!("{d}bucket_mib = 0.25\n"), "t.toml").unwrap();
    assert_eq!(job.distributed.bucket_bytes(), 256 << 10);
    let again = JobSpec::from_toml_str(&job.to_toml(), "t.toml").unwrap();
    assert_eq!(again.distributed.bucket_bytes(), 256 << 10);
    for bad in ["0", "-1", "nan"] {
        let e = JobSpec::from_toml_str(&format!("{d}bucket_mib = {bad}\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("distributed.bucket_mib"), "{bad}: {e}");
    }
}

#[test]
fn gradient_compression_is_none_bf16_or_fp16_and_ring_only() {
    let d = format!("{GOOD}[distributed]\nworkers = 2\n");
    let job = JobSpec::from_toml_str(&d, "t.toml").unwrap();
    assert_eq!(job.distributed.compression, crate::Compression::None);
    assert!(
        !job.to_toml().contains("compression"),
        "default not written"
    );
    let job = JobSpec::from_toml_str(&format!("{d}compression = \"bf16\"\n"), "t.toml").unwrap();
    assert_eq!(job.distributed.compression, crate::Compression::Bf16);
    let again = JobSpec::from_toml_str(&job.to_toml(), "t.toml").unwrap();
    assert_eq!(again.distributed.compression, crate::Compression::Bf16);
    let e = JobSpec::from_toml_str(&format!("{d}compression = \"int8\"\n"), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("compression") && e.contains("bf16"), "{e}");
    let e = JobSpec::from_toml_str(
        &format!("{d}compression = \"fp16\"\nstrategy = \"ps\"\n"),
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("distributed.compression") && e.contains("ring"),
        "{e}"
    );
}

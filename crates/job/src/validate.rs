//! Range and consistency checks that the TOML types cannot express.

use crate::spec::LayerSpec;
use crate::JobSpec;

type Problem = (String, String);

fn bad(key: &str, message: impl Into<String>) -> Result<(), Problem> {
    Err((key.to_string(), message.into()))
}

/// The longest deadline a job file may set (one day): longer ones are mistakes, and
/// `Instant + Duration` must not overflow.
const MAX_TIMEOUT_S: u64 = 86_400;
/// Checks every layer of `layers` (and of residual blocks inside it); `key` is the
/// list's dotted key.
fn check_layers(layers: &[LayerSpec], key: &str) -> Result<(), Problem> {
    for (i, layer) in layers.iter().enumerate() {
        let key = format!("{key}[{i}]");
        match *layer {
            LayerSpec::Dense { units: 0 } => bad(&key, "dense `units` must be at least 1")?,
            LayerSpec::Conv2d {
                filters,
                kernel,
                stride,
                ..
            } if filters == 0 || kernel == 0 || stride == 0 => bad(
                &key,
                "conv2d `filters`, `kernel` and `stride` must be at least 1",
            )?,
            LayerSpec::Maxpool2d { size, stride } | LayerSpec::Avgpool2d { size, stride }
                if size == 0 || stride == Some(0) =>
            {
                bad(&key, "pooling `size` and `stride` must be at least 1")?
            }
            LayerSpec::Dropout { rate } if !(0.0..1.0).contains(&rate) => bad(
                &key,
                format!("dropout `rate` is {rate}; allowed: 0 <= rate < 1"),
            )?,
            LayerSpec::Embedding { vocab, dim } if vocab == 0 || dim == 0 => bad(
                &key,
                "embedding `vocab` and `dim` must be at least 1",
            )?,
            LayerSpec::Residual { ref layers } if layers.is_empty() => bad(
                &key,
                "residual `layers` is empty; give the block's layers (its input is added to their output)",
            )?,
            LayerSpec::Residual { ref layers } => check_layers(layers, &format!("{key}.layers"))?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks a parsed job; on failure returns the dotted key and what is allowed.
pub(crate) fn check(job: &JobSpec) -> Result<(), Problem> {
    if let Some(c) = &job.command {
        return check_command(job, c);
    }
    let m = &job.model;
    match (&m.preset, &m.layers) {
        (Some(_), Some(_)) => bad("model", "has both `preset` and `layers`; give one")?,
        (None, None) => bad(
            "model",
            "needs `preset = \"mlp\"`, `\"lenet\"`, `\"resnet-small\"` or `\"tabular-mlp\"`, or a \
             `layers` list",
        )?,
        (None, Some(layers)) if layers.is_empty() => {
            bad("model.layers", "is empty; give at least one layer")?
        }
        _ => {}
    }
    if let Some(layers) = &m.layers {
        check_layers(layers, "model.layers")?;
        let d = &job.data;
        let table = matches!(
            d.path_format(),
            Some(crate::DataFormat::Csv | crate::DataFormat::Parquet)
        ) && d.image_column.is_none();
        if matches!(layers.first(), Some(LayerSpec::Embedding { .. }))
            && table
            && d.standardize != Some(false)
        {
            bad(
                "data.standardize",
                "must be false when the model starts with `embedding`: its inputs are token \
                 ids, which standardising would turn into fractions",
            )?;
        }
    }

    let d = &job.data;
    if d.path.is_some() || d.format.is_some_and(|f| f != crate::DataFormat::Idx) {
        check_table(d)?;
    } else {
        check_idx(d)?;
    }
    if d.limit == Some(0) {
        bad("data.limit", "must be at least 1")?;
    }
    if d.test_limit == Some(0) {
        bad("data.test_limit", "must be at least 1")?;
    }
    if d.random_crop.is_some_and(|p| p > 64) {
        bad(
            "data.random_crop",
            "is the padding in pixels; allowed: 0 to 64",
        )?;
    }
    check_train(job)
}

/// Checks a `[data]` table that reads `path`: a CSV or Parquet file or an image folder.
fn check_table(d: &crate::DataSpec) -> Result<(), Problem> {
    let Some(path) = &d.path else {
        return bad(
            "data.path",
            "is missing: this `format` reads the file or folder `path`",
        );
    };
    if d.dataset.is_some() || d.train_images.is_some() || d.train_labels.is_some() {
        bad(
            "data.path",
            "is set together with `dataset` or IDX paths; give one kind of data",
        )?;
    }
    let format = d.path_format();
    if d.format == Some(crate::DataFormat::Idx) {
        bad(
            "data.format",
            "is `idx`, which reads train_images/train_labels/test_images/test_labels, not `path`",
        )?;
    }
    let table = matches!(
        format,
        Some(crate::DataFormat::Csv | crate::DataFormat::Parquet)
    );
    if table && d.label.is_none() {
        bad(
            "data.label",
            "is missing: name the class column (`label = \"species\"`, or its 0-based \
             index, `label = 4`, when there is no header)",
        )?;
    }
    if d.image_column.is_some() {
        if format != Some(crate::DataFormat::Parquet) {
            bad(
                "data.image_column",
                "is for Parquet tables of encoded images; an image folder's images are its \
                 files, a CSV table holds numbers",
            )?;
        }
        refuse(
            &[
                ("data.features", d.features.is_some()),
                ("data.standardize", d.standardize.is_some()),
                ("data.stream", d.stream.is_some()),
            ],
            "is for numeric tables; with `image_column` the features are the image's pixels",
        )?;
        refuse(
            &regression_key(d),
            "is `regression`; with `image_column` the label is a class",
        )?;
    }
    let images = format == Some(crate::DataFormat::Images) || d.image_column.is_some();
    if format == Some(crate::DataFormat::Images) {
        refuse(
            &regression_key(d),
            "is `regression`, which predicts a number from a table's columns; an image \
             folder's label is its class",
        )?;
        refuse(
            &table_keys(d),
            &format!(
                "is for tables, but `{}` is read as an image folder (class = sub-folder); \
                 for a table say `format = \"csv\"` or \"parquet\"",
                path.display()
            ),
        )?;
    } else if !images {
        refuse(
            &folder_keys(d),
            "is for images (an image folder, or a Parquet `image_column`)",
        )?;
        refuse(
            &augment_keys(d),
            "is an image augmentation; tables have no pixels (unless `image_column` names \
             a column of images)",
        )?;
    }
    if images {
        if d.channels.is_some_and(|c| c != 1 && c != 3) {
            bad("data.channels", "must be 1 (grey) or 3 (RGB)")?;
        }
        if d.image_size
            .is_some_and(|[h, w]| h == 0 || w == 0 || h > 4096 || w > 4096)
        {
            bad("data.image_size", "must be [height, width], each 1 to 4096")?;
        }
    }
    if format == Some(crate::DataFormat::Parquet)
        && (d.header.is_some() || d.skip_rows.is_some() || d.delimiter.is_some())
    {
        bad(
            "data.path",
            "is a Parquet file: `header`, `skip_rows` and `delimiter` are for CSV",
        )?;
    }
    match (&d.test_path, d.test_fraction) {
        (Some(_), Some(_)) => bad(
            "data.test_fraction",
            "is set together with `test_path`; give one",
        )?,
        (None, Some(f)) if !(f > 0.0 && f < 1.0) => bad(
            "data.test_fraction",
            format!("is {f}; allowed: 0 < test_fraction < 1"),
        )?,
        _ => {}
    }
    if let Some(dl) = &d.delimiter {
        if dl.len() != 1 {
            bad(
                "data.delimiter",
                format!("is `{dl}`; allowed: one ASCII character such as `,`, `;` or `\\t`"),
            )?;
        }
    }
    if d.features.as_ref().is_some_and(|f| f.is_empty()) {
        bad(
            "data.features",
            "is empty; omit it to use every column but the label",
        )?;
    }
    check_stream(d, format)
}

/// Checks `stream` and `shuffle_buffer` (path data).
fn check_stream(d: &crate::DataSpec, format: Option<crate::DataFormat>) -> Result<(), Problem> {
    use crate::DataFormat::{Csv, Images, Parquet};
    match (d.stream == Some(true), format) {
        (true, Some(Parquet | Csv)) => {
            if d.limit.is_some() {
                bad(
                    "data.limit",
                    "cannot cut a streamed file; remove `limit` (or `stream`)",
                )?;
            }
        }
        (true, Some(Images)) => {
            if d.shuffle_buffer.is_some() {
                bad(
                    "data.shuffle_buffer",
                    "is for streamed tables; a streamed image folder keeps the \
                     exact global permutation (only file names are held in memory)",
                )?;
            }
        }
        (true, _) => bad(
            "data.stream",
            "works on Parquet and CSV tables (workers share out their row groups or \
             blocks of rows) and image folders, not on IDX files; remove `stream` to \
             load the data into memory",
        )?,
        (false, _) => {
            if d.shuffle_buffer.is_some() {
                bad(
                    "data.shuffle_buffer",
                    "is for streamed data (`stream = true`); in memory every epoch is an \
                     exact permutation",
                )?;
            }
        }
    }
    if d.shuffle_buffer == Some(0) {
        bad(
            "data.shuffle_buffer",
            "must be at least 1 (1: rows in each row group's order)",
        )?;
    }
    Ok(())
}

/// `[data]` keys only tables read, each with whether it is set.
fn table_keys(d: &crate::DataSpec) -> [(&'static str, bool); 7] {
    [
        ("data.image_column", d.image_column.is_some()),
        ("data.label", d.label.is_some()),
        ("data.features", d.features.is_some()),
        ("data.header", d.header.is_some()),
        ("data.skip_rows", d.skip_rows.is_some()),
        ("data.delimiter", d.delimiter.is_some()),
        ("data.standardize", d.standardize.is_some()),
    ]
}

/// `[data]` keys only tables read, beyond [`table_keys`] (which images refuse).
fn regression_key(d: &crate::DataSpec) -> [(&'static str, bool); 1] {
    [("data.task", d.task == Some(crate::Task::Regression))]
}

/// `[data]` keys only image folders read.
fn folder_keys(d: &crate::DataSpec) -> [(&'static str, bool); 2] {
    [
        ("data.image_size", d.image_size.is_some()),
        ("data.channels", d.channels.is_some()),
    ]
}

/// `[data]` keys of image augmentation (image folders and IDX).
fn augment_keys(d: &crate::DataSpec) -> [(&'static str, bool); 2] {
    [
        ("data.random_crop", d.random_crop.is_some()),
        ("data.random_flip", d.random_flip.is_some()),
    ]
}

/// Fails on the first of `keys` that is set, with `message`.
fn refuse(keys: &[(&str, bool)], message: &str) -> Result<(), Problem> {
    match keys.iter().find(|(_, set)| *set) {
        Some((key, _)) => bad(key, message),
        None => Ok(()),
    }
}

/// Checks a `[data]` table of IDX files (named or explicit).
fn check_idx(d: &crate::DataSpec) -> Result<(), Problem> {
    check_stream(d, Some(crate::DataFormat::Idx))?;
    refuse(
        &table_keys(d),
        "is for tables (`path = \"data.csv\"`); IDX data has no columns",
    )?;
    refuse(
        &regression_key(d),
        "is `regression`, which reads tables (`path = \"data.csv\"`); IDX labels are classes",
    )?;
    refuse(
        &[
            ("data.test_path", d.test_path.is_some()),
            ("data.test_fraction", d.test_fraction.is_some()),
        ],
        "is for `path` data; IDX data names its test files (`test_images`, `test_labels`)",
    )?;
    refuse(
        &folder_keys(d),
        "is for image folders (`path = \"folder\"`); IDX images keep their size and one channel",
    )?;
    let paths = [
        &d.train_images,
        &d.train_labels,
        &d.test_images,
        &d.test_labels,
    ];
    let given = paths.iter().filter(|p| p.is_some()).count();
    match (&d.dataset, given) {
        (Some(name), 0) if name == "fashion-mnist" => {}
        (Some(name), 0) => bad(
            "data.dataset",
            format!("is `{name}`; known datasets: `fashion-mnist` (or give explicit IDX paths, or a CSV file as `path`)"),
        )?,
        (Some(_), _) => bad(
            "data",
            "has both `dataset` and explicit paths; give one or the other",
        )?,
        (None, 4) => {}
        (None, 0) => bad(
            "data",
            "needs `dataset = \"fashion-mnist\"` or the four paths train_images, \
             train_labels, test_images, test_labels",
        )?,
        (None, _) => bad(
            "data",
            "explicit paths need all four of train_images, train_labels, test_images, test_labels",
        )?,
    }
    Ok(())
}

/// Checks `[train]`, `[distributed]` and `[resources]`.
fn check_train(job: &JobSpec) -> Result<(), Problem> {
    let t = &job.train;
    if t.epochs == 0 {
        bad("train.epochs", "must be at least 1")?;
    }
    if t.batch_size == 0 {
        bad("train.batch_size", "must be at least 1")?;
    }
    if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
        bad(
            "train.learning_rate",
            format!("is {}; allowed: a finite number > 0", t.learning_rate),
        )?;
    }
    if !(0.0..1.0).contains(&t.momentum) {
        bad(
            "train.momentum",
            format!("is {}; allowed: 0 <= momentum < 1", t.momentum),
        )?;
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        bad(
            "train.weight_decay",
            format!("is {}; allowed: a finite number >= 0", t.weight_decay),
        )?;
    }
    if t.log_every == 0 {
        bad("train.log_every", "must be at least 1")?;
    }
    check_distributed(&job.distributed, t.batch_size)?;
    check_resources(&job.resources)
}

/// Checks a `[command]` job: a program, no model or data of ours.
fn check_command(job: &JobSpec, c: &crate::CommandSpec) -> Result<(), Problem> {
    if !job.model.is_empty() || !job.data.is_empty() {
        bad(
            "command",
            "runs your own program, which brings its own model and data: remove [model] and \
             [data], or remove [command] to train one of ours",
        )?;
    }
    if c.argv.first().is_none_or(|p| p.trim().is_empty()) {
        bad(
            "command.argv",
            "is empty; give the program and its arguments, e.g. [\"python\", \"train.py\"]",
        )?;
    }
    if let Some(k) = c.env.keys().find(|k| k.is_empty() || k.contains('=')) {
        bad(
            "command.env",
            format!("has the variable name `{k}`; names are non-empty and have no `=`"),
        )?;
    }
    if c.join_timeout_s == 0 || c.join_timeout_s > MAX_TIMEOUT_S {
        bad(
            "command.join_timeout_s",
            "must be between 1 and 86400 seconds",
        )?;
    }
    if job.distributed.workers == 0 {
        bad("distributed.workers", "must be at least 1")?;
    }
    if job.distributed.ps_servers == 0 {
        bad("distributed.ps_servers", "must be at least 1")?;
    }
    check_resources(&job.resources)
}

/// Checks `[resources]`.
pub(crate) fn check_resources(r: &crate::ResourcesSpec) -> Result<(), Problem> {
    if r.nodes == 0 {
        bad("resources.nodes", "must be at least 1")?;
    }
    if r.workers_per_node == Some(0) {
        bad("resources.workers_per_node", "must be at least 1")?;
    }
    if r.cpus_per_worker == 0 {
        bad("resources.cpus_per_worker", "must be at least 1")?;
    }
    if let Some(t) = &r.time_limit {
        if let Err(e) = crate::spec::parse_duration(t) {
            bad("resources.time_limit", e)?;
        }
    }
    if r.port == Some(0) {
        bad("resources.port", "must be a port number (1-65535)")?;
    }
    if r.output_claim.is_some() && r.output_host_path.is_some() {
        bad(
            "resources.output_claim",
            "and `output_host_path` are both set; the run directory goes to one of them",
        )?;
    }
    if r.output_host_path.as_ref().is_some_and(|p| p.is_relative()) {
        bad(
            "resources.output_host_path",
            "must be an absolute path on the nodes",
        )?;
    }
    Ok(())
}

/// Checks `[distributed]` (also after command-line overrides).
pub(crate) fn check_distributed(d: &crate::DistributedSpec, batch: usize) -> Result<(), Problem> {
    if d.workers == 0 {
        bad("distributed.workers", "must be at least 1")?;
    }
    if d.workers > batch {
        bad(
            "distributed.workers",
            format!("is {} but train.batch_size is {batch}: each worker needs at least one sample per step", d.workers),
        )?;
    }
    if d.ps_servers == 0 {
        bad("distributed.ps_servers", "must be at least 1")?;
    }
    if d.strategy == crate::Strategy::Ps && d.compression != crate::Compression::None {
        bad(
            "distributed.compression",
            "works with strategy = \"ring\" only (parameter servers take f32 gradients)",
        )?;
    }
    if !(1..=16).contains(&d.tcp_streams) {
        bad(
            "distributed.tcp_streams",
            format!("is {} but must be 1 to 16", d.tcp_streams),
        )?;
    }
    if !(d.bucket_mib.is_finite() && d.bucket_mib >= 1.0 / 1024.0) {
        bad(
            "distributed.bucket_mib",
            format!("is {} but must be at least 1/1024 (1 KiB)", d.bucket_mib),
        )?;
    }
    if let Some(m) = d.min_workers {
        if m == 0 || m > d.workers {
            bad(
                "distributed.min_workers",
                format!(
                    "is {m} but must be 1 to distributed.workers ({})",
                    d.workers
                ),
            )?;
        }
        if d.max_restarts == 0 {
            bad(
                "distributed.min_workers",
                "needs distributed.max_restarts ≥ 1: it decides how a restart continues",
            )?;
        }
    }
    for (key, value) in [
        ("distributed.timeout_s", Some(d.timeout_s)),
        ("distributed.join_timeout_s", d.join_timeout_s),
        ("distributed.op_timeout_s", d.op_timeout_s),
    ] {
        if value.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_S) {
            bad(
                key,
                format!("must be 1 to {MAX_TIMEOUT_S} seconds (one day)"),
            )?;
        }
    }
    Ok(())
}

/// The 1-based line on which dotted `key` (e.g. `model.layers[2]`) appears in `text`.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = text.parse::<toml_edit::ImDocument<String>>().ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        item = item.get(name)?;
        span = item.span().or(span);
        if let Some(i) = index {
            item = item.get(i)?;
            span = item.span().or(span);
        }
    }
    let offset = span?.start;
    Some(text[..offset.min(text.len())].matches('\n').count() + 1)
}

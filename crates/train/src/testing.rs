//! Fixtures shared by this crate's unit tests.

use dlc_job::Preset;
use dlc_model::{plan, Net, Shape};

use crate::backend::CpuTrain;

/// A fresh LeNet for 28×28 grey images and ten classes, on the CPU training backend.
pub(crate) fn lenet() -> Net<CpuTrain> {
    let p = plan(
        &Preset::Lenet.layers(10),
        Shape::Spatial { c: 1, h: 28, w: 28 },
        10,
    )
    .expect("LeNet plans for 28×28×1 inputs");
    Net::new(&p, &Default::default())
}

//! Shape inference: checks a layer list against the input and computes every layer's
//! output shape, parameter count and forward FLOPs.

use dlc_job::{LayerSpec, Padding};

/// Shape of one sample between layers (batch dimension excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `[channels, height, width]`.
    Spatial {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// `[features]`.
    Flat(usize),
    /// A sequence of `len` vectors of `dim` numbers (after `embedding`).
    Seq {
        /// Tokens.
        len: usize,
        /// Numbers per token.
        dim: usize,
    },
}

impl Shape {
    /// Number of scalars.
    pub fn numel(&self) -> usize {
        match *self {
            Shape::Spatial { c, h, w } => c * h * w,
            Shape::Flat(f) => f,
            Shape::Seq { len, dim } => len * dim,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Shape::Spatial { c, h, w } => write!(f, "[{c}, {h}, {w}]"),
            Shape::Flat(n) => write!(f, "[{n}]"),
            Shape::Seq { len, dim } => write!(f, "[{len} tokens × {dim}]"),
        }
    }
}

/// Why a layer list does not fit the data.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A layer cannot take the shape its predecessor produces.
    #[error("layer {index} ({layer}): {message}")]
    Layer {
        /// Index in the resolved layer list; `3.1` is layer 1 of residual block 3.
        index: String,
        /// Layer kind.
        layer: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The last layer does not produce one score per class.
    #[error(
        "the model outputs {found} but the data needs {classes} output(s) (one per class; \
         one for task = \"regression\"): end the layer list with \
         `{{ type = \"dense\", units = {classes} }}`"
    )]
    Output {
        /// Output shape found.
        found: Shape,
        /// Number of classes.
        classes: usize,
    },
}

/// One layer with its inferred shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    /// The layer.
    pub spec: LayerSpec,
    /// Input shape.
    pub input: Shape,
    /// Output shape.
    pub output: Shape,
    /// Trainable parameters (a residual block's include its layers' and projection's).
    pub params: usize,
    /// Forward floating-point operations per sample (multiply-add = 2).
    pub flops: u64,
    /// A residual block's planned layers and projection; `None` for other layers.
    pub block: Option<Block>,
}

/// The inside of a residual block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// The block's layers, planned from the block's input.
    pub layers: Vec<LayerPlan>,
    /// How the block's input is brought to its output's shape before the sum, when
    /// the two differ.
    pub projection: Option<Projection>,
}

/// A residual block's learned projection of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// A 1×1 convolution from `from` to `to` channels with `stride`.
    Conv {
        /// Input channels.
        from: usize,
        /// Output channels.
        to: usize,
        /// Stride (both directions).
        stride: usize,
    },
    /// A dense layer from `from` to `to` features.
    Dense {
        /// Input features.
        from: usize,
        /// Output features.
        to: usize,
    },
}

impl Projection {
    /// The projection that maps `input` onto `output`, if any does.
    fn between(input: Shape, output: Shape) -> Option<Projection> {
        match (input, output) {
            (Shape::Flat(from), Shape::Flat(to)) => Some(Projection::Dense { from, to }),
            (
                Shape::Spatial { c, h, w },
                Shape::Spatial {
                    c: to,
                    h: oh,
                    w: ow,
                },
            ) => (1..=h.max(w))
                .find(|s| (h - 1) / s + 1 == oh && (w - 1) / s + 1 == ow)
                .map(|stride| Projection::Conv {
                    from: c,
                    to,
                    stride,
                }),
            _ => None,
        }
    }

    fn params(&self) -> usize {
        match *self {
            Projection::Conv { from, to, .. } | Projection::Dense { from, to } => from * to + to,
        }
    }
}

/// Name of a layer kind, as written in job files.
pub fn kind(spec: &LayerSpec) -> &'static str {
    match spec {
        LayerSpec::Dense { .. } => "dense",
        LayerSpec::Conv2d { .. } => "conv2d",
        LayerSpec::Maxpool2d { .. } => "maxpool2d",
        LayerSpec::Avgpool2d { .. } => "avgpool2d",
        LayerSpec::GlobalAvgpool => "global_avgpool",
        LayerSpec::Flatten => "flatten",
        LayerSpec::Relu => "relu",
        LayerSpec::Dropout { .. } => "dropout",
        LayerSpec::Batchnorm => "batchnorm",
        LayerSpec::Layernorm => "layernorm",
        LayerSpec::Residual { .. } => "residual",
        LayerSpec::Embedding { .. } => "embedding",
        LayerSpec::MeanPool => "mean_pool",
    }
}

/// Infers every layer's shapes for `input`, checking that the list ends in `classes` outputs.
pub fn plan(
    layers: &[LayerSpec],
    input: Shape,
    classes: usize,
) -> Result<Vec<LayerPlan>, ModelError> {
    let out = plan_list(layers, input, "")?;
    let shape = out.last().map_or(input, |l| l.output);
    if shape != Shape::Flat(classes) {
        return Err(ModelError::Output {
            found: shape,
            classes,
        });
    }
    Ok(out)
}

/// Plans `layers` from `input`; `path` prefixes layer indices inside residual blocks
/// (`"3."` for the layers of block 3), so errors name the nested layer.
fn plan_list(layers: &[LayerSpec], input: Shape, path: &str) -> Result<Vec<LayerPlan>, ModelError> {
    let mut out = Vec::with_capacity(layers.len());
    let mut shape = input;
    for (index, spec) in layers.iter().enumerate() {
        let err = |message: String| ModelError::Layer {
            index: format!("{path}{index}"),
            layer: kind(spec),
            message,
        };
        let mut block = None;
        let (output, params, flops) = match (spec, shape) {
            (LayerSpec::Residual { layers }, input) => {
                if let Some(j) = layers
                    .iter()
                    .position(|l| matches!(l, LayerSpec::Residual { .. }))
                {
                    return Err(err(format!(
                        "holds another residual block (its layer {j}); blocks do not nest: \
                         put the inner block after this one"
                    )));
                }
                let inner = plan_list(layers, input, &format!("{path}{index}."))?;
                let output = inner.last().map_or(input, |l| l.output);
                let projection = if output == input {
                    None
                } else {
                    Some(Projection::between(input, output).ok_or_else(|| {
                        err(format!(
                            "its layers turn {input} into {output}, and no 1×1 projection of \
                             the input matches that shape to add them; keep the input's \
                             kind and divide height and width by one stride"
                        ))
                    })?)
                };
                let params = inner.iter().map(|l| l.params).sum::<usize>()
                    + projection.as_ref().map_or(0, Projection::params);
                let flops = inner.iter().map(|l| l.flops).sum::<u64>()
                    + 2 * projection.as_ref().map_or(0, |p| p.params()) as u64
                        * match output {
                            Shape::Spatial { h, w, .. } => (h * w) as u64,
                            _ => 1,
                        }
                    + output.numel() as u64;
                block = Some(Block {
                    layers: inner,
                    projection,
                });
                (output, params, flops)
            }
            (&LayerSpec::Embedding { vocab, dim }, Shape::Flat(len))
                if path.is_empty() && index == 0 =>
            {
                (Shape::Seq { len, dim }, vocab * dim, (len * dim) as u64)
            }
            (&LayerSpec::Embedding { .. }, s) if path.is_empty() && index == 0 => {
                return Err(err(format!(
                    "takes a table's token-id columns, but this data's samples are {s}"
                )))
            }
            (&LayerSpec::Embedding { .. }, _) => {
                return Err(err(
                    "takes the data's token ids, so it must be the first layer (outside \
                     residual blocks)"
                        .into(),
                ))
            }
            (&LayerSpec::MeanPool, Shape::Seq { len, dim }) => {
                (Shape::Flat(dim), 0, (len * dim) as u64)
            }
            (&LayerSpec::MeanPool, s) => {
                return Err(err(format!(
                    "averages the token vectors of an `embedding` but gets {s}"
                )))
            }
            (&LayerSpec::Dense { units }, Shape::Flat(f)) => (
                Shape::Flat(units),
                f * units + units,
                2 * (f * units) as u64,
            ),
            (&LayerSpec::Dense { .. }, s) => {
                return Err(err(format!(
                    "needs flat input but gets {s}; put `{{ type = \"flatten\" }}` before it"
                )))
            }
            (
                &LayerSpec::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                },
                Shape::Spatial { c, h, w },
            ) => {
                let pad = match padding {
                    Padding::Valid => 0,
                    Padding::Same => (kernel - 1) / 2,
                };
                if h + 2 * pad < kernel || w + 2 * pad < kernel {
                    return Err(err(format!(
                        "kernel {kernel}×{kernel} is larger than its input {shape}"
                    )));
                }
                let oh = (h + 2 * pad - kernel) / stride + 1;
                let ow = (w + 2 * pad - kernel) / stride + 1;
                let per_out = c * kernel * kernel;
                (
                    Shape::Spatial {
                        c: filters,
                        h: oh,
                        w: ow,
                    },
                    per_out * filters + filters,
                    2 * (per_out * filters * oh * ow) as u64,
                )
            }
            (
                &LayerSpec::Maxpool2d { size, stride } | &LayerSpec::Avgpool2d { size, stride },
                Shape::Spatial { c, h, w },
            ) => {
                let stride = stride.unwrap_or(size);
                if h < size || w < size {
                    return Err(err(format!(
                        "window {size}×{size} is larger than its input {shape}"
                    )));
                }
                let (oh, ow) = ((h - size) / stride + 1, (w - size) / stride + 1);
                (
                    Shape::Spatial { c, h: oh, w: ow },
                    0,
                    (c * oh * ow * size * size) as u64,
                )
            }
            (&LayerSpec::GlobalAvgpool, Shape::Spatial { c, h, w }) => {
                (Shape::Flat(c), 0, (c * h * w) as u64)
            }
            (
                &LayerSpec::Conv2d { .. }
                | &LayerSpec::Maxpool2d { .. }
                | &LayerSpec::Avgpool2d { .. }
                | &LayerSpec::GlobalAvgpool,
                s,
            ) => {
                return Err(err(format!(
                    "needs [channels, height, width] input but gets {s}"
                )))
            }
            (&LayerSpec::Layernorm, Shape::Flat(f)) => (Shape::Flat(f), 2 * f, 8 * f as u64),
            (&LayerSpec::Layernorm, s) => {
                return Err(err(format!(
                    "normalises a flat feature vector but gets {s}; put it after `flatten`, \
                     `global_avgpool` or `dense` (for images use `batchnorm`)"
                )))
            }
            (&LayerSpec::Flatten, s) => (Shape::Flat(s.numel()), 0, 0),
            (&LayerSpec::Relu | &LayerSpec::Dropout { .. }, s) => (s, 0, s.numel() as u64),
            (&LayerSpec::Batchnorm, Shape::Spatial { c: ch, .. } | Shape::Flat(ch)) => {
                (shape, 2 * ch, 4 * shape.numel() as u64)
            }
            (&LayerSpec::Batchnorm, s) => {
                return Err(err(format!(
                    "normalises channels or features but gets {s}; put it after `mean_pool`"
                )))
            }
        };
        if output.numel() == 0 {
            return Err(err(format!("produces an empty output {output}")));
        }
        out.push(LayerPlan {
            spec: spec.clone(),
            input: shape,
            output,
            params,
            flops,
            block,
        });
        shape = output;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlc_job::Preset;

    const MNIST: Shape = Shape::Spatial { c: 1, h: 28, w: 28 };

    #[test]
    fn lenet_shapes_and_params() {
        let p = plan(&Preset::Lenet.layers(10), MNIST, 10).unwrap();
        assert_eq!(
            p[2].output,
            Shape::Spatial {
                c: 32,
                h: 12,
                w: 12
            }
        );
        assert_eq!(p[6].output, Shape::Flat(1024));
        let params: usize = p.iter().map(|l| l.params).sum();
        // conv1 832 + conv2 51264 + fc1 131200 + fc2 1290
        assert_eq!(params, 832 + 51_264 + 131_200 + 1_290);
    }

    #[test]
    fn mlp_params() {
        let p = plan(&Preset::Mlp.layers(10), MNIST, 10).unwrap();
        let params: usize = p.iter().map(|l| l.params).sum();
        assert_eq!(params, 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10);
    }

    #[test]
    fn pooling_and_layernorm_shapes() {
        let layers = [
            LayerSpec::Conv2d {
                filters: 8,
                kernel: 3,
                stride: 1,
                padding: Padding::Same,
            },
            LayerSpec::Avgpool2d {
                size: 2,
                stride: None,
            },
            LayerSpec::GlobalAvgpool,
            LayerSpec::Layernorm,
            LayerSpec::Dense { units: 10 },
        ];
        let p = plan(&layers, MNIST, 10).unwrap();
        assert_eq!(p[1].output, Shape::Spatial { c: 8, h: 14, w: 14 });
        assert_eq!(p[2].output, Shape::Flat(8));
        assert_eq!((p[3].output, p[3].params), (Shape::Flat(8), 16));
        let e = plan(&[LayerSpec::Layernorm], MNIST, 10).unwrap_err();
        assert!(
            e.to_string().contains("layer 0 (layernorm)") || e.to_string().contains("layernorm"),
            "{e}"
        );
        let e = plan(&[LayerSpec::Flatten, LayerSpec::GlobalAvgpool], MNIST, 10).unwrap_err();
        assert!(e.to_string().contains("global_avgpool"), "{e}");
    }

    #[test]
    fn resnet_small_blocks_project_when_the_shape_changes() {
        let p = plan(&Preset::ResnetSmall.layers(10), MNIST, 10).unwrap();
        let blocks: Vec<_> = p.iter().filter_map(|l| l.block.as_ref()).collect();
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0].projection, None);
        assert_eq!(
            blocks[1].projection,
            Some(Projection::Conv {
                from: 16,
                to: 32,
                stride: 2
            })
        );
        // 14 → 7 with stride 2 ("same" padding rounds up: 7 → 4 would too).
        assert_eq!(p[7].output, Shape::Spatial { c: 64, h: 7, w: 7 });
        let conv = |i: usize, o: usize, k: usize| i * o * k * k + o;
        let expected = conv(1, 16, 3)
            + 32
            + 2 * (conv(16, 16, 3) + 32)
            + conv(16, 32, 3)
            + conv(32, 32, 3)
            + 2 * 64
            + conv(16, 32, 1)
            + conv(32, 64, 3)
            + conv(64, 64, 3)
            + 2 * 128
            + conv(32, 64, 1)
            + 64 * 10
            + 10;
        assert_eq!(p.iter().map(|l| l.params).sum::<usize>(), expected);

        let flat = [LayerSpec::Residual {
            layers: vec![LayerSpec::Dense { units: 10 }],
        }];
        let p = plan(&flat, Shape::Flat(4), 10).unwrap();
        let projection = p[0].block.as_ref().unwrap().projection;
        assert_eq!(projection, Some(Projection::Dense { from: 4, to: 10 }));
        assert_eq!(p[0].params, 4 * 10 + 10 + 4 * 10 + 10);
    }

    #[test]
    fn residual_blocks_that_cannot_add_are_explained() {
        let nested = [LayerSpec::Residual {
            layers: vec![LayerSpec::Residual {
                layers: vec![LayerSpec::Relu],
            }],
        }];
        let e = plan(&nested, Shape::Flat(10), 10).unwrap_err().to_string();
        assert!(
            e.contains("layer 0 (residual)") && e.contains("do not nest"),
            "{e}"
        );
        let to_flat = [
            LayerSpec::Residual {
                layers: vec![LayerSpec::Flatten],
            },
            LayerSpec::Dense { units: 10 },
        ];
        let e = plan(&to_flat, MNIST, 10).unwrap_err().to_string();
        assert!(e.contains("[1, 28, 28] into [784]"), "{e}");
        let inner = [LayerSpec::Residual {
            layers: vec![LayerSpec::Relu, LayerSpec::Dense { units: 3 }],
        }];
        let e = plan(&inner, MNIST, 10).unwrap_err().to_string();
        assert!(e.starts_with("layer 0.1 (dense)"), "{e}");
    }

    #[test]
    fn embeddings_take_token_columns_first() {
        let tokens = [
            LayerSpec::Embedding { vocab: 50, dim: 4 },
            LayerSpec::MeanPool,
            LayerSpec::Dense { units: 3 },
        ];
        let p = plan(&tokens, Shape::Flat(6), 3).unwrap();
        assert_eq!(p[0].output, Shape::Seq { len: 6, dim: 4 });
        assert_eq!((p[0].params, p[1].output), (200, Shape::Flat(4)));
        let e = plan(&tokens, MNIST, 3).unwrap_err().to_string();
        assert!(
            e.contains("token-id columns") && e.contains("[1, 28, 28]"),
            "{e}"
        );
        let late = [LayerSpec::Relu, tokens[0].clone(), LayerSpec::MeanPool];
        let e = plan(&late, Shape::Flat(6), 4).unwrap_err().to_string();
        assert!(
            e.starts_with("layer 1 (embedding)") && e.contains("first layer"),
            "{e}"
        );
        let e = plan(
            &[tokens[0].clone(), LayerSpec::Batchnorm],
            Shape::Flat(6),
            4,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[6 tokens × 4]") && e.contains("mean_pool"),
            "{e}"
        );
    }

    #[test]
    fn misfit_layers_are_explained() {
        let e = plan(&[LayerSpec::Dense { units: 10 }], MNIST, 10).unwrap_err();
        assert!(e.to_string().contains("flatten"), "{e}");
        let e = plan(
            &[LayerSpec::Flatten, LayerSpec::Dense { units: 5 }],
            MNIST,
            10,
        )
        .unwrap_err();
        assert!(e.to_string().contains("units = 10"), "{e}");
        let e = plan(
            &[LayerSpec::Conv2d {
                filters: 1,
                kernel: 40,
                stride: 1,
                padding: Padding::Valid,
            }],
            MNIST,
            10,
        )
        .unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
    }
}

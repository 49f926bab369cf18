//! The instance catalog: machines with prices, and the peak rates of their GPUs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The catalog shipped with dlcluster (`catalog/instances.toml`).
pub const BUILTIN: &str = include_str!("../../../catalog/instances.toml");

/// Why a catalog was rejected.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Unreadable file.
    #[error("cannot read catalog {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Malformed TOML, unknown key, wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// Where it came from.
        origin: String,
        /// The parser's message (line, column, allowed keys).
        message: String,
    },
    /// Inconsistent values.
    #[error("{origin}: {what}")]
    Invalid {
        /// Where it came from.
        origin: String,
        /// What is wrong.
        what: String,
    },
}

/// Peak rates of one GPU model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// Peak f32 TFLOP/s.
    pub fp32_tflops: f64,
    /// Peak f16/bf16 TFLOP/s (tensor cores where present).
    pub fp16_tflops: f64,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Memory bandwidth, GB/s.
    pub memory_bw_gbps: f64,
}

/// Link between the GPUs of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuLink {
    /// One GPU or none.
    None,
    /// Through PCIe.
    Pcie,
    /// NVLink.
    Nvlink,
    /// NVSwitch (all-to-all NVLink).
    Nvswitch,
}

/// One machine type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Type name, e.g. `p3.8xlarge`.
    pub name: String,
    /// Cloud provider.
    pub provider: String,
    /// GPU model (a key of `[gpus]`); absent for CPU-only machines.
    #[serde(default)]
    pub gpu: Option<String>,
    /// GPUs per instance.
    pub gpus: usize,
    /// Virtual CPUs (hyperthreads).
    pub vcpus: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Network bandwidth, GB/s.
    pub network_gbps: f64,
    /// GPU interconnect.
    pub gpu_link: GpuLink,
    /// GPU interconnect bandwidth per GPU, GB/s.
    pub gpu_link_gbps: f64,
    /// On-demand price, USD per hour.
    pub price_per_hour: f64,
    /// When the price was taken (`YYYY-MM`).
    pub price_date: String,
    /// Region the price is for.
    pub region: String,
}

/// A validated catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// GPU models by name.
    #[serde(default)]
    pub gpus: BTreeMap<String, Gpu>,
    /// Machine types.
    pub instances: Vec<Instance>,
}

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN, "built-in catalog").expect("the built-in catalog is valid")
    }

    /// The catalog's GPU model in a name as drivers report it: the longest model key
    /// that appears in `reported` as a whole word, case aside ("Tesla V100-SXM2-16GB"
    /// → `V100`, "NVIDIA A10G" → `A10G`, not `A10`).
    pub fn gpu_model_named(&self, reported: &str) -> Option<&str> {
        let words: Vec<String> = reported
            .split(|c: char| !c.is_ascii_alphanumeric())
            .map(str::to_ascii_uppercase)
            .collect();
        self.gpus
            .keys()
            .filter(|k| words.iter().any(|w| w.eq_ignore_ascii_case(k)))
            .max_by_key(|k| k.len())
            .map(String::as_str)
    }

    /// Reads and validates a catalog file.
    pub fn from_file(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates catalog text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogError> {
        let c: Catalog = toml::from_str(text).map_err(|e| CatalogError::Parse {
            origin: origin.into(),
            message: e.to_string().trim_end().into(),
        })?;
        let bad = |what: String| CatalogError::Invalid {
            origin: origin.into(),
            what,
        };
        if c.instances.is_empty() {
            return Err(bad("no [[instances]]".into()));
        }
        for (name, g) in &c.gpus {
            for (k, v) in [
                ("fp32_tflops", g.fp32_tflops),
                ("fp16_tflops", g.fp16_tflops),
                ("memory_gib", g.memory_gib),
                ("memory_bw_gbps", g.memory_bw_gbps),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(format!(
                        "gpus.{name}.{k} is {v}; must be a positive number"
                    )));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for i in &c.instances {
            let n = &i.name;
            if !seen.insert(n.clone()) {
                return Err(bad(format!("instance {n} appears twice")));
            }
            match (&i.gpu, i.gpus) {
                (None, 0) => {}
                (None, _) => {
                    return Err(bad(format!(
                        "instance {n} has gpus = {} but no `gpu` model",
                        i.gpus
                    )))
                }
                (Some(g), 0) => {
                    return Err(bad(format!(
                        "instance {n} names gpu `{g}` but has gpus = 0"
                    )))
                }
                (Some(g), _) if !c.gpus.contains_key(g) => {
                    return Err(bad(format!(
                        "instance {n}: gpu `{g}` is not in [gpus] (known: {})",
                        c.gpus.keys().cloned().collect::<Vec<_>>().join(", ")
                    )))
                }
                _ => {}
            }
            if i.vcpus == 0 {
                return Err(bad(format!("instance {n}: vcpus must be at least 1")));
            }
            for (k, v) in [
                ("price_per_hour", i.price_per_hour),
                ("network_gbps", i.network_gbps),
                ("memory_gib", i.memory_gib),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(format!(
                        "instance {n}: {k} is {v}; must be a positive number"
                    )));
                }
            }
            if i.gpus > 1 && (i.gpu_link_gbps.is_nan() || i.gpu_link_gbps <= 0.0) {
                return Err(bad(format!(
                    "instance {n}: {} GPUs need gpu_link_gbps > 0",
                    i.gpus
                )));
            }
        }
        Ok(c)
    }

    /// The GPU model of an instance.
    pub fn gpu_of(&self, i: &Instance) -> Option<&Gpu> {
        i.gpu.as_ref().and_then(|g| self.gpus.get(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_valid_and_complete() {
        let c = Catalog::builtin();
        for name in [
            "p2.xlarge",
            "p2.8xlarge",
            "p2.16xlarge",
            "p3.2xlarge",
            "p3.8xlarge",
            "p3.16xlarge",
            "g3.4xlarge",
            "g3.8xlarge",
            "g3.16xlarge",
            "g4dn.xlarge",
            "g5.xlarge",
            "g6.xlarge",
            "p4d.24xlarge",
            "p5.48xlarge",
            "c5.2xlarge",
        ] {
            assert!(c.instances.iter().any(|i| i.name == name), "{name} missing");
        }
    }

    #[test]
    fn drivers_gpu_names_match_catalog_models_by_whole_word() {
        let c = Catalog::builtin();
        for (reported, model) in [
            ("Tesla V100-SXM2-16GB", Some("V100")),
            ("Tesla K80", Some("K80")),
            ("NVIDIA A10G", Some("A10G")),
            ("NVIDIA A100-SXM4-40GB", Some("A100")),
            ("NVIDIA H100 80GB HBM3", Some("H100")),
            ("NVIDIA L4", Some("L4")),
            ("NVIDIA H200", Some("H200")),
            ("NVIDIA L40S", None),
        ] {
            assert_eq!(c.gpu_model_named(reported), model, "{reported}");
        }
        let p216 = c
            .instances
            .iter()
            .find(|i| i.name == "p2.16xlarge")
            .unwrap();
        assert_eq!(p216.network_gbps, 25.0 / 8.0, "25 Gbit/s");
    }

    fn err(text: &str) -> String {
        Catalog::parse(text, "cat.toml").unwrap_err().to_string()
    }

    const ONE: &str = "[gpus.X]\nfp32_tflops = 1.0\nfp16_tflops = 2.0\nmemory_gib = 8\nmemory_bw_gbps = 100\n\
        [[instances]]\nname = \"a\"\nprovider = \"p\"\ngpu = \"X\"\ngpus = 1\nvcpus = 4\nmemory_gib = 16\n\
        network_gbps = 1.0\ngpu_link = \"none\"\ngpu_link_gbps = 0\nprice_per_hour = 1.0\n\
        price_date = \"2026-01\"\nregion = \"r\"\n";

    #[test]
    fn bad_catalogs_are_explained() {
        Catalog::parse(ONE, "cat.toml").unwrap();
        let e = err(&ONE.replace("gpu = \"X\"", "gpu = \"Y\""));
        assert!(
            e.contains("`Y` is not in [gpus]") && e.contains("known: X"),
            "{e}"
        );
        let e = err(&ONE.replace("price_per_hour = 1.0", "price_per_hour = -1.0"));
        assert!(
            e.contains("price_per_hour") && e.contains("positive"),
            "{e}"
        );
        let e = err(&ONE.replace("vcpus = 4", "vcpus = 4\ncolour = \"red\""));
        assert!(e.contains("colour") && e.contains("line"), "{e}");
        let e = err(&ONE.replace("gpu_link = \"none\"", "gpu_link = \"infiniband\""));
        assert!(e.contains("infiniband") && e.contains("nvlink"), "{e}");
        let e = err(&ONE.replace("gpus = 1", "gpus = 2"));
        assert!(e.contains("gpu_link_gbps"), "{e}");
        let e = err(&format!(
            "{ONE}{}",
            &ONE[ONE.find("[[instances]]").unwrap()..]
        ));
        assert!(e.contains("appears twice"), "{e}");
        let e = err("[gpus]\n");
        assert!(e.contains("instances"), "{e}");
    }
}

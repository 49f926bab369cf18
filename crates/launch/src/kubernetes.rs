//! Kubernetes: an Indexed Job of worker pods (rank = `JOB_COMPLETION_INDEX`), a second
//! Indexed Job for parameter servers (rank = workers + index), a headless Service that
//! gives worker 0 the stable name `<job>-0.<job>` for the coordinator it hosts, the
//! job token in a Secret and the job file in a ConfigMap.
//!
//! Fault semantics match ours: a failed rank fails the job (`restartPolicy: Never`,
//! `backoffLimit: 0`; dlcluster does not re-admit a restarted rank), and
//! `activeDeadlineSeconds` carries the time limit. Every launch gets a unique name
//! (the job's and five random characters) and is created, never applied onto an
//! existing Job. The run directory lives in rank 0's pod unless an output volume (a
//! PersistentVolumeClaim or a hostPath) is mounted at [`RUNS_DIR`] in every pod. Pods must find each other before
//! they are ready, so the Service publishes not-ready addresses.

use serde_json::{json, Value};

use crate::manager::{tool, JobStatus, ManagerError, ResourceManager};
use crate::spec::{dns_label, LaunchSpec, OutputVolume};

const HINT: &str =
    "install kubectl and point it at your cluster (or use --dry-run to print the manifests \
                    and apply them yourself)";

/// Port of the coordinator in worker 0's pod.
pub const COORDINATOR_PORT: u16 = 29400;
/// Where the ConfigMap with the job file is mounted.
pub const JOB_DIR: &str = "/etc/dlc";
/// Seconds a pod of a job file's job has between SIGTERM (deletion, eviction) and
/// SIGKILL: enough for the step in progress and a checkpoint.
pub const TERMINATION_GRACE_S: u64 = 120;
/// Where an output volume ([`LaunchSpec::output_volume`]) is mounted in every pod; run
/// directories go below it.
pub const RUNS_DIR: &str = "/dlc/runs";

/// The Kubernetes resource manager.
#[derive(Debug, Clone, Default)]
pub struct Kubernetes {
    /// Namespace for status/logs/cancel (submission takes the spec's).
    pub namespace: Option<String>,
}

/// The objects of one job, in the order they are applied.
pub fn manifests(spec: &LaunchSpec, token: &str) -> Result<Vec<Value>, ManagerError> {
    if spec.workers == 0 {
        return Err(ManagerError::Invalid(
            "a job needs at least one worker".into(),
        ));
    }
    if spec.max_restarts > 0 {
        return Err(ManagerError::Invalid(
            "--max-restarts is not available on Kubernetes yet: a restarted pod cannot rejoin \
             a job whose other pods still run, so a failed rank fails the Job (backoffLimit 0); \
             resubmit it (names are unique per launch), or use the local or Slurm manager"
                .into(),
        ));
    }
    // Pod host names are `<job>-<index>` and must stay within 63 characters.
    let name = dns_label(&spec.name, 40);
    let ns = dns_label(&spec.namespace, 63);
    let labels = |role: &str| json!({"app.kubernetes.io/name": "dlcluster", "dlcluster/job": name, "dlcluster/role": role});
    let port = spec.port.unwrap_or(COORDINATOR_PORT);
    let coordinator = format!("{name}-0.{name}.{ns}.svc:{port}");
    let world = spec.world();
    let job_file = format!("{JOB_DIR}/job.toml");

    let foreign = spec.command.is_some();
    let mut objects = vec![
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-token"), "namespace": ns, "labels": labels("token")},
            "type": "Opaque",
            "stringData": {"token": token},
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels("rendezvous")},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": {"dlcluster/job": name},
                "ports": [{"name": "coordinator", "port": port, "targetPort": port}],
            },
        }),
    ];

    // A job file travels in a ConfigMap; a foreign command carries everything itself.
    if !foreign {
        objects.insert(
            1,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("{name}-job"), "namespace": ns, "labels": labels("job-file")},
                "data": {"job.toml": spec.job_text},
            }),
        );
    }

    let indexed_job = |job_name: String,
                       role: &str,
                       count: usize,
                       offset: usize,
                       gpus: usize|
     -> Value {
        let mut command = vec!["dlc".to_string()];
        command.extend(spec.process_args(&job_file));
        let env = json!([
            {"name": "DLC_WORLD_SIZE", "value": world.to_string()},
            {"name": "DLC_RANK_OFFSET", "value": offset.to_string()},
            {"name": "DLC_COORDINATOR", "value": coordinator},
            {"name": "DLC_HOST_COORDINATOR", "value": "1"},
            {"name": "DLC_JOB_ID", "value": name},
            {"name": "DLC_JOB_TOKEN", "valueFrom": {"secretKeyRef": {"name": format!("{name}-token"), "key": "token"}}},
        ]);
        let cpu = spec.cpus_per_worker.max(1).to_string();
        let mut limits = json!({"cpu": cpu});
        if gpus > 0 {
            limits["nvidia.com/gpu"] = json!(gpus);
        }
        let mut job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name, "namespace": ns, "labels": labels(role)},
            "spec": {
                "completionMode": "Indexed",
                "completions": count,
                "parallelism": count,
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {"labels": labels(role)},
                    "spec": {
                        "subdomain": name,
                        "restartPolicy": "Never",
                        "containers": [{
                            "name": role,
                            "image": spec.image,
                            "command": command,
                            "env": env,
                            "ports": [{"name": "coordinator", "containerPort": port}],
                            "resources": {"requests": {"cpu": cpu}, "limits": limits},
                        }],
                    },
                },
            },
        });
        let (mut mounts, mut volumes) = (Vec::new(), Vec::new());
        if !foreign {
            mounts.push(json!({"name": "job", "mountPath": JOB_DIR, "readOnly": true}));
            volumes.push(json!({"name": "job", "configMap": {"name": format!("{name}-job")}}));
        }
        if let Some(v) = &spec.output_volume {
            mounts.push(json!({"name": "runs", "mountPath": RUNS_DIR}));
            volumes.push(match v {
                OutputVolume::Claim(claim) => {
                    json!({"name": "runs", "persistentVolumeClaim": {"claimName": claim}})
                }
                OutputVolume::HostPath(dir) => json!({"name": "runs", "hostPath": {
                    "path": dir.display().to_string(), "type": "DirectoryOrCreate"}}),
            });
        }
        if !volumes.is_empty() {
            job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = json!(mounts);
            job["spec"]["template"]["spec"]["volumes"] = json!(volumes);
        }
        if let Some(t) = spec.time_limit {
            job["spec"]["activeDeadlineSeconds"] = json!(t.as_secs().max(1));
        }
        if spec.checkpoints {
            // A deleted or evicted pod gets SIGTERM: its workers finish the step, write
            // a checkpoint and stop; this leaves the time for that before SIGKILL.
            job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] =
                json!(TERMINATION_GRACE_S);
        }
        job
    };
    objects.push(indexed_job(
        name.clone(),
        "worker",
        spec.workers,
        0,
        spec.gpus_per_worker,
    ));
    if spec.servers > 0 {
        objects.push(indexed_job(
            format!("{name}-ps"),
            "server",
            spec.servers,
            spec.workers,
            0,
        ));
    }
    Ok(objects)
}

/// The manifests as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String, ManagerError> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(
            &yaml_serde::to_string(o)
                .map_err(|e| ManagerError::Invalid(format!("rendering YAML: {e}")))?,
        );
    }
    Ok(out)
}

impl Kubernetes {
    fn ns_args(&self) -> Vec<String> {
        match &self.namespace {
            Some(n) => vec!["-n".into(), n.clone()],
            None => vec![],
        }
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, ManagerError> {
        let ns = self.ns_args();
        let all: Vec<&str> = ns
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        tool("kubectl", &all, stdin, HINT)
    }
}

/// `spec` with a name unique to this launch: the job's name and five random
/// characters, so that launching the same job twice makes two Jobs.
fn unique(spec: &LaunchSpec) -> LaunchSpec {
    let random = dlc_comm::auth::JobKey::random_token();
    let suffix: String = random
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(5)
        .collect();
    let mut spec = spec.clone();
    spec.name = format!("{}-{suffix}", dns_label(&spec.name, 34));
    spec
}

fn check_name(id: &str) -> Result<(), ManagerError> {
    if dns_label(id, 63) == id {
        Ok(())
    } else {
        Err(ManagerError::Invalid(format!(
            "`{id}` is not a Kubernetes job name"
        )))
    }
}

impl ResourceManager for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn render(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        to_yaml(&manifests(&unique(spec), "<generated at submission>")?)
    }

    fn submit(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        let spec = unique(spec);
        let token = dlc_comm::auth::JobKey::random_token();
        let objects = manifests(&spec, &token)?;
        let yaml = to_yaml(&objects)?;
        // `create`, not `apply`: a name already taken is an error, never an edit of
        // someone else's Job.
        tool("kubectl", &["create", "-f", "-"], Some(&yaml), HINT)?;
        Ok(dns_label(&spec.name, 40))
    }

    fn status(&self, id: &str) -> Result<JobStatus, ManagerError> {
        check_name(id)?;
        let out = self.kubectl(&["get", "job", id, "-o", "json"], None)?;
        let v: Value = serde_json::from_str(&out)
            .map_err(|e| ManagerError::Invalid(format!("kubectl printed no job: {e}")))?;
        let s = &v["status"];
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        let cond = |t: &str| {
            s["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == t && c["status"] == "True"))
        };
        let (state, finished, succeeded) = if cond("Complete") {
            ("COMPLETED", true, true)
        } else if cond("Failed") {
            ("FAILED", true, false)
        } else if n("active") > 0 {
            ("RUNNING", false, false)
        } else {
            ("PENDING", false, false)
        };
        Ok(JobStatus {
            id: id.into(),
            state: state.into(),
            finished,
            succeeded,
            detail: format!(
                "active {}, succeeded {}, failed {}",
                n("active"),
                n("succeeded"),
                n("failed")
            ),
        })
    }

    fn logs(&self, id: &str) -> Result<String, ManagerError> {
        check_name(id)?;
        let sel = format!("dlcluster/job={id}");
        self.kubectl(
            &[
                "logs",
                "-l",
                &sel,
                "--prefix",
                "--all-containers",
                "--tail=-1",
            ],
            None,
        )
    }

    fn cancel(&self, id: &str) -> Result<(), ManagerError> {
        check_name(id)?;
        let sel = format!("dlcluster/job={id}");
        self.kubectl(
            &["delete", "job,service,secret,configmap", "-l", &sel],
            None,
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn spec(servers: usize) -> LaunchSpec {
        LaunchSpec {
            name: "Fashion_MNIST cnn".into(),
            exe: PathBuf::from("dlc"),
            job_file: PathBuf::from("/jobs/cnn.toml"),
            job_text: "[model]\npreset = \"lenet\"\n".into(),
            worker_args: vec!["--workers".into(), "4".into()],
            workers: 4,
            servers,
            nodes: 2,
            gpus_per_worker: 1,
            cpus_per_worker: 4,
            time_limit: Some(Duration::from_secs(3600)),
            partition: None,
            namespace: "ml".into(),
            image: "registry.example/dlc:1".into(),
            workdir: PathBuf::from("/"),
            out: PathBuf::from("/runs/cnn"),
            resume: false,
            port: None,
            timeout_s: 30,
            command: None,
            checkpoints: true,
            max_restarts: 0,
            min_workers: None,
            output_volume: None,
        }
    }

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    /// The container's environment variable `k`.
    fn env_of(container: &Value, k: &str) -> Value {
        let vars = container["env"].as_array().expect("an env list");
        vars.iter()
            .find(|e| e["name"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} not set"))
    }

    /// Renders, parses the YAML back, and returns the objects by kind.
    fn round_trip(servers: usize) -> Vec<Value> {
        let yaml = to_yaml(&manifests(&spec(servers), "tok").unwrap()).unwrap();
        let docs: Vec<Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| yaml_serde::from_str(d).unwrap())
            .collect();
        for d in &docs {
            for k in ["apiVersion", "kind", "metadata"] {
                assert!(!d[k].is_null(), "{k} missing in {d}");
            }
            let name = d["metadata"]["name"].as_str().unwrap();
            assert!(is_dns_label(name), "{name} is not a DNS label");
            assert_eq!(d["metadata"]["namespace"], "ml");
        }
        docs
    }

    #[test]
    fn worker_job_structure() {
        let docs = round_trip(0);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Secret", "ConfigMap", "Service", "Job"]);
        let svc = &docs[2];
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
        assert_eq!(
            svc["spec"]["selector"]["dlcluster/job"],
            "fashion-mnist-cnn"
        );
        let job = &docs[3];
        assert_eq!(job["metadata"]["name"], "fashion-mnist-cnn");
        let s = &job["spec"];
        assert_eq!(s["completionMode"], "Indexed");
        assert_eq!(
            (s["completions"].as_u64(), s["parallelism"].as_u64()),
            (Some(4), Some(4))
        );
        assert_eq!(s["backoffLimit"], 0);
        assert_eq!(s["activeDeadlineSeconds"], 3600);
        let pod = &s["template"]["spec"];
        assert_eq!(pod["subdomain"], "fashion-mnist-cnn");
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["terminationGracePeriodSeconds"], TERMINATION_GRACE_S);
        assert_eq!(
            s["template"]["metadata"]["labels"]["dlcluster/job"],
            "fashion-mnist-cnn"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example/dlc:1");
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
        assert_eq!(c["resources"]["limits"]["cpu"], "4");
        let cmd: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(
            cmd,
            [
                "dlc",
                "worker",
                "/etc/dlc/job.toml",
                "--workers",
                "4",
                "--out",
                "/runs/cnn"
            ]
        );
        let env = |k: &str| env_of(c, k);
        assert_eq!(env("DLC_WORLD_SIZE")["value"], "4");
        assert_eq!(env("DLC_RANK_OFFSET")["value"], "0");
        assert_eq!(
            env("DLC_COORDINATOR")["value"],
            "fashion-mnist-cnn-0.fashion-mnist-cnn.ml.svc:29400"
        );
        assert_eq!(
            env("DLC_JOB_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
            "fashion-mnist-cnn-token"
        );
        assert_eq!(
            pod["volumes"][0]["configMap"]["name"],
            "fashion-mnist-cnn-job"
        );
        // The secret carries the token, the config map the job file.
        assert_eq!(docs[0]["stringData"]["token"], "tok");
        assert_eq!(docs[1]["data"]["job.toml"], "[model]\npreset = \"lenet\"\n");
    }

    #[test]
    fn parameter_servers_get_their_own_pods() {
        let docs = round_trip(2);
        assert_eq!(docs.len(), 5);
        let ps = &docs[4];
        assert_eq!(ps["metadata"]["name"], "fashion-mnist-cnn-ps");
        assert_eq!(ps["spec"]["completions"], 2);
        let c = &ps["spec"]["template"]["spec"]["containers"][0];
        let env = |k: &str| env_of(c, k);
        assert_eq!(env("DLC_WORLD_SIZE")["value"], "6");
        assert_eq!(env("DLC_RANK_OFFSET")["value"], "4");
        assert!(
            c["resources"]["limits"]["nvidia.com/gpu"].is_null(),
            "servers need no GPU"
        );
    }

    #[test]
    fn output_volumes_are_mounted_in_every_pod() {
        let mut sp = spec(1);
        sp.output_volume = Some(OutputVolume::Claim("runs-pvc".into()));
        let docs = manifests(&sp, "t").unwrap();
        for job in docs.iter().filter(|d| d["kind"] == "Job") {
            let pod = &job["spec"]["template"]["spec"];
            let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
            assert!(mounts.iter().any(|m| m["mountPath"] == RUNS_DIR), "{pod}");
            let vols = pod["volumes"].as_array().unwrap();
            assert!(vols
                .iter()
                .any(|v| v["persistentVolumeClaim"]["claimName"] == "runs-pvc"));
        }
        sp.output_volume = Some(OutputVolume::HostPath("/mnt/runs".into()));
        let docs = manifests(&sp, "t").unwrap();
        let vols = &docs[3]["spec"]["template"]["spec"]["volumes"];
        assert_eq!(vols[1]["hostPath"]["path"], "/mnt/runs");
    }

    #[test]
    fn every_launch_has_its_own_name_and_restarts_are_refused() {
        let (a, b) = (unique(&spec(0)), unique(&spec(0)));
        assert_ne!(a.name, b.name);
        assert!(a.name.starts_with("fashion-mnist-cnn-") && is_dns_label(&a.name));
        assert_eq!(a.name.len(), "fashion-mnist-cnn-".len() + 5);
        let long = LaunchSpec {
            name: "x".repeat(80),
            ..spec(0)
        };
        assert!(unique(&long).name.len() <= 40);
        let mut sp = spec(0);
        sp.max_restarts = 1;
        let e = manifests(&sp, "t").unwrap_err().to_string();
        assert!(e.contains("--max-restarts"), "{e}");
    }
}

//! YARN (Hadoop ≥ 3.1): a native-services spec ("Yarnfile") for `yarn app -launch`.
//!
//! `dlc launch --manager yarn --dry-run` renders one service with a `worker`
//! component of N containers (and a `server` component for parameter servers), each
//! running `dlc worker JOB …` with its rank from YARN's `${COMPONENT_ID}`, GPUs as the
//! `yarn.io/gpu` resource, and rank 0 found through YARN's registry DNS
//! (`worker-0.${SERVICE_NAME}.${USER}.${DOMAIN}`). `restart_policy: NEVER` keeps our
//! failure semantics (a failed rank fails the job; its peers name it). There is no
//! YARN to test against here: the spec is checked against the documented fields of
//! the YARN Services API in unit tests, never by a real ResourceManager, and `dlc`
//! does not submit it (`yarn app -launch NAME FILE` does).

use serde_json::{json, Value};

use crate::manager::{ManagerError, ResourceManager};
use crate::spec::LaunchSpec;

/// Port rank 0 hosts the rendezvous on inside its container.
pub const COORDINATOR_PORT: u16 = 29400;

/// Memory per container: YARN requires one; 2 GiB per CPU, at least 4 GiB.
fn memory_mb(cpus: usize) -> usize {
    (2048 * cpus).max(4096)
}

/// Renders YARN service specs.
#[derive(Debug, Clone, Default)]
pub struct Yarn;

/// The service spec for `spec`; every process gets `token` (the spec file holds it,
/// as YARN keeps the spec: readable by the user who launched it).
pub fn service(spec: &LaunchSpec, token: &str) -> Value {
    let name = crate::spec::dns_label(&spec.name, 40);
    let job_file = spec.job_file.display().to_string();
    let command = std::iter::once(spec.exe.display().to_string())
        .chain(spec.process_args(&job_file))
        .map(|a| crate::spec::shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    // YARN runs launch_command in bash, after substituting ${COMPONENT_ID} (the
    // container's index in its component).
    let component = |role: &str, count: usize, offset: usize, gpus: usize| {
        let mut resource = json!({"cpus": spec.cpus_per_worker, "memory": memory_mb(spec.cpus_per_worker).to_string()});
        if gpus > 0 {
            resource["additional"] = json!({"yarn.io/gpu": {"value": gpus}});
        }
        json!({
            "name": role,
            "number_of_containers": count,
            "restart_policy": "NEVER",
            "launch_command": format!("export DLC_RANK=$(({offset} + ${{COMPONENT_ID}})); cd {} && exec {command}", crate::spec::shell_quote(&spec.workdir.display().to_string())),
            "resource": resource,
        })
    };
    let mut components = vec![component("worker", spec.workers, 0, spec.gpus_per_worker)];
    if spec.servers > 0 {
        components.push(component("server", spec.servers, spec.workers, 0));
    }
    json!({
        "name": name,
        "version": "1.0",
        "lifetime": spec.time_limit.map_or(-1, |t| t.as_secs() as i64),
        "configuration": {
            "env": {
                "DLC_WORLD_SIZE": spec.world().to_string(),
                "DLC_COORDINATOR": format!("worker-0.${{SERVICE_NAME}}.${{USER}}.${{DOMAIN}}:{}", spec.port.unwrap_or(COORDINATOR_PORT)),
                "DLC_HOST_COORDINATOR": "1",
                "DLC_JOB_ID": "${SERVICE_NAME}",
                "DLC_JOB_TOKEN": token,
            },
            // One application attempt: a failed service is not restarted behind our back.
            "properties": {"yarn.service.am-restart.max-attempts": "1"},
        },
        "components": components,
    })
}

impl ResourceManager for Yarn {
    fn name(&self) -> &'static str {
        "yarn"
    }

    fn assigns_threads(&self) -> bool {
        true
    }

    fn check(&self, spec: &LaunchSpec) -> Result<(), ManagerError> {
        if spec.max_restarts > 0 || spec.min_workers.is_some() {
            return Err(ManagerError::Invalid(
                "--max-restarts and --min-workers are not rendered for YARN yet (untested \
                 without a YARN cluster): resubmit the service, or use local, Slurm, Ray or \
                 Spark"
                    .into(),
            ));
        }
        Ok(())
    }

    fn render(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        let token = dlc_comm::auth::JobKey::random_token();
        let text = serde_json::to_string_pretty(&service(spec, &token))
            .map_err(|e| ManagerError::Invalid(format!("rendering the YARN service: {e}")))?;
        Ok(text + "\n")
    }

    fn submit(&self, spec: &LaunchSpec) -> Result<String, ManagerError> {
        Err(ManagerError::Invalid(format!(
            "dlc does not submit to YARN (there is no YARN to test against here): save the \
             service spec and launch it yourself:\n  dlc launch --manager yarn --dry-run … > {0}.json\n  \
             yarn app -launch {0} {0}.json",
            crate::spec::dns_label(&spec.name, 40)
        )))
    }

    fn status(&self, id: &str) -> Result<crate::JobStatus, ManagerError> {
        Err(ManagerError::Invalid(format!(
            "dlc does not track YARN services: yarn app -status {id}"
        )))
    }

    fn logs(&self, id: &str) -> Result<String, ManagerError> {
        Err(ManagerError::Invalid(format!(
            "dlc does not track YARN services: yarn logs -applicationId <the id of {id}>"
        )))
    }

    fn cancel(&self, id: &str) -> Result<(), ManagerError> {
        Err(ManagerError::Invalid(format!(
            "dlc does not track YARN services: yarn app -stop {id}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields the YARN Services API documents (Hadoop 3.1+, YarnServiceAPI.md):
    /// Service, Component, Resource, ResourceInformation, Configuration.
    const SERVICE: &[&str] = &["name", "version", "lifetime", "configuration", "components"];
    const COMPONENT: &[&str] = &[
        "name",
        "number_of_containers",
        "restart_policy",
        "launch_command",
        "resource",
    ];
    const RESOURCE: &[&str] = &["cpus", "memory", "additional"];
    const CONFIGURATION: &[&str] = &["env", "properties"];

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect()
    }

    fn only(v: &Value, allowed: &[&str], what: &str) {
        for k in keys(v) {
            assert!(
                allowed.contains(&k),
                "{what} has `{k}`, not a documented field"
            );
        }
    }

    #[test]
    fn the_service_uses_only_documented_fields_and_gives_every_rank_its_place() {
        let mut spec = crate::ray::tests::spec();
        spec.time_limit = Some(std::time::Duration::from_secs(7200));
        let s = service(&spec, "t0ken");
        only(&s, SERVICE, "Service");
        only(&s["configuration"], CONFIGURATION, "Configuration");
        assert_eq!(s["name"], "my-job");
        assert_eq!(s["lifetime"], 7200);
        let env = &s["configuration"]["env"];
        assert_eq!(env["DLC_WORLD_SIZE"], "4");
        assert_eq!(env["DLC_JOB_TOKEN"], "t0ken");
        assert_eq!(
            env["DLC_COORDINATOR"],
            "worker-0.${SERVICE_NAME}.${USER}.${DOMAIN}:29400"
        );
        let comps = s["components"].as_array().unwrap();
        assert_eq!(comps.len(), 2);
        for c in comps {
            only(c, COMPONENT, "Component");
            only(&c["resource"], RESOURCE, "Resource");
            assert_eq!(c["restart_policy"], "NEVER");
            // memory is a string of MB in the API.
            assert!(c["resource"]["memory"].is_string(), "{c}");
        }
        let (w, ps) = (&comps[0], &comps[1]);
        assert_eq!(
            (w["name"].as_str(), w["number_of_containers"].as_u64()),
            (Some("worker"), Some(3))
        );
        assert_eq!(w["resource"]["additional"]["yarn.io/gpu"]["value"], 1);
        assert_eq!(w["resource"]["cpus"], 2);
        let cmd = w["launch_command"].as_str().unwrap();
        assert!(
            cmd.starts_with("export DLC_RANK=$((0 + ${COMPONENT_ID})); cd /work && exec /opt/dlc worker /jobs/m.toml --threads 2 --out /runs/r"),
            "{cmd}"
        );
        assert_eq!(
            (ps["name"].as_str(), ps["number_of_containers"].as_u64()),
            (Some("server"), Some(1))
        );
        assert!(
            ps["resource"].get("additional").is_none(),
            "servers take no GPU"
        );
        assert!(
            ps["launch_command"]
                .as_str()
                .unwrap()
                .starts_with("export DLC_RANK=$((3 + ${COMPONENT_ID}));"),
            "{ps}"
        );
    }

    #[test]
    fn the_rank_arithmetic_and_quoting_work_in_bash() {
        // What YARN does to launch_command: substitute ${COMPONENT_ID}, run in bash.
        let mut spec = crate::ray::tests::spec();
        spec.exe = "/bin/echo".into();
        spec.workdir = "/".into();
        spec.servers = 0;
        let s = service(&spec, "t");
        let cmd = s["components"][0]["launch_command"]
            .as_str()
            .unwrap()
            .replace("${COMPONENT_ID}", "2")
            .replace("exec /bin/echo", "exec /bin/echo \"$DLC_RANK\"");
        let out = std::process::Command::new("bash")
            .args(["-c", &cmd])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("2 worker /jobs/m.toml"), "{text}");
    }
}

//! The deploy files in `deploy/` as a user applies them: the Kubernetes manifests parse
//! as YAML and hold together (selectors, service names, ports, probes on routes `serve`
//! answers, the ordinal → `-p` and headless service → hostfile wiring, run for real under
//! `sh`), and the Dockerfile ships what `serve` needs. No live cluster is needed.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use yaml_rust2::{Yaml, YamlLoader};

fn manifests() -> Vec<Yaml> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
            docs.extend(parsed);
        }
    }
    docs
}

fn kind<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

fn text<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what} is not a list: {y:?}"))
}

/// Every `label: value` of `selector` is among `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let selector = selector.as_hash().expect("a selector is a map");
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels[k.as_str().unwrap()] == *v)
}

/// Field types of the Kubernetes API objects the manifests use, for the fields they use:
/// a misspelt or misplaced field would be silently ignored by a lenient reader.
#[test]
fn every_manifest_has_the_fields_its_kind_needs() {
    let docs = manifests();
    let kinds: BTreeSet<_> = docs.iter().map(|d| text(&d["kind"], "kind")).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["Service", "StatefulSet", "ServiceMonitor"]),
        "the manifests hold these kinds"
    );
    for d in &docs {
        let kind = text(&d["kind"], "kind");
        let api = text(&d["apiVersion"], "apiVersion");
        let expected = match kind {
            "Service" => "v1",
            "StatefulSet" => "apps/v1",
            "ServiceMonitor" => "monitoring.coreos.com/v1",
            _ => unreachable!(),
        };
        assert_eq!(api, expected, "{kind}'s apiVersion");
        let name = text(&d["metadata"]["name"], "metadata.name");
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name:?} is a DNS label"
        );
        if kind == "Service" {
            for port in list(&d["spec"]["ports"], "Service ports") {
                assert!(port["port"].as_i64().is_some(), "{name}: a port number");
                text(&port["name"], "port name");
            }
        }
    }
}

#[test]
fn statefulset_services_probes_and_monitor_fit_together() {
    let docs = manifests();
    let set = kind(&docs, "StatefulSet", "tidewatch");
    let spec = &set["spec"];
    let template = &spec["template"];
    let labels = &template["metadata"]["labels"];
    assert!(
        selects(&spec["selector"]["matchLabels"], labels),
        "the StatefulSet selects its pods"
    );
    assert_eq!(
        spec["podManagementPolicy"].as_str(),
        Some("Parallel"),
        "pods start together: none is ready before the cluster forms"
    );

    // The headless service that names the peers.
    let peers = kind(&docs, "Service", text(&spec["serviceName"], "serviceName"));
    assert_eq!(
        peers["spec"]["clusterIP"].as_str(),
        Some("None"),
        "headless"
    );
    assert_eq!(
        peers["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert!(selects(&peers["spec"]["selector"], labels));

    let containers = list(&template["spec"]["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let ports: Vec<(&str, i64)> = list(&c["ports"], "container ports")
        .iter()
        .map(|p| {
            (
                text(&p["name"], "port name"),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    let port_named = |name: &str| {
        ports
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no container port named {name}"))
            .1
    };
    assert_eq!(port_named("http"), 9000, "serve's APP_PORT");
    assert_eq!(
        port_named("timely"),
        2101,
        "timely's port, as in the hostfile"
    );
    for p in list(&peers["spec"]["ports"], "peer ports") {
        port_named(text(&p["targetPort"], "targetPort"));
    }

    // Probes name routes serve answers, on the HTTP port.
    let mut probed = BTreeSet::new();
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["port"].as_str(), Some("http"), "{probe} port");
        probed.insert(text(&get["path"], "probe path"));
    }
    assert_eq!(probed, BTreeSet::from(["/health/live", "/health/ready"]));

    // The client-facing service and the monitor scraping it.
    let ingest = kind(&docs, "Service", "tidewatch");
    assert!(selects(&ingest["spec"]["selector"], labels));
    let http = list(&ingest["spec"]["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("an http port");
    assert_eq!(http["targetPort"].as_str(), Some("http"));
    let monitor = kind(&docs, "ServiceMonitor", "tidewatch");
    assert!(
        selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &ingest["metadata"]["labels"]
        ),
        "the ServiceMonitor selects the service"
    );
    let endpoints = list(&monitor["spec"]["endpoints"], "endpoints");
    assert_eq!(endpoints[0]["port"].as_str(), Some("http"));
    assert_eq!(endpoints[0]["path"].as_str(), Some("/metrics"));

    // State that must outlive a pod is on its claim.
    let mounts = list(&c["volumeMounts"], "volumeMounts");
    let claims = list(&spec["volumeClaimTemplates"], "volumeClaimTemplates");
    for m in mounts {
        let name = text(&m["name"], "mount name");
        assert!(claims
            .iter()
            .any(|v| v["metadata"]["name"].as_str() == Some(name)));
    }
}

/// The container's start script, run under `sh` as the pod of ordinal 1 would run it,
/// with `tidewatch` standing in as a script that prints its arguments: `-p` is the
/// ordinal, `-n` the process count, the hostfile lists every pod's stable DNS name under
/// the headless service in ordinal order, and every flag exists in `serve --help`.
#[cfg(unix)]
#[test]
fn the_start_script_turns_the_pod_ordinal_into_cluster_flags() {
    let docs = manifests();
    let set = kind(&docs, "StatefulSet", "tidewatch");
    let c = &list(&set["spec"]["template"]["spec"]["containers"], "containers")[0];
    let command: Vec<&str> = list(&c["command"], "command")
        .iter()
        .map(|y| text(y, "command"))
        .collect();
    assert_eq!(command, ["/bin/sh", "-c"]);
    let script = text(&list(&c["args"], "args")[0], "script");
    let env = |name: &str| -> String {
        let e = list(&c["env"], "env")
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no env {name}"));
        text(&e["value"], name).to_owned()
    };
    let processes = env("TIDEWATCH_PROCESSES");
    let replicas = set["spec"]["replicas"].as_i64().unwrap();
    assert_eq!(processes, replicas.to_string(), "one process per replica");

    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("tidewatch");
    std::fs::write(
        &fake,
        "#!/bin/sh\nprintf '%s\\n' \"$@\"\necho ---\ncat /tmp/hosts\necho ---\ncat /tmp/ingest\n",
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
        .env(
            "HOSTNAME",
            format!("{}-1", text(&set["metadata"]["name"], "name")),
        )
        .env("TIDEWATCH_PROCESSES", &processes)
        .env("TIDEWATCH_THREADS", env("TIDEWATCH_THREADS"))
        .env("POD_NAMESPACE", "prod")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut parts = printed.split("---\n");
    let args: Vec<&str> = parts.next().unwrap().lines().collect();
    let hosts: Vec<&str> = parts.next().unwrap().lines().collect();
    let ingest: Vec<&str> = parts.next().unwrap().lines().collect();
    let flag = |f: &str| {
        args[args
            .iter()
            .position(|a| *a == f)
            .unwrap_or_else(|| panic!("no {f}"))
            + 1]
    };
    assert_eq!(args[0], "serve");
    assert_eq!(flag("-p"), "1", "the ordinal");
    assert_eq!(flag("-n"), processes);
    assert_eq!(flag("--ingest"), "every-process");
    let service = text(&set["spec"]["serviceName"], "serviceName");
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("tidewatch-{i}.{service}.prod.svc.cluster.local:2101"))
        .collect();
    assert_eq!(
        hosts, expected,
        "the hostfile names every pod in ordinal order"
    );
    assert_eq!(ingest.len(), replicas as usize);
    assert!(
        ingest.iter().all(|a| *a == "0.0.0.0:9000"),
        "each pod on the container port"
    );

    let help = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for a in args.iter().filter(|a| a.starts_with('-')) {
        assert!(
            help.contains(&format!("{a} "))
                || help.contains(&format!("{a},"))
                || help.contains(&format!("{a}\n")),
            "serve --help has no {a}"
        );
    }
}

/// The image holds the binary and the shipped models where `serve`'s defaults look, and
/// exposes the ports the manifests use.
#[test]
fn the_dockerfile_ships_the_binary_and_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let stages: Vec<&str> = file.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a slim run stage: {stages:?}"
    );
    assert!(file.contains("cargo build --release --locked --bin tidewatch"));
    assert!(
        file.contains("COPY models ./models"),
        "the default model is shipped"
    );
    assert!(root.join("models/default/model.json").exists());
    let workdir = file
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("WORKDIR "))
        .unwrap();
    assert_eq!(workdir, "/opt/tidewatch", "models/<name> resolves under it");
    let exposed: BTreeSet<&str> = file
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(exposed, BTreeSet::from(["2101", "9000"]));
    assert!(file.contains(r#"ENTRYPOINT ["tidewatch"]"#));
    let ignore = std::fs::read_to_string(root.join("deploy/Dockerfile.dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "target"),
        "the build context leaves target/ out"
    );
}

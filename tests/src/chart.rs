//! The Helm chart without a cluster: `helm template` of `helm/pgtrail`, and its containers run
//! here as their pods would run them.
//!
//! Owns [`Rendered`] (the manifests, read as JSON through the tools venv's PyYAML) and
//! [`Pod`] (one container's command, arguments, environment and mounts, laid out under a
//! directory that stands for the pod's file system). A mount's files are written where the
//! pod would see them (ConfigMap keys, the test's stand-ins for Secrets, emptyDirs, hostPath
//! directories as links), and every path the pod would use is moved under that directory,
//! in the arguments and in the mounted config files alike; nothing else is changed. Must not:
//! fix up what the chart renders (a mismatch between chart and binary must fail here).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::objstore::tools_dir;
use crate::workspace_root;

/// The manifests of one `helm template`.
pub struct Rendered {
    docs: Vec<Value>,
}

impl Rendered {
    /// Renders the chart with `values` (release name `pgtrail`).
    pub fn render(values: &Path) -> Rendered {
        let out = Command::new(tools_dir().join("bin/helm"))
            .args(["template", "pgtrail"])
            .arg(workspace_root().join("helm/pgtrail"))
            .arg("-f")
            .arg(values)
            .output()
            .expect("helm (scripts/install-deps installs it)");
        assert!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut py = Command::new(tools_dir().join("venv/bin/python"))
            .args([
                "-c",
                "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python with PyYAML (the tools venv)");
        py.stdin
            .take()
            .expect("stdin")
            .write_all(&out.stdout)
            .expect("manifests to python");
        let mut json = String::new();
        py.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut json)
            .expect("json");
        assert!(
            py.wait().expect("python").success(),
            "YAML of the manifests"
        );
        Rendered {
            docs: serde_json::from_str(&json).expect("manifests as JSON"),
        }
    }

    /// The manifest of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
    }

    /// Container `container` of the pod template of `kind`/`name` (a bare Pod's own spec).
    pub fn pod(&self, kind: &str, name: &str, container: &str) -> Pod {
        let doc = self.get(kind, name);
        let spec = if kind == "Pod" {
            &doc["spec"]
        } else {
            &doc["spec"]["template"]["spec"]
        };
        let c = spec["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .find(|c| c["name"] == container)
            .unwrap_or_else(|| panic!("no container {container} in {kind} {name}"))
            .clone();
        Pod {
            spec: spec.clone(),
            container: c,
        }
    }
}

/// One container of a rendered pod.
pub struct Pod {
    spec: Value,
    /// The container's manifest.
    pub container: Value,
}

/// A pod's file system laid out under a directory: ConfigMap and Secret files written at
/// their mount paths (moved under the root), the pod's paths in arguments and config files
/// moved the same way.
pub struct Laid {
    /// The program (`pgtrail-processor` or `pgtrail-shipper`, a binary of this build).
    pub command: String,
    /// Its arguments, `$(VAR)` expanded from the container's `env` values, paths moved.
    pub args: Vec<String>,
    /// Where each mount path of the pod lies here.
    pub moved: Vec<(String, PathBuf)>,
}

impl Pod {
    /// The port a probe or the container names (`metrics`).
    pub fn port(&self, name: &str) -> u16 {
        self.container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no port {name}")) as u16
    }

    /// Lays the pod out under `root`: `rendered` gives its ConfigMaps, `secrets` stands for the
    /// cluster's Secrets (name -> key -> content).
    pub fn lay_out(
        &self,
        rendered: &Rendered,
        root: &Path,
        secrets: &HashMap<&str, HashMap<&str, &str>>,
    ) -> Laid {
        let mounts = self.container["volumeMounts"].as_array().cloned();
        let mut moved: Vec<(String, PathBuf)> = Vec::new();
        let mut configs = Vec::new();
        for m in mounts.unwrap_or_default() {
            let mount = m["mountPath"].as_str().expect("mountPath").to_owned();
            let here = root.join(mount.trim_start_matches('/'));
            let volume = self.spec["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("no volume {}", m["name"]))
                .clone();
            if let Some(name) = volume["configMap"]["name"].as_str() {
                let data = &rendered.get("ConfigMap", name)["data"];
                if let Some(sub) = m["subPath"].as_str() {
                    write(&here, data[sub].as_str().expect("configMap key"));
                    configs.push(here.clone());
                } else {
                    for (k, v) in data.as_object().expect("data") {
                        write(&here.join(k), v.as_str().expect("text"));
                        configs.push(here.join(k));
                    }
                }
            } else if let Some(name) = volume["secret"]["secretName"].as_str() {
                let keys = secrets.get(name).unwrap_or_else(|| {
                    panic!("the pod mounts Secret {name}, which the test has not")
                });
                for (k, v) in keys {
                    write(&here.join(k), v);
                }
            } else if let Some(host) = volume["hostPath"]["path"].as_str() {
                std::fs::create_dir_all(host).expect("hostPath");
                std::fs::create_dir_all(here.parent().expect("parent")).expect("mount parent");
                std::os::unix::fs::symlink(host, &here).expect("hostPath mount");
            } else {
                std::fs::create_dir_all(&here).expect("emptyDir");
            }
            moved.push((mount, here));
        }
        // Longest mount paths first: a path under two mounts moves with the inner one.
        moved.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
        let relocate = |text: &str| relocate(text, &moved);
        for c in configs {
            let text = std::fs::read_to_string(&c).expect("config");
            std::fs::write(&c, relocate(&text)).expect("config");
        }
        let env: HashMap<String, String> = self.container["env"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let expand = |a: &str| -> String {
            env.iter()
                .fold(a.to_owned(), |s, (k, v)| s.replace(&format!("$({k})"), v))
        };
        let command = self.container["command"][0].as_str().expect("command");
        let args = self.container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| relocate(&expand(a.as_str().expect("arg"))))
            .collect();
        Laid {
            command: command.to_owned(),
            args,
            moved,
        }
    }
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-')
}

/// `text` with every whole path at or under a mount path moved (one pass: a moved path is not
/// moved again).
fn relocate(text: &str, moved: &[(String, PathBuf)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let hit = moved.iter().find(|(m, _)| {
            rest.starts_with(m.as_str())
                && !prev.is_some_and(path_char)
                && rest[m.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| c == '/' || !path_char(c))
        });
        if let Some((m, here)) = hit {
            out.push_str(&here.to_string_lossy());
            i += m.len();
            prev = m.chars().last();
        } else {
            let c = rest.chars().next().expect("char");
            out.push(c);
            i += c.len_utf8();
            prev = Some(c);
        }
    }
    out
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mount dir");
    std::fs::write(path, text).expect("mounted file");
}

/// `GET path` on 127.0.0.1:`port`: status code and body (`None`: no answer).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, text))
}

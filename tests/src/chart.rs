//! The Helm chart without a cluster: `helm template` of `helm/pgtrail`, and its containers run
//! here as their pods would run them.
//!
//! Owns [`Rendered`] (the manifests, read as JSON through the tools venv's PyYAML) and
//! [`Pod`] (one container's command, arguments, environment and mounts, laid out under a
//! directory that stands for the pod's file system). A mount's files are written where the
//! pod would see them (ConfigMap keys, the test's stand-ins for Secrets, emptyDirs, hostPath
//! directories as links), and every path the pod would use is moved under that directory,
//! in the arguments and in the mounted config files alike; nothing else is changed.
//! [`Confined`] then runs the container's binary as the pod's security context says: as its
//! numeric user and groups, without capabilities, and with the root file system read-only
//! but for the pod's writable volumes (a private mount namespace, `unshare` and `setpriv`).
//! Must not: fix up what the chart renders (a mismatch between chart and binary must fail
//! here).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
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
    /// The directories the pod can write (emptyDirs, hostPaths not mounted read-only).
    pub writable: Vec<PathBuf>,
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
        let mut writable = Vec::new();
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
                if m["readOnly"] != true {
                    writable.push(PathBuf::from(host));
                }
            } else {
                // An emptyDir: writable by every user, as the kubelet creates it.
                std::fs::create_dir_all(&here).expect("emptyDir");
                std::fs::set_permissions(&here, std::fs::Permissions::from_mode(0o777))
                    .expect("emptyDir mode");
                writable.push(here.clone());
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
            writable,
        }
    }

    /// Who the container runs as: its security context over the pod's.
    pub fn run_as(&self) -> RunAs {
        let (pod, own) = (
            &self.spec["securityContext"],
            &self.container["securityContext"],
        );
        let id = |key: &str| -> Option<u32> {
            own[key]
                .as_u64()
                .or_else(|| pod[key].as_u64())
                .map(|n| u32::try_from(n).expect("id"))
        };
        let uid = id("runAsUser").expect("runAsUser (the image's user must be numeric)");
        // The kubelet adds fsGroup and supplementalGroups to the process's groups.
        let mut groups: Vec<u32> = pod["fsGroup"]
            .as_u64()
            .into_iter()
            .chain(
                pod["supplementalGroups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64),
            )
            .map(|n| u32::try_from(n).expect("group"))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        RunAs {
            uid,
            gid: id("runAsGroup").unwrap_or(uid),
            groups,
            read_only_root: own["readOnlyRootFilesystem"] == true,
            no_new_privs: own["allowPrivilegeEscalation"] == false,
        }
    }
}

/// The identity and limits a container runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Numeric user.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Supplementary groups (fsGroup, supplementalGroups).
    pub groups: Vec<u32>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
}

/// A container's binary run as its pod would run it.
pub struct Confined {
    /// The program to start (`unshare`).
    pub program: PathBuf,
    /// Its arguments (the mount script, then the binary and its arguments).
    pub args: Vec<String>,
}

impl Confined {
    /// `laid`'s binary (hard-linked or copied into `image`, a directory every user can read,
    /// as the image's) run as `run_as`: in a private mount namespace whose root file system is
    /// read-only but for the pod's writable volumes, then with the user's ids, no
    /// capabilities and (as `allowPrivilegeEscalation: false` asks) no new privileges.
    pub fn new(laid: &Laid, run_as: &RunAs, image: &Path) -> Confined {
        std::fs::create_dir_all(image).expect("image dir");
        let built = crate::process::binary(&laid.command);
        let exe = image.join(&laid.command);
        if !exe.exists() && std::fs::hard_link(&built, &exe).is_err() {
            std::fs::copy(&built, &exe).expect("copy binary");
        }
        let mut script = String::from("set -e\n");
        for dir in &laid.writable {
            let d = dir.to_str().expect("utf-8 path");
            assert!(!d.contains('\''), "{d}");
            script.push_str(&format!("mount --bind '{d}' '{d}'\n"));
        }
        if run_as.read_only_root {
            script.push_str("mount -o remount,bind,ro /\n");
        }
        let groups = if run_as.groups.is_empty() {
            "--clear-groups".to_owned()
        } else {
            let g: Vec<String> = run_as.groups.iter().map(u32::to_string).collect();
            format!("--groups={}", g.join(","))
        };
        let nnp = if run_as.no_new_privs {
            "--no-new-privs"
        } else {
            ""
        };
        script.push_str(&format!(
            "exec setpriv --reuid={} --regid={} {groups} {nnp} --inh-caps=-all --bounding-set=-all -- \"$0\" \"$@\"\n",
            run_as.uid, run_as.gid
        ));
        let mut args = vec![
            "--mount".to_owned(),
            "--propagation".to_owned(),
            "private".to_owned(),
            "--".to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            script,
            exe.to_string_lossy().into_owned(),
        ];
        args.extend(laid.args.iter().cloned());
        Confined {
            program: PathBuf::from("unshare"),
            args,
        }
    }
}

/// The real user id of process `pid` and whether its root file system is mounted read-only
/// (what the kubelet would have given it).
pub fn identity(pid: u32) -> (u32, bool) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("Uid");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    // Fields: id parent major:minor root mount-point options ...
    let root_ro = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    });
    (uid, root_ro)
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

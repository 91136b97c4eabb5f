//! Plugins end to end: the example plugins loaded through a manifest and called over REST, and
//! every load-time and run-time failure the ABI defines.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Server, repo_root, request, run, temp_dir};

/// The example plugin libraries, built by `cargo build --workspace` next to the binary.
fn library(name: &str) -> PathBuf {
    let path = std::path::Path::new(super::bin()).with_file_name(format!("lib{name}.so"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

fn manifest(name: &str, body: &str) -> PathBuf {
    let path = temp_dir("plugins").join(format!("{name}.toml"));
    std::fs::write(&path, body).unwrap();
    path
}

fn scorer_entry(extra: &str) -> String {
    format!(
        "[[models]]\nname = \"scorer\"\nruntime = \"plugin\"\npath = \"{}\"\n{extra}[models.options]\nmodel_dir = \"{}\"\n",
        library("tabular_scorer").display(),
        repo_root().join("examples/models/scorer").display()
    )
}

fn edge_entry() -> String {
    format!(
        "[[models]]\nname = \"edge\"\nruntime = \"plugin\"\npath = \"{}\"\n[models.options]\non_demand_failures = true\n",
        library("edge_cases").display()
    )
}

fn edge_body(texts: &[&str]) -> String {
    json!({"inputs": [
        {"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts},
        {"name": "values", "shape": [2], "datatype": "FP64", "data": [1.5, -4.0]},
    ]})
    .to_string()
}

#[test]
fn the_tabular_scorer_matches_an_independent_reference() {
    let server = Server::start(&manifest("scorer", &scorer_entry("")), &[]);
    let model: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/models/scorer/model.json")).unwrap(),
    )
    .unwrap();
    let w: Vec<f64> = serde_json::from_value(model["coefficients"].clone()).unwrap();
    let b = model["intercept"].as_f64().unwrap();
    let rows = [
        [35.0, 52000.0, 0.2],
        [22.0, 18000.0, 0.9],
        [61.0, 120000.0, 0.05],
    ];
    let (status, body) = request(
        "POST",
        &server.url("/v2/models/scorer/infer"),
        Some(&json!({"inputs": [{"name": "features", "shape": [3, 3], "datatype": "FP32", "data": rows}]}).to_string()),
    );
    assert_eq!(status, 200, "{body}");
    let probability: Vec<f64> = serde_json::from_value(body["outputs"][0]["data"].clone()).unwrap();
    let labels = body["outputs"][1]["data"].as_array().unwrap();
    for ((row, p), label) in rows.iter().zip(&probability).zip(labels) {
        let z = b + row.iter().zip(&w).map(|(x, w)| x * w).sum::<f64>();
        let want = 1.0 / (1.0 + (-z).exp());
        assert!((p - want).abs() < 1e-5, "{p} vs {want}");
        assert_eq!(label, if want >= 0.5 { "approve" } else { "reject" });
    }
    let (_, meta) = request("GET", &server.url("/v2/models/scorer"), None);
    assert_eq!(meta["platform"], "oxinfer_plugin");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3]));
    // The host checks inputs against the plugin's metadata before calling it.
    let (status, body) = request(
        "POST",
        &server.url("/v2/models/scorer/infer"),
        Some(&json!({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).to_string()),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("does not match the model's [-1, 3]")
    );
}

#[test]
fn bytes_in_and_out_errors_and_panics_leave_the_server_serving() {
    let server = Server::start(&manifest("edge", &edge_entry()), &[]);
    let url = server.url("/v2/models/edge/infer");
    let (status, body) = request("POST", &url, Some(&edge_body(&["abc", "héllo", ""])));
    assert_eq!(status, 200, "{body}");
    let out = |name: &str| {
        body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap()["data"]
            .clone()
    };
    assert_eq!(out("upper"), json!(["ABC", "HéLLO", ""]));
    assert_eq!(out("lengths"), json!([3, 6, 0]));
    assert_eq!(out("doubled"), json!([3.0, -8.0]));
    assert_eq!(out("flags"), json!([false, true, true]));
    let (status, body) = request("POST", &url, Some(&edge_body(&["ok", "error"])));
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("asked to fail"),
        "{body}"
    );
    let (status, body) = request("POST", &url, Some(&edge_body(&["panic"])));
    assert_eq!(status, 500);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("plugin panicked: asked to panic"),
        "{body}"
    );
    // The next request succeeds, and the failure was logged with the plugin's name.
    let (status, _) = request("POST", &url, Some(&edge_body(&["fine"])));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(100));
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("plugin failed")
            && log.contains("plugin=\"edge\"")
            && log.contains("asked to panic"),
        "{log}"
    );
}

#[test]
fn a_plugin_that_is_not_thread_safe_never_runs_concurrently() {
    let server = Server::start(&manifest("serial", &edge_entry()), &[]);
    let url = server.url("/v2/models/edge/infer");
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || request("POST", &url, Some(&edge_body(&["slow"]))))
        })
        .collect();
    for t in threads {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let max = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "max_concurrent")
            .unwrap()["data"][0]
            .clone();
        assert_eq!(
            max,
            json!(1),
            "the host serialises calls to a plugin that is not thread-safe"
        );
    }
}

#[test]
fn every_load_failure_names_the_plugin_and_the_cause() {
    let dir = temp_dir("plugin-failures");
    let not_a_library = dir.join("libfake.so");
    std::fs::write(&not_a_library, b"not an ELF file").unwrap();
    let no_symbol = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("a system libm to stand for a library without the entry symbol");
    let entry = |path: &std::path::Path, extra: &str| {
        format!(
            "[[models]]\nname = \"p\"\nruntime = \"plugin\"\npath = \"{}\"\n{extra}",
            path.display()
        )
    };
    let mismatch = library("abi_mismatch");
    let cases: Vec<(&str, String, Option<&str>, Vec<String>)> = vec![
        (
            "missing",
            entry(&dir.join("libnope.so"), ""),
            None,
            vec!["file not found".into(), "libnope.so".into()],
        ),
        (
            "not-a-library",
            entry(&not_a_library, ""),
            None,
            vec!["cannot load plugin library".into(), "libfake.so".into()],
        ),
        (
            "no-symbol",
            entry(&no_symbol, ""),
            None,
            vec!["is not an oxinfer plugin: it does not export `oxinfer_plugin_entry`".into()],
        ),
        (
            "magic",
            entry(&mismatch, ""),
            Some("magic"),
            vec!["wrong magic value 0x0000000000001234".into()],
        ),
        (
            "major",
            entry(&mismatch, ""),
            Some("major"),
            vec![
                "was built for oxinfer plugin ABI 2.7, but this server speaks ABI 1.0".into(),
                "libabi_mismatch.so".into(),
            ],
        ),
        (
            "size",
            entry(&mismatch, ""),
            Some("size"),
            vec!["has a 16-byte table, smaller than".into()],
        ),
        (
            "sha256",
            scorer_entry(&format!("sha256 = \"{}\"\n", "ab".repeat(32))),
            None,
            vec!["sha256 mismatch".into(), "ab".repeat(32)],
        ),
        (
            "bad-options",
            entry(&library("edge_cases"), "[models.options]\nturbo = true\n"),
            None,
            vec![
                "plugin 'p'".into(),
                "invalid plugin options: unknown field `turbo`".into(),
            ],
        ),
    ];
    for (name, text, env, needles) in cases {
        let path = manifest(&format!("fail-{name}"), &text);
        let mut command = std::process::Command::new(super::bin());
        command.args(["check", "--manifest"]).arg(&path);
        if let Some(env) = env {
            command.env("OXINFER_TEST_ABI_MISMATCH", env);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: should fail");
        assert!(
            stderr.contains("model 'p'") || stderr.contains("model 'scorer'"),
            "{name}: {stderr}"
        );
        for needle in needles {
            assert!(stderr.contains(&needle), "{name}: '{needle}' in {stderr}");
        }
    }
    // And a correct pin loads.
    let sha = oxinfer_core_sha(&library("tabular_scorer"));
    let (ok, _, stderr) = run(
        &["check"],
        &manifest("pinned", &scorer_entry(&format!("sha256 = \"{sha}\"\n"))),
    );
    assert!(ok, "{stderr}");
}

fn oxinfer_core_sha(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_plugin_written_in_c_against_the_header_is_served() {
    let dir = temp_dir("c-plugin");
    let library = dir.join("libdoubler.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-I"])
        .arg(repo_root().join("docs"))
        .arg("-o")
        .arg(&library)
        .arg(repo_root().join("plugins/c-doubler/doubler.c"))
        .status()
        .expect("a C compiler (cc)");
    assert!(
        status.success(),
        "the C example plugin compiles against docs/oxinfer_plugin.h"
    );
    let server = Server::start(
        &manifest(
            "c",
            &format!(
                "[[models]]\nname = \"doubler\"\nruntime = \"plugin\"\npath = \"{}\"\n",
                library.display()
            ),
        ),
        &[],
    );
    let url = server.url("/v2/models/doubler/infer");
    let body = |data: &[f32]| {
        json!({"inputs": [{"name": "x", "shape": [data.len()], "datatype": "FP32", "data": data}]})
            .to_string()
    };
    let (status, out) = request("POST", &url, Some(&body(&[1.5, 0.0, 3.25])));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outputs"][0]["data"], json!([3.0, 0.0, 6.5]));
    let (status, out) = request("POST", &url, Some(&body(&[-1.0])));
    assert_eq!(status, 400);
    assert!(out["error"].as_str().unwrap().contains("negative input"));
}

#[test]
fn an_output_json_cannot_carry_counts_as_a_failure() {
    let server = Server::start(&manifest("edge", &edge_entry()), &[]);
    // `text` as raw binary data holding bytes that are not UTF-8; the plugin upper-cases them
    // into `upper`, which JSON cannot carry.
    let header = json!({"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
        {"name": "values", "shape": [1], "datatype": "FP64", "data": [1.0]},
    ]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[0xff, 0xfe]);
    let response = ureq::post(&server.url("/v2/models/edge/infer"))
        .set("Inference-Header-Content-Length", &header.len().to_string())
        .set("Content-Type", "application/octet-stream")
        .send_bytes(&body);
    let Err(ureq::Error::Status(status, response)) = response else {
        panic!("a non-UTF-8 output requested as JSON should fail");
    };
    assert_eq!(status, 400);
    let error: Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("not UTF-8"),
        "{error}"
    );
    // Counted as the failure it is, in statistics and metrics alike.
    let (_, stats) = request("GET", &server.url("/v2/models/edge/stats"), None);
    let s = &stats["model_stats"][0]["inference_stats"];
    assert_eq!(
        (s["success"]["count"].as_u64(), s["fail"]["count"].as_u64()),
        (Some(0), Some(1)),
        "{stats}"
    );
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains(
            "oxinfer_requests_total{model=\"edge\",outcome=\"failure\",protocol=\"http\",version=\"1\"} 1"
        ),
        "{metrics}"
    );
}

//! KServe v1 and the Open Inference Protocol (REST) in-process: each answer equals what
//! `/explain` and `/predict` give for the same photographs and options, over JSON and binary
//! tensors, images and preprocessed tensors, every output alone; refusals come in the
//! protocols' shape; keys guard the model routes. The real clients (tritonclient, KServe's SDK)
//! against the real binary are in tests/e2e/protocols.rs.

use crate::support::*;
use axum::body::Body;
use axum::http::Request;
use gradcam_serve::backend::ExplainOptions;
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `/explain`'s JSON answer for a photo.
async fn explained(app: &axum::Router, photo: &[u8], query: &str) -> Value {
    let a = send(
        app,
        upload(&format!("/explain?{query}"), "image/png", photo.to_vec()),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
}

fn overlay_options(top_k: usize) -> ExplainOptions {
    ExplainOptions {
        top_k,
        ..Default::default()
    }
}

#[tokio::test]
async fn kserve_v1_answers_as_predict_and_explain_do() {
    let (app, _) = app(&[]);
    let name = model_name(&app).await;
    let ready = send(&app, get(&format!("/v1/models/{name}"))).await;
    assert_eq!(ready.json(), json!({ "name": name, "ready": true }));

    let photos = [fixture_bytes("chelsea.png"), fixture_bytes("camera.png")];
    let instances: Vec<Value> = photos.iter().map(|p| json!({ "b64": b64(p) })).collect();
    let a = send(
        &app,
        post_json(
            &format!("/v1/models/{name}:predict"),
            &json!({ "instances": instances, "top_k": 3 }),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let predictions = a.json()["predictions"].clone();
    for (i, photo) in photos.iter().enumerate() {
        let want = expected(photo, overlay_options(1)).predictions;
        assert_eq!(predictions[i], as_json(&want[..3]), "instance {i}");
    }

    // :explain, with the first photo also as the network's input (nested lists, 3 x S x S).
    let (_, x) = prepared(&photos[0]);
    let side = ((x.len() / 3) as f64).sqrt() as usize;
    let nested: Vec<Vec<Vec<f32>>> = x
        .chunks(side * side)
        .map(|plane| plane.chunks(side).map(<[f32]>::to_vec).collect())
        .collect();
    let doc = json!({ "instances": [instances[0], nested], "top_k": 2 });
    let a = send(&app, post_json(&format!("/v1/models/{name}:explain"), &doc)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    let direct = explained(&app, &photos[0], "top_k=2").await;
    for i in 0..2 {
        let body = json!({
            "predictions": v["predictions"][i],
            "explanations": v["explanations"][i],
        });
        assert_explained(
            &format!("instance {i}"),
            &body,
            &photos[0],
            overlay_options(2),
        );
    }
    for k in 0..2 {
        assert_eq!(
            v["explanations"][0][k]["overlay_png"], direct["explanations"][k]["overlay_png"],
            "the image's overlay is /explain's"
        );
        assert!(
            v["explanations"][1][k].get("overlay_png").is_none(),
            "a tensor has no picture to draw on"
        );
    }
}

/// The outputs of an OIP answer by name: (datatype, shape, values), binary data read back.
fn outputs(a: &Answer) -> Vec<(String, String, Vec<usize>, Value)> {
    let (head, mut binary) = match a.headers.get("inference-header-content-length") {
        None => (a.json(), &a.body[a.body.len()..]),
        Some(n) => {
            let n: usize = n.to_str().unwrap().parse().unwrap();
            assert_eq!(a.header("content-type"), "application/octet-stream");
            (serde_json::from_slice(&a.body[..n]).unwrap(), &a.body[n..])
        }
    };
    let mut out = Vec::new();
    for o in head["outputs"].as_array().unwrap() {
        let shape: Vec<usize> = serde_json::from_value(o["shape"].clone()).unwrap();
        let datatype = o["datatype"].as_str().unwrap().to_string();
        let data = match o["parameters"]["binary_data_size"].as_u64() {
            None => o["data"].clone(),
            Some(size) => {
                let (raw, rest) = binary.split_at(size as usize);
                binary = rest;
                decode_binary(&datatype, o["name"].as_str().unwrap(), raw)
            }
        };
        out.push((
            o["name"].as_str().unwrap().to_string(),
            datatype,
            shape,
            data,
        ));
    }
    assert!(binary.is_empty(), "binary data left over");
    out
}

/// Binary tensor data as the JSON form of the same tensor (BYTES: text as strings, pictures as
/// base64).
fn decode_binary(datatype: &str, name: &str, mut raw: &[u8]) -> Value {
    match datatype {
        // As the JSON answer writes an f32: the shortest text that reads back the same.
        "FP32" => as_json(
            &raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>(),
        ),
        "INT64" => json!(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
        ),
        _ => {
            let mut items = Vec::new();
            while !raw.is_empty() {
                let n = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
                let bytes = &raw[4..4 + n];
                items.push(if name == "label" {
                    json!(String::from_utf8(bytes.to_vec()).unwrap())
                } else {
                    json!(b64(bytes))
                });
                raw = &raw[4 + n..];
            }
            Value::Array(items)
        }
    }
}

fn infer(path: &str, doc: &Value, binary: Option<&[u8]>) -> Request<Body> {
    let json = doc.to_string();
    match binary {
        None => post(path, "application/json", json),
        Some(bytes) => {
            let mut body = json.clone().into_bytes();
            body.extend_from_slice(bytes);
            Request::post(path)
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", json.len())
                .body(Body::from(body))
                .unwrap()
        }
    }
}

#[tokio::test]
async fn oip_answers_equal_explain_in_json_and_binary_and_each_output_alone() {
    let (app, _) = app(&[]);
    let name = model_name(&app).await;
    let path = format!("/v2/models/{name}/infer");
    let photos = [fixture_bytes("chelsea.png"), fixture_bytes("coffee.jpg")];
    let parameters = json!({ "top_k": 2, "method": "gradcam++" });
    let json_request = json!({
        "id": "two",
        "inputs": [{ "name": "image", "shape": [2], "datatype": "BYTES",
                     "data": photos.iter().map(|p| b64(p)).collect::<Vec<_>>() }],
        "parameters": parameters,
    });
    let a = send(&app, infer(&path, &json_request, None)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["id"], "two");
    assert_eq!(a.json()["model_name"], name);
    let all = outputs(&a);
    let names: Vec<&str> = all.iter().map(|o| o.0.as_str()).collect();
    let every = [
        "probabilities",
        "class_index",
        "label",
        "heatmap",
        "heatmap_normalized",
        "overlay",
    ];
    assert_eq!(names, every);

    // Against /explain, image by image.
    let (k, classes) = (2, all[0].2[1]);
    for (i, photo) in photos.iter().enumerate() {
        let want = explained(&app, photo, "top_k=2&method=gradcam%2B%2B").await;
        let probabilities = &all[0].3.as_array().unwrap()[i * classes..(i + 1) * classes];
        for p in want["predictions"].as_array().unwrap() {
            let index = p["index"].as_u64().unwrap() as usize;
            assert_eq!(probabilities[index], p["probability"], "image {i}");
        }
        for (j, e) in want["explanations"].as_array().unwrap().iter().enumerate() {
            assert_eq!(all[1].3[i * k + j], e["class_index"]);
            assert_eq!(all[2].3[i * k + j], e["label"]);
            let (h, w) = (all[3].2[2], all[3].2[3]);
            let cell = |o: usize| {
                let flat = all[o].3.as_array().unwrap();
                Value::Array(flat[(i * k + j) * h * w..(i * k + j + 1) * h * w].to_vec())
            };
            assert_eq!(cell(3), e["heatmap"]["data"], "image {i} class {j}");
            assert_eq!(cell(4), e["normalized"], "image {i} class {j}");
            assert_eq!(all[5].3[i * k + j], e["overlay_png"], "image {i} class {j}");
        }
    }

    // The same request with binary tensor data both ways reads back the same.
    let mut binary = Vec::new();
    for p in &photos {
        binary.extend_from_slice(&(p.len() as u32).to_le_bytes());
        binary.extend_from_slice(p);
    }
    let binary_request = json!({
        "id": "two",
        "inputs": [{ "name": "image", "shape": [2], "datatype": "BYTES",
                     "parameters": { "binary_data_size": binary.len() } }],
        "parameters": { "top_k": 2, "method": "gradcam++", "binary_data_output": true },
    });
    let a = send(&app, infer(&path, &binary_request, Some(&binary))).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(outputs(&a), all, "binary and JSON answers");

    // Each output alone, JSON and binary, is the same as in the whole answer.
    for (o, output) in every.iter().enumerate() {
        for binary_data in [false, true] {
            let mut doc = json_request.clone();
            doc["outputs"] =
                json!([{ "name": output, "parameters": { "binary_data": binary_data } }]);
            let a = send(&app, infer(&path, &doc, None)).await;
            assert_eq!(a.status, 200, "{output}: {}", a.text());
            assert_eq!(outputs(&a), vec![all[o].clone()], "{output} alone");
        }
    }

    // The first photo as the network's input, preprocessed (FP32 [1, 3, S, S]): the same.
    let (_, x) = prepared(&photos[0]);
    let side = ((x.len() / 3) as f64).sqrt() as usize;
    let doc = json!({
        "inputs": [{ "name": "input", "shape": [1, 3, side, side], "datatype": "FP32", "data": x }],
        "outputs": [{ "name": "class_index" }, { "name": "heatmap" }],
        "parameters": parameters,
    });
    let a = send(&app, infer(&path, &doc, None)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let got = outputs(&a);
    let h_w = all[3].2[2] * all[3].2[3];
    assert_eq!(got[0].3, json!(all[1].3.as_array().unwrap()[..k]));
    assert_eq!(got[1].3, json!(all[3].3.as_array().unwrap()[..k * h_w]));
}

#[tokio::test]
async fn metadata_and_readiness_name_the_model_and_its_tensors() {
    let (app, _) = app(&[]);
    let name = model_name(&app).await;
    for path in ["/v2/health/live", "/v2/health/ready", "/v2"] {
        assert_eq!(send(&app, get(path)).await.status, 200, "{path}");
    }
    for path in [
        format!("/v2/models/{name}"),
        format!("/v2/models/{name}/versions/1"),
    ] {
        let m = send(&app, get(&path)).await.json();
        assert_eq!(m["name"], name.as_str());
        assert_eq!(m["versions"], json!(["1"]));
        let inputs: Vec<&str> = m["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(inputs, ["image", "input"]);
        let ready = send(&app, get(&format!("{path}/ready"))).await;
        assert_eq!(ready.json(), json!({ "name": name, "ready": true }));
    }
}

#[tokio::test]
async fn refusals_come_in_the_protocols_shape_and_say_what_is_allowed() {
    let (app, _) = app(&[]);
    let name = model_name(&app).await;
    let infer_path = format!("/v2/models/{name}/infer");
    let photo = fixture_bytes("chelsea.png");
    let image = |extra: Value| {
        let mut doc = json!({
            "inputs": [{ "name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(&photo)] }],
        });
        doc.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        doc
    };
    let cases: Vec<(&str, Request<Body>, u16, &str)> = vec![
        (
            "another model",
            get("/v2/models/resnet7"),
            404,
            "this server serves",
        ),
        (
            "another version",
            get(&format!("/v2/models/{name}/versions/2/ready")),
            404,
            "version 1",
        ),
        ("unknown route", get("/v2/repository/index"), 404, ""),
        ("GET infer", get(&infer_path), 405, ""),
        (
            "not JSON",
            post(&infer_path, "application/json", "{"),
            400,
            "not valid",
        ),
        (
            "no input",
            post_json(&infer_path, &json!({ "inputs": [] })),
            400,
            "send one input",
        ),
        (
            "unknown output",
            post_json(
                &infer_path,
                &image(json!({ "outputs": [{ "name": "logits" }] })),
            ),
            400,
            "allowed: probabilities",
        ),
        (
            "invalid option",
            post_json(
                &infer_path,
                &image(json!({ "parameters": { "method": "magic" } })),
            ),
            422,
            "allowed:",
        ),
        (
            "overlay of a tensor",
            post_json(
                &infer_path,
                &json!({
                    "inputs": [{ "name": "input", "shape": [1, 3, 1, 1], "datatype": "FP32", "data": [0, 0, 0] }],
                }),
            ),
            400,
            "FP32 of shape [N, 3,",
        ),
        (
            "not an image",
            post_json(
                &infer_path,
                &json!({ "inputs": [{ "name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"plain text")] }] }),
            ),
            422,
            "",
        ),
        (
            "binary size past the body",
            infer(
                &infer_path,
                &json!({ "inputs": [{ "name": "image", "shape": [1], "datatype": "BYTES",
                                      "parameters": { "binary_data_size": 100 } }] }),
                Some(&[1, 0, 0, 0, 7]),
            ),
            400,
            "binary_data_size",
        ),
        (
            "no verb",
            post_json(&format!("/v1/models/{name}"), &json!({ "instances": [] })),
            404,
            ":predict",
        ),
        (
            "no instances",
            post_json(
                &format!("/v1/models/{name}:predict"),
                &json!({ "instances": [] }),
            ),
            400,
            "no image",
        ),
        (
            "an instance of neither kind",
            post_json(
                &format!("/v1/models/{name}:explain"),
                &json!({ "instances": [7] }),
            ),
            400,
            "an instance is",
        ),
        (
            "a tensor of the wrong size",
            post_json(
                &format!("/v1/models/{name}:predict"),
                &json!({ "instances": [[[[0.5]]]] }),
            ),
            422,
            "3 x",
        ),
    ];
    for (case, req, status, says) in cases {
        protocol_error(case, &send(&app, req).await, status, says);
    }
}

#[tokio::test]
async fn keys_guard_the_model_routes_and_leave_the_probes_open() {
    let (app, _) = app(&["--api-keys", "protocol-key"]);
    let with_key = |mut req: Request<Body>| {
        req.headers_mut()
            .insert("authorization", "Bearer protocol-key".parse().unwrap());
        req
    };
    let name = send(&app, with_key(get("/v1/models"))).await.json()["models"][0]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        "/v1/models".to_string(),
        format!("/v1/models/{name}"),
        format!("/v2/models/{name}"),
        format!("/v2/models/{name}/ready"),
    ] {
        let a = send(&app, get(&path)).await;
        protocol_error(&path, &a, 401, "");
        assert!(a.header("www-authenticate").starts_with("Bearer"), "{path}");
        assert_eq!(send(&app, with_key(get(&path))).await.status, 200, "{path}");
    }
    for path in ["/v2", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(send(&app, get(path)).await.status, 200, "{path}");
    }
}

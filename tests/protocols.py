"""The real server through the clients of the inference platforms: tritonclient (HTTP, binary
tensor data on and off; gRPC) and KServe's Python SDK (REST v1 :predict and :explain, REST v2,
JSON and binary; gRPC), against the server's own /explain and /predict for the same photographs
and options. Run by tests/e2e/protocols.rs:

    python tests/protocols.py URL GRPC_TARGET MODEL PHOTO...

Prints what it checked; exits non-zero at the first difference. Answers made in one batch and
in another may differ in the last bits of a float (the model's arithmetic follows the batch), so
numbers compare within 1e-5 relative (1e-7 absolute), pictures within one level on average.
"""

import asyncio
import base64
import io
import json
import sys
import urllib.request

import httpx
import numpy as np
import subprocess
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

URL, GRPC, MODEL = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
PHOTOS = [a for a in sys.argv[4:] if not a.startswith("--")]
OPTIONS = {"top_k": 2, "method": "gradcam++", "layer": "layer3"}
QUERY = "top_k=2&method=gradcam%2B%2B&layer=layer3"
OUTPUTS = ["probabilities", "class_index", "label", "heatmap", "heatmap_normalized", "overlay"]


def own(route, photo):
    req = urllib.request.Request(f"{URL}{route}", data=photo, headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req) as res:
        return json.load(res)


def close(what, got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    assert np.allclose(got, want, rtol=1e-5, atol=1e-7), f"{what}: max difference {np.abs(got - want).max()}"


def same_picture(what, got, want):
    a = np.asarray(Image.open(io.BytesIO(got)).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(io.BytesIO(want)).convert("RGB"), dtype=np.float64)
    assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
    assert np.abs(a - b).mean() <= 1.0, f"{what}: mean difference {np.abs(a - b).mean()}"


photos = [open(p, "rb").read() for p in PHOTOS]
explained = [own(f"/explain?{QUERY}", p) for p in photos]
predicted = [own("/predict?top_k=3", p) for p in photos]
k = OPTIONS["top_k"]


def check_outputs(client, outputs):
    """Every output of one answer for all the photos against /explain's."""
    for i, want in enumerate(explained):
        if "probabilities" in outputs:
            for p in want["predictions"]:
                close(f"{client} probability {p['index']}", outputs["probabilities"][i][p["index"]], p["probability"])
        for j, e in enumerate(want["explanations"]):
            at = f"{client} photo {i} class {j}"
            if "class_index" in outputs:
                assert int(outputs["class_index"][i][j]) == e["class_index"], at
            if "label" in outputs:
                label = outputs["label"][i][j]
                label = label.decode() if isinstance(label, bytes) else label
                assert label == e["label"], f"{at}: {label!r}"
            h, w = e["heatmap"]["height"], e["heatmap"]["width"]
            if "heatmap" in outputs:
                close(f"{at} heatmap", outputs["heatmap"][i][j], np.reshape(e["heatmap"]["data"], (h, w)))
            if "heatmap_normalized" in outputs:
                close(f"{at} normalized", outputs["heatmap_normalized"][i][j], np.reshape(e["normalized"], (h, w)))
            if "overlay" in outputs:
                picture = outputs["overlay"][i][j]
                picture = base64.b64decode(picture) if isinstance(picture, str) else picture
                same_picture(f"{at} overlay", picture, base64.b64decode(e["overlay_png"]))


def tritonclient_http():
    client = triton.InferenceServerClient(url=URL.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert [t["name"] for t in meta["inputs"]] == ["image", "input"], meta
    for binary in (True, False):
        image = triton.InferInput("image", [len(photos)], "BYTES")
        # In JSON a BYTES element is text: an image file goes in base64.
        data = photos if binary else [base64.b64encode(p).decode() for p in photos]
        image.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        wanted = [triton.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
        result = client.infer(MODEL, [image], outputs=wanted, parameters=OPTIONS)
        outputs = {n: result.as_numpy(n) for n in OUTPUTS}
        assert outputs["heatmap"].shape[:2] == (len(photos), k), outputs["heatmap"].shape
        check_outputs(f"tritonclient binary={binary}", outputs)
        print(f"tritonclient http, binary data {binary}: {len(photos)} photos, every output as /explain's")
        for name in OUTPUTS:
            alone = client.infer(MODEL, [image], outputs=[triton.InferRequestedOutput(name, binary_data=binary)],
                                 parameters=OPTIONS)
            got = alone.as_numpy(name)
            assert alone.get_response()["outputs"][0]["name"] == name and len(alone.get_response()["outputs"]) == 1
            check_outputs(f"tritonclient {name} alone", {name: got})
        print(f"tritonclient http, binary data {binary}: each output alone the same")
    # Bad input gets the protocol's error.
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    for outputs, says in [
        ([triton.InferRequestedOutput("logits")], "unknown output"),
        (None, "unrecognised image format"),
    ]:
        try:
            client.infer(MODEL, [image], outputs=outputs)
        except InferenceServerException as e:
            assert says in e.message(), e.message()
        else:
            raise AssertionError(f"tritonclient: {says} was answered")
    try:
        client.get_model_metadata("resnet7")
    except InferenceServerException as e:
        assert "serves" in e.message(), e.message()
    else:
        raise AssertionError("another model's metadata was answered")
    print("tritonclient http: bad input refused with the protocol's error")


def tritonclient_grpc():
    # tritonclient.grpc and KServe's SDK register the same protocol messages in protobuf's
    # global pool: each can be imported only in a process without the other (see the end).
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(url=GRPC)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert [t["name"] for t in meta["inputs"]] == ["image", "input"], meta
    # Over gRPC the images go as raw bytes, the answer in raw_output_contents (no base64).
    image = triton_grpc.InferInput("image", [len(photos)], "BYTES")
    image.set_data_from_numpy(np.array(photos, dtype=np.object_))
    result = client.infer(MODEL, [image], outputs=[triton_grpc.InferRequestedOutput(n) for n in OUTPUTS],
                          parameters=OPTIONS, request_id="grpc")
    assert result.get_response().id == "grpc"
    check_outputs("tritonclient grpc", {n: result.as_numpy(n) for n in OUTPUTS})
    for name in OUTPUTS:
        alone = client.infer(MODEL, [image], outputs=[triton_grpc.InferRequestedOutput(name)], parameters=OPTIONS)
        assert [o.name for o in alone.get_response().outputs] == [name]
        check_outputs(f"tritonclient grpc {name} alone", {name: alone.as_numpy(name)})
    print(f"tritonclient grpc: {len(photos)} photos, every output (together and alone) as /explain's")
    bad = triton_grpc.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    for model, outputs, code, says in [
        (MODEL, [triton_grpc.InferRequestedOutput("logits")], "StatusCode.INVALID_ARGUMENT", "unknown output"),
        (MODEL, None, "StatusCode.INVALID_ARGUMENT", "unrecognised image format"),
        ("resnet7", None, "StatusCode.NOT_FOUND", "serves"),
    ]:
        try:
            client.infer(model, [bad], outputs=outputs)
        except InferenceServerException as e:
            assert e.status() == code and says in e.message(), (e.status(), e.message())
        else:
            raise AssertionError(f"tritonclient grpc: {says} was answered")
    print("tritonclient grpc: bad input refused with the protocol's codes")


async def kserve_sdk():
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    assert await v2.is_server_ready(URL) and await v2.is_model_ready(URL, MODEL)
    for binary in (True, False):
        image = InferInput("image", [len(photos)], "BYTES")
        data = photos if binary else [base64.b64encode(p).decode() for p in photos]
        image.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        # KServe's SDK (0.21) cannot read back binary BYTES that are not UTF-8 text (it decodes
        # them as strings): with binary data the overlay is left to the JSON round.
        names = [n for n in OUTPUTS if not (binary and n == "overlay")]
        wanted = [RequestedOutput(n, {"binary_data": binary}) for n in names]
        request = InferRequest(MODEL, [image], parameters=OPTIONS, request_outputs=wanted, request_id="sdk")
        response = await v2.infer(URL, request, model_name=MODEL)
        assert response.id == "sdk", response.id
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        check_outputs(f"kserve v2 binary={binary}", outputs)
        assert sorted(outputs) == sorted(names), sorted(outputs)
        print(f"kserve SDK v2, binary data {binary}: {', '.join(names)} as /explain's")
    try:
        await v2.infer(URL, {"inputs": []}, model_name=MODEL)
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 400 and "one input" in e.response.json()["error"], e.response.text
    else:
        raise AssertionError("kserve v2: no input was answered")

    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    instances = [{"b64": base64.b64encode(p).decode()} for p in photos]
    answer = await v1.infer(URL, {"instances": instances, "top_k": 3}, model_name=MODEL)
    for i, want in enumerate(predicted):
        got = answer["predictions"][i]
        assert [p["index"] for p in got] == [p["index"] for p in want["predictions"]], (got, want)
        close("kserve v1 probabilities", [p["probability"] for p in got], [p["probability"] for p in want["predictions"]])
    answer = await v1.explain(URL, MODEL, {"instances": instances, **OPTIONS})
    got = answer["explanations"]
    check_outputs("kserve v1 :explain", {
        "class_index": [[e["class_index"] for e in es] for es in got],
        "label": [[e["label"] for e in es] for es in got],
        "heatmap": [[np.reshape(e["heatmap"]["data"], (e["heatmap"]["height"], e["heatmap"]["width"]))
                     for e in es] for es in got],
        "overlay": [[base64.b64decode(e["overlay_png"]) for e in es] for es in got],
    })
    print("kserve SDK v1: :predict as /predict, :explain as /explain")
    try:
        await v1.infer(URL, {"instances": [7]}, model_name=MODEL)
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 400 and "an instance is" in e.response.json()["error"], e.response.text
    else:
        raise AssertionError("kserve v1: a bad instance was answered")
    print("kserve SDK: bad input refused with the protocol's error")
    await v1.close()
    await v2.close()

    grpc_client = InferenceGRPCClient(GRPC, retries=0)
    assert await grpc_client.is_server_ready() and await grpc_client.is_model_ready(MODEL)
    image = InferInput("image", [len(photos)], "BYTES")
    image.set_data_from_numpy(np.array(photos, dtype=np.object_))
    request = InferRequest(MODEL, [image], parameters=OPTIONS, request_id="sdk-grpc")
    response = await grpc_client.infer(request)
    assert response.id == "sdk-grpc", response.id
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert sorted(outputs) == sorted(OUTPUTS), sorted(outputs)
    # The SDK reads raw BYTES back as text: the overlay's files are compared by the others.
    check_outputs("kserve gRPC", {n: v for n, v in outputs.items() if n != "overlay"})
    print(f"kserve SDK gRPC: {', '.join(n for n in OUTPUTS if n != 'overlay')} as /explain's")
    await grpc_client.close()


if sys.argv[-1] == "--tritonclient-grpc":
    tritonclient_grpc()
    sys.exit(0)
tritonclient_http()
subprocess.run([sys.executable, *sys.argv, "--tritonclient-grpc"], check=True)
asyncio.run(kserve_sdk())
print("all protocol clients agree with /explain")

"""The naive baseline for bench/serving.py: a FastAPI handler that calls onnxruntime once per request.

It speaks just enough of the V2 infer endpoint (JSON or the binary tensor extension in, JSON out) for the same wrk
script and the same request bodies as the server gets. Run with the same
uvicorn as the server:
    MODEL=path/model.onnx uvicorn --app-dir bench serving_baseline:app --loop uvloop --http httptools
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["MODEL"], sess_options=options, providers=["CPUExecutionProvider"])
app = FastAPI()


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> dict[str, Any]:
    header_length = request.headers.get("inference-header-content-length")
    if header_length is None:
        body = await request.json()
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    else:  # the binary tensor extension: a JSON header, then the input's raw little-endian bytes
        raw = await request.body()
        tensor = json.loads(raw[: int(header_length)])["inputs"][0]
        x = np.frombuffer(raw, dtype="<f4", offset=int(header_length)).reshape(tensor["shape"])
    (y,) = session.run(None, {tensor["name"]: x})
    return {
        "model_name": name,
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}],
    }

"""KServe's own Python client (kserve.InferenceRESTClient and InferenceGRPCClient) against a server with a token and
TLS, as a user's program would call it. Run by tests/serving/test_auth.py with the Python of a virtualenv of its own
(kserve's pins cannot share the project's: its python-dateutil<3 against kubernetes 37's >=3).

    python kserve_client.py HTTPS_URL GRPC_TARGET CA_FILE TOKEN MODEL   ->  one JSON object of what each call got
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(model: str, x: np.ndarray, *, binary: bool) -> InferRequest:
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id="kserve-client")


async def main(https: str, grpc_target: str, ca: str, token: str, model: str) -> dict[str, object]:
    x = np.zeros((2, 8, 8, 1), np.float32)
    bearer = f"Bearer {token}"
    got: dict[str, object] = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", verify=ca, retries=0, timeout=30))
    for binary in (False, True):
        headers = {"Authorization": bearer}
        answer = await rest.infer(https, request(model, x, binary=binary), model_name=model, headers=headers)
        got[f"rest binary={binary}"] = list(answer.outputs[0].as_numpy().shape)
    try:
        await rest.infer(https, request(model, x, binary=False), model_name=model)
        got["rest without token"] = "answered"
    except httpx.HTTPStatusError as err:
        got["rest without token"] = err.response.status_code
    await rest.close()

    client = InferenceGRPCClient(grpc_target, use_ssl=True, root_certificates=ca, retries=0, timeout=30)
    answer = await client.infer(request(model, x, binary=False), headers=(("authorization", bearer),))
    got["grpc"] = list(answer.outputs[0].as_numpy().shape)
    try:
        await client.infer(request(model, x, binary=False), headers=(("authorization", "Bearer wrong"),))
        got["grpc wrong token"] = "answered"
    except grpc.aio.AioRpcError as err:
        got["grpc wrong token"] = err.code().name
    await client.close()
    return got


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:6]))))

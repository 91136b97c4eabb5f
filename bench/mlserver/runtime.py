"""Minimal MLServer runtime that serves one ONNX file through onnxruntime.

MLServer (1.7.1) has no official ONNX runtime, so the comparison with oxinfer uses this one. It is
meant to be the fastest honest path MLServer allows, not a strawman:

* one ``onnxruntime.InferenceSession`` per model, CPU provider, created once in ``load``;
* ``intra_op_num_threads = 1`` and ``inter_op_num_threads = 1`` (sequential execution), which
  mirrors the session options oxinfer uses in the comparison; override per model with
  ``parameters.extra.intra_op_threads``;
* inputs decoded with MLServer's ``NumpyCodec`` (what ``decode_request`` ends up calling for
  tensor inputs, minus the content-type lookup), outputs encoded with ``NumpyCodec`` so names and
  datatypes follow the ONNX graph (FP32 outputs come back as FP32);
* ``session.run`` is called inline on the event loop (MLServer runs with ``parallel_workers: 0``
  here). ``parameters.extra.offload: true`` moves it to a worker thread instead (onnxruntime
  releases the GIL), which can help larger models overlap JSON work with inference.

Model settings (``model-settings.json``)::

    {"name": "add", "implementation": "runtime.OnnxRuntime",
     "parameters": {"uri": "../../../examples/models/add.onnx"}}

``parameters.uri`` is absolute, or relative to the folder of the model-settings file (MLServer's
own rule). ``$VAR`` / ``${VAR}`` in it are expanded from the environment. The module must be
importable as ``runtime``: ``bench/mlserver/run.sh`` puts ``bench/mlserver`` on ``PYTHONPATH``.
"""

import asyncio
import os
from typing import Dict, List, Optional

import numpy as np
import onnxruntime as ort

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

# ONNX tensor type string -> (V2 datatype, numpy dtype)
_ONNX_TYPES = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(bool)": ("BOOL", np.bool_),
}


def _shape(dims) -> List[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        if params is not None and params.uri:
            params.uri = os.path.expandvars(params.uri)
        path = await get_model_uri(self.settings)
        extra = (params.extra if params is not None else None) or {}

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            path, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._offload = bool(extra.get("offload", False))

        # Expected numpy dtype per input, to cast e.g. INT32 ids sent for an INT64 input.
        self._input_dtypes: Dict[str, Optional[np.dtype]] = {}
        for i in self._session.get_inputs():
            t = _ONNX_TYPES.get(i.type)
            self._input_dtypes[i.name] = np.dtype(t[1]) if t else None
        self._output_names = [o.name for o in self._session.get_outputs()]

        # Fill model metadata (GET /v2/models/<name>) from the graph unless given.
        if not self.inputs:
            self.inputs = [
                MetadataTensor(
                    name=i.name,
                    datatype=_ONNX_TYPES.get(i.type, ("BYTES",))[0],
                    shape=_shape(i.shape),
                )
                for i in self._session.get_inputs()
            ]
        if not self.outputs:
            self.outputs = [
                MetadataTensor(
                    name=o.name,
                    datatype=_ONNX_TYPES.get(o.type, ("BYTES",))[0],
                    shape=_shape(o.shape),
                )
                for o in self._session.get_outputs()
            ]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for request_input in payload.inputs:
            arr = NumpyCodec.decode_input(request_input)
            want = self._input_dtypes.get(request_input.name)
            if want is not None and arr.dtype != want:
                arr = arr.astype(want)
            feeds[request_input.name] = arr

        names = (
            [o.name for o in payload.outputs] if payload.outputs else self._output_names
        )
        try:
            if self._offload:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(
                    None, self._session.run, names, feeds
                )
            else:
                results = self._session.run(names, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise InferenceError(f"onnxruntime: {e}") from e

        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, arr) for name, arr in zip(names, results)
            ],
        )

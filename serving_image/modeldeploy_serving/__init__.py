"""The inference server of modeldeploy: onnxruntime behind the Open Inference Protocol (REST and gRPC)."""

__version__ = "0.1.0"

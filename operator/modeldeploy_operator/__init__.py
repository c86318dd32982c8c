"""The modeldeploy operator: reconciles ModelDeployments into a training Job, an inference Deployment and a Service."""

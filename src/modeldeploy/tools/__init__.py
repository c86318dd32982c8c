"""The parts behind `modeldeploy run`, `modeldeploy predict` and the API reference generator (imported on use)."""

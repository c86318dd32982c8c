"""modeldeploy: one ModelDeployment in, a trained, compressed, served and scaled model out."""

__version__ = "0.1.0"

"""Deployment: registry models exported to ONNX and run with ONNX Runtime (CPU)."""

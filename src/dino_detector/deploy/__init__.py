"""Deployment: a trained detector through torch, onnxruntime or OpenVINO (fp32 or INT8), over image files,
tiles of large images and video frames (ARCHITECTURE.md)."""

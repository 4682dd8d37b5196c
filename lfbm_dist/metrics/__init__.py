"""Evaluation metrics, one file each: FID, reconstruction, inpainting, anomaly detection."""

"""Gymnasium environments that step over cached video-model outputs."""

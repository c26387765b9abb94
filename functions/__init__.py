"""Thin trigger shells: one blueprint per DICOMweb service; each function hands its trigger to shared.web."""

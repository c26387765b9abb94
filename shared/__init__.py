"""Shared code of the DICOMweb Functions app: the core, the adapters and the composition root."""

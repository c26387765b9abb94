"""DICOMweb benchmark: the same load against this server and, optionally, Orthanc (see README.md)."""

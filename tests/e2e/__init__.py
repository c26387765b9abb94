"""End-to-end tests: the dev host as a process, driven over HTTP by the `dicomweb-client` library."""

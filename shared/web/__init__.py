"""The HTTP side of the DICOMweb transactions: Starlette requests in, Starlette responses out.

The function shells in `functions/` call these; they hold no DICOM rules of their own (those live
in `shared.core`), only the translation between HTTP and the use cases.
"""

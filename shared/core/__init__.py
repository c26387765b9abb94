"""The framework-free core: DICOMweb rules, value objects and ports.

Nothing here imports azure, sqlalchemy, httpx, starlette or fastapi (a test checks it).
"""

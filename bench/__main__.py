"""Entry point: `.venv/bin/python -m bench [--baseline orthanc] [--quick] [--only stow,qido,...]`."""

from __future__ import annotations

from bench.run import main

raise SystemExit(main())

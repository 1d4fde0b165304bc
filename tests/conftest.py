"""Fixtures for the end-to-end tests: real Envoy, the built filter, real MCP peers."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]

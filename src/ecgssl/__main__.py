"""`python -m ecgssl ...`: the same CLI as the `ecgssl` script (for a venv not on PATH)."""

from ecgssl.cli import app

app(prog_name="ecgssl")

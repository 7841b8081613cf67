"""`python -m cadenza ...`: the `cadenza` command (Lightning's DDP launcher re-runs this for each rank)."""

from cadenza.cli import app

if __name__ == "__main__":
    app(prog_name="cadenza")
